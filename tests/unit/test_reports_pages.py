"""Study pages built from a small store of fixed numbers written through each study's store helpers.

Checks that every chart's data is exactly what its shown SQL returns through `invoke sql`'s
code path, that values land in the right cells, and that findings read the right rows.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from reports.build import build_pages, build_report, headline_findings
from reports.html import ChartBlock, TableBlock
from store import Store
from store.evals import write_evals
from store.runs import finish_run, start_run
from store.sql import run_sql

MODEL = {"model": "tiny", "revision": "r0", "dtype": "float32", "device": "cpu", "n_layers": 4, "d_model": 8}
L, H = 4, 3


def new_run(con, kind: str, tag: str = "") -> int:
    """A new run of ``kind``; another ``tag`` makes another run (e.g. a quick run before the full one)."""
    run = start_run(con, kind=kind, model=MODEL, backend=None, config=json.dumps({"study": kind, "tag": tag}),
                    config_hash=kind + tag, code_version="test")
    return run.run_id


def evals(run_id: int, study: str, points: dict[str, dict[tuple[str, str], float]]) -> list[dict]:
    return [{"run_id": run_id, "study": study, "point": p, "intervention": json.dumps({"kind": p}), "task": t, "metric": m,
                 "value": v, "stderr": 0.01, "n": 100, "chance": None, "dataset": "{}", "seconds": 0.1}
            for p, vals in points.items() for (t, m), v in vals.items()]


def zero_delta(layer: int, head: int) -> float:
    """Fixed importance: head (2, 1) matters most."""
    return 1.0 if (layer, head) == (2, 1) else 0.1 * layer + 0.01 * head


def write_heads(con, tag: str = "") -> int:
    """Zero-ablation ranking beats random; a top-2 router and per-layer static pruning at its budget."""
    from store import heads as sh

    run_id = new_run(con, "heads", tag)
    grid = [(l, h) for l in range(L) for h in range(H)]
    for method, metrics in (("gradient", ("abs_grad", "abs_grad_layer_l2")), ("zero", ("delta_loss",)),
                            ("mean", ("delta_loss",))):
        rows = [{"metric": m, "layer": l, "head": h, "value": zero_delta(l, h) * (0.5 if method == "mean" else 1.0),
                     "stderr": 0.01, "n": 8, "dataset": "text"} for m in metrics for l, h in grid]
        sh.write_importance(con, run_id, method, pd.DataFrame(rows))
    sh.write_agreement(con, run_id, pd.DataFrame([{"score_a": "zero:delta_loss", "score_b": "mean:delta_loss",
                                                       "spearman": 1.0, "kendall": 1.0, "top_n": 3, "top_overlap": 1.0}]))
    pts = [{"point": f"prune[{m},{k}]", "kind": "prune", "method": m, "scope": "global", "heads_off": k, "frac_off": k / (L * H)}
           for m in ("zero", "random0") for k in (3, 6)]
    budget = L * (H - 2)  # top-2 of 3 heads per layer
    pts += [{"point": "prune[gradient_layer]", "kind": "prune", "method": "gradient_layer", "scope": "layer",
             "heads_off": budget, "frac_off": budget / (L * H)},
            {"point": "route[top-2]", "kind": "router", "method": "router", "scope": "layer", "heads_off": budget,
             "frac_off": budget / (L * H)}]
    sh.write_points(con, run_id, pd.DataFrame(pts))
    slope = {"zero": 1, "random0": 3, "gradient_layer": 2, "router": 0.5}
    ppl = {"base": 10.0, **{p["point"]: 10.0 + p["heads_off"] * slope[p["method"]] for p in pts}}
    write_evals(con, evals(run_id, "heads", {p: {("ppl", "perplexity"): v} for p, v in ppl.items()}))
    steps = pd.DataFrame({"step": [1, 2], "lm_loss": [3.0, 2.5], "lb_loss": [1.2, 1.1], "loss": [3.1, 2.6],
                          "seconds": [0.1, 0.1]})
    sh.save_checkpoint(con, run_id, 2, 2, b"x", steps)
    usage = pd.DataFrame([{"layer": l, "head": h, "frequency": 2 / 3, "mean_gate": 0.5, "mean_prob": 1 / 3, "n_tokens": 50}
                          for l, h in grid])
    sh.write_router(con, run_id, 2, "d1", np.zeros((L, H, 8), np.float32), np.zeros((L, H), np.float32), usage,
                    {"steps": 2, "heldout_tokens": 50, "base_nll": 2.0, "router_nll": 2.2, "uniform_nll": 2.6, "static_nll": 2.4,
                         "router_lb": 1.05})
    finish_run(con, run_id)
    return run_id


SIM_POSITIONS = {"last": 0.0, "mean": 0.005, "tokens": 0.002}
"""Position labels of the similarity fixture and how much lower than 'last' their cosines are."""


def write_layers(con, tag: str = "") -> int:
    """States 0..L; layers 1-2 barely change the stream (cosine 0.99 between states 1 and 3); a heat map
    for each of three position labels."""
    from store import layers as sl

    run_id = new_run(con, "layers", tag)
    cos = np.full((L + 1, L + 1), 0.5)
    np.fill_diagonal(cos, 1.0)
    cos[1, 3] = cos[3, 1] = cos[1, 2] = cos[2, 1] = cos[2, 3] = cos[3, 2] = 0.99
    sim = pd.DataFrame([{"position": pos, "stream": "resid_unnormalised", "layer_a": a, "layer_b": b,
                         "cosine": cos[a, b] - (a != b) * off, "cosine_se": 0.01,
                         "angular": np.arccos(cos[a, b] - (a != b) * off) / np.pi, "angular_se": 0.01, "n_prompts": 8}
                        for pos, off in SIM_POSITIONS.items() for a in range(L + 1) for b in range(L + 1)])
    ang = []
    for n in range(1, L):
        starts = range(L - n + 1)
        dist = {l: np.arccos(cos[l, l + n]) / np.pi for l in starts}
        best = min(dist, key=dist.get)
        ang += [{"position": "last", "stream": "resid_unnormalised", "n": n, "start_layer": l, "end_layer": l + n - 1,
                     "distance": d, "distance_se": 0.01, "best": l == best, "n_prompts": 8} for l, d in dist.items()]
    infl = pd.DataFrame([{"position": "last", "stream": "resid_unnormalised", "layer": l,
                              "block_influence": 1 - cos[l, l + 1], "block_influence_se": 0.01, "n_prompts": 8}
                         for l in range(L)])
    pts = [{"strategy": "single", "n": 1, "seed": None, "heal_steps": 0, "layers": [l], "point": f"drop[{l}]"} for l in range(L)]
    pts += [{"strategy": "angular", "n": 2, "seed": None, "heal_steps": 0, "layers": [1, 2], "point": "drop[1-2]"},
            {"strategy": "deepest", "n": 2, "seed": None, "heal_steps": 0, "layers": [1, 2], "point": "drop[1-2]"},
            {"strategy": "random", "n": 2, "seed": 0, "heal_steps": 0, "layers": [0, 1], "point": "drop[0-1]"},
            {"strategy": "random", "n": 2, "seed": 1, "heal_steps": 0, "layers": [2, 3], "point": "drop[2-3]"}]
    sl.replace_rows(con, run_id, {"layer_similarity": sim, "layer_angular": pd.DataFrame(ang),
                                  "layer_influence": infl, "layer_points": pd.DataFrame(pts)})
    ppl = {"base": 10.0, "drop[0]": 500.0, "drop[1]": 10.5, "drop[2]": 10.4, "drop[3]": 30.0,
           "drop[1-2]": 11.0, "drop[0-1]": 900.0, "drop[2-3]": 50.0}
    write_evals(con, evals(run_id, "layers", {p: {("ppl", "perplexity"): v, ("facts", "accuracy"): 10 / v}
                                              for p, v in ppl.items()}))
    finish_run(con, run_id)
    return run_id


MODULE_SIZES = {"q": 64, "k": 32, "v": 32, "o": 64, "gate": 128, "up": 128, "down": 128}  # per layer
GROUPS = {"all": list(MODULE_SIZES), "attn": ["q", "k", "v", "o"], "mlp": ["gate", "up", "down"]}


def write_weights(con, tag: str = "") -> int:
    """Magnitude and Wanda at 25/50% of all modules; Wanda on attn and mlp alone."""
    from store import weights as sw

    run_id = new_run(con, "weights", tag)
    total = L * sum(MODULE_SIZES.values())
    recipes = [("magnitude", None, "all"), ("wanda", "oneshot", "all"), ("wanda", "oneshot", "attn"),
               ("wanda", "oneshot", "mlp")]
    ppl = {"base": 10.0}
    for method, calib, group in recipes:
        for rate in (0.25, 0.5):
            point = f"{method}[{group}@{rate}]"
            mods = GROUPS[group]
            stats = pd.DataFrame([{"run_id": run_id, "point": point, "layer": l, "module": m, "rate": rate,
                                       "n_params": MODULE_SIZES[m], "n_pruned": int(rate * MODULE_SIZES[m]),
                                       "n_zero": int(rate * MODULE_SIZES[m]), "sparsity": rate}
                                  for l in range(L) for m in mods])
            n_params = int(stats["n_params"].sum())
            sw.write_prune_point(con, {
                "run_id": run_id, "point": point, "intervention": "{}", "method": method, "calibration": calib, "grp": "row",
                "structure": "unstructured", "modules": group, "target_rate": rate, "n_params": n_params,
                "n_pruned": int(stats["n_pruned"].sum()), "n_zero": int(stats["n_zero"].sum()), "sparsity": rate,
                "total_params": total, "calib_id": None, "seconds": 0.1}, stats)
            ppl[point] = 10.0 + rate * n_params / total * (40 if method == "magnitude" else 10)
    write_evals(con, evals(run_id, "weights", {p: {("ppl", "perplexity"): v} for p, v in ppl.items()}))
    finish_run(con, run_id)
    return run_id


def probe_rows() -> list[dict]:
    """Probes peak at layer 2 (last token) and layer 3 (mean over tokens), cross-validated scores with a
    permutation null (mean 0.5, 95th percentile 0.6, p 0.002); harmful vs neutral also has held-out scores
    (95% interval +/- 0.05) and cross-source scores."""
    nan = float("nan")
    acc = {"last": {0: 0.6, 1: 0.8, 2: 0.95, 3: 0.9}, "mean": {0: 0.55, 1: 0.7, 2: 0.8, 3: 0.85}}
    settings = {"cv": 0.0, "held_out": -0.05, "cross:harmbench->donotanswer": -0.15,
                "cross:donotanswer->harmbench": -0.25, "cross_dm:harmbench->donotanswer": -0.2,
                "cross_dm:donotanswer->harmbench": -0.3}
    rows = []
    for pb in ("harmful_vs_neutral", "toxic_vs_neutral"):
        for pos, by_layer in acc.items():
            for l, a in by_layer.items():
                for st, off in settings.items():
                    if pb != "harmful_vs_neutral" and st != "cv":
                        continue
                    for m in ("accuracy", "roc_auc"):
                        v = a + off - (0.1 if pb == "toxic_vs_neutral" else 0) + (0.02 if m == "roc_auc" else 0)
                        null = dict(null_mean=0.5, null_p95=0.6, p=0.002, permutations=500) if st == "cv" else \
                            dict(null_mean=nan, null_p95=nan, p=nan, permutations=None)
                        held = st == "held_out"
                        rows.append({"problem": pb, "hook": "resid_post", "layer": l, "position": pos, "setting": st,
                                     "metric": m, "mean": v, "std": None, "n": 40, "folds": 5 if st == "cv" else 1,
                                     "lo": v - 0.05 if held else nan, "hi": v + 0.05 if held else nan, **null})
    return rows


def write_safety(con, tag: str = "") -> int:
    """Probes peak at layer 2; ablation cuts toxicity; actadd at two alphas; the best-layer table is the
    study's own (analyses.probes.best_layers)."""
    from analyses.probes import best_layers
    from store import safety as ss

    run_id = new_run(con, "safety", tag)
    acc = {0: 0.6, 1: 0.8, 2: 0.95, 3: 0.9}
    probes = pd.DataFrame(probe_rows())
    layers = [{"concept": "harmful", "hook": "resid_post", "layer": l, "position": "last", "metric": m, "value": v}
              for l in range(L) for m, v in (("cosine_dm_probe", 0.2 * l), ("projection_auc", acc[l]))]
    cands = [{"concept": "harmful", "hook": "resid_post", "layer": l, "position": "last", "separability": acc[l],
                  "projection_d": 1.0, "base_refusal_rate": 0.2, "refusal_rate": 0.1, "refusal_drop": 0.1 * l,
                  "base_refusal_logprob": -2.0, "refusal_logprob": -3.0, "refusal_logprob_drop": 1.0, "kl": 0.01 * l,
                  "kl_stderr": 0.001, "n_refusal": 8, "n_kl": 8, "seconds": 1.0} for l in range(L)]
    sel = [{"criterion": "chosen", "concept": "harmful", "hook": "resid_post", "layer": 2, "position": "last",
                "metric": "refusal_drop", "value": 0.2, "separability": 0.95, "refusal_drop": 0.2, "kl": 0.02,
                "reason": "largest refusal drop under the KL cap", "rule": "max refusal_drop s.t. kl <= 0.1"}]
    ss.replace_rows(con, run_id, {"safety_probes": probes, "safety_best_layers": best_layers(probes),
                                  "safety_layers": pd.DataFrame(layers),
                                  "safety_candidates": pd.DataFrame(cands), "safety_selection": pd.DataFrame(sel)})
    metrics = {"base": (0.40, 0.10, 10.0), "ablate[harmful@resid_post2/last]": (0.10, 0.00, 10.5),
               "orth[harmful@resid_post2/last]": (0.12, 0.00, 10.6),
               "actadd[harmful@resid_post2/last -1]": (0.20, 0.05, 11.0),
               "actadd[harmful@resid_post2/last +1]": (0.60, 0.30, 12.0)}
    kinds = {"base": {"kind": "base"}, "ablate": {"kind": "direction_ablation"},
             "orth": {"kind": "direction_orthogonalized"}}
    rows = []
    for point, (tox, refusal, ppl) in metrics.items():
        spec = kinds.get(point.split("[")[0]) or {"kind": "activation_addition",
                                                   "alpha": float(point.split()[-1].rstrip("]"))}
        for (task, metric), v in {("toxicity", "toxicity"): tox, ("refusal", "refusal_rate"): refusal,
                                  ("ppl", "perplexity"): ppl}.items():
            rows.append({"run_id": run_id, "study": "safety", "point": point, "intervention": json.dumps(spec), "task": task,
                             "metric": metric, "value": v, "stderr": 0.01, "n": 24, "chance": None, "dataset": "{}", "seconds": 1.0})
    ablate = "ablate[harmful@resid_post2/last]"
    # paired comparisons of the ablation: toxicity clearly down, refusal inside the noise
    deltas = [{"run_id": run_id, "point": ablate, "task": t, "metric": m, "n": 24, "base_value": b, "value": v,
               "delta": v - b, "lo": lo, "hi": hi, "p": p, "sd": 0.2, "mde": 0.12, "method": "test"}
              for t, m, b, v, lo, hi, p in (("toxicity", "toxicity", 0.4, 0.1, -0.45, -0.15, 0.001),
                                            ("refusal", "refusal_rate", 0.1, 0.0, -0.25, 0.05, 0.25))]
    write_evals(con, rows, deltas=deltas)
    ss.replace_rows(con, run_id, {
        "safety_points": pd.DataFrame([{"point": p, "role": "edit", "family": p.split("[")[0], "band": None,
                                        "alpha": float(p.split()[-1].rstrip("]")) if p.startswith("actadd") else None,
                                        "removed": None, "removed_ratio": None} for p in metrics if p != "base"]),
        "safety_bands": pd.DataFrame([{"band": "ablate:random-unit", "family": "ablate", "alpha": None, "task": t,
                                       "metric": m, "k": 5, "mean": mean, "sd": 0.01, "lo": mean - 0.03,
                                       "hi": mean + 0.03, "min": mean - 0.01, "max": mean + 0.01}
                                      for t, m, mean in (("toxicity", "toxicity", 0.39), ("refusal", "refusal_rate", 0.02),
                                                         ("ppl", "perplexity", 10.05))])})
    finish_run(con, run_id)
    return run_id


WRITERS = {"layers": write_layers, "weights": write_weights, "heads": write_heads, "safety": write_safety}


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("pages") / "pages.duckdb")
    with store.connect() as con:
        runs = {s: w(con) for s, w in WRITERS.items()}
    return store, runs


@pytest.fixture(scope="module")
def pages(full_store):
    store, _ = full_store
    with store.connect(read_only=True) as con:
        pages, studies, missing = build_pages(con, store)
    return {p.slug: p for p in pages}, studies, missing


def chart_data(block: ChartBlock) -> pd.DataFrame:
    data = block.chart.data
    return data if isinstance(data, pd.DataFrame) else block.chart.to_dict()["datasets"]


def test_every_chart_is_what_its_sql_returns(full_store, pages):
    store, _ = full_store
    by_slug, studies, _ = pages
    assert set(studies) == set(WRITERS)
    n = 0
    for page in by_slug.values():
        for section in page.sections:
            for block in section.blocks:
                if isinstance(block, (ChartBlock, TableBlock)):
                    assert '"' not in block.sql, block.sql  # shown inside a double-quoted shell argument
                    again = run_sql(store, block.sql)
                    shown = block.df if isinstance(block, TableBlock) else chart_data(block)
                    pd.testing.assert_frame_equal(again.reset_index(drop=True), shown.reset_index(drop=True))
                    n += 1
    assert n >= 3 * len(WRITERS)


def test_shown_commands_survive_the_shell(pages):
    """The `invoke sql "..."` line under each chart reaches invoke unchanged through bash."""
    import subprocess

    from reports.html import sql_command

    sqls = [b.sql for p in pages[0].values() for s in p.sections for b in s.blocks if hasattr(b, "sql")]
    cmds = [sql_command(sql, "s.duckdb") for sql in sqls]
    script = "\n".join("printf '%s\\0' " + c.split(" ", 4)[4] for c in cmds)  # the quoted SQL argument
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("\0")[:-1] == [" ".join(sql.split()) for sql in sqls]


def blocks_by_title(page) -> dict:
    return {b.title: b for s in page.sections for b in s.blocks if hasattr(b, "title")}


def test_heads_page(pages):
    page = pages[0]["heads"]
    blocks = blocks_by_title(page)
    heat = chart_data(blocks["zero / delta_loss"])
    assert len(heat) == L * H
    top = heat.loc[heat["importance"].idxmax()]
    assert (top.layer, top["head"], top.importance) == (2, 1, 1.0)
    spec = blocks["zero / delta_loss"].chart.to_dict()
    assert spec["encoding"]["x"]["field"] == "layer" and spec["encoding"]["color"]["scale"]["domainMid"] == 0
    prune = chart_data(blocks["Quality as heads are pruned or routed"])
    assert set(prune["strategy"]) == {"zero (global)", "random0 (global)", "gradient_layer (layer)",
                                      "router (top-k per token)"}
    assert (prune["base_value"] == 10.0).all()
    assert prune.query("strategy == 'random0 (global)' and heads_off == 6")["value"].item() == 28.0
    # the router is its own series, at the same head budget as static per-layer pruning
    at = prune[prune["heads_off"] == L * (H - 2)].set_index("strategy")
    assert at.loc["router (top-k per token)", "kind"] == "router" and at.loc["gradient_layer (layer)", "kind"] == "prune"
    assert at.loc["router (top-k per token)", "frac_off"] == at.loc["gradient_layer (layer)", "frac_off"]
    assert (at.loc["router (top-k per token)", "value"], at.loc["gradient_layer (layer)", "value"]) == (12.0, 18.0)
    spec = blocks["Quality as heads are pruned or routed"].chart.to_dict()
    assert spec["spec"]["layer"][0]["encoding"]["color"]["field"] == "strategy"
    usage = chart_data(blocks["Router: how often each head is active"])
    assert len(usage) == L * H and set(usage["router"]) == {"top-2"}
    summary = chart_data(blocks["Quality against compute"])
    assert dict(zip(summary["model"], summary["nll"])) == {"base": 2.0, "router": 2.2, "uniform": 2.6,
                                                           "static": 2.4}
    steps = chart_data(blocks["Router training"])
    assert sorted(steps["term"].unique()) == ["lb_loss", "lm_loss"] and len(steps) == 4


HEADLINES = [
    ("layers: layer 1 changes the residual stream least (angular distance 0.045 between its input and output); "
     "dropping it changes perplexity by +5.0% (10.00 -> 10.50)."),
    ("weights: at 50% of all weights pruned, perplexity is wanda oneshot / row 15.00, magnitude / row 30.00 "
     "(unpruned 10.00)."),
    "heads: the most important head is layer 2 head 1; zero-ablating it raises text loss by +1.000 nats/token.",
    ("safety: harmful vs neutral is best separated at layer 2 (resid_post, last token; chosen on train-split "
     "cross-validation among 4 layers): held-out ROC-AUC 0.920 (95% CI 0.870..0.970), CV ROC-AUC 0.970 vs "
     "permutation null 0.500 (95th percentile 0.600, p = 0.002 at that cell); cross-source 0.770; ablating the "
     "harmful direction (ablate[harmful@resid_post2/last]) moves toxicity 0.4 -> 0.1 (-0.3, 95% CI -0.45..-0.15); "
     "beyond every random-edit band, refusal rate 0.1 -> 0: no detectable change at this budget (95% CI "
     "-0.25..+0.05); inside the random-edit band."),
]


def test_headline_findings_are_one_per_study(full_store):
    """Three or four headlines: one per study, in page order, each read from the store."""
    assert headline_findings(full_store[0]) == HEADLINES


def test_index_shows_headlines_and_more_findings(pages):
    notes = [b.html_text for s in pages[0]["index"].sections if s.title == "Headline findings" for b in s.blocks]
    assert all(h.replace(">", "&gt;") in notes[0] for h in HEADLINES)
    assert "More findings" in notes[1] and "top-2" in notes[1] and "2.200" in notes[1] and "2.400" in notes[1]
    assert not any(h.replace(">", "&gt;") in notes[1] for h in HEADLINES)


def test_partial_store_says_what_is_missing(full_store, tmp_path):
    store, _ = full_store
    rep = build_report(store, tmp_path / "site")
    missing = [s for s in ("layers", "weights", "heads", "safety") if s not in WRITERS]
    assert rep.missing == tuple(missing)
    index = rep.index.read_text()
    for s in missing:
        assert f"invoke {s}" in index
    assert ("Missing studies" in index) == bool(missing)
    assert sorted(p.name for p in rep.pages) == sorted(["index.html", *[f"{s}.html" for s in rep.studies]])


def test_layers_page(pages):
    blocks = blocks_by_title(pages[0]["layers"])
    heat = [t for t in blocks if t.startswith("Cosine similarity of the residual stream")]
    assert heat == [f"Cosine similarity of the residual stream: {p}" for p in ("last", "mean", "tokens")]
    for pos, off in SIM_POSITIONS.items():  # one heat map per label, each with its own rows and caption
        block = blocks[f"Cosine similarity of the residual stream: {pos}"]
        sim = chart_data(block)
        assert len(sim) == (L + 1) ** 2
        assert sim.query("layer_a == 1 and layer_b == 3")["cosine"].item() == pytest.approx(0.99 - off)
        assert f"position = '{pos}'" in block.sql and block.caption.startswith(f"{pos}: ")
        assert block.chart.to_dict()["title"] == f"cosine ({pos})"
    assert "token-averaged" in blocks["Cosine similarity of the residual stream: mean"].caption
    assert "per-token cosine" in blocks["Cosine similarity of the residual stream: tokens"].caption
    ang = chart_data(blocks["Angular distance by block size and start"])
    assert ang.query("best and n == 2")["start_layer"].item() == 1
    single = chart_data(blocks["Dropping one layer: perplexity (log scale)"])
    assert list(single["layer"]) == [0, 1, 2, 3] and single["value"].max() == 500.0
    spec = blocks["Dropping one layer: perplexity (log scale)"].chart.to_dict()
    assert spec["spec"]["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
    blk = chart_data(blocks["Dropping blocks of layers: other metrics"])
    rnd = blk.query("strategy == 'random'")
    assert rnd["seeds"].item() == 2 and rnd["value"].item() == pytest.approx((10 / 900 + 10 / 50) / 2)
    assert set(blk["strategy"]) == {"angular", "deepest", "random"}
    assert "perplexity" not in set(blk["panel"].str.split(" / ").str[1])


def study_findings(store, study: str) -> list[str]:
    from reports.build import study_module
    from store.queries import study_run

    with store.connect(read_only=True) as con:
        return study_module(study).findings(con, study_run(con, study))


def test_layers_findings(full_store):
    found = study_findings(full_store[0], "layers")
    assert any(f.startswith("layers: layer 1 changes the residual stream least (angular distance 0.045")
               for f in found), found
    assert "layers: the most layers that go for at most +25% perplexity: dropping 2 ([1, 2], angular choice) " \
           "changes it by +10.0% (10.00 -> 11.00)." in found, found


def test_weights_page(pages):
    blocks = blocks_by_title(pages[0]["weights"])
    rate = chart_data(blocks["Pruning every module"])
    assert set(rate["recipe"]) == {"magnitude / row", "wanda oneshot / row"} and set(rate["modules"]) == {"all"}
    assert rate.query("recipe == 'magnitude / row' and target_rate == 0.5")["value"].item() == pytest.approx(30.0)
    mods = chart_data(blocks["Module groups: against pruned weights"])
    attn, mlp = (mods.query(f"modules == '{g}' and target_rate == 0.5")["n_pruned"].item() for g in ("attn", "mlp"))
    assert (attn, mlp) == (L * 96, L * 192)  # the same rate removes twice as many MLP weights here
    spec = blocks["Module groups: against pruned weights"].chart.to_dict()
    assert spec["spec"]["layer"][0]["encoding"]["x"]["field"] == "n_pruned"
    sizes = chart_data(blocks["Weights per module type"])
    assert dict(zip(sizes["module"], sizes["n_params"])) == {m: L * n for m, n in MODULE_SIZES.items()}
    reached = chart_data(blocks["Sparsity reached"])
    assert (reached["sparsity"] == reached["rate_asked"]).all()
    assert len(reached) == sum(2 * len(GROUPS[g]) for _, _, g in [(0, 0, "all"), (0, 0, "all"), (0, 0, "attn"),
                                                                    (0, 0, "mlp")])


def test_weights_findings(full_store):
    found = study_findings(full_store[0], "weights")
    assert "weights: at 50% of all weights pruned, perplexity is wanda oneshot / row 15.00, magnitude / row 30.00 " \
           "(unpruned 10.00)." in found, found


def test_safety_page(pages):
    blocks = blocks_by_title(pages[0]["safety"])
    probe_charts = [t for t in blocks if t.startswith("Linear probes by layer")]
    # one chart per (hook, position): mean-position probes are charted too
    assert probe_charts == ["Linear probes by layer: resid_post, last token",
                            "Linear probes by layer: resid_post, mean over tokens"]
    n_settings = {"harmful_vs_neutral": 6, "toxic_vs_neutral": 1}
    for t, pos in zip(probe_charts, ("last", "mean")):
        probes = chart_data(blocks[t])
        assert len(probes) == L * 2 * sum(n_settings.values())  # layers x metrics x (problem, setting)
        assert f"position = '{pos}'" in blocks[t].sql
    probes = chart_data(blocks[probe_charts[1]])
    cv = probes.query("problem == 'harmful_vs_neutral' and setting == 'cv' and metric == 'accuracy'")
    assert list(cv["mean"]) == pytest.approx([0.55, 0.7, 0.8, 0.85])
    # the best layer is the study's (safety_best_layers), with its margins and cross-source scores
    best = blocks["Best layer per problem"].df
    assert "safety_best_layers" in blocks["Best layer per problem"].sql
    h = best[(best["problem"] == "harmful_vs_neutral") & (best["position"] == "last")].iloc[0]
    assert (h.layer, h.cv_roc_auc, h.shuffled_roc_auc) == (2, pytest.approx(0.97), 0.5)
    assert (h.margin_roc_auc, h.margin_accuracy) == (pytest.approx(0.47), pytest.approx(0.45))
    assert (h.cross_source_roc_auc, h.cross_source_dm_roc_auc) == (pytest.approx(0.77), pytest.approx(0.72))
    assert best[(best["problem"] == "harmful_vs_neutral") & (best["position"] == "mean")]["layer"].item() == 3
    assert best[best["problem"] == "toxic_vs_neutral"]["cross_source_roc_auc"].isna().all()
    ctrl = chart_data(blocks["The best layer against its controls"])
    assert "safety_best_layers" in blocks["The best layer against its controls"].sql
    last_auc = ctrl[(ctrl["site"] == "resid_post / last") & (ctrl["metric"] == "roc_auc")
                    & (ctrl["problem"] == "harmful_vs_neutral")].set_index("score")["value"]
    assert dict(last_auc) == pytest.approx({"cross-validated": 0.97, "permutation null (mean)": 0.5,
                                            "permutation null (95th percentile)": 0.6,
                                            "held-out prompts": 0.92, "cross-source probe": 0.77,
                                            "cross-source diff. of means": 0.72})
    tox = ctrl[ctrl["problem"] == "toxic_vs_neutral"]
    assert set(tox["score"]) == {"cross-validated", "permutation null (mean)",
                                 "permutation null (95th percentile)"}  # no held-out, no cross-source for toxic
    margins = ctrl[(ctrl["site"] == "resid_post / last") & (ctrl["problem"] == "harmful_vs_neutral")]
    assert set(margins.groupby("metric")["margin_over_shuffled"].unique().map(lambda v: round(v.item(), 6)).items()) \
        == {("accuracy", 0.45), ("roc_auc", 0.47)}
    assert set(ctrl["panel"]) == {f"{m} · resid_post / {p}" for m in ("accuracy", "roc_auc") for p in ("last", "mean")}
    edits = chart_data(blocks["Toxicity, refusal and capability before and after each edit"])
    assert len(edits) == 5 * 3 and set(edits["kind"]) == {"base", "direction_ablation", "direction_orthogonalized",
                                                           "activation_addition"}
    tox = edits.query("panel == 'toxicity / toxicity'").set_index("edit")
    assert tox.loc["ablate[harmful@resid_post2/last]", "delta"] == pytest.approx(-0.3)
    alpha = chart_data(blocks["Activation addition: sweeping alpha"])
    assert sorted(alpha["alpha"].unique()) == [-1.0, 1.0]
    spec = blocks["Toxicity, refusal and capability before and after each edit"].chart.to_dict()
    assert "xOffset" not in spec["spec"]["layer"][0]["encoding"]  # one bar per edit, coloured by kind
    cands = chart_data(blocks["Candidate directions"])
    assert set(cands["criterion"]) == {"separability", "refusal_drop", "refusal_logprob_drop", "kl"}
    assert len(chart_data(blocks["Direction metrics by layer"])) == 2 * L


def test_safety_findings(full_store):
    found = study_findings(full_store[0], "safety")
    assert "safety: harmful vs neutral: best layer 2 (resid_post, last token), CV accuracy 0.950 vs 0.500 with " \
           "permuted labels; held-out accuracy 0.900 (95% CI 0.850..0.950)." in found, found
    assert any(f.startswith("safety: ablate[harmful@resid_post2/last] changes toxicity 0.4 -> 0.1 (-0.3, 95% CI "
                            "-0.45..-0.15); beyond every random-edit band, refusal rate 0.1 -> 0: no detectable "
                            "change at this budget (95% CI -0.25..+0.05); inside the random-edit band, perplexity "
                            "10 -> 10.5 (no per-item scores: no interval); beyond every random-edit band")
               for f in found), found


def test_safety_headline_follows_the_studys_choice_not_accuracy(tmp_path):
    """The headline names the layer safety_best_layers stores (chosen by ROC-AUC), even where another layer has
    the higher accuracy: the report does not re-pick it."""
    from analyses.probes import best_layers
    from reports.safety import headline
    from store import safety as ss

    st = Store(tmp_path / "s.duckdb")
    rows = [{"problem": "harmful_vs_neutral", "hook": "resid_post", "layer": l, "position": "last", "setting": "cv",
             "metric": m, "mean": v, "std": 0.0, "n": 10, "folds": 5, "lo": None, "hi": None, "null_mean": null,
             "null_p95": null + 0.1, "p": 0.01, "permutations": 100}
            for l, (acc, auc) in {0: (0.9, 0.8), 1: (0.8, 0.95)}.items()
            for m, v, null in (("accuracy", acc, 0.5), ("roc_auc", auc, 0.6))]
    with st.connect() as con:
        run = new_run(con, "safety")
        df = pd.DataFrame(rows)
        ss.replace_rows(con, run, {"safety_probes": df, "safety_best_layers": best_layers(df)})
        line = headline(con, run)
    assert line == ("safety: harmful vs neutral is best separated at layer 1 (resid_post, last token; chosen on "
                    "train-split cross-validation among 2 layers): held-out ROC-AUC n/a, CV ROC-AUC 0.950 vs "
                    "permutation null 0.600 (95th percentile 0.700, p = 0.01 at that cell)."), line


def test_weights_headline_on_a_run_that_pruned_single_modules(tmp_path):
    """A smoke run prunes one projection, not every module: the headline compares the methods there."""
    from reports.weights import headline
    from store import weights as sw

    st = Store(tmp_path / "w.duckdb")
    with st.connect() as con:
        run_id = new_run(con, "weights")
        ppl = {"base": 10.0}
        for method, calib, module, value in (("magnitude", None, "k", 13.0), ("wanda", "sequential", "k", 11.0),
                                             ("magnitude", None, "q", 12.0)):
            point = f"{method}[{module}@0.5]"
            n = MODULE_SIZES[module] * L
            stats = pd.DataFrame([{"run_id": run_id, "point": point, "layer": l, "module": module, "rate": 0.5,
                                   "n_params": MODULE_SIZES[module], "n_pruned": MODULE_SIZES[module] // 2,
                                   "n_zero": MODULE_SIZES[module] // 2, "sparsity": 0.5} for l in range(L)])
            sw.write_prune_point(con, {
                "run_id": run_id, "point": point, "intervention": "{}", "method": method, "calibration": calib,
                "grp": "row", "structure": "unstructured", "modules": module, "target_rate": 0.5, "n_params": n,
                "n_pruned": n // 2, "n_zero": n // 2, "sparsity": 0.5, "total_params": 10 * n, "calib_id": None,
                "seconds": 0.1}, stats)
            ppl[point] = value
        write_evals(con, evals(run_id, "weights", {p: {("ppl", "perplexity"): v} for p, v in ppl.items()}))
        line = headline(con, run_id)
    # k: both methods (q only magnitude, though q and k have the same size here)
    assert line == "weights: at 50% of the k weights pruned, perplexity is wanda sequential / row 11.00, " \
                   "magnitude / row 13.00 (unpruned 10.00).", line

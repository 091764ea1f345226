"""The stereotype probe's group-mention control: group_kept through the dataset, the store and the
analysis (held_out:group_kept / held_out:group_swapped), and the report's line about it.

Synthetic vectors make the shortcut explicit: feature 0 says "a social group is mentioned" (every
biased prompt, and the counterparts that keep the group), feature 1 says "the prompt states a
stereotype" (biased prompts only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyses import probes
from analyses.probes import ProbeCfg, best_layers, probe_layer
from analyses.safety_data import SafetyDataError, assign_splits, balanced, dataset_frame

CLASSES = ("biased", "counterpart")
KEY = ("resid_pre", 5, "last")


def _pairs(n_kept: int, n_swapped: int, stereotype: float, d: int = 6, seed: int = 0):
    """Stereotype pairs and their vectors: group mention on feature 0, stereotype (x ``stereotype``) on 1."""
    rng = np.random.default_rng(seed)
    rows, vecs = [], []
    for i in range(n_kept + n_swapped):
        kept = i < n_kept
        for label, suffix in (("biased", "b"), ("neutral", "n")):
            rows.append({"prompt_id": f"stereo-{i:04d}-{suffix}", "dataset": "stereotypes", "source": "interp",
                         "label": label, "grp": f"stereo-{i:04d}", "group_kept": kept})
            v = rng.normal(size=d)
            v[0] += 4.0 * (label == "biased" or kept)  # a group is named
            v[1] += stereotype * 4.0 * (label == "biased")  # the stereotype is stated
            vecs.append(v)
    frame = pd.DataFrame(rows)
    return frame, (frame["prompt_id"].tolist(), np.array(vecs, np.float32))


def _probe(frame, vectors, test_frac: float = 0.3) -> pd.DataFrame:
    data = dataset_frame(frame, test_frac, seed=0)
    cfg = ProbeCfg(folds=3, problems=("biased_vs_counterpart",))
    return data, cfg, pd.DataFrame(probe_layer(vectors, data, KEY, cfg), columns=probes.ROW)


def _score(rows: pd.DataFrame, setting: str) -> pd.Series:
    return rows[rows.setting == setting].set_index("metric")["mean"]


def _hand_accuracy(pred, y) -> float:
    return sum(int(p == t) for p, t in zip(pred, y)) / len(y)


def _hand_auc(score, y) -> float:
    pos = [s for s, t in zip(score, y) if t == 1]
    neg = [s for s, t in zip(score, y) if t == 0]
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


def test_group_mention_alone_scores_on_swapped_pairs_only():
    frame, vectors = _pairs(100, 100, stereotype=0.0)
    _data, _cfg, rows = _probe(frame, vectors)
    swapped, kept = _score(rows, "held_out:group_swapped"), _score(rows, "held_out:group_kept")
    assert swapped["accuracy"] > 0.85 and swapped["roc_auc"] > 0.95, swapped
    assert abs(kept["accuracy"] - 0.5) < 0.15 and abs(kept["roc_auc"] - 0.5) < 0.2, kept
    overall = _score(rows, "held_out")  # the mixture: what the existing setting reported alone
    assert kept["accuracy"] < overall["accuracy"] < swapped["accuracy"]


def test_a_stereotype_feature_scores_on_both_kinds():
    frame, vectors = _pairs(100, 100, stereotype=1.0)
    _data, _cfg, rows = _probe(frame, vectors)
    for setting in ("held_out:group_kept", "held_out:group_swapped", "held_out"):
        s = _score(rows, setting)
        assert s["accuracy"] > 0.9 and s["roc_auc"] > 0.95, (setting, s)


def test_subset_scores_match_a_hand_fitted_probe():
    """The held-out ridge probe against scikit-learn's Ridge on the same standardised features."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from analyses import ridge

    frame, vectors = _pairs(40, 50, stereotype=0.3, seed=2)
    data, cfg, rows = _probe(frame, vectors)
    ids, X = vectors
    row = {p: i for i, p in enumerate(ids)}
    train = balanced(data, CLASSES, "train", cfg.seed)  # the probe's train set: every kind of pair
    Xtr, ytr = X[[row[p] for p in train.prompt_id]], np.array([CLASSES.index(c) for c in train.cls])
    scaler = StandardScaler().fit(Xtr)
    _, lam = ridge.hat(Xtr, Xtr[:1], cfg.ridge)
    model = Ridge(alpha=lam).fit(scaler.transform(Xtr), np.eye(2)[ytr])
    for setting, want in (("held_out:group_kept", True), ("held_out:group_swapped", False)):
        test = [(p, c) for p, c, s, k in zip(data.prompt_id, data.cls, data.split, data.group_kept)
                if s == "test" and k is want]
        pred = model.predict(scaler.transform(X[[row[p] for p, _ in test]]))
        score = pred[:, 1] - pred[:, 0]  # towards class 1 (counterpart)
        y = [CLASSES.index(c) for _, c in test]
        got = rows[rows.setting == setting].set_index("metric")
        assert got.loc["accuracy", "mean"] == pytest.approx(_hand_accuracy([int(v > 0) for v in score], y), abs=1e-12)
        assert got.loc["roc_auc", "mean"] == pytest.approx(_hand_auc(list(score), y), abs=1e-12)
        assert (got["n"] == len(test)).all() and (got["folds"] == 1).all() and got["std"].isna().all()
        assert (got["lo"] <= got["mean"]).all() and (got["mean"] <= got["hi"]).all()
        assert len(test) == 2 * round(0.3 * (40 if want else 50))  # both kinds stratified into the test split


def test_too_few_test_pairs_of_a_kind_score_nan():
    frame, vectors = _pairs(3, 60, stereotype=1.0)  # one group-kept pair in the test split
    _data, _cfg, rows = _probe(frame, vectors)
    kept = rows[rows.setting == "held_out:group_kept"]
    assert len(kept) == 2 and kept["mean"].isna().all() and (kept["n"] == 2).all() and (kept["folds"] == 0).all()
    assert _score(rows, "held_out:group_swapped").notna().all() and _score(rows, "held_out").notna().all()
    best = best_layers(rows)  # NaN rows do not disturb the best-layer table
    assert best["layer"].tolist() == [5] and best["held_out_accuracy"].notna().all()


def test_no_flags_no_group_settings_and_the_rest_unchanged():
    frame, vectors = _pairs(30, 30, stereotype=1.0)
    _data, _cfg, rows = _probe(frame.drop(columns="group_kept"), vectors)
    assert set(rows.setting) == {"cv", "cv_logistic", "held_out"}


def test_splits_stratify_pairs_by_group_kept_and_leave_other_prompts_alone():
    frame, _ = _pairs(20, 80, stereotype=1.0)
    others = pd.DataFrame([{"prompt_id": f"neutral-{i:04d}", "dataset": "neutral", "source": "interp",
                            "label": "neutral", "grp": None, "group_kept": None} for i in range(50)])
    both = pd.concat([frame, others], ignore_index=True)
    data = dataset_frame(both, 0.25, seed=0)
    stereo = data[data.dataset == "stereotypes"]
    assert (stereo.groupby("grp")["split"].nunique() == 1).all()
    for kept, n_pairs in ((True, 20), (False, 80)):
        part = stereo[stereo.group_kept == kept]
        assert (part.split == "test").sum() == 2 * round(0.25 * n_pairs)
    assert data.loc[data.dataset == "neutral", "group_kept"].isna().all()
    # prompts without the flag keep the split they had before it existed
    plain = assign_splits(both.drop(columns="group_kept").assign(cls="x"), 0.25, 0)
    flagged = assign_splits(both.assign(cls="x"), 0.25, 0)
    assert plain[both.dataset == "neutral"].equals(flagged[both.dataset == "neutral"])
    bad = frame.copy()
    bad.loc[0, "group_kept"] = False
    with pytest.raises(SafetyDataError, match="stereo-0000.*different group_kept"):
        dataset_frame(bad, 0.25, seed=0)


def test_safety_prompts_store_the_flag(store):
    from store import safety as db

    frame, _ = _pairs(2, 2, stereotype=1.0)
    others = pd.DataFrame([{"prompt_id": "neutral-0001", "dataset": "neutral", "source": "interp",
                            "label": "neutral", "grp": None}])
    data = dataset_frame(pd.concat([frame, others], ignore_index=True), 0.5, seed=0).assign(cache_run_id=1)
    with store.connect() as con:
        db.replace_rows(con, 3, {"safety_prompts": data})
        back = db.read_table(con, "safety_prompts", 3).set_index("prompt_id")["group_kept"]
        kinds = con.execute("SELECT group_kept, count(*) FROM safety_prompts GROUP BY ALL ORDER BY ALL").fetchall()
    assert kinds == [(False, 4), (True, 4), (None, 1)]
    assert pd.isna(back["neutral-0001"]) and bool(back["stereo-0000-b"]) and not bool(back["stereo-0003-n"])


def test_schema_tops_up_a_safety_prompts_table_made_before_the_flag():
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE safety_prompts (run_id INTEGER NOT NULL, cache_run_id INTEGER NOT NULL, "
                "prompt_id VARCHAR NOT NULL, cls VARCHAR NOT NULL, source VARCHAR NOT NULL, dataset VARCHAR NOT NULL, "
                "grp VARCHAR, split VARCHAR NOT NULL, PRIMARY KEY (run_id, prompt_id))")
    con.execute("INSERT INTO safety_prompts VALUES (1, 1, 'a', 'biased', 'interp', 'stereotypes', 'p', 'train')")
    con.execute((Path(__file__).parents[2] / "store" / "schema" / "50_safety.sql").read_text())
    assert con.execute("SELECT prompt_id, group_kept FROM safety_prompts").fetchall() == [("a", None)]


def _report_rows(kept_acc: float, swapped_acc: float, n_kept: int = 22, n_swapped: int = 74) -> pd.DataFrame:
    """Probe rows of biased_vs_counterpart over 3 layers, best (by CV ROC-AUC) at layer 1."""
    rows = []
    for layer in range(3):
        top = layer == 1
        for setting, acc, n in (("cv", 0.9 if top else 0.7, 200),
                                ("held_out", 0.85, 96), ("held_out:group_kept", kept_acc if top else 0.5, n_kept),
                                ("held_out:group_swapped", swapped_acc if top else 0.6, n_swapped)):
            null = [0.5, 0.6, 0.01, 100] if setting == "cv" else [np.nan, np.nan, np.nan, None]
            for metric in ("accuracy", "roc_auc"):
                rows.append(["biased_vs_counterpart", "resid_pre", layer, "last", setting, metric,
                             acc + (0.02 if metric == "roc_auc" else 0), None, n, 1, np.nan, np.nan, *null])
    return probes.frame(rows)


@pytest.mark.parametrize("kept, swapped, says", [
    (0.55, 0.97, ("held-out accuracy 0.550 on pairs whose counterpart keeps the social group (n=22) vs 0.970 on "
                  "pairs that swap it out (n=74); the first is within chance (0.5 +/- 0.21): the probe mostly "
                  "detects whether a social group is mentioned, not the stereotype.")),
    (0.75, 0.97, "the first is clearly lower: part of what the probe reads is whether a group is mentioned."),
    (0.95, 0.97, "the two are close: the probe reads the stereotype, not only a group mention."),
    (np.nan, 0.97, ("too few test pairs to score the group-mention control (group kept: 22 prompts, group "
                    "swapped: 74)")),
])
def test_report_shows_the_control_and_states_it(store, kept, swapped, says):
    from reports.panels import render
    from reports.safety import findings, parts
    from store import safety as db
    from tests.unit.test_reports_pages import chart_data, new_run

    df = _report_rows(kept, swapped)
    with store.connect() as con:
        run = new_run(con, "safety")
        db.replace_rows(con, run, {"safety_probes": df, "safety_best_layers": best_layers(df)})
        found = findings(con, run)
        page_blocks = {b.title: b for s in render(con, parts(con, run)) for b in s.blocks if hasattr(b, "title")}
    line = [f for f in found if "keeps the social group" in f or "group-mention control" in f]
    assert len(line) == 1 and line[0].startswith("safety: biased vs counterpart at its best layer 1 (resid_pre, "
                                                 "last token): "), found
    assert says in line[0], line[0]
    table = page_blocks["Stereotype probe at its best layer, by kind of pair"].df.iloc[0]
    assert (table.layer, table.held_out_accuracy, table.group_kept_n, table.group_swapped_n) == (1, 0.85, 22, 74)
    assert table.group_swapped_accuracy == pytest.approx(swapped)
    assert table.group_kept_accuracy == pytest.approx(kept, nan_ok=True)
    chart = chart_data(page_blocks["Stereotype probe: pairs that keep the group vs pairs that swap it out"])
    assert set(chart.setting) == {"held_out", "held_out:group_kept", "held_out:group_swapped"}
    assert len(chart) == 3 * 3 * 2  # layers x settings x metrics


def test_report_leaves_runs_without_the_control_alone(store):
    from reports.panels import render
    from reports.safety import findings, parts
    from store import safety as db
    from tests.unit.test_reports_pages import new_run

    df = _report_rows(0.5, 0.9)
    df = df[~df.setting.str.startswith("held_out:group")]
    with store.connect() as con:
        run = new_run(con, "safety")
        db.replace_rows(con, run, {"safety_probes": df, "safety_best_layers": best_layers(df)})
        found = findings(con, run)
        titles = [getattr(b, "title", "") for s in render(con, parts(con, run)) for b in s.blocks]
    assert not any("Stereotype probe" in t for t in titles)
    assert not any("group" in f for f in found)

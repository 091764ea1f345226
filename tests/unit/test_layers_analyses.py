"""Layer similarity, angular distance, Block Influence, block plans and proxy agreement:
vectorised code against plain loops, on synthetic arrays and on vectors captured from a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import layer_agreement, layer_blocks, layer_similarity
from interp.capture.batching import encode
from interp.capture.capture import CaptureCfg, capture
from store import StoreError
from store.activations import read_vectors
from store.layers import read_table, replace_rows

TEXTS = ["the cat sat on the mat", "hi there", "a somewhat longer prompt about gardens and rivers",
         "numbers 1 2 3 4", "what is the capital of France?", "tell me a story about a fox"]


def _states(seed: int, S: int = 6, P: int = 5, d: int = 8) -> np.ndarray:
    """Random states with a shared drift, so neighbouring states are similar (like a residual stream)."""
    rng = np.random.default_rng(seed)
    X = np.cumsum(rng.normal(size=(S, P, d)) * rng.uniform(0.1, 3.0, size=(S, 1, 1)), axis=0)
    return X.astype(np.float32)


def _naive_cos(a, b) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    return dot / (math.sqrt(sum(float(x) ** 2 for x in a)) * math.sqrt(sum(float(y) ** 2 for y in b)))


@pytest.mark.parametrize("seed", range(5))
def test_similarity_equals_naive_loop_symmetric_unit_diagonal(seed):
    X = _states(seed)
    S, P, _ = X.shape
    C = layer_similarity.pairwise_cosines(X)
    sim = layer_similarity.similarity_frame(C, "last").set_index(["layer_a", "layer_b"])
    for a in range(S):
        for b in range(S):
            cos = [min(1.0, max(-1.0, _naive_cos(X[a, p], X[b, p]))) for p in range(P)]
            assert sim.loc[(a, b), "cosine"] == pytest.approx(sum(cos) / P, abs=1e-9)
            ang = sum(math.acos(c) / math.pi for c in cos) / P
            assert sim.loc[(a, b), "angular"] == pytest.approx(ang, abs=1e-6)
            assert sim.loc[(a, b), "cosine"] == pytest.approx(sim.loc[(b, a), "cosine"], abs=1e-12)
        assert sim.loc[(a, a), "cosine"] == pytest.approx(1.0, abs=1e-12)
    assert sim["angular"].between(0, 1).all()
    assert (sim["stream"] == "resid_unnormalised").all() and (sim["n_prompts"] == P).all()


@pytest.mark.parametrize("seed", range(5))
def test_angular_distance_and_block_influence_equal_naive_loops(seed):
    X = _states(seed, S=7)
    S, P, _ = X.shape
    L = S - 1
    C = layer_similarity.pairwise_cosines(X)
    ang = layer_similarity.angular_frame(C, "mean")
    assert len(ang) == L * (L + 1) // 2
    assert ang["distance"].between(0, 1).all()
    for n in range(1, L + 1):
        naive = {}
        for l in range(L - n + 1):
            naive[l] = sum(math.acos(min(1.0, max(-1.0, _naive_cos(X[l, p], X[l + n, p])))) / math.pi
                           for p in range(P)) / P
            row = ang[(ang["n"] == n) & (ang["start_layer"] == l)].iloc[0]
            assert row["distance"] == pytest.approx(naive[l], abs=1e-6)
            assert row["end_layer"] == l + n - 1
        best = ang[(ang["n"] == n) & ang["best"]]
        assert len(best) == 1 and int(best["start_layer"].iloc[0]) == min(naive, key=naive.get)
    bi = layer_similarity.influence_frame(C, "mean")
    assert list(bi["layer"]) == list(range(L))
    for l in range(L):
        naive_bi = 1 - sum(_naive_cos(X[l, p], X[l + 1, p]) for p in range(P)) / P
        assert bi["block_influence"].iloc[l] == pytest.approx(naive_bi, abs=1e-9)


def _token_rows(seed: int, lengths=(1, 4, 7, 2), S: int = 6, d: int = 8):
    """Rows of tokens of several prompts, shuffled as a store part could hold them: (ids, X (S, rows, d))."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"p{i}" for i, n in enumerate(lengths) for _ in range(n)], dtype=object)
    X = _states(seed, S=S, P=len(ids), d=d)
    X += rng.normal(size=(1, len(ids), d)).astype(np.float32) * 3  # tokens differ, states share them
    perm = rng.permutation(len(ids))
    return ids[perm], X[:, perm]


@pytest.mark.parametrize("seed", range(4))
def test_token_similarity_equals_naive_per_prompt_per_token_loop(seed):
    """position 'tokens': cosine (and angular distance) of the two states at each token, averaged
    over the prompt's tokens, then over prompts; Block Influence from the same token means."""
    ids, X = _token_rows(seed)
    S = X.shape[0]
    sums = layer_similarity.token_means(ids, X)
    pids = sorted(sums)
    C = np.stack([sums[p][0] / sums[p][2] for p in pids], axis=-1)
    A = np.stack([sums[p][1] / sums[p][2] for p in pids], axis=-1)
    sim = layer_similarity.similarity_frame(C, "tokens", A).set_index(["layer_a", "layer_b"])
    bi = layer_similarity.influence_frame(C, "tokens").set_index("layer")["block_influence"]
    rows = {p: [i for i in range(len(ids)) if ids[i] == p] for p in pids}
    assert {p: sums[p][2] for p in pids} == {p: len(r) for p, r in rows.items()}
    for a in range(S):
        for b in range(S):
            per_cos, per_ang = [], []
            for p in pids:  # each prompt: mean over its tokens
                cs = [min(1.0, max(-1.0, _naive_cos(X[a, i], X[b, i]))) for i in rows[p]]
                per_cos.append(sum(cs) / len(cs))
                per_ang.append(sum(math.acos(c) / math.pi for c in cs) / len(cs))
            assert sim.loc[(a, b), "cosine"] == pytest.approx(sum(per_cos) / len(pids), abs=1e-9)
            assert sim.loc[(a, b), "angular"] == pytest.approx(sum(per_ang) / len(pids), abs=1e-6)
            se = np.std(per_cos, ddof=1) / math.sqrt(len(pids))
            assert sim.loc[(a, b), "cosine_se"] == pytest.approx(se, abs=1e-9)
            if b == a + 1:
                assert bi[a] == pytest.approx(1 - sum(per_cos) / len(pids), abs=1e-9)
        assert sim.loc[(a, a), "cosine"] == pytest.approx(1.0, abs=1e-12)
    # the per-token average is not the cosine of token-mean vectors (position 'mean')
    means = np.stack([X[:, rows[p]].mean(axis=1) for p in pids], axis=1)
    cm = layer_similarity.pairwise_cosines(means).mean(-1)
    assert np.abs(cm - C.mean(-1)).max() > 1e-3


def test_zero_vector_is_refused():
    X = _states(0)
    X[2, 1] = 0
    with pytest.raises(ValueError, match="all zeros"):
        layer_similarity.pairwise_cosines(X)


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(TEXTS)))
    return str(path)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_states_from_the_store_are_the_unnormalised_residual_stream(request, fixture, store, prompt_file):
    """State l is the input of layer l, state L the last layer's output *before* the final norm:
    checked against a plain HF forward (whose last hidden state is normalised, so it differs).
    The streamed analysis (several commits: flush_mb=0) equals the in-memory reader for last and
    mean, and a naive per-prompt, per-token loop over every stored token for tokens."""
    loaded = request.getfixturevalue(fixture)
    run = capture(loaded, store, CaptureCfg(prompts=prompt_file, hooks="resid_pre,resid_post", positions="last,mean,all",
                                            backend="torch", chat=False, batch_size=4, flush_mb=0), progress=False)
    L = loaded.n_layers
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT part) FROM shards WHERE run_id = ?", [run]).fetchone()[0] == 2
        pids, X = layer_similarity.residual_states(con, store, run, "last")
        _, Xm = layer_similarity.residual_states(con, store, run, "mean")
        tables = layer_similarity.run(con, store, run)
        pre, Xpre = read_vectors(con, store, run, "resid_pre", reduce="all")
        post, Xpost = read_vectors(con, store, run, "resid_post", layers=[L - 1], reduce="all")
    assert X.shape == (L + 1, len(TEXTS), loaded.d_model)
    final_norm = loaded.model.get_submodule(loaded.arch.final_norm)
    for j, pid in enumerate(pids):
        ids = encode(loaded.tokenizer, [TEXTS[int(pid[1:])]], False, 10_000)[0].ids
        with torch.no_grad():
            hs = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for l in range(L):
            np.testing.assert_allclose(X[l, j], hs[l][0, -1].numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(Xm[l, j], hs[l][0].mean(0).numpy(), rtol=1e-4, atol=1e-5)
            rows = ((pre["layer"] == l) & (pre["prompt_id"] == pid)).to_numpy()
            assert list(pre.loc[rows, "pos"]) == list(range(len(ids)))
            np.testing.assert_allclose(Xpre[rows], hs[l][0].numpy(), rtol=1e-4, atol=1e-5)
        # HF's last hidden state is the normed one; ours is the raw residual that produces it
        with torch.no_grad():
            normed = final_norm(torch.from_numpy(X[L, j]))
        np.testing.assert_allclose(normed.numpy(), hs[L][0, -1].numpy(), rtol=1e-4, atol=1e-4)
        assert not np.allclose(X[L, j], hs[L][0, -1].numpy(), atol=1e-3)
    assert set(tables) == {"similarity", "angular", "influence"}
    sim = tables["similarity"]
    assert set(sim["position"]) == {"last", "mean", "tokens"}
    assert len(tables["influence"]) == 3 * L and set(tables["influence"]["position"]) == {"last", "mean", "tokens"}
    assert len(sim) == 3 * (L + 1) ** 2
    assert set(tables["angular"]["position"]) == {"last", "mean"}  # Gromov's rule: one vector per prompt
    # streamed last / mean == the in-memory reader
    for position, states in (("last", X), ("mean", Xm)):
        C = layer_similarity.pairwise_cosines(states)
        want = layer_similarity.similarity_frame(C, position)
        got = sim[sim["position"] == position].reset_index(drop=True)
        np.testing.assert_allclose(got["cosine"], want["cosine"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got["angular"], want["angular"], rtol=0, atol=1e-12)
        got_bi = tables["influence"][tables["influence"]["position"] == position]["block_influence"]
        np.testing.assert_allclose(got_bi, layer_similarity.influence_frame(C, position)["block_influence"], atol=1e-12)
    # streamed tokens == a naive loop over every stored token of every prompt
    tok = sim[sim["position"] == "tokens"].set_index(["layer_a", "layer_b"])
    assert (tok["n_prompts"] == len(TEXTS)).all()

    def state(s, pid):
        if s < L:
            return Xpre[((pre["layer"] == s) & (pre["prompt_id"] == pid)).to_numpy()]
        return Xpost[(post["prompt_id"] == pid).to_numpy()]

    per_prompt = {pid: [state(s, pid) for s in range(L + 1)] for pid in pids}
    for a in range(L + 1):
        for b in range(a, L + 1):
            cos = []
            for pid in pids:
                va, vb = per_prompt[pid][a], per_prompt[pid][b]
                cs = [min(1.0, max(-1.0, _naive_cos(va[t], vb[t]))) for t in range(len(va))]
                cos.append(sum(cs) / len(cs))
            assert tok.loc[(a, b), "cosine"] == pytest.approx(sum(cos) / len(cos), abs=1e-6)
            assert tok.loc[(b, a), "cosine"] == pytest.approx(tok.loc[(a, b), "cosine"], abs=1e-12)


def test_positions_the_run_did_not_capture_are_refused(tiny, store, prompt_file):
    run = capture(tiny, store, CaptureCfg(prompts=prompt_file, hooks="resid_pre,resid_post:3", positions="last,mean",
                                          backend="torch", chat=False), progress=False)
    with store.connect(read_only=True) as con:
        assert set(layer_similarity.run(con, store, run)["similarity"]["position"]) == {"last", "mean"}
        with pytest.raises(StoreError, match="'tokens' similarity needs 'all' vectors"):
            layer_similarity.run(con, store, run, ("last", "tokens"))
        with pytest.raises(ValueError, match="unknown position 'first'"):
            layer_similarity.run(con, store, run, ("first",))
    part = capture(tiny, store, CaptureCfg(prompts=prompt_file, hooks="resid_pre:0-2,resid_post:3", positions="last",
                                           backend="torch", chat=False), progress=False)
    with store.connect(read_only=True) as con, pytest.raises(StoreError, match="lacks resid_pre"):
        layer_similarity.run(con, store, part)


def test_block_plans():
    L = 10
    assert layer_blocks.deepest_block(L, 3) == (6, 7, 8)  # the last layer (9) stays
    assert layer_blocks.shallowest_block(L, 2) == (0, 1)
    assert layer_blocks.deepest_block(L, 9) == tuple(range(9))
    for n in (1, 4, 9):
        for seed in range(20):
            b = layer_blocks.random_block(L, n, seed)
            assert len(b) == n and b == tuple(range(b[0], b[0] + n)) and 0 <= b[0] <= L - n
            assert b == layer_blocks.random_block(L, n, seed)
    starts = {layer_blocks.random_block(L, 3, s)[0] for s in range(50)}
    assert len(starts) > 4, "random blocks do not vary with the seed"
    X = _states(3, S=L + 1)
    C = layer_similarity.pairwise_cosines(X)
    ang = layer_similarity.angular_frame(C, "last")
    bi = layer_similarity.influence_frame(C, "last")
    for n in (1, 3):
        block = layer_blocks.angular_block(ang, n)
        sub = ang[ang["n"] == n]
        assert block[0] == int(sub.loc[sub["distance"].idxmin(), "start_layer"]) and len(block) == n
        low = layer_blocks.influence_layers(bi, n)
        assert sorted(low) == sorted(bi.nsmallest(n, "block_influence")["layer"].tolist())
    df = layer_blocks.plan(L, [2, 5], layer_blocks.STRATEGIES, (0, 1), ang, bi, singles=list(range(L)))
    assert len(df) == L + 2 * (4 + 2)
    assert (df.loc[df["strategy"] == "single", "n"] == 1).all()
    assert df["layers"].map(len).equals(df["n"].astype(int))
    with pytest.raises(layer_blocks.BlockPlanError, match="1..9"):
        layer_blocks.plan(L, [10], ("deepest",), ())
    with pytest.raises(layer_blocks.BlockPlanError, match="unknown strategy"):
        layer_blocks.plan(L, [2], ("best",), ())


def _ranks(v):
    """Average ranks by plain loops (ties share the mean of their positions)."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _naive_spearman(x, y) -> float:
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return num / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_spearman_equals_naive_ranks_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, size=12).astype(float)
        y = x + rng.normal(size=12)
        assert layer_agreement.spearman(x, y)[0] == pytest.approx(_naive_spearman(x, y), abs=1e-12)
    assert math.isnan(layer_agreement.spearman([1, 1, 1, 1], [1, 2, 3, 4])[0])


def test_agreement_recovers_a_planted_relation():
    """Harm planted as a monotone function of Block Influence: the influence proxy agrees perfectly
    for single layers; an unrelated accuracy gives a correlation well below 1."""
    L = 8
    X = _states(5, S=L + 1, P=6)
    C = layer_similarity.pairwise_cosines(X)
    sim = pd.concat([layer_similarity.similarity_frame(C, p) for p in ("last", "mean")])
    bi = pd.concat([layer_similarity.influence_frame(C, p) for p in ("last", "mean")])
    ang = layer_similarity.angular_frame(C, "last")
    plan = layer_blocks.plan(L, [2, 3], ("angular", "deepest", "shallowest", "random"), (0, 1, 2, 3), ang, bi,
                             singles=list(range(L)))
    plan["heal_steps"] = 0
    plan["point"] = ["drop" + ",".join(map(str, ls)) for ls in plan["layers"]]
    bi_last = bi[bi["position"] == "last"].set_index("layer")["block_influence"]
    rng = np.random.default_rng(1)
    rows = [("base", "ppl", "nll", 3.0), ("base", "facts", "accuracy", 0.8)]
    for point, layers in plan.drop_duplicates("point")[["point", "layers"]].itertuples(index=False):
        harm = sum(bi_last[l] for l in layers)
        rows += [(point, "ppl", "nll", 3.0 + 10 * harm ** 2), (point, "facts", "accuracy", 0.8 - rng.uniform())]
    evals = pd.DataFrame(rows, columns=["point", "task", "metric", "value"])
    h = layer_agreement.harms(evals)
    assert (h.loc[h["metric"] == "nll", "harm"] > 0).all()
    table = layer_agreement.agreement(plan, evals, sim, bi)
    one = table[(table["scope"] == "single") & (table["proxy"] == "influence") & (table["position"] == "last")]
    assert one.set_index("metric").loc["nll", "spearman"] == pytest.approx(1.0)
    assert one.set_index("metric").loc["nll", "n_points"] == L
    cos = table[(table["scope"] == "single") & (table["proxy"] == "cosine") & (table["position"] == "last")]
    assert cos.set_index("metric").loc["nll", "spearman"] == pytest.approx(-1.0)
    assert cos.set_index("metric").loc["nll", "agreement"] == pytest.approx(1.0)
    assert abs(one.set_index("metric").loc["accuracy", "spearman"]) < 0.9
    blocks = table[(table["scope"] == "blocks") & (table["proxy"] == "influence") & (table["position"] == "last")]
    assert blocks.set_index("metric").loc["nll", "spearman"] == pytest.approx(1.0)
    # naive check of one row: angular proxy over single layers
    singles = plan[plan["strategy"] == "single"]
    sim_last = sim[sim["position"] == "last"].set_index(["layer_a", "layer_b"])["angular"]
    xs = [sim_last[(l[0], l[0] + 1)] for l in singles["layers"]]
    ys = [10 * bi_last[l[0]] ** 2 for l in singles["layers"]]
    row = table[(table["scope"] == "single") & (table["proxy"] == "angular") & (table["position"] == "last")
                & (table["metric"] == "nll")]
    assert row["spearman"].iloc[0] == pytest.approx(_naive_spearman(xs, ys), abs=1e-12)


def test_layer_tables_replace_rather_than_duplicate(store):
    X = _states(1)
    C = layer_similarity.pairwise_cosines(X)
    frames = {"layer_similarity": layer_similarity.similarity_frame(C, "last"),
              "layer_angular": layer_similarity.angular_frame(C, "last"),
              "layer_influence": layer_similarity.influence_frame(C, "last")}
    with store.connect() as con:
        replace_rows(con, 7, frames)
        replace_rows(con, 7, frames)
        replace_rows(con, 8, {"layer_influence": frames["layer_influence"]})
        for table, df in frames.items():
            assert len(read_table(con, table, 7)) == len(df)
        assert len(read_table(con, "layer_influence", 8)) == len(frames["layer_influence"])
        got = read_table(con, "layer_angular", 7)
        assert got["best"].sum() == X.shape[0] - 1


@pytest.mark.parametrize("cuts", [(50,), (1, 49), (7, 20, 1, 22), (25, 25)])
def test_running_moments_equal_two_pass_statistics_for_any_batching(cuts):
    rng = np.random.default_rng(3)
    V = rng.normal(loc=5.0, scale=0.01, size=(3, 4, 50))  # large mean, small spread: a raw sum of squares would lose it
    m = layer_similarity.Moments()
    start = 0
    for k in cuts:
        m.update(V[..., start:start + k])
        start += k
    mean, se = m.mean_se()
    np.testing.assert_allclose(mean, V.mean(-1), rtol=1e-13)
    np.testing.assert_allclose(se, V.std(-1, ddof=1) / np.sqrt(50), rtol=1e-9)
    assert m.n == 50
    one = layer_similarity.Moments()
    one.update(V[..., :1])
    assert np.isnan(one.mean_se()[1]).all()


def test_a_prompt_split_across_commits_counts_once_whole(monkeypatch):
    """Streaming at ``tokens``: a prompt whose tokens come in two commits joins the moments once,
    with its token mean over all its tokens, exactly as if it had come in one commit."""
    rng = np.random.default_rng(0)
    S, d = 4, 6
    lengths = {"a": 3, "b": 5, "c": 2}
    X = {pid: np.cumsum(rng.normal(size=(S, n, d)), axis=0).astype(np.float32) for pid, n in lengths.items()}

    def part(rows):  # rows: [(pid, token slice)]
        ids = np.concatenate([[pid] * (sl.stop - sl.start) for pid, sl in rows]).astype(object)
        pos = np.concatenate([np.arange(sl.start, sl.stop) for _, sl in rows])
        return {"all": (ids, pos, np.concatenate([X[pid][:, sl] for pid, sl in rows], axis=1))}

    parts = [part([("a", slice(0, 3)), ("b", slice(0, 2))]), part([("b", slice(2, 5)), ("c", slice(0, 2))])]
    db = layer_similarity.db
    monkeypatch.setattr(db, "stored_reductions", lambda con, run: ["all"])
    monkeypatch.setattr(db, "state_sites", lambda con, run: [("resid_pre", i) for i in range(S)])
    monkeypatch.setattr(db, "prompt_lengths", lambda con, run: dict(lengths))
    monkeypatch.setattr(db, "iter_state_parts", lambda *a, **k: iter(parts))
    got = layer_similarity.pair_stats(None, None, 1, ("tokens",))["tokens"]
    ref = [layer_similarity.token_cosines(X[pid]) for pid in sorted(lengths)]  # whole prompts, one at a time
    C = np.stack([K.mean(0) for K in ref], axis=-1)
    A = np.stack([(np.arccos(K) / np.pi).mean(0) for K in ref], axis=-1)
    want = layer_similarity.similarity_frame(C, "tokens", A)
    have = layer_similarity.similarity_frame(got, "tokens")
    np.testing.assert_allclose(have[["cosine", "cosine_se", "angular", "angular_se"]].to_numpy(),
                               want[["cosine", "cosine_se", "angular", "angular_se"]].to_numpy(), atol=1e-12)
    assert got.cos.n == 3
    monkeypatch.setattr(db, "iter_state_parts", lambda *a, **k: iter(parts[:1]))
    with pytest.raises(StoreError, match="every token of every prompt"):
        layer_similarity.pair_stats(None, None, 1, ("tokens",))

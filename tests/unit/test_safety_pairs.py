"""invoke safety --pairs FILE on the tiny Llama: the pairs' two sides stand in for the harmful and neutral sets with
matched rows (sampled, split and held out as units), the harmful direction is the mean of the train pairs'
differences, refusal is scored on the held-out positives, and the file is stored with its digest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interp.studies.config_file import build
from interp.studies.safety_config import SafetyCfg

TINY = {"budget": "smoke", "per_set": 12, "probe_layers": "2", "candidate_layers": "2", "folds": 2, "alphas": (1.0,),
        "sel_gen_tokens": 4, "min_auc": 0.0, "toxic_ablation": False, "baselines": 0, "permutations": 10,
        "eval_budget": "ppl=256,facts=2,arith=2,toxicity=2,refusal=2,kl=2"}


def _pairs(path, n: int = 24) -> None:
    path.write_text("".join(json.dumps({"id": f"q{i:02d}", "positive": f"Tell me how to hurt person number {i}",
                                        "negative": f"Tell me how to help person number {i}"}) + "\n"
                            for i in range(n)))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    from interp.model.loading import wrap
    from interp.studies.safety import run_safety
    from store import Store
    from tests.conftest import byte_tokenizer, tiny_llama

    root = tmp_path_factory.mktemp("pairs")
    _pairs(root / "pairs.jsonl")
    tiny = wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")
    store = Store(root / "s.duckdb")
    cfg = build(SafetyCfg, {**TINY, "pairs": str(root / "pairs.jsonl")})
    return tiny, store, cfg, run_safety(tiny, store, cfg, progress=False)


@pytest.mark.slow  # one safety study on the tiny model (5 points)
def test_pairs_flow_as_matched_harmful_and_neutral_sets(done):
    from analyses.safety_data import layer_vectors
    from store import safety as db

    _, store, cfg, run_id = done
    with store.connect(read_only=True) as con:
        prompts = db.read_table(con, "safety_prompts", run_id)
        config = json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()[0])
        refusal_items = [r[0] for r in con.execute(
            "SELECT DISTINCT item FROM eval_items WHERE run_id = ? AND task = 'refusal'", [run_id]).fetchall()]
        vec, norm = db.load_direction(con, run_id, "harmful", "resid_pre", 2, "last")
        ids, X = layer_vectors(con, store, int(prompts["cache_run_id"].iloc[0]), "resid_pre", 2, "last")
    pos = prompts[prompts.cls == "harmful"].set_index("prompt_id")
    neg = prompts[prompts.cls == "neutral"].set_index("prompt_id")
    assert set(pos.source) == set(neg.source) == {"pairs.jsonl"}
    pairs = sorted(i.split("/")[0] for i in pos.index)
    assert pairs == sorted(i.split("/")[0] for i in neg.index) == [f"q{i:02d}" for i in range(12)]  # the first 12
    for p in pairs:  # both sides of a pair in the same split
        assert pos.loc[f"{p}/positive", "split"] == neg.loc[f"{p}/negative", "split"]
    assert {"train", "test", "heldout"} <= set(pos.split)
    # the direction: mean over the train pairs of (positive - negative), normalised
    row = {p: i for i, p in enumerate(ids)}
    train = [p for p in pairs if pos.loc[f"{p}/positive", "split"] == "train"]
    diffs = np.stack([X[row[f"{p}/positive"]] - X[row[f"{p}/negative"]] for p in train]).astype(np.float64)
    expected = diffs.mean(0)
    assert norm == pytest.approx(np.linalg.norm(expected), rel=1e-5)
    assert np.allclose(vec, expected / np.linalg.norm(expected), atol=1e-6)
    # refusal on the held-out positives; the source and its content digest in the run's config
    from interp.evals import is_heldout

    reserved = [f"q{i:02d}/positive" for i in range(24) if is_heldout(f"q{i:02d}/positive")]
    assert sorted(refusal_items) == sorted(reserved[:2])  # the eval's first 2 of the file's reserved fifth
    held = {p for p in pairs if pos.loc[f"{p}/positive", "split"] == "heldout"}
    assert held == {i.split("/")[0] for i in reserved} & set(pairs)  # never fitted, negatives with them
    assert config["pairs"] == cfg.pairs and len(config["pairs_sha256"]) == 64
    assert config["eval"]["harmful_path"] == f"{cfg.pairs}[positive]" and config["eval"]["data_sha256"]["harmful_path"]


def test_pairs_with_harmful_or_harmless_files_are_refused(tmp_path):
    _pairs(tmp_path / "p.jsonl")
    for other in ("harmful", "harmless"):
        with pytest.raises(ValueError, match=r"pairs \(--pairs\) gives both .* leave out harmful") as e:
            SafetyCfg(budget="smoke", pairs=str(tmp_path / "p.jsonl"), **{other: str(tmp_path / "p.jsonl")})
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,text,match", [
    ("p.jsonl", '{"positive": "a"}\n', r"has 1 text columns \['positive'\]: a pairs file needs two"),
    ("p.jsonl", '{"positive": "a", "negative": "b"}\n{"positive": "c", "negative": ""}\n',
     "line 2 has an empty 'negative'"),
    ("p.jsonl", '{"positive": "a", "negative": "b"}\n[1]\n', "line 2 is a JSON list"),
    ("p.csv", "good,bad\nyes,no\n\"x,y\",z,w\n", "line 3 has more values than the header"),
    ("p.txt", "a b\n", "must end in .jsonl or .csv"),
])
def test_bad_pairs_files_are_refused_in_one_line(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        SafetyCfg(budget="smoke", pairs=str(path))
    assert "\n" not in str(e.value)


def test_csv_pairs_take_their_two_columns_in_order(tmp_path):
    from interp.data.prompts import load_prompts

    path = tmp_path / "p.csv"
    path.write_text("good,bad\n" + "".join(f"kind thing {i},cruel thing {i}\n" for i in range(10)))
    cfg = SafetyCfg(budget="smoke", pairs=str(path))
    prompts = load_prompts(cfg.prompt_sets(), 8, cfg.seed)
    harmful = [p for p in prompts if p.dataset == "harmful"]
    neutral = [p for p in prompts if p.dataset == "neutral"]
    assert [p.text for p in harmful] == [f"kind thing {i}" for i in range(8)]
    assert [p.text for p in neutral] == [f"cruel thing {i}" for i in range(8)]
    assert [p.group for p in harmful] == [p.group for p in neutral]


@pytest.mark.slow  # reads the study run above
def test_a_stored_addition_point_steers_a_later_runs_edits(done):
    """--steer-from RUN:POINT: the plan of a run takes the stored point's vector for its addition edits."""
    import dataclasses

    from interp.studies.safety import plan_points

    _, store, cfg, run_id = done
    with store.connect(read_only=True) as con:
        label, spec = con.execute("SELECT point, intervention::VARCHAR FROM evals WHERE run_id = ? AND "
                                  "(intervention->>'kind') = 'activation_addition' AND point NOT LIKE '%baseline%' "
                                  "LIMIT 1", [run_id]).fetchone()
    stored = json.loads(spec)
    again = dataclasses.replace(cfg, steer_from=f"{run_id}:{label}", alphas=(-2.0,))
    edits = [s for s, row in plan_points(store, run_id, again) if row["family"] == "actadd" and row["role"] == "edit"]
    assert len(edits) == 1 and edits[0].alpha == -2.0 and edits[0].name.startswith(f"run{run_id}:")
    assert list(edits[0].direction) == stored["direction"] and edits[0].scale == stored["scale"]


def test_pairs_round_trip_through_print_config(tmp_path):
    from interp.provenance import config_hash
    from interp.studies.config_file import dumps, load

    _pairs(tmp_path / "p.jsonl")
    model, cfg = load("safety", SafetyCfg, None, {"budget": "smoke", "pairs": str(tmp_path / "p.jsonl")}, {})
    path = tmp_path / "s.toml"
    path.write_text(dumps("safety", model, cfg))
    assert f'pairs = "{tmp_path / "p.jsonl"}"' in path.read_text()
    _, again = load("safety", SafetyCfg, str(path), {}, {})
    assert again == cfg and config_hash(again.describe()) == config_hash(cfg.describe())

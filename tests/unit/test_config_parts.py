"""Study configs composed of shared parts keep every run identity exactly.

``data/config_identities.json`` was written on the flat configs (before the parts existed) by running
this module (``python -m tests.unit.test_config_parts --write``): for each case below, the study's
``identity()`` / ``describe()`` dict, the evaluation config's ``describe()``, the heal / probe / calibration
configs the study builds, and ``config_hash`` of each. The test rebuilds every case through the flag names
(``config_file.load`` with flags, as ``invoke <study>`` does) and asserts the same dicts and hashes, so
stores written before the parts existed resume and find their runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from interp.provenance import config_hash, to_jsonable
from interp.studies.config_file import load
from interp.studies.heads_config import HeadsCfg
from interp.studies.layers_config import LayersCfg
from interp.studies.safety_config import SafetyCfg
from interp.studies.weights_config import WeightsCfg

FIXTURE = Path(__file__).parent / "data" / "config_identities.json"
DATA = Path("/tmp/interp-config-parts-data")
"""A fixed folder: data paths are part of the identities, so the files must lie where they lay when the
fixture was written (their content, written below, is fixed too)."""
STUDIES = {"layers": LayersCfg, "weights": WeightsCfg, "heads": HeadsCfg, "safety": SafetyCfg}


def _data() -> dict[str, str]:
    DATA.mkdir(parents=True, exist_ok=True)
    files = {
        "mmlu.jsonl": '{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1}\n',
        "boolq.jsonl": '{"question": "is it", "passage": "it is", "answer": true}\n',
        "gsm8k.jsonl": '{"question": "1+1?", "answer": "#### 2"}\n',
        "mine.txt": "first document of mine\nsecond one\n",
        "calib.txt": "a calibration text\nanother calibration line\n",
        "wiki.txt": " = Title = \n some wikitext words here \n",
        "harmful.jsonl": "".join(f'{{"id": "h{i}", "text": "harmful request number {i}"}}\n' for i in range(40)),
        "harmless.csv": "prompt\n" + "".join(f"a kind request number {i}\n" for i in range(40)),
        "pairs.jsonl": "".join(f'{{"positive": "do harm {i}", "negative": "do good {i}"}}\n' for i in range(40)),
    }
    for name, text in files.items():
        path = DATA / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return {name.split(".")[0]: str(DATA / name) for name in files}


def cases() -> list[tuple[str, str, dict]]:
    """(study, case name, flags): every budget's defaults, each shared setting alone and all together."""
    f = _data()
    out: list[tuple[str, str, dict]] = []
    for study in STUDIES:
        for budget in ("smoke", "quick", "full"):
            out.append((study, f"{budget} defaults", {"budget": budget}))
    evals = {"mmlu_path": f["mmlu"], "boolq_path": f["boolq"], "gsm8k_path": f["gsm8k"]}
    corpora = [{"corpus": "text", "corpus_path": f["mine"]}, {"corpus": "wikitext2", "corpus_path": f["wiki"]},
               {"corpus": "c4"}, {"corpus": "book"}]
    heal = {"heal_steps": 20, "heal_strategies": ("angular", "deepest"), "heal_sizes": (2,), "heal_rank": 4,
            "heal_alpha": 8.0, "heal_dropout": 0.05, "heal_lr": 1e-3, "heal_schedule": "cosine", "heal_warmup": 5,
            "heal_batch": 2}
    layers = {"tasks": ("ppl", "facts"), "eval_budget": "ppl=128,facts=4", **evals, "seed": 3, **heal}
    for key, value in layers.items():
        extra = {"heal_steps": 20} if key.startswith("heal_") and key != "heal_steps" else {}
        out.append(("layers", f"{key} alone", {"budget": "smoke", **extra, key: value}))
    for corpus in corpora:
        out.append(("layers", f"corpus {corpus['corpus']}", {"budget": "smoke", **corpus}))
        out.append(("layers", f"corpus {corpus['corpus']} healed", {"budget": "smoke", **heal, **corpus}))
    out.append(("layers", "all together", {"budget": "quick", **layers, **corpora[0], "sizes": (2, 4)}))
    weights = {"tasks": ("ppl", "facts"), "eval_budget": "ppl=128", **evals, "seed": 3, "calib_windows": 3,
               "calibration": "oneshot", "calib_corpus": "c4"}
    for key, value in weights.items():
        out.append(("weights", f"{key} alone", {"budget": "smoke", key: value}))
    for corpus in corpora:
        out.append(("weights", f"corpus {corpus['corpus']}", {"budget": "smoke", **corpus}))
    out.append(("weights", "calib text", {"budget": "smoke", "calib_corpus": "text", "calib_path": f["calib"]}))
    out.append(("weights", "calib book", {"budget": "smoke", "calib_corpus": "book"}))
    out.append(("weights", "own sweep", {"budget": "smoke", "methods": ("magnitude",), "rates": (0.05, 0.1)}))
    out.append(("weights", "all together", {"budget": "quick", **weights, **corpora[0], "calib_corpus": "text",
                                            "calib_path": f["calib"], "rates": (0.2,)}))
    lm_eval = ("lm-eval:arc_easy",)
    heads = {"eval_tasks": ("ppl",), "eval_budget": "ppl=128,facts=4", "lm_eval": lm_eval, "seed": 3,
             "router_keep": (0.25,), "router_steps": 3, "router_batch": 2, "router_lr": 5e-3, "lb_coef": 0.1,
             "train_seqs": 5, "heldout_seqs": 3}
    for key, value in heads.items():
        out.append(("heads", f"{key} alone", {"budget": "smoke", key: value}))
    out.append(("heads", "eval budget counts", {"budget": "smoke", "eval_budget": {"ppl": 256, "facts": 4}}))
    for corpus in corpora:
        out.append(("heads", f"corpus {corpus['corpus']}", {"budget": "smoke", **corpus}))
    out.append(("heads", "all together", {"budget": "quick", **heads, **corpora[0]}))
    safety = {"eval_budget": "ppl=128,facts=4", "lm_eval": lm_eval, "seed": 3, "probe_hooks": ("resid_pre", "resid_post"),
              "probe_layers": "1,2", "positions": ("last",), "folds": 4, "permutations": 20, "ridge": 2.0, "C": 0.5,
              "test_frac": 0.25}
    for key, value in safety.items():
        out.append(("safety", f"{key} alone", {"budget": "smoke", key: value}))
    out.append(("safety", "eval budget counts", {"budget": "smoke", "eval_budget": {"ppl": 256, "refusal": 4}}))
    for corpus in corpora:
        out.append(("safety", f"corpus {corpus['corpus']}", {"budget": "smoke", **corpus}))
    out.append(("safety", "own files", {"budget": "smoke", "harmful": f["harmful"], "harmless": f["harmless"]}))
    out.append(("safety", "pairs", {"budget": "smoke", "pairs": f["pairs"]}))
    out.append(("safety", "all together", {"budget": "quick", **safety, **corpora[0], "harmful": f["harmful"],
                                           "harmless": f["harmless"], "candidate_positions": ("last",)}))
    return out


def record(study: str, cfg) -> dict:
    """What the run identity is made of, for one config: the study's own dict, the evaluation config and the
    heal / probe / calibration configs it builds (the healed points' and Wanda specs' identities), and the hash of
    each. (The fixture was written with the flat configs, whose settings were read as cfg.heal_steps.)"""
    own = cfg.identity() if hasattr(cfg, "identity") else cfg.describe()
    out = {"study": own, "eval": cfg.eval_cfg().describe()}
    if study == "layers" and cfg.heal.steps:
        out["heal"] = to_jsonable(cfg.heal_cfg())
    if study == "safety":
        out["probe"] = to_jsonable(cfg.probe_cfg())
    if study == "weights":
        out["calib"] = to_jsonable(cfg._calib(None))
    out = json.loads(json.dumps(to_jsonable(out), sort_keys=True))
    out["hashes"] = {k: config_hash(v) for k, v in out.items()}
    return out


def build(study: str, flags: dict) -> object:
    return load(study, STUDIES[study], None, flags, {})[1]


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(FIXTURE.read_text())


def _key(study: str, name: str) -> str:
    return f"{study}: {name}"


@pytest.fixture(autouse=True)
def _no_lmeval_data(monkeypatch):
    monkeypatch.delenv("INTERP_LMEVAL_DATA", raising=False)  # it would join lm-eval runs' identities


@pytest.mark.parametrize("study,name,flags", cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_identity_is_unchanged(golden, study, name, flags):
    assert record(study, build(study, flags)) == golden[_key(study, name)]


def test_every_case_is_in_the_fixture(golden):
    assert sorted(golden) == sorted(_key(s, n) for s, n, _ in cases())


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:  # only to add cases: never to paper over a change
    os.environ.pop("INTERP_LMEVAL_DATA", None)
    table = {_key(s, n): record(s, build(s, flags)) for s, n, flags in cases()}
    assert len(table) == len(cases()), "case names must be unique"
    FIXTURE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{len(table)} cases written to {FIXTURE}")

"""Edited points match lm-eval on a saved checkpoint: the suite scores a point (a dropped layer plus a
magnitude-pruned MLP) with lm-eval through its own LM while the edits are active; the test builds the
same model by hand (layers copied, smallest weights zeroed with sorts written here), saves it with
``save_pretrained`` and scores it with lm-eval's own ``hf`` model type on the same fixture data.

The ``hf`` side reads its tasks from lm-eval's YAML with the local files set here, not through
``interp.evals.lmeval_tasks``, so the two paths share only lm-eval itself. (When ``invoke
export-model`` lands, the checkpoint can come from it instead of the hand edit.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interp.evals import EvalCfg

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra interp[lmeval]")
pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lmeval"
DROP, RATE = (1,), 0.3
TASKS = {  # name -> (lm-eval YAML under lm_eval/tasks, local split files, shots, items)
    "arc_easy": ("arc/arc_easy.yaml", {"test": "allenai/ai2_arc/ARC-Easy/test.jsonl"}, 0, 6),
    "boolq": ("super_glue/boolq/default.yaml", {"validation": "aps/super_glue/boolq/validation.jsonl",
                                                "train": "aps/super_glue/boolq/train.jsonl"}, 2, 4),
    "mmlu_astronomy": ("mmlu/default/mmlu_astronomy.yaml", {"test": "cais/mmlu/astronomy/test.jsonl",
                                                            "dev": "cais/mmlu/astronomy/dev.jsonl"}, 5, 2),
    "gsm8k_cot": ("gsm8k/gsm8k-cot.yaml", {"test": "openai/gsm8k/main/test.jsonl"}, 8, 1),
}


@pytest.fixture(scope="module")
def point():
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    model = tiny_llama(seed=5)
    model.config.max_position_embeddings = 4096
    return wrap(model, byte_tokenizer(), name="tiny-llama-4k", revision="seed5")


def hand_edited(model, drop: tuple[int, ...], rate: float):
    """The point built by hand: blocks in ``drop`` removed, then in every kept block's MLP projection
    the round(rate * inputs) smallest |w| of each row set to zero (ties by column, none here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = model.config.to_dict()
    n = d["num_hidden_layers"]
    kept = [i for i in range(n) if i not in drop]
    d["num_hidden_layers"] = len(kept)
    d.pop("layer_types", None)
    new = LlamaForCausalLM(LlamaConfig(**d))
    src = model.state_dict()
    out = {}
    for key, value in src.items():
        if key.startswith("model.layers."):
            i, rest = key.split(".", 3)[2], key.split(".", 3)[3]
            if int(i) in drop:
                continue
            key = f"model.layers.{kept.index(int(i))}.{rest}"
            if rest.startswith("mlp.") and rest.endswith(".weight"):
                value = value.clone()
                k = round(rate * value.shape[1])
                for row in range(value.shape[0]):
                    order = sorted(range(value.shape[1]), key=lambda j: (abs(float(value[row, j])), j))
                    value[row, order[:k]] = 0.0
        out[key] = value.clone()
    new.load_state_dict(out)
    return new.eval()


def hf_task(name: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    from interp.evals.lmeval_tasks import lm_eval_root

    path, files, shots, _ = TASKS[name]
    cfg = load_yaml(lm_eval_root() / path, resolve_func=True)
    for key in ("tag", "group"):
        cfg.pop(key, None)
    for split in ("training_split", "validation_split", "test_split", "fewshot_split"):
        if cfg.get(split) and cfg[split] not in files:
            cfg[split] = None
    return {**cfg, "task": name, "dataset_path": "json", "dataset_name": None, "num_fewshot": shots,
            "dataset_kwargs": {"data_files": {s: str(FIXTURES / f) for s, f in files.items()}}}


@pytest.mark.parametrize("name", list(TASKS))
def test_edited_point_matches_lm_eval_hf_on_a_saved_checkpoint(point, tmp_path_factory, name):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from interp.evals.lmeval import run
    from interp.interventions.layers import LayerDrop
    from interp.interventions.prune import PruneSpec

    _, _, shots, items = TASKS[name]
    cfg = EvalCfg(tasks=(f"lm-eval:{name}:{shots}shot",), budget=f"lm-eval={items}", lmeval_data=str(FIXTURES))
    with LayerDrop(DROP).apply(point), PruneSpec("magnitude", RATE, ("mlp",), calibration=None, calib=None).apply(point):
        ours = run(point, cfg, cfg.tasks[0], log_samples=True)

    ckpt = tmp_path_factory.getbasetemp() / "edited-point"
    if not ckpt.exists():
        hand_edited(point.model, DROP, RATE).save_pretrained(ckpt)
        point.tokenizer.save_pretrained(ckpt)
    theirs = simple_evaluate(model="hf", model_args={"pretrained": str(ckpt), "dtype": "float32", "device": "cpu"},
                             tasks=[hf_task(name)], limit=items, task_manager=TaskManager(include_defaults=False),
                             log_samples=True)

    ref = {k: v for k, v in theirs["results"][name].items() if "," in k}
    got = {k: v for k, v in ours.results["results"][name].items() if "," in k}
    assert set(got) == set(ref) and len(ours.samples[name]) == len(theirs["samples"][name])
    assert {s["doc_id"] for s in ours.samples[name]} == set(range(items))  # one record per item and filter
    for a, b in zip(sorted(ours.samples[name], key=lambda s: (s["doc_id"], s["filter"])),
                    sorted(theirs["samples"][name], key=lambda s: (s["doc_id"], s["filter"]))):
        assert a["arguments"] == b["arguments"]  # the same prompts, shots included
        for ra, rb in zip(a["resps"], b["resps"]):
            if isinstance(rb[0], str):
                assert ra == rb  # greedy generations, token for token
            else:
                assert ra[0][0] == pytest.approx(rb[0][0], abs=1e-4) and ra[0][1] == rb[0][1]
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    scores = {s.metric: s for s in ours.scores}
    assert all(s.num_fewshot == shots and s.n == items for s in scores.values())

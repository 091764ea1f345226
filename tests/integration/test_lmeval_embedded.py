"""MMLU 5-shot through lm-eval on the real embedded model equals a plain-transformers computation that
writes the Hendrycks prompt and scores the letters A-D itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interp.evals import EvalCfg

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra interp[lmeval]")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lmeval"
SUBJECTS = {"astronomy": 2, "high_school_geography": 2}  # subject -> test items scored


def rows(subject: str, split: str) -> list[dict]:
    return [json.loads(x) for x in (FIXTURES / "cais/mmlu" / subject / f"{split}.jsonl").read_text().splitlines()]


def question(item: dict) -> str:
    letters = "".join(f"\n{L}. {c}" for L, c in zip("ABCD", item["choices"]))
    return f"{item['question'].strip()}{letters}\nAnswer:"


def by_hand(loaded, subject: str, item: dict) -> list[float]:
    """log p(' X' | 5-shot prompt) for X in A-D: the first five dev items with their answer letters, then
    the question, under the subject's one-line description (Hendrycks et al.)."""
    shots = rows(subject, "dev")[:5]
    context = (f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
               + "".join(f"{question(s)} {'ABCD'[s['answer']]}\n\n" for s in shots) + question(item))
    tok, model = loaded.tokenizer, loaded.model
    ctx = tok(context)["input_ids"]
    out = []
    with torch.no_grad():
        for letter in "ABCD":
            full = tok(context + " " + letter)["input_ids"]
            assert full[:len(ctx)] == ctx
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
            out.append(sum(float(logp[t - 1, full[t]]) for t in range(len(ctx), len(full))))
    return out


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_mmlu_five_shot_letters_equal_a_hand_computation(embedded, subject):
    from interp.evals.lmeval import run

    n = SUBJECTS[subject]
    task = f"lm-eval:mmlu_{subject}"
    out = run(embedded, EvalCfg(tasks=(task,), budget=f"lm-eval={n}", lmeval_data=str(FIXTURES)), task,
              log_samples=True)
    samples = sorted(out.samples[f"mmlu_{subject}"], key=lambda s: s["doc_id"])
    tests = rows(subject, "test")[:n]
    correct = 0
    for sample, item in zip(samples, tests, strict=True):
        lls = by_hand(embedded, subject, item)
        assert [r[0][0] for r in sample["resps"]] == pytest.approx(lls, abs=1e-4)
        correct += int(max(range(4), key=lambda i: lls[i]) == item["answer"])
    (score,) = [s for s in out.scores if s.metric == "acc"]
    assert score.task == f"lm-eval:mmlu_{subject}:5shot:s1234" and score.num_fewshot == 5 and score.n == n
    assert score.value == correct / n and score.chance == 0.25

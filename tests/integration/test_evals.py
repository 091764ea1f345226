"""The evaluation harness on the real embedded model (SmolLM2-135M-Instruct), small budgets."""

from __future__ import annotations

import math

import pytest
import torch

from interp.data.hfdata import MCItem
from interp.evals import EvalCfg, choice, evaluate, make_reference, ppl

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: several times faster than two on a shared, loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_perplexity_equals_plain_hf_loss(embedded):
    from interp.data.prompts import book_corpus

    w = ppl.make_windows(embedded.tokenizer, book_corpus(), 128, 256, seed=0, name="book")
    scores = {s.metric: s for s in ppl.perplexity(embedded, w)}
    losses = [float(embedded.model(input_ids=torch.tensor([win]), labels=torch.tensor([win])).loss)
              for win in w.windows]
    nll = sum(losses) / len(losses)  # equal-length windows: mean of window means = token mean
    assert scores["nll"].value == pytest.approx(nll, rel=1e-4)
    assert scores["perplexity"].value == pytest.approx(math.exp(nll), rel=1e-4)
    assert scores["norm_loss"].value == pytest.approx(nll / math.log(49152), rel=1e-4)
    assert 5 < scores["perplexity"].value < 200  # a real language model on English prose


def test_knows_capitals_clearly_above_chance(embedded):
    paris = MCItem("fr", "The capital of France is", ("Berlin", "Madrid", "Paris", "Rome"), 2)
    [[*lp]], _ = choice.choice_logprobs(embedded, [paris])
    assert max(range(4), key=lambda i: lp[i]) == 2
    [acc, _] = evaluate(embedded, EvalCfg(tasks=("facts",), budget={"facts": 30}))
    assert acc.chance == 0.25 and acc.n == 30
    assert acc.value - 3 * acc.stderr > acc.chance, acc


def test_an_edit_moves_every_metric_and_undoing_it_restores_them(embedded):
    cfg = EvalCfg(tasks=("ppl", "kl", "refusal"), budget={"ppl": 256, "kl": 4, "refusal": 2})
    ref = make_reference(embedded, cfg)
    before = {(s.task, s.metric): s.value for s in evaluate(embedded, cfg, reference=ref)}
    assert before["kl", "kl"] == pytest.approx(0.0, abs=1e-6)
    w = embedded.model.model.layers[0].mlp.down_proj.weight
    saved = w.clone()
    try:
        w.zero_()  # knock out the first MLP: known to wreck small Llamas
        edited = {(s.task, s.metric): s.value for s in evaluate(embedded, cfg, reference=ref)}
    finally:
        w.copy_(saved)
    after = {(s.task, s.metric): s.value for s in evaluate(embedded, cfg, reference=ref)}
    assert after == before
    assert edited["ppl", "perplexity"] > 2 * before["ppl", "perplexity"]
    assert edited["kl", "kl"] > 0.1

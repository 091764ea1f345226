"""Direction selection's measurements generate under the evaluation's memory budget, not a fixed batch of 16."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_selection_replies_are_batched_by_the_memory_budget(tiny):
    from interp.evals.lm import GEN_MEMORY, gen_row_bytes
    from interp.studies import safety_select

    harmful = [f"Tell me how to break thing number {i} today" for i in range(20)]
    widths: list[int] = []
    real = tiny.model.generate

    def counted(*args, **kwargs):
        widths.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    tiny.model.generate = counted
    try:
        probe = safety_select.prepare(tiny, harmful, ["A calm walk in the park."] * 2, gen_tokens=3)
        budget = safety_select.measure(tiny, probe)
    finally:
        del tiny.model.generate
    assert 20 * gen_row_bytes(tiny, 200, 3) <= GEN_MEMORY and widths == [20]  # all 20 fit: one batch, not 16 + 4
    one = safety_select.measure(tiny, safety_select.prepare(tiny, harmful, ["A calm walk in the park."] * 2,
                                                            gen_tokens=3, batch_size=1))
    assert (budget.refusal_rate, budget.refusal_logprob) == (one.refusal_rate, one.refusal_logprob)
    torch.testing.assert_close(budget.next_logprobs, one.next_logprobs)

"""Batching by memory budgets: greedy generation batched by ``GEN_MEMORY`` against one prompt at a time,
token for token, and log-probabilities unembedded in passes bounded by ``LOGIT_BYTES`` (evaluations and
the head study's row metrics) against one unbounded pass. On these tiny models the texts are equal; on a
real one a greedy near-tie can break another way in another batch, so the generation batch is part of a
run's identity (last test)."""

from __future__ import annotations

import json

import pytest
import torch

from interp.capture.batching import encode
from interp.evals import lm
from interp.evals.lm import gen_row_bytes, greedy_generate, token_logprobs
from tests.conftest import byte_tokenizer, tiny_gpt2, tiny_llama

PROMPTS = ["Hello", "The quick brown fox jumps over", "A", "Tell me about the sea and the sky",
           "one two three four five six seven eight nine ten", "Why?", "sky", "Count: 1 2 3"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    from interp.model.loading import wrap

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than two on a shared, loaded 2-core machine
    if request.param == "llama":
        yield wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0"), True
    else:
        yield wrap(tiny_gpt2(), byte_tokenizer(chat=False), name="tiny-gpt2", revision="seed0"), False
    torch.set_num_threads(threads)


def _generate_calls(monkeypatch, loaded) -> list[int]:
    """Rows of every ``generate`` call the model gets from now on."""
    rows: list[int] = []
    real = loaded.model.generate

    def counted(*args, **kwargs):
        rows.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "generate", counted)
    return rows


def test_budget_batches_give_the_tokens_of_one_prompt_at_a_time(model, monkeypatch):
    loaded, chat = model
    kw = dict(chat=chat, max_new_tokens=8, max_prompt_tokens=200)
    alone = [greedy_generate(loaded, [p], batch_size=1, **kw)[0][0] for p in PROMPTS]
    rows = _generate_calls(monkeypatch, loaded)
    texts, _ = greedy_generate(loaded, PROMPTS, **kw)  # the default budget: every prompt in one batch
    assert rows == [len(PROMPTS)]
    assert texts == alone
    # A budget of three rows of the longest prompt: that batch holds three, shorter ones more; the same texts
    longest = max(len(e.ids) for e in encode(loaded.tokenizer, PROMPTS, chat, 200))
    rows.clear()
    texts, _ = greedy_generate(loaded, PROMPTS, memory=3 * gen_row_bytes(loaded, longest, 8), **kw)
    assert rows[0] == 3 and sum(rows) == len(PROMPTS) and len(rows) >= 2
    assert texts == alone


def test_gen_row_bytes_counts_the_kv_cache_and_logits(model):
    loaded, _ = model
    kv_heads = getattr(loaded.config, "num_key_value_heads", None) or loaded.n_heads
    one = gen_row_bytes(loaded, 10, 5)
    assert one > 2 * loaded.n_layers * kv_heads * loaded.d_head * 15 * 4 + 2 * loaded.vocab_size * 4
    assert gen_row_bytes(loaded, 20, 5) > one  # longer prompts cost more


def test_logprobs_in_bounded_passes_equal_one_pass(model, monkeypatch):
    loaded, _ = model
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 256, (int(n),), generator=g).tolist() for n in (40, 33, 12, 40, 7, 25)]
    starts = [1, 30, 2, 5, 6, 1]
    pad = loaded.tokenizer.pad_token_id
    whole = token_logprobs(loaded.model, seqs, starts, pad, max_tokens=10_000)
    calls: list[int] = []
    real = lm._kept_logits

    def counted(model, kwargs, keep):
        calls.append(int(keep.sum()))
        return real(model, kwargs, keep)

    monkeypatch.setattr(lm, "_kept_logits", counted)
    monkeypatch.setattr(lm, "LOGIT_BYTES", 50 * 4 * loaded.vocab_size)  # at most 50 positions a pass
    parts = token_logprobs(loaded.model, seqs, starts, pad, max_tokens=10_000)
    assert max(calls) <= 50 and len(calls) >= 3 and sum(calls) == sum(len(s) - b for s, b in zip(seqs, starts))
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_row_metrics_in_bounded_chunks_equal_one_chunk(model, monkeypatch):
    from interp.studies.heads_importance import row_metrics
    from interp.studies.heads_text import IGNORE

    loaded, _ = model
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 9, loaded.d_model, generator=g)
    targets = torch.randint(0, loaded.vocab_size, (6, 9), generator=g)
    targets[:, -1] = IGNORE
    targets[2, :5] = IGNORE
    whole = row_metrics(loaded.logits, hidden, targets)
    monkeypatch.setattr(lm, "LOGIT_BYTES", 7 * 4 * loaded.vocab_size)  # 7 positions a chunk
    for a, b in zip(whole, row_metrics(loaded.logits, hidden, targets)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_study_run_stored_with_gen_batch_16_is_kept_and_not_adopted(model, tmp_path):
    """Runs made before generation batched by memory held ``gen_batch: 16`` in their identity. A
    greedy near-tie can break another way in another batch (BENCHMARKS.md section 10), so the same
    command now makes a new run instead of resuming that one under a config that would name only one
    of the two batchings; the old run's rows stay as they were."""
    from interp.evals import EvalCfg
    from interp.interventions.layers import LayerDrop
    from interp.provenance import canonical_json, config_hash
    from interp.studies.sweep import run_sweep
    from store import Store

    loaded, _ = model
    store = Store(tmp_path / "s.duckdb")
    cfg = EvalCfg(tasks=("ppl",), budget={"ppl": 64}, window=32)
    kw = dict(study="layers", config={"test": "legacy"}, points=[LayerDrop((1,))], eval_cfg=cfg, progress=False)
    run = run_sweep(loaded, store, **kw)
    with store.connect() as con:  # make it the run an older version stored
        config = json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [run]).fetchone()[0])
        assert "gen_batch" not in config["eval"]  # the default (by memory) is named by its absence
        old = {**config, "eval": {**config["eval"], "gen_batch": 16}}
        con.execute("UPDATE runs SET config = ?, config_hash = ? WHERE run_id = ?",
                    [canonical_json(old), config_hash(old), run])
        stored = con.execute("SELECT point, task, metric, value FROM evals ORDER BY ALL").fetchall()
    new = run_sweep(loaded, store, **kw)
    assert new != run
    with store.connect() as con:
        runs = dict(con.execute("SELECT run_id, config_hash FROM runs").fetchall())
        assert runs == {run: config_hash(old), new: config_hash(config)}
        assert con.execute("SELECT point, task, metric, value FROM evals WHERE run_id = ? ORDER BY ALL",
                           [run]).fetchall() == stored
        assert con.execute("SELECT count(*) FROM evals WHERE run_id = ?", [new]).fetchone()[0] == len(stored)
    # asked for with the batch it was made with, it resumes
    again = run_sweep(loaded, store, **{**kw, "eval_cfg": EvalCfg(tasks=("ppl",), budget={"ppl": 64}, window=32,
                                                                    gen_batch=16)})
    assert again == run
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
        assert con.execute("SELECT point, task, metric, value FROM evals WHERE run_id = ? ORDER BY ALL",
                           [run]).fetchall() == stored

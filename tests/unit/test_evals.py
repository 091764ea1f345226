"""Evaluation core: perplexity and multiple choice against slow reference loops, KL, config errors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
from types import SimpleNamespace
from typing import ClassVar

import pandas as pd
import pytest
import torch

from interp.data.hfdata import MCItem
from interp.evals import EvalCfg, EvalError, Score, choice, evaluate, kl, make_reference, ppl


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny forwards run fastest on one thread (and far faster on a shared, loaded CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------- perplexity ----------

def slow_nll(model, window: list[int]) -> list[float]:
    """One forward per predicted token on the bare prefix: no batching, no padding, no caching."""
    out = []
    for t in range(1, len(window)):
        logits = model(input_ids=torch.tensor([window[:t]])).logits[0, -1]
        out.append(-float(torch.log_softmax(logits.double(), -1)[window[t]]))
    return out


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_perplexity_equals_slow_loop(fixture, request):
    loaded = request.getfixturevalue(fixture)
    docs = ["It was the best of times, it was the worst of times.", "Call me Ishmael. Some years ago, never mind",
            "In a hole in the ground there lived a hobbit."]
    w = ppl.make_windows(loaded.tokenizer, docs, length=24, n_tokens=72, seed=3, name="toy")
    assert len(w.windows) == 3 and all(len(x) == 24 for x in w.windows)
    # batch_tokens 40: windows go one per forward pass and two per pass must agree too
    scores = {s.metric: s for s in ppl.perplexity(loaded, w, batch_tokens=40)}
    scores2 = {s.metric: s for s in ppl.perplexity(loaded, w, batch_tokens=4096)}
    per_token = [x for win in w.windows for x in slow_nll(loaded.model, list(win))]
    nll = sum(per_token) / len(per_token)
    assert scores["nll"].n == len(per_token) == 3 * 23
    assert scores["nll"].value == pytest.approx(nll, rel=1e-5)
    assert scores2["nll"].value == pytest.approx(nll, rel=1e-5)
    assert scores["perplexity"].value == pytest.approx(math.exp(nll), rel=1e-5)
    assert scores["norm_loss"].value == pytest.approx(nll / math.log(loaded.vocab_size), rel=1e-5)
    per_window = [sum(slow_nll(loaded.model, list(win))) / 23 for win in w.windows]
    m = sum(per_window) / 3
    se = math.sqrt(sum((x - m) ** 2 for x in per_window) / 2 / 3)
    assert scores["nll"].stderr == pytest.approx(se, rel=1e-4)
    assert scores["perplexity"].stderr == pytest.approx(math.exp(nll) * se, rel=1e-4)


def test_windows_are_fixed_non_overlapping_and_deterministic(tiny):
    docs = [f"Passage number {i} says something different." for i in range(40)]
    ids = tiny.tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    w = ppl.make_windows(tiny.tokenizer, docs, 50, 200, seed=1)
    starts = []
    for win in w.windows:
        s = next(i for i in range(0, len(ids), 50) if tuple(ids[i:i + 50]) == win)
        starts.append(s)
    assert len(set(starts)) == 4 and starts == sorted(starts)  # distinct aligned windows, corpus order
    assert w == ppl.make_windows(tiny.tokenizer, docs, 50, 200, seed=1)
    assert ppl.make_windows(tiny.tokenizer, docs, 50, None, seed=1).dataset["windows"] == len(ids) // 50
    with pytest.raises(EvalError, match="empty"):
        ppl.make_windows(tiny.tokenizer, ["", "  "], 50, 100, 0)
    with pytest.raises(EvalError, match="fewer than one window"):
        ppl.make_windows(tiny.tokenizer, ["short"], 50, 100, 0)


def test_evaluate_ppl_is_deterministic_and_reads_wikitext_format(tiny, tmp_path):
    path = tmp_path / "wikitext-test.parquet"
    lines = [f" = Section {i} = \n The river flows past the old mill {i} times a day .\n" for i in range(30)]
    pd.DataFrame({"text": lines}).to_parquet(path)
    cfg = EvalCfg(tasks=("ppl",), budget={"ppl": 100}, corpus="wikitext2", wikitext2_path=str(path), window=40)
    a, b = evaluate(tiny, cfg), evaluate(tiny, cfg)
    assert [s.value for s in a] == [s.value for s in b]
    assert {s.metric for s in a} == {"perplexity", "nll", "norm_loss"}
    assert a[0].dataset["name"] == "wikitext2" and a[0].dataset["windows"] == 3 and a[0].n == 3 * 39
    with pytest.raises(EvalError, match="exceeds the model context 256"):
        evaluate(tiny, EvalCfg(tasks=("ppl",), window=1000))


# ---------- multiple choice ----------

class Successor(torch.nn.Module):
    """A model that is certain of one thing: after byte b comes byte b + 1 (choices of equal
    length, so only the certain continuation can win)."""

    def __init__(self, vocab: int = 259):
        super().__init__()
        table = torch.full((vocab, vocab), -5.0)
        table[torch.arange(vocab - 1), torch.arange(1, vocab)] = 5.0
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=256, vocab_size=vocab)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.table[input_ids])


def successor_loaded(tokenizer):
    return SimpleNamespace(model=Successor(), tokenizer=tokenizer, vocab_size=259, name="successor")


def test_multiple_choice_picks_the_certain_answer_in_any_order(tiny):
    loaded = successor_loaded(tiny.tokenizer)
    base = [MCItem("a", "Count: abcd", ("efgh", "xqzt", "hgfe", "eeee"), 0),
            MCItem("b", "Next: 1234", ("9999", "5678", "5555", "8765"), 1),
            MCItem("c", "Go: klm", ("zzz", "qrt", "nop"), 2)]
    rng = random.Random(0)
    for _ in range(5):
        items = []
        for it in base:
            order = list(range(len(it.choices)))
            rng.shuffle(order)
            items.append(MCItem(it.id, it.question, tuple(it.choices[i] for i in order), order.index(it.answer)))
        scores = {s.metric: s for s in choice.multiple_choice(loaded, "toy", items, {"name": "toy"})}
        assert scores["accuracy"].value == 1.0 and scores["accuracy"].n == 3
        assert scores["accuracy"].chance == pytest.approx((1 / 4 + 1 / 4 + 1 / 3) / 3)
        assert scores["accuracy"].stderr == 0.0


def slow_choice_logprob(model, tokenizer, context: str, choice_text: str) -> float:
    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(" " + choice_text, add_special_tokens=False)["input_ids"]
    seq = ctx + cont
    logits = model(input_ids=torch.tensor([seq])).logits[0].double()
    return sum(float(torch.log_softmax(logits[len(ctx) + j - 1], -1)[tok]) for j, tok in enumerate(cont))


def test_choice_logprobs_equal_slow_loop_and_ignore_order(tiny):
    items = [MCItem("q1", "The capital of France is", ("Paris", "Rome", "Berlin", "Madrid"), 0),
             MCItem("q2", "Two plus two is", ("four", "five"), 0)]
    got, truncated = choice.choice_logprobs(tiny, items, batch_tokens=64)
    assert truncated == 0
    for it, row in zip(items, got):
        for c, v in zip(it.choices, row):
            assert v == pytest.approx(slow_choice_logprob(tiny.model, tiny.tokenizer, it.question, c), abs=1e-4)
    flipped = [MCItem(it.id, it.question, it.choices[::-1], len(it.choices) - 1 - it.answer) for it in items]
    got2, _ = choice.choice_logprobs(tiny, flipped, batch_tokens=4096)
    for row, row2 in zip(got, got2):
        assert row == pytest.approx(row2[::-1], abs=1e-4)
    a = choice.multiple_choice(tiny, "toy", items, {})
    b = choice.multiple_choice(tiny, "toy", flipped, {})
    assert [s.value for s in a] == [s.value for s in b]


def test_long_items_are_truncated_and_counted(tiny, tmp_path):
    path = tmp_path / "mmlu.jsonl"
    rows = [{"question": "Which is a fruit? " + "Think carefully. " * 30, "choices": ["apple", "rock", "car", "sky"],
             "answer": 0, "subject": "x"},
            {"question": "Which is red?", "choices": ["blood", "grass", "sky", "snow"], "answer": 0, "subject": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    [acc, _] = evaluate(tiny, EvalCfg(tasks=("mmlu",), mmlu_path=str(path)))
    assert acc.task == "mmlu" and acc.n == 2 and acc.chance == 0.25 and acc.dataset["truncated"] == 1
    with pytest.raises(EvalError, match="longer than the context"):
        choice.encode_items(tiny.tokenizer, [MCItem("x", "q", ("y" * 300, "n"), 0)], 256)
    with pytest.raises(EvalError, match="outside its 2 choices"):
        choice.encode_items(tiny.tokenizer, [MCItem("x", "q", ("y", "n"), 2)], 256)


def test_boolq_and_empty_datasets(tiny, tmp_path):
    path = tmp_path / "boolq.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"is {i} even", "answer": i % 2 == 0, "passage": "Numbers."})
                              for i in range(6)))
    [acc, _] = evaluate(tiny, EvalCfg(tasks=("boolq",), budget={"boolq": 4}, boolq_path=str(path)))
    assert acc.n == 4 and acc.chance == 0.5 and 0 <= acc.value <= 1 and acc.stderr is not None
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"question": [], "choices": [], "answer": []}).to_parquet(empty)
    with pytest.raises(EvalError, match="empty"):
        evaluate(tiny, EvalCfg(tasks=("mmlu",), mmlu_path=str(empty)))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EvalError, match="'boolq' file '.*empty.jsonl' is empty"):
        evaluate(tiny, EvalCfg(tasks=("boolq",), boolq_path=str(tmp_path / "empty.jsonl")))
    with pytest.raises(EvalError, match="cannot reach the Hugging Face hub|could not read"):
        evaluate(tiny, EvalCfg(tasks=("gsm8k",)))  # no path, no hub here


# ---------- KL ----------

def test_kl_is_zero_for_the_base_model_and_matches_a_slow_loop_under_an_edit(tiny):
    cfg = EvalCfg(tasks=("kl",), budget={"kl": 5})
    ref = make_reference(tiny, cfg)
    assert ref.logprobs.shape == (5, tiny.vocab_size)
    [base] = evaluate(tiny, cfg, reference=ref)
    assert base.metric == "kl" and base.value == pytest.approx(0.0, abs=1e-6) and base.n == 5
    w = tiny.model.model.layers[1].mlp.down_proj.weight
    saved = w.clone()
    try:
        w.mul_(3.0)
        [edited] = evaluate(tiny, cfg, reference=ref)
        slow = []
        for seq, lp_ref in zip(ref.seqs, ref.logprobs):
            lp = torch.log_softmax(tiny.model(input_ids=torch.tensor([seq])).logits[0, -1].double(), -1)
            slow.append(float((lp_ref.double().exp() * (lp_ref.double() - lp)).sum()))
    finally:
        w.copy_(saved)
    assert edited.value > 1e-4
    assert edited.value == pytest.approx(sum(slow) / len(slow), rel=1e-4)
    with pytest.raises(EvalError, match="needs a reference"):
        evaluate(tiny, cfg)
    assert make_reference(tiny, EvalCfg(tasks=("ppl",))) is None


def test_kl_dataset_is_the_same_for_two_references_of_the_same_prompts(tiny):
    """The stored ``dataset`` identifies the data: no timing in it (it held the reference's seconds)."""
    cfg = EvalCfg(tasks=("kl",), budget={"kl": 3})
    one, two = make_reference(tiny, cfg), make_reference(tiny, cfg)
    [a], [b] = evaluate(tiny, cfg, reference=one), evaluate(tiny, cfg, reference=two)
    assert a.dataset == b.dataset and one.dataset == two.dataset
    assert a.dataset["prompts"] == 3 and one.seconds > 0
    assert set(one.dataset) == {"name", "source", "seed", "prompts", "chat", "position", "truncated"}
    assert not any("seconds" in k for k in a.dataset)
    other = make_reference(tiny, EvalCfg(tasks=("kl",), budget={"kl": 2}))
    assert other.dataset != one.dataset


def test_kl_divergence_properties():
    torch.manual_seed(0)
    a = torch.log_softmax(torch.randn(6, 11), -1)
    b = torch.log_softmax(torch.randn(6, 11), -1)
    assert torch.allclose(kl.kl_divergence(a, a), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    ref = torch.nn.functional.kl_div(b.double(), a.double(), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl.kl_divergence(a, b), ref)
    assert (kl.kl_divergence(a, b) > 0).all()


def test_kl_refuses_logits_of_another_vocabulary_in_one_line(tiny):
    ref = kl.make_reference(tiny, 2, 0, chat=False)
    base = kl.kl(tiny, ref)[0].value
    assert base == pytest.approx(0.0, abs=1e-9)
    lm_head = tiny.model.lm_head  # the edited model's unembedding has 300 rows, its config still says 259
    tiny.model.lm_head = torch.nn.Linear(lm_head.in_features, 300, bias=False)
    try:
        with pytest.raises(EvalError, match="reference has vocabulary 259 but the model's logits now have 300") as e:
            kl.kl(tiny, ref)
    finally:
        tiny.model.lm_head = lm_head
    assert "\n" not in str(e.value) and tiny.vocab_size == 259


# ---------- config ----------

def test_config_validation_and_budgets(tmp_path):
    cfg = EvalCfg(tasks="ppl,facts", budget="ppl=4096,facts=40", seed=3)
    assert cfg.tasks == ("ppl", "facts") and cfg.count("ppl") == 4096 and cfg.count("arith") == 50
    assert EvalCfg(budget={"facts": 40}) == EvalCfg(budget="facts=40")
    d = cfg.describe()
    assert json.loads(json.dumps(d))["counts"] == {"ppl": 4096, "facts": 40} and d["seed"] == 3
    assert EvalCfg(budget="smoke").count("ppl") < EvalCfg().count("ppl") < EvalCfg(budget="full").count("ppl")
    assert EvalCfg(budget="full").count("facts") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    for kwargs, msg in [({"tasks": "ppl,factz"}, "unknown evaluation task 'factz'"),
                        ({"tasks": ""}, "no evaluation tasks"),
                        ({"budget": "medium"}, "unknown budget 'medium'"),
                        ({"budget": "ppl=lots"}, "whole number of tokens"),
                        ({"budget": "facts=0"}, "at least 1 item"),
                        ({"budget": "dance=3"}, "unknown task 'dance'"),
                        ({"corpus": "pile"}, "unknown corpus 'pile'"),
                        ({"mmlu_path": str(tmp_path / "nope.parquet")}, "does not exist"),
                        ({"window": 1}, "at least 2 tokens")]:
        with pytest.raises(EvalError, match=msg):
            EvalCfg(**kwargs)


def test_a_count_budget_sets_a_generation_tasks_new_tokens():
    cfg = EvalCfg(tasks="gsm8k,refusal", budget="gsm8k=2,gsm8k_tokens=16")
    assert (cfg.gen_tokens("gsm8k"), cfg.gen_tokens("refusal"), cfg.count("gsm8k")) == (16, 32, 2)  # refusal: quick's
    assert cfg.describe()["gen_tokens"] == {"gsm8k": 16, "refusal": 32}
    assert EvalCfg(tasks="gsm8k", budget="smoke").describe()["gen_tokens"] == {"gsm8k": 64}  # presets as before
    for budget, msg in [("gsm8k_tokens=0", "'gsm8k_tokens' must be at least 1 new token"),
                        ("ppl_tokens=8", r"unknown task 'ppl_tokens'.*toxicity_tokens, refusal_tokens, gsm8k_tokens")]:
        with pytest.raises(EvalError, match=msg):
            EvalCfg(budget=budget)


def test_score_fields_match_the_evals_table(tmp_path):
    from store import Store
    from store.tables import columns

    with Store(tmp_path / "s.duckdb").connect() as con:
        evals, items = columns(con, "evals"), columns(con, "eval_items")
    fields = list(Score.__dataclass_fields__)
    assert fields == ["task", "metric", "value", "stderr", "n", "chance", "dataset", "seconds", "harness",
                      "task_version", "num_fewshot", "fewshot_seed", "items"]
    assert set(fields[:-1]) <= set(evals) and {"item", "value"} <= set(items)  # items: eval_items rows


# ---------- sweeps and fallbacks ----------

@dataclasses.dataclass(frozen=True)
class ScaleMlp:
    """A test edit: scales the first MLP's output weights (factor 1: no change), restored on exit."""

    kind: ClassVar[str] = "test-scale-mlp"
    factor: float = 3.0

    @contextlib.contextmanager
    def apply(self, loaded):
        w = loaded.model.model.layers[0].mlp.down_proj.weight
        saved = w.clone()
        try:
            w.mul_(self.factor)
            yield
        finally:
            w.copy_(saved)

    def label(self):
        return f"scale{self.factor:g}"


def test_sweep_stores_base_and_point_once(tiny, store):
    from interp.studies.sweep import run_sweep

    cfg = EvalCfg(tasks=("ppl", "kl"), budget={"ppl": 80, "kl": 3}, window=40)
    run = run_sweep(tiny, store, study="eval", config={"study": "test"}, points=[ScaleMlp()], eval_cfg=cfg,
                    progress=False)
    assert run_sweep(tiny, store, study="eval", config={"study": "test"}, points=[ScaleMlp()], eval_cfg=cfg,
                     progress=False) == run
    with store.connect(read_only=True) as con:
        df = con.execute("SELECT point, task, metric, value, stderr, n, dataset FROM evals WHERE run_id = ?",
                         [run]).df()
    assert len(df) == 2 * 4 and set(df.point) == {"base", "scale3"}
    kl_rows = df[df.metric == "kl"].set_index("point").value
    assert kl_rows["base"] == pytest.approx(0.0, abs=1e-6) and kl_rows["scale3"] > 1e-4
    assert json.loads(df[df.metric == "nll"].dataset.iloc[0])["window"] == 40


def test_kl_prompts_fall_back_to_book_passages_when_neutral_file_is_missing(monkeypatch, tmp_path):
    import interp.data.prompts

    monkeypatch.setattr(interp.data.prompts, "DATA_DIR", tmp_path)
    with pytest.warns(UserWarning, match="neutral.jsonl is missing"):
        prompts, source = kl.neutral_prompts(3, seed=0)
    assert len(prompts) == 3 and "fallback" in source

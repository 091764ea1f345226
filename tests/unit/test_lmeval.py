"""lm-evaluation-harness tasks on a tiny random-init Llama: task names, the scoring LM against a plain
per-request reference, local data and its errors, MMLU's per-subject / micro / macro rows, sweeps."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from interp.evals import EvalCfg, EvalError
from interp.evals import lmeval_spec as spec

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra interp[lmeval]")
pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lmeval"


@pytest.fixture(scope="module")
def tiny_long():
    """A 4-layer Llama with a byte tokenizer and room for 8-shot prompts (4096 positions), built once."""
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    model = tiny_llama(seed=3)
    model.config.max_position_embeddings = 4096
    return wrap(model, byte_tokenizer(), name="tiny-llama-4k", revision="seed3")


def cfg(*tasks, data=str(FIXTURES), budget="lm-eval=4", **kw) -> EvalCfg:
    return EvalCfg(tasks=tasks, budget=budget, lmeval_data=data, **kw)


# -- names --------------------------------------------------------------------------------------

def test_task_names_carry_the_few_shot_settings():
    assert spec.parse("lm-eval:arc_easy") == spec.LmEvalTask("arc_easy", None, 1234)
    assert spec.parse("lm-eval:mmlu:5shot:s7") == spec.LmEvalTask("mmlu", 5, 7)
    assert spec.parse("boolq:2shot") == spec.LmEvalTask("boolq", 2, 1234)
    assert spec.LmEvalTask("mmlu_anatomy").default_shots() == 5 and spec.LmEvalTask("mmlu").default_shots() == 5
    assert spec.LmEvalTask("mmlux").default_shots() is None and spec.LmEvalTask("arc_easy").default_shots() is None
    assert spec.stored_name("mmlu_anatomy", 5, 1234) == "lm-eval:mmlu_anatomy:5shot:s1234"
    assert spec.stored_name("arc_easy", 0, 1234) == "lm-eval:arc_easy:0shot"  # no shots: the seed changes nothing
    for bad in ("lm-eval:", "lm-eval:mmlu:five", "lm-eval:mmlu:5shot:x", "lm-eval:a b"):
        with pytest.raises(EvalError, match="malformed lm-eval task"):
            EvalCfg(tasks=(bad,))


def test_eval_cfg_budget_and_identity():
    c = cfg("ppl", "lm-eval:arc_easy", budget="smoke")
    assert c.count("lm-eval:arc_easy") == 4 and c.count("lm-eval:mmlu:5shot") == 4
    assert EvalCfg(tasks=("lm-eval:arc_easy",), budget="full").count("lm-eval:arc_easy") is None
    assert cfg("lm-eval:arc_easy", budget="lm-eval=9").count("lm-eval:x") == 9
    assert c.describe()["counts"] == {"ppl": 512, "lm-eval": 4} and c.describe()["lmeval_data"] == str(FIXTURES)
    # Runs without lm-eval tasks keep their config (and so their identity and resume) unchanged.
    assert "lmeval_data" not in EvalCfg(tasks=("ppl",)).describe()
    with pytest.raises(EvalError, match="does not exist"):
        cfg("lm-eval:arc_easy", data="/no/such/folder")


# -- the scoring LM against a plain reference ---------------------------------------------------

def _reference(model, ctx, cont, limit):
    """One request alone, unpadded: sum of log p(cont | ctx) from a full forward, greedy check."""
    whole = (ctx + cont)[-(limit + 1):]
    logits = model(torch.tensor([whole[:-1]])).logits[0].float()
    rows = torch.log_softmax(logits[-len(cont):], -1)
    target = torch.tensor(cont)
    return float(rows[torch.arange(len(cont)), target].sum()), bool((rows.argmax(-1) == target).all())


def test_loglikelihood_equals_one_request_at_a_time(tiny_long):
    from interp.evals.lmeval_lm import SuiteLM

    g = torch.Generator().manual_seed(0)

    def rnd(n: int) -> list[int]:
        return torch.randint(0, 256, (n,), generator=g).tolist()

    shared = rnd(30)
    reqs = [(None, rnd(12), rnd(3)), (None, rnd(40), rnd(1)), (None, shared, [65]), (None, shared, [66]),
            (None, shared, [67, 68]), (None, rnd(5000), rnd(2))]  # the last one is cut to the context
    lm = SuiteLM(tiny_long, batch_tokens=128)
    got = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    for (_, ctx, cont), (lp, greedy) in zip(reqs, got):
        ref_lp, ref_greedy = _reference(tiny_long.model, ctx, cont, lm.max_length)
        assert lp == pytest.approx(ref_lp, abs=1e-4) and greedy == ref_greedy
    # A continuation equal to the greedy tokens is reported as greedy.
    ctx = rnd(20)
    nxt = int(tiny_long.model(torch.tensor([ctx])).logits[0, -1].argmax())
    assert lm._loglikelihood_tokens([(None, ctx, [nxt])], disable_tqdm=True)[0][1] is True


def test_loglikelihood_logits_stay_within_the_evaluations_bound(tiny_long, monkeypatch):
    """A batch unembeds at most ``interp.evals.lm.LOGIT_BYTES`` of logits (an input alone may need more), with
    the same numbers as unbounded batches."""
    from interp.evals import lm
    from interp.evals.lmeval_lm import SuiteLM

    g = torch.Generator().manual_seed(1)
    reqs = [(None, torch.randint(0, 256, (n,), generator=g).tolist(), torch.randint(0, 256, (c,), generator=g).tolist())
            for n, c in [(20, 3), (21, 4), (22, 2), (19, 5), (20, 1), (23, 2), (18, 12), (20, 3)]]
    lm_ = SuiteLM(tiny_long, batch_tokens=1024)
    whole = lm_._loglikelihood_tokens(reqs, disable_tqdm=True)
    vocab = tiny_long.vocab_size
    monkeypatch.setattr(lm, "LOGIT_BYTES", 8 * 4 * vocab)  # 8 positions a pass
    shapes: list[tuple[int, ...]] = []
    handle = tiny_long.model.lm_head.register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape)))
    try:
        parts = lm_._loglikelihood_tokens(reqs, disable_tqdm=True)
    finally:
        handle.remove()
    assert len(shapes) > 1 and all(b * kept <= 8 or b == 1 for b, kept, _ in shapes)
    assert (1, 12, vocab) in shapes  # the 12-token continuation alone, as token_logprobs lets one sequence pass
    for (lp, greedy), (ref_lp, ref_greedy) in zip(parts, whole):
        assert lp == pytest.approx(ref_lp, abs=1e-5) and greedy == ref_greedy


# -- local data, offline errors ------------------------------------------------------------------

def test_missing_local_file_is_one_line_naming_it(tiny_long, tmp_path):
    from interp.evals.lmeval import lmeval_scores

    shutil.copytree(FIXTURES / "allenai", tmp_path / "allenai")
    with pytest.raises(EvalError) as e:
        lmeval_scores(tiny_long, cfg("lm-eval:boolq", data=str(tmp_path)), "lm-eval:boolq")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "aps/super_glue/boolq/validation.jsonl") in msg
    # Few shots need the few-shot split too; 0 shots need only the evaluation split.
    (tmp_path / "allenai/ai2_arc/ARC-Easy/train.jsonl").unlink()
    with pytest.raises(EvalError, match="ARC-Easy/train.jsonl"):
        lmeval_scores(tiny_long, cfg("lm-eval:arc_easy:2shot", data=str(tmp_path)), "lm-eval:arc_easy:2shot")
    assert lmeval_scores(tiny_long, cfg("lm-eval:arc_easy", data=str(tmp_path)), "lm-eval:arc_easy")


@pytest.mark.parametrize("content,message", [
    ('{"question": "q", "passage": "p", "answer": true}\n',
     "lacks the hub's field(s) label (it has question, passage, answer)"),
    ("not json\n", "is not JSON lines"),
    ("", "is empty"),
    ('{"question": "q", "passage": "p", "label": 0}\n{"question": \n', "could not use its local data"),
])
def test_local_rows_not_in_the_hub_format_are_refused(tiny_long, tmp_path, content, message):
    from interp.evals.lmeval import lmeval_scores

    path = tmp_path / "aps/super_glue/boolq/validation.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(EvalError) as e:
        lmeval_scores(tiny_long, cfg("lm-eval:boolq", data=str(tmp_path)), "lm-eval:boolq")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_no_data_and_no_hub_fails_fast_naming_the_file(tiny_long, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from interp.evals import lmeval_tasks
    from interp.evals.lmeval import lmeval_scores
    from interp.model import loading

    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path("/nonexistent-interp-test-cache"))
    switches = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    t0 = time.perf_counter()
    with pytest.raises(EvalError) as e:
        lmeval_scores(tiny_long, cfg("lm-eval:openbookqa", data=None), "lm-eval:openbookqa")
    msg = str(e.value)
    assert "\n" not in msg and "allenai/openbookqa/main/test.jsonl" in msg and "--lm-eval-data" in msg, msg
    assert time.perf_counter() - t0 < 20  # no HTTP retries
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == switches  # restored
    with lmeval_tasks.offline():  # and they really were switched while loading
        assert datasets.config.HF_HUB_OFFLINE is True and huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_unknown_task_and_python_task_errors(tiny_long):
    from interp.evals.lmeval import lmeval_scores

    with pytest.raises(EvalError, match="no task, group or tag 'arc_eazy'"):
        lmeval_scores(tiny_long, cfg("lm-eval:arc_eazy"), "lm-eval:arc_eazy")
    # A task outside the suite's index is found in lm-eval's whole tree (indexed once per process); one
    # defined in Python cannot take local files.
    with pytest.raises(EvalError, match="'squadv2' is defined in Python and cannot read local data files"):
        lmeval_scores(tiny_long, cfg("lm-eval:squadv2"), "lm-eval:squadv2")


# -- scores, groups, sweeps -----------------------------------------------------------------------

def _mmlu_dir(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """All 57 MMLU subjects, each a copy of one fixture subject (2, 3 or 4 test items)."""
    from interp.evals.lmeval_tasks import lm_eval_root

    src = sorted((FIXTURES / "cais/mmlu").iterdir())
    subjects = sorted(p.stem.removeprefix("mmlu_") for p in (lm_eval_root() / "mmlu/default").glob("mmlu_*.yaml"))
    assert len(subjects) == 57
    sizes = {}
    for i, s in enumerate(subjects):
        (tmp_path / "cais/mmlu" / s).mkdir(parents=True)
        for split in ("dev", "test"):
            shutil.copy(src[i % 3] / f"{split}.jsonl", tmp_path / "cais/mmlu" / s / f"{split}.jsonl")
        sizes[f"mmlu_{s}"] = len((src[i % 3] / "test.jsonl").read_text().splitlines())
    return tmp_path, sizes


def test_mmlu_group_per_subject_micro_and_macro(tiny_long, tmp_path):
    from interp.evals.lmeval import lmeval_scores

    data, sizes = _mmlu_dir(tmp_path)
    scores = lmeval_scores(tiny_long, cfg("lm-eval:mmlu", data=str(data), budget="full"), "lm-eval:mmlu")
    by = {(s.task, s.metric): s for s in scores}
    subjects = {s.dataset["name"]: s for s in scores if s.dataset["level"] == "task"}
    assert set(subjects) == set(sizes) and all(s.metric == "acc" and s.num_fewshot == 5 for s in subjects.values())
    assert all(s.task == f"lm-eval:{n}:5shot:s1234" and s.n == sizes[n] for n, s in subjects.items())
    assert all(s.harness.startswith("lm-eval ") and s.task_version == "1.0" and s.fewshot_seed == 1234
               for s in subjects.values())
    micro, macro = by[("lm-eval:mmlu:5shot:s1234", "acc")], by[("lm-eval:mmlu:5shot:s1234", "acc_macro")]
    total = sum(sizes.values())
    assert micro.n == total == macro.n and micro.task_version == "2"
    assert micro.value == pytest.approx(sum(s.value * s.n for s in subjects.values()) / total, abs=1e-12)
    assert macro.value == pytest.approx(sum(s.value for s in subjects.values()) / 57, abs=1e-12)
    assert "micro" in micro.dataset["average"] and "macro" in macro.dataset["average"]
    assert micro.chance == pytest.approx(0.25) and macro.chance == pytest.approx(0.25)
    se = [s.stderr for s in subjects.values()]
    assert macro.stderr == pytest.approx(sum(x * x for x in se) ** 0.5 / 57)
    stem = [s for s in subjects.values() if s.dataset["parent"] == "mmlu_stem"]
    assert len(stem) == 19 and ("lm-eval:mmlu_stem:5shot:s1234", "acc_macro") in by
    assert json.loads(json.dumps(micro.dataset))["source"] == f"local {data}"


def test_overlapping_requests_store_each_task_once(tiny_long):
    from interp.evals import evaluate

    scores = evaluate(tiny_long, cfg("lm-eval:mmlu_astronomy", "lm-eval:mmlu_astronomy:5shot", "lm-eval:arc_easy"))
    keys = [(s.task, s.metric) for s in scores]
    assert len(keys) == len(set(keys)) == 3 and ("lm-eval:mmlu_astronomy:5shot:s1234", "acc") in keys


def test_gsm8k_cot_stores_both_filters(tiny_long):
    from interp.evals.lmeval import run

    out = run(tiny_long, cfg("lm-eval:gsm8k_cot", budget="lm-eval=1"), "lm-eval:gsm8k_cot", log_samples=True)
    assert {s.metric for s in out.scores} == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert all(s.task == "lm-eval:gsm8k_cot:8shot:s1234" and s.n == 1 and s.chance is None for s in out.scores)
    sample = out.samples["gsm8k_cot"][0]
    assert sample["arguments"][0][0].count("Q: ") == 9  # 8 worked examples, then the question
    assert {s.dataset["filter"] for s in out.scores} == {"strict-match", "flexible-extract"}


def test_sweep_scores_each_point_with_its_edit_active(tiny_long, tmp_path):
    from interp.interventions.layers import LayerDrop
    from interp.studies.sweep import run_sweep
    from store import Store

    st = Store(tmp_path / "s.duckdb")
    ecfg = cfg("ppl", "lm-eval:arc_easy", "lm-eval:boolq:2shot", budget="ppl=256,lm-eval=6")
    before = {n: p.clone() for n, p in tiny_long.model.state_dict().items()}
    run_id = run_sweep(tiny_long, st, study="layers", config={"study": "t"}, points=[LayerDrop((1, 2))],
                       eval_cfg=ecfg, progress=False)
    assert all(torch.equal(before[n], p) for n, p in tiny_long.model.state_dict().items())
    with st.connect(read_only=True) as con:
        rows = con.execute("SELECT point, task, metric, value, n, harness, task_version, num_fewshot, fewshot_seed "
                           "FROM evals WHERE run_id = ? AND harness IS NOT NULL ORDER BY ALL", [run_id]).fetchall()
        suite = con.execute("SELECT count(*) FROM evals WHERE harness IS NULL AND num_fewshot IS NULL").fetchone()[0]
    assert suite == 6  # ppl's three metrics at two points, with NULL harness columns
    tasks = {(r[0], r[1], r[2]) for r in rows}
    assert ("base", "lm-eval:boolq:2shot:s1234", "acc") in tasks and ("drop[1-2]", "lm-eval:arc_easy:0shot", "acc") in tasks
    assert {r[7] for r in rows if "boolq" in r[1]} == {2} and {r[4] for r in rows} == {6}
    vals = {(r[0], r[1], r[2]): r[3] for r in rows}
    # The edit is active while lm-eval scores: the dropped-layer point scores its own model.
    from interp.evals.lmeval import run

    with LayerDrop((1, 2)).apply(tiny_long):
        dropped = {(s.task, s.metric): s.value for s in run(tiny_long, ecfg, "lm-eval:arc_easy").scores}
    base = {(s.task, s.metric): s.value for s in run(tiny_long, ecfg, "lm-eval:arc_easy").scores}
    assert all(vals[("drop[1-2]", t, m)] == v for (t, m), v in dropped.items())
    assert all(vals[("base", t, m)] == v for (t, m), v in base.items())  # and the reused tasks give the same


def test_report_page_mmlu_subjects_averages_and_gsm8k_filters(tiny_long, tmp_path):
    from interp.interventions.layers import LayerDrop
    from interp.studies.sweep import run_sweep
    from reports.build import build_report
    from store import Store
    from store.queries import eval_points_sql, fetch
    from store.queries import lmeval as q

    data, _ = _mmlu_dir(tmp_path / "data")
    shutil.copytree(FIXTURES / "openai", data / "openai")
    st = Store(tmp_path / "s.duckdb")
    ecfg = cfg("mmlu", "lm-eval:mmlu", "lm-eval:gsm8k_cot", data=str(data), budget="mmlu=2,lm-eval=1",
               mmlu_path=str(FIXTURES / "cais/mmlu/astronomy/test.jsonl"))
    run_id = run_sweep(tiny_long, st, study="layers", config={"study": "report"}, points=[LayerDrop((0,))],
                       eval_cfg=ecfg, progress=False)
    with st.connect(read_only=True) as con:
        subjects = fetch(con, q.mmlu_subjects_sql(run_id))
        averages = fetch(con, q.mmlu_averages_sql(run_id))
        gsm = fetch(con, q.gsm8k_sql(run_id))
        cloze = fetch(con, q.cloze_sql(run_id))
        points = fetch(con, eval_points_sql(run_id))
        stored = fetch(con, f"SELECT point, metric, value FROM evals WHERE run_id = {run_id} "
                            "AND task = 'lm-eval:mmlu:5shot:s1234'")
    assert len(subjects) == 57 * 2 and set(subjects["n"]) == {1}
    for point, part in subjects.groupby("point"):
        avg = averages[averages["point"] == point].set_index("average")["accuracy"]
        mean = part["accuracy"].mean()
        assert avg.filter(like="macro").item() == pytest.approx(mean) == avg.filter(like="micro").item()  # n = 1 each
    assert len(averages) == 4 and sorted(stored["metric"]) == ["acc", "acc", "acc_macro", "acc_macro"]
    assert sorted(set(gsm["filter"])) == ["flexible-extract", "strict-match"] and len(gsm) == 4
    assert set(cloze["protocol"]) == {"mmlu (suite, zero-shot cloze)"}
    # Study pages keep the group rows and leave the 57 subjects to the lm-eval page.
    assert not points["task"].str.contains("mmlu_").any() and points["task"].str.contains("lm-eval:mmlu:").any()
    report = build_report(st, tmp_path / "report")
    html = (tmp_path / "report" / "lmeval.html").read_text()
    assert report.pages[-1].name == "lmeval.html"
    for text in ("micro: lm-eval group acc (weighted by subject size)", "macro: mean over subjects",
                 "strict-match", "flexible-extract", "zero-shot cloze", "lm-eval:mmlu:5shot:s1234"):
        assert text in html, text


def _edits(loaded, tmp_path):
    """One point of every edit kind the studies sweep (a head router saved where HeadRouting finds it)."""
    from interp.interventions.directions import (
        ActivationAddition,
        DirectionalAblation,
        OrthogonalizedWeights,
    )
    from interp.interventions.heads import HeadMask, HeadRouting
    from interp.interventions.router import HeadRouter, save_router

    r = tuple(torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(1)).tolist())
    router = HeadRouter(loaded.n_layers, loaded.d_model, loaded.n_heads)
    with torch.no_grad():
        router.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    digest, _ = save_router(router, tmp_path)
    return {"head_mask": HeadMask(heads=((0, 1), (2, 3))), "ablation": DirectionalAblation(r),
            "orthogonalized": OrthogonalizedWeights(r), "steering": ActivationAddition(r, layer=1, alpha=8.0),
            "router": HeadRouting(router=digest, top_k=2)}


@pytest.mark.parametrize("kind", ["head_mask", "ablation", "orthogonalized", "steering", "router"])
def test_lm_eval_scores_the_edit_that_is_active(tiny_long, tmp_path, monkeypatch, kind):
    """Per request, lm-eval's log-likelihoods under an edit equal the suite's own scorer under it, differ
    from the unedited model's, and the model is exactly itself afterwards (tied unembedding included)."""
    from interp.evals.lm import token_logprobs
    from interp.evals.lmeval import run

    monkeypatch.setenv("INTERP_ROUTER_DIR", str(tmp_path))
    spec_ = _edits(tiny_long, tmp_path)[kind]
    ecfg, tok = cfg("lm-eval:arc_easy"), tiny_long.tokenizer
    before = {n: p.clone() for n, p in tiny_long.model.state_dict().items()}
    base = run(tiny_long, ecfg, "lm-eval:arc_easy", log_samples=True).samples["arc_easy"]
    with spec_.apply(tiny_long):
        edited = run(tiny_long, ecfg, "lm-eval:arc_easy", log_samples=True).samples["arc_easy"]
        args = [a for s in edited for a in s["arguments"]]
        ctx = [tok.encode(c) for c, _ in args]
        seqs = [tok.encode(c + x) for c, x in args]
        ref = [float(v.sum()) for v in token_logprobs(tiny_long.model, seqs, [len(c) for c in ctx], tok.pad_token_id)]
    got = [r[0][0] for s in edited for r in s["resps"]]
    assert got == pytest.approx(ref, abs=1e-4)
    assert max(abs(a - b[0][0]) for a, b in zip(got, (r for s in base for r in s["resps"]))) > 1e-3
    assert all(torch.equal(before[n], p) for n, p in tiny_long.model.state_dict().items())
    assert tiny_long.model.lm_head.weight is tiny_long.model.model.embed_tokens.weight


def test_every_study_config_takes_lm_eval_tasks():
    """Layers and weights through their evaluation tasks, heads and safety through lm_eval; a config without
    lm-eval tasks describes itself (its run identity) as before."""
    from interp.studies.heads_config import HeadsCfg
    from interp.studies.layers_config import LayersCfg
    from interp.studies.parts import EvalPart
    from interp.studies.safety import SafetyCfg
    from interp.studies.weights import WeightsCfg

    task = "lm-eval:arc_easy"
    pairs = [(LayersCfg(budget="smoke"), LayersCfg(budget="smoke", eval=EvalPart(tasks=("ppl", task)))),
             (WeightsCfg(budget="smoke"), WeightsCfg(budget="smoke", eval=EvalPart(tasks=("ppl", task)))),
             (HeadsCfg(budget="smoke"), HeadsCfg(budget="smoke", eval=EvalPart(lm_eval=(task,)))),
             (SafetyCfg(budget="smoke"), SafetyCfg(budget="smoke", eval=EvalPart(lm_eval=(task,))))]
    for plain, with_lmeval in pairs:
        assert task in with_lmeval.eval_cfg().tasks and task not in plain.eval_cfg().tasks
        assert "lmeval_data" not in plain.eval_cfg().describe()
    for plain, _ in pairs[2:]:
        assert "lm_eval" not in plain.describe() and "lmeval_data" not in plain.describe()["eval"]
    assert pairs[2][1].eval_cfg().tasks == (*pairs[2][0].eval_cfg().tasks, task)

"""`invoke eval`: evaluate a model (no intervention) and store the scores in ``evals``."""

from __future__ import annotations

from invoke import Context, task

from interp.commands import DEFAULT_MODEL, DEFAULT_STORE, helps
from interp.commands.cli import FORMATS, CliTask, lmeval_tasks, print_table, user_errors
from interp.validate import Boolean, Optional, Whole


@task(name="eval", klass=CliTask, types={
    "window": Optional(Whole(min=2)), "chat": Optional(Boolean()), "format": FORMATS,
}, help=helps(
    "dtype", "device", "device_map", "revision",
    tasks="comma-separated: ppl, facts, arith, mmlu, boolq, gsm8k (the suite's zero-shot cloze versions), "
          "toxicity, refusal, kl, or lm-eval:NAME (default ppl,facts,arith)",
    budget="smoke (seconds), quick (default; ppl+facts+arith in about 30 s on 2 CPU cores), full, "
           "or per-task counts like ppl=4096,facts=40 (gsm8k_tokens=N: new tokens per GSM8K reply)",
    seed="seed for sampled windows, items and prompts",
    corpus="perplexity corpus: book (offline, default), wikitext2 or c4",
    window="perplexity window in tokens (default min(256, model context))",
    chat="chat template for generation tasks and KL: true/false (default: when the model has one)",
    wikitext2_path="local WikiText-2 file/folder (hub format)",
    c4_path="local C4 file/folder", mmlu_path="local MMLU file/folder", boolq_path="local BoolQ file/folder",
    gsm8k_path="local GSM8K file/folder",
    toxicity_scorer="profanity-check (offline, default) or detoxify (needs network)",
    lm_eval="lm-evaluation-harness tasks or groups, comma-separated, each NAME[:Kshot][:sSEED] (e.g. "
            "arc_easy,boolq,mmlu:5shot,gsm8k_cot); alone, only these run; needs pip install 'interp[lmeval]'",
    lm_eval_data="folder of local lm-eval data: DIR/<hub dataset>/<config>/<split>.jsonl in the hub's field "
                 "names (default: the hub)",
    format="table (default), csv or json",
))
@user_errors
def eval_(c: Context, model: str = DEFAULT_MODEL, store: str = DEFAULT_STORE, tasks: str | None = None,
          budget: str = "quick", seed: int = 0, corpus: str = "book", window: int | None = None,
          chat: bool | None = None, wikitext2_path: str | None = None, c4_path: str | None = None,
          mmlu_path: str | None = None, boolq_path: str | None = None, gsm8k_path: str | None = None,
          toxicity_scorer: str = "profanity-check", lm_eval: str | None = None, lm_eval_data: str | None = None,
          dtype: str = "float32", device: str = "cpu", device_map: str | None = None, revision: str | None = None,
          format: str = "table") -> None:
    """Evaluate the model as loaded (the base point of an 'eval' run): perplexity, task accuracy,
    toxicity, refusal, lm-evaluation-harness tasks; prints the scores and stores them (re-running the
    same command reuses them). Default tasks: ppl,facts,arith, or only the --lm-eval ones when given."""
    from interp.commands.cli import load
    from interp.evals import EvalCfg
    from interp.studies.sweep import run_sweep
    from store import Store
    from store.evals import read_evals

    harness = lmeval_tasks(lm_eval)
    names = [*(t for t in (tasks or ("" if harness else "ppl,facts,arith")).split(",") if t.strip()), *harness]
    cfg = EvalCfg(tasks=tuple(names), budget=budget, seed=seed, corpus=corpus, window=window,
                  chat=chat, wikitext2_path=wikitext2_path, c4_path=c4_path, mmlu_path=mmlu_path,
                  boolq_path=boolq_path, gsm8k_path=gsm8k_path, toxicity_scorer=toxicity_scorer,
                  lmeval_data=lm_eval_data)
    st = Store(store)
    st.preflight()
    loaded = load(model, revision=revision, dtype=dtype, device=device, device_map=device_map)
    run_id = run_sweep(loaded, st, study="eval", config={"study": "eval"}, points=[], eval_cfg=cfg)
    with st.connect(read_only=True) as con:
        df = read_evals(con, run_id)
    print_table(df.drop(columns=["point"]), title=f"eval run {run_id}: {loaded.name}", fmt=format)
    print(f"run {run_id}: {len(df)} scores stored in {st.path}")

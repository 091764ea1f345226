"""lm-eval loglikelihood requests on the embedded model: the suite's LM against plain lm-eval ``hf``, one run.

The requests are lm-eval's own (its task configs build them from the data: by default the fixture
files of MMLU 5-shot subjects, ARC-Easy, BoolQ and HellaSwag). Both sides score the same request
objects; ``hf`` is ``HFLM(pretrained=<the cached safetensors of the embedded model>)`` as an lm-eval
user would load it, at each ``--hf-batch`` size. Prints seconds per 100 requests, the ratio to
``hf`` and the largest log-likelihood difference (the two must agree).

    python bench/lmeval_requests.py [--tasks ...] [--data DIR] [--limit N] [--repeat 2] [--hf-batch 1,8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from interp.evals import lmeval_spec
from interp.evals.lmeval import prepare
from interp.evals.lmeval_lm import SuiteLM
from interp.evals.lmeval_tasks import quiet
from interp.model.embedded import embedded_model_dir
from interp.model.loading import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lmeval"
TASKS = "mmlu_astronomy,mmlu_high_school_geography,mmlu_elementary_mathematics,arc_easy,boolq,hellaswag"


def requests(tasks: list[str], data: str, limit: int | None) -> list:
    """lm-eval's loglikelihood Instances for the tasks (few-shot settings: the suite's defaults)."""
    out = []
    for name in tasks:
        req = lmeval_spec.parse(name)
        prepared = prepare(req, data)
        for tname, task in prepared.tasks["tasks"].items():
            task.set_config(key="num_fewshot", value=prepared.leaves[tname].shots)
            task.set_fewshot_seed(seed=req.seed)
            with quiet():
                task.build_all_requests(limit=limit, rank=0, world_size=1)
            out += [i for i in task.instances if i.request_type == "loglikelihood"]
    return out


def timed(lm, reqs, repeat: int) -> tuple[float, list]:
    lm.loglikelihood(reqs[:4], disable_tqdm=True)  # warm up (first-call allocations)
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = lm.loglikelihood(reqs, disable_tqdm=True)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=TASKS, help="lm-eval tasks, comma-separated (NAME[:Kshot])")
    ap.add_argument("--data", default=str(FIXTURES), help="local lm-eval data folder (default: the test fixtures)")
    ap.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    ap.add_argument("--repeat", type=int, default=2, help="timed repeats per side (best is shown)")
    ap.add_argument("--hf-batch", default="1,8", help="HFLM batch sizes to time (lm-eval's default is 1)")
    ap.add_argument("--batch-tokens", type=int, default=1024, help="the suite's tokens per forward pass")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    reqs = requests([t.strip() for t in args.tasks.split(",") if t.strip()], args.data, args.limit)
    if not reqs:
        raise SystemExit("no loglikelihood requests: pick multiple-choice tasks")
    loaded = load_model()
    rows = []
    sec, ours = timed(SuiteLM(loaded, batch_tokens=args.batch_tokens), reqs, args.repeat)
    rows.append({"lm": f"suite (batch_tokens={args.batch_tokens})", "requests": len(reqs), "seconds": sec})
    for b in [int(x) for x in args.hf_batch.split(",") if x.strip()]:
        with quiet():
            hf = HFLM(pretrained=str(embedded_model_dir()), dtype="float32", device="cpu", batch_size=b)
        sec, theirs = timed(hf, reqs, args.repeat)
        diff = max(abs(a[0] - b_[0]) for a, b_ in zip(ours, theirs))
        agree = sum(a[1] == b_[1] for a, b_ in zip(ours, theirs)) / len(reqs)
        rows.append({"lm": f"lm-eval hf (batch_size={b})", "requests": len(reqs), "seconds": sec,
                     "max_abs_loglik_diff": diff, "greedy_agreement": agree})
        del hf
    df = pd.DataFrame(rows)
    df["s_per_100_requests"] = df["seconds"] / df["requests"] * 100
    hf1 = df[df["lm"].str.startswith("lm-eval hf")]["s_per_100_requests"].iloc[0]
    df["speed_vs_first_hf"] = hf1 / df["s_per_100_requests"]
    tokens = sum(len(r.args[0]) + len(r.args[1]) for r in reqs) / len(reqs)
    print(f"{len(reqs)} loglikelihood requests from {args.tasks} (mean {tokens:.0f} characters), "
          f"torch threads {torch.get_num_threads()}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()

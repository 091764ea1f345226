"""What an evaluation budget costs and what it can detect (issue 18).

For each budget, on the model as the safety study evaluates it (toxicity, refusal, ppl, facts, arith,
KL), evaluate the base model and one edit, timing every task, then report per task and metric:

- seconds per sweep point (the edit's evaluation; the base's first evaluation also prepares data);
- n: items (windows, items, generations, prompts) behind each comparison;
- mde_paired: the smallest change the paired test detects at alpha 0.05 with power 0.8 given the spread of
  this edit's per-item differences from the base (``analyses.stats.mde``; what eval_deltas.mde stores);
- mde_unpaired: the same with the spread of the base's own items times sqrt(2), i.e. an edit whose item
  changes are as large as the items' differences from each other (no pairing benefit): a budget-level bound.

The edit is activation addition of a random unit direction at the middle layer with the residual norm
there as scale (a moderate edit), so mde_paired is an example, not a property of the budget alone.

    python bench/budgets.py [--model smollm2-135m-instruct] [--budgets smoke,quick] [--threads 2]

Run it on an idle machine for figures; on a tiny model (``--model <dir>``) it checks that it works.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--budgets", default="smoke,quick", help="safety-study budgets whose eval_budget to measure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import pandas as pd
    import torch

    from analyses.stats import compare_items, mde
    from interp.evals import evaluate, make_reference
    from interp.interventions.directions import ActivationAddition
    from interp.model.loading import load_model
    from interp.studies.safety_config import SafetyCfg
    from interp.studies.sweep import item_frame

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    layer = loaded.n_layers // 2
    rng = np.random.default_rng(args.seed)
    u = rng.normal(size=loaded.d_model)
    with torch.no_grad():  # residual norm at the middle layer on a short text: the edit's scale
        ids = loaded.tokenizer("The capital of France is Paris.", return_tensors="pt")["input_ids"].to(loaded.device)
        hidden = loaded.model(ids, output_hidden_states=True).hidden_states[layer][0, -1]
    edit = ActivationAddition(u, layer=layer, alpha=1.0, scale=float(hidden.norm()), name="bench-random")
    rows = []
    for budget in args.budgets.split(","):
        cfg = SafetyCfg(budget=budget.strip()).eval_cfg()
        ref = make_reference(loaded, cfg)
        evaluate(loaded, cfg, reference=ref)  # prepares every task's data once, as a sweep's base point does
        t0 = time.perf_counter()
        base = evaluate(loaded, cfg, reference=ref)
        base_s = time.perf_counter() - t0
        with edit.apply(loaded):
            point = evaluate(loaded, cfg, reference=ref)
        seconds = {s.task: s.seconds for s in point}
        base_items, point_items = item_frame(base), item_frame(point)
        cmp = compare_items(base_items, point_items)
        for r in cmp.itertuples():
            spread = base_items[(base_items.task == r.task) & (base_items.metric == r.metric)]["value"].std(ddof=1)
            rows.append({"budget": budget, "task": r.task, "metric": r.metric, "n": r.n,
                         "seconds_per_point": seconds.get(r.task), "base": r.base_value, "edit": r.value,
                         "mde_paired": r.mde,
                         "mde_unpaired": mde(r.n, spread * math.sqrt(2)) if r.metric != "perplexity" else float("nan")})
        rows.append({"budget": budget, "task": "all", "metric": "", "n": None, "seconds_per_point": base_s})
    out = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(out.round(4).to_string(index=False))


if __name__ == "__main__":
    main()

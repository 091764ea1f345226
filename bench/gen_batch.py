"""Greedy generation: time against prompts per batch, on the quick budget's generation prompts (issue 15).

On a CPU each decoding step reads every weight once per batch, so with a large vocabulary (Gemma 3's
262k x 640 unembedding is 671 MB of float32) a wider batch should cost little more per step than a
narrow one. This runs the quick budget's 48 toxicity and 48 refusal prompts through
``greedy_generate`` at each batch size (fixed counts, and ``auto``: the memory budget of
``interp.evals.lm.gen_batches``), interleaved over ``--repeats`` rounds so load drifts hit every size
alike, and prints wall and CPU seconds per size, their ratio to the first size, and whether every
generated text equals the first size's (it must: a sequence's greedy tokens do not depend on its
batch-mates).

    python bench/gen_batch.py [--model gemma-3-270m] [--threads 2] [--sizes 16,48,auto]
        [--repeats 2] [--prompts 48] [--tokens 32]

Figures come from an idle machine; on a busy one compare the CPU seconds, or only check that it runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default="16,48,auto", help="prompts per batch; 'auto': the memory budget")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--prompts", type=int, default=48, help="per task (quick budget: 48)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens (quick budget: 32)")
    a = p.parse_args()

    import pandas as pd
    import torch

    from interp.capture.batching import context_length
    from interp.data.prompts import load_prompts
    from interp.evals.lm import greedy_generate
    from interp.evals.refusal import heldout_harmful
    from interp.model.loading import load_model

    torch.set_num_threads(a.threads)
    loaded = load_model(a.model)
    chat = loaded.is_chat
    prompts = {"toxicity": [p.text for p in load_prompts("toxic", limit=a.prompts, seed=0)],
               "refusal": [t for _, t in heldout_harmful(a.prompts)]}
    sizes: list[int | None] = [None if s == "auto" else int(s) for s in a.sizes.split(",")]
    limit = context_length(loaded.model) - a.tokens
    rows, texts = [], {}
    for r in range(a.repeats):
        for size in sizes:
            for task, ps in prompts.items():
                c0, w0 = time.process_time(), time.perf_counter()
                out, _ = greedy_generate(loaded, ps, chat=chat, max_new_tokens=a.tokens, max_prompt_tokens=limit,
                                         batch_size=size)
                rows.append({"size": "auto" if size is None else size, "task": task, "round": r,
                             "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0})
                texts.setdefault((task, size), out)
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows).groupby("size", sort=False)[["wall_s", "cpu_s"]].sum() / a.repeats
    first = df.iloc[0]
    df["wall_ratio"], df["cpu_ratio"] = df.wall_s / first.wall_s, df.cpu_s / first.cpu_s
    df["same_texts"] = [all(texts[(t, s)] == texts[(t, sizes[0])] for t in prompts) for s in sizes]
    print(f"model {loaded.name}, {a.threads} threads, {a.prompts} prompts per task, {a.tokens} new tokens, "
          f"seconds per round (both tasks)")
    print(df.round(3).to_string())
    diff = [(t, s, i) for t in prompts for s in sizes for i, (x, y) in
            enumerate(zip(texts[(t, s)], texts[(t, sizes[0])])) if x != y]
    for t, s, i in diff[:5]:
        print(f"differs: {t} #{i} at size {s}: {texts[(t, s)][i]!r} vs {texts[(t, sizes[0])][i]!r}")


if __name__ == "__main__":
    main()

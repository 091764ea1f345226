"""Forward speed of a layer-dropped export against the base checkpoint (issue 16).

Exports the base model and the model without ``--drop`` layers (the block the angular rule would pick for
that size is not needed here: any k layers cost the same), then times a plain transformers forward of
each checkpoint, loaded with ``AutoModelForCausalLM.from_pretrained`` (no interp hooks or wrappers),
on the same batch, interleaved, and prints the median seconds and the ratio.

    python bench/export_speed.py [--model smollm2-135m-instruct] [--drop 20-27] [--batch 8] [--tokens 128]
                                 [--repeats 7] [--threads 2]

Run it on an idle machine for figures (BENCHMARKS.md); on a tiny model (``--model <dir>``) it checks that it
works. Expected on SmolLM2-135M without 8 of 30 layers: about 22/30 of the base's time plus the embedding
and unembedding, which do not shrink.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _layers(spec: str) -> tuple[int, ...]:
    lo, _, hi = spec.partition("-")
    return tuple(range(int(lo), int(hi or lo) + 1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--drop", default="20-27", help="layers to drop, lo-hi")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from interp.interventions import Base
    from interp.interventions.layers import LayerDrop
    from interp.model.loading import load_model
    from interp.studies.export import export_point

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    drop = tuple(l for l in _layers(args.drop) if l < loaded.n_layers - 1) or (0,)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"base": Path(tmp) / "base", "dropped": Path(tmp) / "dropped"}
        export_point(loaded, Base(), dirs["base"])
        export_point(loaded, LayerDrop(drop), dirs["dropped"])
        del loaded
        models = {k: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for k, d in dirs.items()}
        vocab = models["base"].config.vocab_size
        ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {k: [] for k in models}
        with torch.no_grad():
            for m in models.values():  # warm-up
                m(input_ids=ids)
            for _ in range(args.repeats):
                for k, m in models.items():
                    t0 = time.perf_counter()
                    m(input_ids=ids)
                    times[k].append(time.perf_counter() - t0)
        layers = {k: m.config.num_hidden_layers for k, m in models.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, batch {args.batch} x {args.tokens} tokens, {args.threads} threads, "
          f"median of {args.repeats}")
    for k in models:
        print(f"  {k:8s} {layers[k]:3d} layers  {med[k] * 1000:9.1f} ms")
    print(f"  dropped / base: {med['dropped'] / med['base']:.3f} (layers {layers['dropped'] / layers['base']:.3f})")


if __name__ == "__main__":
    main()

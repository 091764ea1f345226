"""Prefix reuse (interp/evals/prefix.py): an edited forward that starts at the first block the
edit changes, with the blocks below served from a cache of the unedited model's outputs, equals
the full forward of the edited model (every intervention kind that declares a first layer, every
family, spilled to disk, over the memory budget), generation is untouched, and a sweep with reuse
stores the same numbers as one without."""

from __future__ import annotations

import pytest
import torch

from interp.evals.lm import greedy_generate, last_logprobs, token_logprobs
from interp.evals.prefix import PrefixCache, PrefixCfg, reuse
from interp.interventions import Base, first_layer
from interp.interventions.directions import ActivationAddition, DirectionalAblation
from interp.interventions.heads import HeadMask
from interp.interventions.layers import LayerDrop
from interp.model.families import FAMILIES
from tests.tiny_families import VARIANTS, build

SEQS = [[5 + (7 * i + 3 * j) % 200 for j in range(12 - i)] for i in range(5)]  # ragged: padding inside batches
STARTS = [1, 3, 2, 5, 1]


def _specs(loaded):
    d = tuple(float(x) for x in torch.linspace(-1, 1, loaded.d_model))
    return [LayerDrop((1,)), LayerDrop((2,)), HeadMask(((1, 0), (2, 3))), HeadMask(((2, 1),)),
            ActivationAddition(d, layer=1, alpha=2.0, hook="resid_pre"),
            ActivationAddition(d, layer=2, alpha=-1.5, hook="mlp_out"),
            DirectionalAblation(d)]  # touches every layer: runs in full


def _outputs(loaded, batch_tokens=40):
    pad = loaded.tokenizer.pad_token_id
    return (torch.cat(token_logprobs(loaded.model, SEQS, STARTS, pad, batch_tokens)),
            last_logprobs(loaded.model, SEQS, pad, batch_tokens))


def _close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", [*FAMILIES, *VARIANTS])
def test_reuse_equals_full_forward_every_kind_and_family(family, one_thread):
    loaded = build(family)
    L = loaded.n_layers
    with PrefixCache(PrefixCfg()) as cache:
        with reuse(loaded, cache, first_layer(Base(), L)):  # the base records every layer
            base = _outputs(loaded)
        _close(base, _outputs(loaded))
        for spec in _specs(loaded):
            with spec.apply(loaded):
                full = _outputs(loaded)
            skipped = cache.skipped
            with spec.apply(loaded), reuse(loaded, cache, first_layer(spec, L)):
                fast = _outputs(loaded)
            _close(fast, full)
            first = first_layer(spec, L)
            assert (cache.skipped > skipped) == (first > 0), spec.label()
            assert not all(torch.allclose(f, b) for f, b in zip(full, base)), f"{spec.label()} changed nothing"
    assert list(loaded.model.get_submodule(loaded.arch.layers)) == list(build_blocks(loaded))


def build_blocks(loaded):
    """The model's blocks after every reuse block has exited (they must be the real ones)."""
    blocks = loaded.model.get_submodule(loaded.arch.layers)
    assert all(type(b).__name__ != "_StandIn" for b in blocks)
    return blocks


@pytest.fixture(scope="module")
def llama():
    return build("llama")


def test_first_layers(llama):
    L = llama.n_layers
    d = (1.0,) * llama.d_model
    assert first_layer(Base(), L) == L
    assert first_layer(LayerDrop((2, 1)), L) == 1
    assert first_layer(LayerDrop(()), L) == L
    assert first_layer(HeadMask(((2, 0), (1, 3))), L) == 1
    assert first_layer(HeadMask(()), L) == L
    assert first_layer(ActivationAddition(d, layer=2, alpha=1.0, hook="resid_post"), L) == 2
    assert first_layer(DirectionalAblation(d), L) == 0  # no declaration: every layer


def test_cache_fills_lazily_from_any_point(llama, one_thread):
    """A resumed sweep has no base point to record: a point at layer 2 stores blocks 0..1 itself,
    and a later point at layer 1 uses what is there."""
    L = llama.n_layers
    drop1, drop2 = LayerDrop((1,)), LayerDrop((2,))
    with drop1.apply(llama):
        full1 = _outputs(llama)
    with drop2.apply(llama):
        full2 = _outputs(llama)
    with PrefixCache() as cache:
        with drop2.apply(llama), reuse(llama, cache, first_layer(drop2, L)):
            _close(_outputs(llama), full2)
        assert cache.bytes > 0  # (last_logprobs reuses what token_logprobs stored: the same batches)
        skipped = cache.skipped
        with drop1.apply(llama), reuse(llama, cache, first_layer(drop1, L)):
            _close(_outputs(llama), full1)
        assert cache.skipped > skipped


@pytest.mark.parametrize("spill", [True, False])
def test_over_budget_spills_or_recomputes(llama, spill, tmp_path, one_thread):
    L = llama.n_layers
    spec = HeadMask(((2, 1),))
    with spec.apply(llama):
        full = _outputs(llama)
    cache = PrefixCache(PrefixCfg(memory_mb=0, spill=spill, scratch=str(tmp_path)))
    with cache:
        with reuse(llama, cache, L):
            _outputs(llama)
        assert cache.bytes == 0
        assert (cache.spilled > 0) == spill
        assert bool(list(tmp_path.glob("interp-prefix-*/*.npy"))) == spill
        with spec.apply(llama), reuse(llama, cache, first_layer(spec, L)):
            _close(_outputs(llama), full)
        assert (cache.skipped > 0) == spill
    assert not list(tmp_path.iterdir())  # the scratch directory is gone


PROMPTS = ["abc", "hello there", "x", "the capital of"]


def _generate(loaded):
    """Greedy continuations (the suite's generation path) and every step's logits."""
    from transformers import GenerationConfig

    from interp.capture.batching import pad

    texts = greedy_generate(loaded, PROMPTS, chat=False, max_new_tokens=6, max_prompt_tokens=32, batch_size=3)
    pad_id = loaded.tokenizer.pad_token_id
    batch = pad([loaded.tokenizer(p)["input_ids"] for p in PROMPTS], pad_id, side="left")
    out = loaded.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                generation_config=GenerationConfig(max_new_tokens=5, do_sample=False, pad_token_id=pad_id,
                                                                   eos_token_id=None),
                                output_scores=True, return_dict_in_generate=True)
    return texts, torch.stack(out.scores)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text", "gpt_neox", "falcon"])
def test_generation_with_kv_cache_equals_full(family, one_thread):
    """A generation's prompt is served from the cache, its KV cache entries replayed; the
    decoding steps run in full and the generated text is the full forward's."""
    loaded = build(family)
    L = loaded.n_layers
    d = tuple(float(x) for x in torch.linspace(-1, 1, loaded.d_model))
    specs = [LayerDrop((2,)), HeadMask(((1, 2),)), ActivationAddition(d, layer=1, alpha=3.0)]
    with PrefixCache() as cache:
        with reuse(loaded, cache, L):
            base = _generate(loaded)
            again = _generate(loaded)  # served from the first's entries
        assert cache.bytes > 0 and cache.skipped > 0
        assert again[0] == base[0]
        torch.testing.assert_close(again[1], base[1], rtol=1e-5, atol=1e-5)
        for spec in specs:
            with spec.apply(loaded):
                full = _generate(loaded)
            assert not torch.allclose(full[1], base[1]), f"{spec.label()} changed nothing"
            skipped = cache.skipped
            with spec.apply(loaded), reuse(loaded, cache, first_layer(spec, L)):
                fast = _generate(loaded)
            assert fast[0] == full[0], spec.label()
            torch.testing.assert_close(fast[1], full[1], rtol=1e-5, atol=1e-5)
            assert cache.skipped > skipped


class Recording(PrefixCache):
    """A prefix cache that remembers which blocks it was given, for the sweep tests below."""

    def __init__(self, cfg: PrefixCfg | None = None) -> None:
        super().__init__(cfg)
        self.layers: set[int] = set()

    def put(self, key, layer, out, writes=None):
        self.layers.add(layer)
        super().put(key, layer, out, writes)


@pytest.fixture
def caches(monkeypatch):
    """Every prefix cache a sweep makes while the test runs, in order."""
    from interp.studies import sweep

    made: list[Recording] = []

    def make(cfg):
        made.append(Recording(cfg))
        return made[-1]

    monkeypatch.setattr(sweep, "PrefixCache", make)
    return made


def test_sweep_with_reuse_stores_the_same_numbers(llama, tmp_path, one_thread, caches):
    from interp.evals import EvalCfg
    from interp.studies.sweep import run_sweep
    from store import Store

    cfg = EvalCfg(tasks=("ppl", "facts", "kl"), budget="ppl=96,facts=4,kl=3", window=24, chat=False)
    d = tuple(float(x) for x in torch.linspace(-1, 1, llama.d_model))
    points = [LayerDrop((1,)), LayerDrop((2,)), HeadMask(((2, 0),)), ActivationAddition(d, layer=1, alpha=1.0)]
    values = {}
    for name, prefix in (("reuse", PrefixCfg()), ("full", None)):
        store = Store(tmp_path / f"{name}.duckdb")
        run = run_sweep(llama, store, study="layers", config={}, points=points, eval_cfg=cfg, progress=False,
                        prefix=prefix)
        with store.connect(read_only=True) as con:
            ev = con.execute("SELECT point, task, metric, value FROM evals WHERE run_id = ? ORDER BY ALL", [run]).df()
            items = con.execute("SELECT point, task, metric, item, value FROM eval_items WHERE run_id = ? "
                                "ORDER BY ALL", [run]).df()
        values[name] = (ev, items)
    assert len(caches) == 1 and caches[0].skipped > 0  # the sweep with reuse served blocks from its cache
    (ev_r, it_r), (ev_f, it_f) = values["reuse"], values["full"]
    assert list(ev_r["point"]) == list(ev_f["point"]) and len(set(ev_r["point"])) == len(points) + 1
    torch.testing.assert_close(torch.tensor(ev_r["value"].values), torch.tensor(ev_f["value"].values),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(it_r["value"].values), torch.tensor(it_f["value"].values),
                               rtol=1e-5, atol=1e-9)


def test_sweep_caches_only_the_blocks_its_points_can_use(llama, tmp_path, one_thread, caches):
    """The base point records blocks below the deepest first layer among the points, not every block;
    a sweep whose points all start at block 0 (or that has only its base left) keeps no cache."""
    from interp.evals import EvalCfg
    from interp.studies.sweep import run_sweep
    from store import Store

    assert llama.n_layers > 2  # else every block would be wanted anyway
    cfg = EvalCfg(tasks=("ppl",), budget="ppl=48", window=24, chat=False)
    d = tuple(float(x) for x in torch.linspace(-1, 1, llama.d_model))

    def sweep_of(name, points, cached=True):
        store = Store(tmp_path / f"{name}.duckdb")
        run = run_sweep(llama, store, study="layers", config={}, points=points, eval_cfg=cfg, progress=False,
                        prefix=PrefixCfg() if cached else None)
        with store.connect(read_only=True) as con:
            return con.execute("SELECT point, value FROM evals WHERE run_id = ? AND metric = 'nll' ORDER BY point",
                               [run]).fetchall()

    shallow = [LayerDrop((1,)), HeadMask(((1, 0),))]
    rows = sweep_of("shallow", shallow)
    assert len(caches) == 1 and caches[0].layers == {0} and caches[0].skipped > 0
    full = sweep_of("shallow-full", shallow, cached=False)
    assert [p for p, _ in rows] == [p for p, _ in full] and len(rows) == 3
    torch.testing.assert_close(torch.tensor([v for _, v in rows]), torch.tensor([v for _, v in full]),
                               rtol=1e-5, atol=0)
    caches.clear()
    sweep_of("block0", [DirectionalAblation(d)])
    sweep_of("base", [])
    assert caches == []

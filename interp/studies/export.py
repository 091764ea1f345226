"""Any evaluated point as a plain transformers checkpoint (``invoke export-model``).

``export_point(loaded, spec, out)`` writes ``save_pretrained`` files of ``loaded`` edited by the
intervention ``spec`` and leaves ``loaded`` exactly as it was. How each kind becomes weights:
- base: the model as loaded;
- layer_drop: the dropped blocks removed physically (``skip_layers`` renumbers the kept ones and
  sets ``num_hidden_layers``/``layer_types``, so the files hold fewer layers);
- prune: the pruned weights are zeros in the files (Wanda recalibrated: deterministic for its spec);
- direction_orthogonalized: the orthogonalised weights; tied embeddings are saved untied (the output
  projection keeps the original matrix, as in the evaluated point);
- head_mask (zeroed heads): the heads' input columns of the output projection are zeros, which is
  what zeroing their z does; HF configs hold one head count for every layer, so heads are zeroed,
  never removed (the report says so); mean-replaced heads are refused (no bias to hold the means);
- activation_addition: alpha * scale * r added to the bias of the projection that writes that site
  (resid_pre of block l: block l-1's MLP output projection; resid_post / mlp_out of block l: its MLP
  output projection; attn_out: its attention output projection) where that projection has a bias and
  adds straight to the residual stream; refused otherwise (no exact weight form);
- layer_drop_healed: the drop with the LoRA update merged: the point's adapters read from the store
  (``layer_heal_adapters``, checked against their content digest; no training), or, for a store that has
  none for the point, healed again (deterministic for its seed); ``interp_export.json`` says which.
Directional ablation and head routing act on activations only: refused, naming the weight-edit kind.

``export_from_store(store, run_id, point, out, model_cfg)`` finds the point's spec and its stored
scores and writes ``interp_export.json`` beside the weights: the run, the point, the spec, what
the export did, the stored metrics, and the perplexity windows (token ids) with the stored
perplexity, so a plain process can check the checkpoint reproduces it (tests/unit/test_export_model.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from interp.interventions import Intervention, from_json
from interp.model.loading import Loaded, ModelCfg
from interp.model.sites import block, param
from interp.provenance import code_version, to_jsonable

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from interp.interventions.directions import ActivationAddition
    from interp.interventions.heads import HeadMask
    from interp.interventions.layers import HealedDrop, LayerDrop
    from interp.interventions.pruning.apply import PruneReport
    from store import Store

MANIFEST = "interp_export.json"
REFUSED = {
    "direction_ablation": "directional ablation acts on activations, not weights: export the run's "
                            "orthogonalised-weights point (the same edit on the weights) instead",
    "head_routing": "a head router chooses heads per token: there is no fixed checkpoint for it",
}


class ExportError(ValueError):
    """A point that has no exact plain-checkpoint form, or an export that cannot be written."""


Edit = tuple[nn.Module, str, torch.Tensor]
"""A new value for ``module.<name>`` (a weight or a bias)."""


@contextlib.contextmanager
def _swapped(params: list[Edit]) -> Iterator[None]:
    """Set each ``module.<name>`` to a new value, restoring the original Parameter objects on exit."""
    saved = [(m, name, getattr(m, name)) for m, name, _ in params]
    try:
        for m, name, value in params:
            setattr(m, name, nn.Parameter(value, requires_grad=False))
        yield
    finally:
        for m, name, old in saved:
            setattr(m, name, old)


def _head_mask(loaded: Loaded, spec: HeadMask) -> tuple[list[Edit], dict[str, object]]:
    if spec.means:
        raise ExportError("mean-replaced heads add a constant the output projection has no bias for here: "
                          "export a zeroed-head point (method zero or gradient) instead")
    d = loaded.d_head
    edits: list[Edit] = []
    for layer in sorted({l for l, _ in spec.heads}):
        o = block(loaded.model, loaded.arch, layer).get_submodule(loaded.arch.o_proj)
        w = param(o).detach().clone()
        for _, h in (x for x in spec.heads if x[0] == layer):
            if loaded.arch.conv1d:  # Conv1D stores (in, out): the head's inputs are rows
                w[h * d:(h + 1) * d, :] = 0
            else:
                w[:, h * d:(h + 1) * d] = 0
        edits.append((o, "weight", w))
    per_layer = {l: sum(1 for x in spec.heads if x[0] == l) for l in range(loaded.n_layers)}
    note = ("heads zeroed in the output projection, not removed: HF configs hold one head count for all "
            "layers and these layers lose different numbers of heads" if len(set(per_layer.values())) > 1 else
            "heads zeroed in the output projection (removing them would need a per-head re-layout of q/k/v)")
    return edits, {"zeroed_heads": [list(x) for x in spec.heads], "note": note}


def _writer(loaded: Loaded, hook: str, layer: int) -> nn.Module:
    arch = loaded.arch
    if hook == "resid_pre":
        if layer == 0:
            raise ExportError("activation addition at resid_pre of block 0 would need a bias on the embedding: "
                              "it has no exact checkpoint form")
        hook, layer = "mlp_out", layer - 1
    if arch.residual_scale != 1.0 or arch.inplace_mlp or (hook == "attn_out" and arch.post_attn_norm) or (
            hook != "attn_out" and arch.post_mlp_norm):
        raise ExportError(f"in {arch.family} the projection's output is scaled or normalised before it joins the "
                          "residual stream: a bias cannot add the steering vector exactly, so it is not exported")
    path = arch.o_proj if hook == "attn_out" else arch.proj["down"]
    return block(loaded.model, arch, layer).get_submodule(path)


def _activation_addition(loaded: Loaded, spec: ActivationAddition) -> tuple[list[Edit], dict[str, object]]:
    from interp.interventions.directions import unit_direction

    if spec.positions != "all":
        raise ExportError(f"steering limited to {spec.positions} tokens has no weight form: a bias acts on every "
                          "token, so the export is refused")
    v = unit_direction(spec.direction, loaded).double() * spec.scale * spec.alpha
    edits: list[Edit] = []
    for layer in spec.layers:
        module = _writer(loaded, spec.hook, layer)
        if getattr(module, "bias", None) is None:
            raise ExportError(f"{loaded.arch.family} has no bias on the projection that writes {spec.hook} of block "
                              f"{layer}: the steering vector cannot be set exactly, so it is not exported")
        bias = param(module, "bias").detach()  # one hook, distinct blocks: each layer has its own writer
        edits.append((module, "bias", (bias.double() + v.to(bias.device)).to(bias.dtype)))
    return edits, {"steering_bias": f"{spec.hook} of blocks {list(spec.layers)}"}


def _stored_lora(loaded: Loaded, spec: HealedDrop, adapters: dict[str, Any]) -> list[tuple[nn.Module, torch.Tensor]]:
    """(module, merged weight) from stored adapters (peft names '...<module>.lora_A.default.weight'): W + B A
    alpha / rank, transposed for Conv1D, as peft merges them; the blocks are those of the dropped stack."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, m in adapters.items():
        path, sep, rest = name.partition(".lora_")
        if not sep or rest[:1] not in ("A", "B"):
            raise ExportError(f"stored adapter '{name}' is not a LoRA matrix: the store holds something else here")
        parts.setdefault(path.removeprefix("base_model.model."), {})[rest[0]] = torch.as_tensor(m)
    merged = []
    for path, ab in sorted(parts.items()):
        try:
            module = loaded.model.get_submodule(path)
        except AttributeError:
            raise ExportError(f"stored adapter for '{path}' does not fit this model: export with the run's model") from None
        w = param(module).detach()
        delta = (ab["B"].float() @ ab["A"].float()) * (spec.heal.alpha / spec.heal.rank)  # (out, in)
        merged.append((module, w + (delta.T if loaded.arch.conv1d else delta).to(w.device, w.dtype)))
    return merged


@contextlib.contextmanager
def _healed_merged(loaded: Loaded, spec: HealedDrop, adapters: dict[str, Any] | None = None,
                   digest: str | None = None) -> Iterator[dict[str, object]]:
    """The dropped model with its healing merged: the stored adapters when given (no training), else healed
    again (deterministic for its seed; stores from before adapters were kept)."""
    from interp.interventions.layers import skip_layers

    with skip_layers(loaded, spec.layers):
        source: dict[str, object]
        if adapters:
            merged, source = _stored_lora(loaded, spec, adapters), {"lora_source": "store", "lora_digest": digest}
        else:
            merged = _healed_again(loaded, spec)
            source = {"lora_source": "healed again: the store has no adapters for this point"}
        with _swapped([(m, "weight", w) for m, w in merged]):
            yield {"dropped_layers": list(spec.layers), "lora_merged": len(merged), "heal": to_jsonable(spec.heal),
                   **source}


def _healed_again(loaded: Loaded, spec: HealedDrop) -> list[tuple[nn.Module, torch.Tensor]]:
    from peft.tuners.lora import LoraLayer

    from interp.interventions.heal import healed

    with healed(loaded, spec.heal):
        # ignore: peft's LoraLayer leaves get_delta_weight to the subclasses it wraps modules in (Linear, ...)
        return [(m.get_base_layer(), param(m.get_base_layer()).detach()
                 + m.get_delta_weight("default")  # type: ignore[attr-defined]
                 .to(param(m.get_base_layer()).dtype))
                for _, m in loaded.model.named_modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def edited(loaded: Loaded, spec: Intervention, adapters: dict[str, Any] | None = None,
           digest: str | None = None) -> Iterator[dict[str, object]]:
    """``loaded`` as the checkpoint of ``spec`` should be, inside the block; yields what was done. A healed
    point merges ``adapters`` (stored LoRA matrices by peft name, with their content ``digest``) when given."""
    kind = spec.kind
    if kind in REFUSED:
        raise ExportError(REFUSED[kind])
    if kind in ("head_mask", "activation_addition"):
        edits, info = (_head_mask(loaded, cast("HeadMask", spec)) if kind == "head_mask"
                       else _activation_addition(loaded, cast("ActivationAddition", spec)))
        with _swapped(edits):
            yield info
    elif kind == "layer_drop_healed":
        with _healed_merged(loaded, cast("HealedDrop", spec), adapters, digest) as info:
            yield info
    elif kind in ("base", "layer_drop", "prune", "direction_orthogonalized"):
        with spec.apply(loaded) as report:
            info = {"dropped_layers": list(cast("LayerDrop", spec).layers)} if kind == "layer_drop" else {}
            if kind == "prune":
                info["pruned"] = cast("PruneReport", report).totals()  # n_params, n_pruned, n_zero, sparsity of the pruned projections
            yield info
    else:
        raise ExportError(f"points of kind '{kind}' cannot be exported yet")


def _untied(loaded: Loaded) -> bool:
    """Whether the output projection no longer shares the embedding's tensor (orthogonalised embeddings)."""
    head = loaded.model.get_submodule(loaded.arch.lm_head)
    embed = loaded.model.get_submodule(loaded.arch.embed)
    return bool(getattr(loaded.model.config, "tie_word_embeddings", False)) and \
        param(head).data_ptr() != param(embed).data_ptr()


def save(loaded: Loaded, out: Path) -> None:
    """save_pretrained the model as it is now (and the tokenizer); tied embeddings that differ are saved untied."""
    model, config = cast("PreTrainedModel", loaded.model), loaded.config  # a Hugging Face causal LM
    configs = [config] + ([config.get_text_config()] if hasattr(config, "get_text_config") and
                          config.get_text_config() is not config else [])
    untie = _untied(loaded)
    saved = [(c, c.tie_word_embeddings) for c in configs if hasattr(c, "tie_word_embeddings")]
    try:
        if untie:
            for c, _ in saved:
                c.tie_word_embeddings = False
        model.save_pretrained(out, safe_serialization=True)
    finally:
        for c, flag in saved:
            c.tie_word_embeddings = flag
    loaded.tokenizer.save_pretrained(out)


def export_point(loaded: Loaded, spec: Intervention, out: str | Path, manifest: dict[str, object] | None = None,
                 adapters: dict[str, Any] | None = None, digest: str | None = None) -> dict[str, object]:
    """Write ``spec``'s checkpoint to ``out`` (a new or empty directory); returns what was done. A healed point
    merges ``adapters`` when given (``export_from_store`` reads them from the store), else it is healed again."""
    out = check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    with edited(loaded, spec, adapters, digest) as info:
        save(loaded, out)
        n = sum(p.numel() for p in loaded.model.parameters())
        zeros = sum(int((p == 0).sum()) for p in loaded.model.parameters())
    done = {**info, "parameters": n, "zero_fraction": zeros / n}
    meta = {**(manifest or {}), "kind": spec.kind, "point": spec.label(), "spec": json.loads(_spec_json(spec)),
            "export": done, "code_version": code_version()}
    (out / MANIFEST).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return done


def _spec_json(spec: Intervention) -> str:
    from interp.interventions import to_json

    return to_json(spec)


def check_model(loaded: Loaded, run: dict) -> None:
    """The loaded model must be the one the run used (name and revision)."""
    if (loaded.name, loaded.revision) != (run["model"], run["revision"]):
        raise ExportError(f"run {run['run_id']} used {run['model']} at {run['revision']}, but --model loaded "
                          f"{loaded.name} at {loaded.revision}: pass the run's model")


def ppl_windows(loaded: Loaded, eval_describe: dict) -> list[list[int]] | None:
    """The token windows the run's perplexity evaluation scored (None when it had no ppl task)."""
    from dataclasses import fields

    from interp.evals import EvalCfg, ppl

    if "ppl" not in eval_describe.get("tasks", ()):
        return None
    names = {f.name for f in fields(EvalCfg) if f.init}
    cfg = EvalCfg(**{k: v for k, v in eval_describe.items() if k in names})
    docs, source = ppl.corpus_texts(cfg)
    w = ppl.make_windows(loaded.tokenizer, docs, ppl.window_length(loaded, cfg), cfg.count("ppl"), cfg.seed,
                         cfg.corpus, source)
    return [list(x) for x in w.windows]


def find_point(store: Store, run_id: int, point: str) -> tuple[dict[str, Any], Intervention, dict[str, float]]:
    """(run row, intervention, stored metrics) of point ``point`` of run ``run_id``; kinds that have no
    checkpoint form are refused here, before any model is loaded."""
    from store.evals import read_point
    from store.runs import get_run

    with store.connect(read_only=True) as con:
        run = get_run(con, run_id)
        spec_json, scores = read_point(con, run_id, point)
    spec = from_json(spec_json)
    if spec.kind in REFUSED:
        raise ExportError(REFUSED[spec.kind])
    return run, spec, {f"{t}/{m}": float(v) for t, m, v in scores.itertuples(index=False)}


def check_out(out: str | Path) -> Path:
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"export directory '{out}' is not empty: give a new directory")
    return out


def run_model(run: dict) -> ModelCfg:
    """How to load the model a run used: its name, dtype and (a hub commit) revision."""
    from interp.model import embedded, gemma
    from interp.model.loading import DEFAULT_MODEL

    rev = run["revision"]
    packaged = {embedded.REVISION: DEFAULT_MODEL, gemma.REVISION: gemma.NAME}
    if rev in packaged:
        return ModelCfg(spec=packaged[rev], dtype=run["dtype"])
    if rev.startswith("gguf:"):
        raise ExportError(f"run {run['run_id']} used the GGUF file {run['model']}: pass its path with --model")
    hub_commit = len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)
    return ModelCfg(spec=run["model"], dtype=run["dtype"], revision=rev if hub_commit else None)


def export_from_store(loaded: Loaded, store: Store, run_id: int, point: str, out: str | Path) -> dict[str, object]:
    """Export point ``point`` of run ``run_id`` (refused before anything is written when it cannot be)."""
    run, spec, metrics = find_point(store, run_id, point)
    check_out(out)
    check_model(loaded, run)
    manifest = {"store": str(store.path), "run_id": run_id, "model": run["model"], "revision": run["revision"],
                "dtype": run["dtype"], "metrics": metrics}
    if "ppl/perplexity" in metrics:
        manifest["ppl"] = {"value": metrics["ppl/perplexity"], "windows": ppl_windows(loaded, run["config"]["eval"])}
    adapters: dict[str, Any] | None = None
    digest: str | None = None
    if spec.kind == "layer_drop_healed":
        from store.layers import stored_adapters

        with store.connect(read_only=True) as con:
            adapters, digest = stored_adapters(con, run_id, point)
    return export_point(loaded, spec, out, manifest, adapters, digest)


__all__ = ["ExportError", "edited", "export_from_store", "export_point", "find_point", "run_model", "save"]

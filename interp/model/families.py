"""The per-model module table, derived from TransformerLens's architecture adapters.

transformer-lens 4.x keeps one adapter per Hugging Face architecture class; its
``component_mapping`` names the layer list, attention, MLP, norms (including the
post-sublayer norms of Gemma 2/3 and OLMo 2), projections, embeddings and unembedding, and
its block type says whether attention and MLP run in parallel. ``arch_sites(model)`` picks
the adapter by the model's class (configs built in code leave ``config.architectures``
empty), reads those names and returns an ``ArchSites``. The model's own HF forward is what
runs; the adapter is only read.

Hand-written parts, each because the adapter does not say what a study needs:
- ``FAMILIES``: the model types interp is tested on; anything else is refused.
- fused projections (``_fused_rows``): the adapters split fused q/k/v and gate/up weights
  with code, not data, so the row layout of each fused matrix is written out here;
- ``_INPLACE_MLP``: Falcon adds the attention output into the MLP output in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from torch import nn

if TYPE_CHECKING:
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
    from transformers import PretrainedConfig

from interp.model.sites import ArchSites, Rows

FAMILIES: dict[str, str] = {
    "llama": "Llama 1-3, SmolLM, TinyLlama",
    "mistral": "Mistral",
    "qwen2": "Qwen 2 / 2.5",
    "qwen3": "Qwen 3",
    "gemma": "Gemma",
    "gemma2": "Gemma 2 (post-norms, softcapping, sliding windows)",
    "gemma3_text": "Gemma 3 text models (post-norms, sliding windows)",
    "gpt2": "GPT-2 (fused qkv, Conv1D)",
    "gpt_neox": "Pythia, GPT-NeoX (parallel, per-head interleaved qkv)",
    "gptj": "GPT-J (parallel)",
    "phi": "Phi 1 / 1.5 / 2 (parallel)",
    "phi3": "Phi 3 / 3.5 mini (fused qkv and gate_up)",
    "olmo": "OLMo",
    "olmo2": "OLMo 2 (post-norms)",
    "stablelm": "StableLM",
    "starcoder2": "StarCoder 2",
    "granite": "Granite (scaled residual and logits)",
    "falcon": "Falcon (parallel, fused multi-query qkv)",
    "cohere": "Command R / Cohere (parallel, logit scale)",
}
"""HF ``model_type`` -> what it covers. Every one is tested on a tiny model built in code
(tests/unit/test_families*.py); the README lists the same keys (a test compares them)."""

_INPLACE_MLP = {"falcon"}
"""Families whose block adds the attention output into the MLP output tensor in place
(``mlp_output += attention_output``): anything reading ``mlp_out`` gets a copy."""

_FUSED_GATE_UP = {"JointGateUpMLPBridge": "gate_up_proj"}
"""MLP bridge class -> name of the fused gate/up module (the adapter splits it in code)."""


class UnsupportedModelError(ValueError):
    """A model interp cannot address; the message names what is missing."""


def _adapter(cls: str, config: PretrainedConfig) -> ArchitectureAdapter | None:
    """The transformer-lens adapter for the model class named ``cls``, built from its config."""
    import torch
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf

    adapter_cls = SUPPORTED_ARCHITECTURES.get(cls)
    if adapter_cls is None:
        return None
    return adapter_cls(build_bridge_config_from_hf(config, cls, "interp", torch.float32))


def _ranges(*spans: tuple[int, int]) -> Rows:
    """Merge adjacent (start, stop) spans."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return tuple(out)


def _fused_rows(model_type: str, config: PretrainedConfig, n_heads: int, n_kv: int, d_head: int) -> dict[str, Rows]:
    """Row spans of q, k and v inside a fused qkv weight, in (out, in) orientation.

    gpt2 / phi3: [q | k | v] concatenated. gpt_neox: per head [q_h | k_h | v_h]
    (``view(..., heads, 3 * d_head).chunk(3)``). falcon: per kv group [q ... q | k | v]
    with the new decoder architecture, [q | k | v] with multi-query, else like gpt_neox.
    """
    q, kv = n_heads * d_head, n_kv * d_head
    if model_type == "gpt_neox" or (model_type == "falcon" and not config.new_decoder_architecture
                                    and not config.multi_query):
        step = 3 * d_head
        return {p: _ranges(*((h * step + i * d_head, h * step + (i + 1) * d_head) for h in range(n_heads)))
                for i, p in enumerate("qkv")}
    if model_type == "falcon" and config.new_decoder_architecture:
        per = n_heads // n_kv
        step = (per + 2) * d_head
        return {"q": _ranges(*((g * step, g * step + per * d_head) for g in range(n_kv))),
                "k": _ranges(*((g * step + per * d_head, g * step + (per + 1) * d_head) for g in range(n_kv))),
                "v": _ranges(*((g * step + (per + 1) * d_head, (g + 1) * step) for g in range(n_kv)))}
    return {"q": ((0, q),), "k": ((q, q + kv),), "v": ((q + kv, q + 2 * kv),)}


def _kv_heads(model_type: str, config: PretrainedConfig, n_heads: int) -> int:
    if model_type == "falcon":
        if config.new_decoder_architecture:
            return config.num_kv_heads
        return 1 if config.multi_query else n_heads
    return getattr(config, "num_key_value_heads", None) or n_heads


def _refusal(cls: str, model_type: str, adapter: ArchitectureAdapter | None) -> str | None:
    """Why interp cannot address a model of class ``cls``, or None."""
    known = ", ".join(FAMILIES)
    if adapter is None:
        return (f"unsupported model {cls} (model type '{model_type}'): transformer-lens has no architecture "
                f"adapter for it, so interp has no module table; supported families: {known}")
    blocks = (adapter.component_mapping or {}).get("blocks")
    subs = getattr(blocks, "submodules", None) or {}
    if blocks is None or "attn" not in subs:
        return (f"unsupported model {cls} (model type '{model_type}'): it has no decoder blocks with "
                f"self-attention (encoder-decoder, state-space or recurrent models are not supported)")
    mlp = type(subs.get("mlp")).__name__
    if "MoE" in mlp or "mlp" not in subs:
        return (f"unsupported model {cls} (model type '{model_type}'): mixture-of-experts MLPs are not "
                "supported (weight pruning, healing and MLP sites assume one dense MLP per block)")
    if model_type not in FAMILIES:
        return (f"unsupported model type '{model_type}' ({cls}): interp is tested on {known}; "
                "add it to interp.model.families.FAMILIES with a tiny-model test to use it")
    return None


def check_config(config: PretrainedConfig) -> None:
    """Refuse a model from its config alone, before any weights are loaded."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_type = getattr(config, "model_type", "?")
    try:
        # transformers types the lazy mapping's values as class pairs; a lookup returns one class
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].__name__  # type: ignore[attr-defined]
    except KeyError:
        raise UnsupportedModelError(f"unsupported model type '{model_type}': transformers has no causal-LM "
                                    f"class for it; interp supports {', '.join(FAMILIES)}") from None
    if (why := _refusal(cls, model_type, _adapter(cls, config))) is not None:
        raise UnsupportedModelError(why)


def arch_sites(model: nn.Module) -> ArchSites:
    """The module table of ``model`` (its class picks the adapter), checked against its modules."""
    from transformer_lens.model_bridge.generalized_components import ParallelBlockBridge

    config, cls = cast("PretrainedConfig", model.config), type(model).__name__  # a Hugging Face causal LM
    model_type = getattr(config, "model_type", "?")
    adapter = _adapter(cls, config)
    if (why := _refusal(cls, model_type, adapter)) is not None:
        raise UnsupportedModelError(why)
    assert adapter is not None  # _refusal refuses a model with no adapter
    mapping: dict[str, Any] = adapter.components  # the bridges are read by name: dynamic to the checker
    blocks = mapping["blocks"]
    subs = blocks.submodules
    attn, mlp = subs["attn"], subs["mlp"]
    a_subs, m_subs = attn.submodules, mlp.submodules
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    proj: dict[str, str] = {"o": f"{attn.name}.{a_subs['o'].name}", "down": f"{mlp.name}.{m_subs['out'].name}"}
    slices: dict[str, Rows] = {}
    if "qkv" in a_subs:  # fused: q, k, v are row slices of one matrix
        fused = f"{attn.name}.{a_subs['qkv'].name}"
        rows = _fused_rows(model_type, config, n_heads, _kv_heads(model_type, config, n_heads), d_head)
        for p in "qkv":
            proj[p], slices[p] = fused, rows[p]
    else:
        proj.update({p: f"{attn.name}.{a_subs[p].name}" for p in "qkv"})
    if type(mlp).__name__ in _FUSED_GATE_UP:
        fused = f"{mlp.name}.{_FUSED_GATE_UP[type(mlp).__name__]}"
        d_mlp = config.intermediate_size
        proj["gate"], slices["gate"] = fused, ((0, d_mlp),)
        proj["up"], slices["up"] = fused, ((d_mlp, 2 * d_mlp),)
    else:
        if "gate" in m_subs:
            proj["gate"] = f"{mlp.name}.{m_subs['gate'].name}"
        proj["up"] = f"{mlp.name}.{m_subs['in'].name}"
    post_attn, post_mlp = subs.get("ln1_post"), subs.get("ln2_post")
    lm_head = mapping["unembed"].name
    if not _has(model, lm_head) and _has(model, "embed_out"):  # GPT-NeoX before transformers 5.14
        lm_head = "embed_out"
    sites = ArchSites(
        layers=blocks.name, attn=attn.name, mlp=mlp.name, o_proj=proj["o"], embed=mapping["embed"].name,
        final_norm=mapping["ln_final"].name, lm_head=lm_head,
        proj={p: proj[p] for p in ("q", "k", "v", "o", "gate", "up", "down") if p in proj},
        conv1d=type(model.get_submodule(f"{blocks.name}.0.{proj['o']}")).__name__ == "Conv1D",
        slices=slices, family=model_type, adapter=type(adapter).__name__,
        pos_embed=mapping["pos_embed"].name if "pos_embed" in mapping else None,
        post_attn_norm=post_attn.name if post_attn is not None else None,
        post_mlp_norm=post_mlp.name if post_mlp is not None else None,
        norm_offset=1.0 if getattr(adapter.cfg, "rmsnorm_uses_offset", False) else 0.0,
        parallel=isinstance(blocks, ParallelBlockBridge),
        residual_scale=float(getattr(blocks, "residual_contribution_scale", 1.0)),
        inplace_mlp=model_type in _INPLACE_MLP,
        **_logits_transform(adapter),
    )
    _check_paths(model, sites)
    return sites


def _logits_transform(adapter: ArchitectureAdapter) -> dict:
    """The adapter's post-unembedding transform as numbers (a scale, then a softcap), checked
    against the adapter on random logits. Numbers, not the adapter's method: ``ArchSites``
    travels with the model (nnsight's remote path serialises it) and must not pull in
    transformer-lens where it is unpickled."""
    import torch

    transform = adapter.apply_output_logits_transform
    cap = getattr(adapter.cfg, "output_logits_soft_cap", None)
    cap = float(cap) if cap and cap > 0 else None
    tiny = torch.tensor([1e-6], dtype=torch.float64)  # where tanh is the identity to 1e-13
    scale = float(transform(tiny)[0] / tiny[0])
    probe = 20 * torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = ArchSites("", "", "", "", "", "", "", {}, logit_scale=scale, logit_softcap=cap).logits(probe)
    if not torch.allclose(ours, transform(probe), rtol=1e-9, atol=1e-9):
        raise UnsupportedModelError(f"{type(adapter).__name__} transforms logits in a way interp does not model "
                                    "(not a scale then a softcap)")
    return {"logit_scale": round(scale, 12), "logit_softcap": cap}


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _check_paths(model: nn.Module, arch: ArchSites) -> None:
    """Every path the table names exists in this model (refuse a variant the adapter misdescribes)."""
    first = f"{arch.layers}.0."
    paths = [arch.layers, arch.embed, arch.final_norm, arch.lm_head, *(p for p in [arch.pos_embed] if p)]
    paths += [first + p for p in [arch.attn, arch.mlp, *arch.proj.values(), arch.post_attn_norm,
                                  arch.post_mlp_norm] if p]
    missing = [p for p in paths if not _has(model, p)]
    if missing:
        raise UnsupportedModelError(
            f"unsupported variant of '{arch.family}' ({type(model).__name__}): transformer-lens's "
            f"{arch.adapter} names {', '.join(missing)}, which this model does not have")

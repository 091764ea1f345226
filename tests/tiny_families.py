"""Tiny random-init models of every supported family, built in code (no files, no hub).

Each config exercises the family's variants: grouped- and multi-query attention, sliding
windows and softcapping (Gemma 2/3), post-sublayer norms (Gemma 2/3, OLMo 2), parallel
attention and MLP (GPT-J, GPT-NeoX, Phi, Falcon, Cohere), fused projections (GPT-2, GPT-NeoX,
Phi-3, Falcon), tied and untied embeddings, biases, and scaled residuals/logits (Granite,
Cohere). 3 layers, d_model 64, 4 query heads of 16: about 50k parameters, built in
milliseconds.
"""

from __future__ import annotations

import functools

import torch

D, HEADS, LAYERS, VOCAB = 64, 4, 3, 259
_IDS = {"vocab_size": VOCAB, "pad_token_id": 256, "bos_token_id": 257, "eos_token_id": 258}
_COMMON = {**_IDS, "hidden_size": D, "intermediate_size": 2 * D, "num_hidden_layers": LAYERS,
           "num_attention_heads": HEADS, "max_position_embeddings": 256}


def _spec(family: str) -> tuple[str, str, dict]:
    """(config class, model class, config kwargs) of a family's tiny model."""
    sliding = {"sliding_window": 6}
    return {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {**_COMMON, "num_key_value_heads": 2,
                                                      "tie_word_embeddings": True}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {**_COMMON, "num_key_value_heads": 1, **sliding,
                                                            "tie_word_embeddings": False}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {**_COMMON, "num_key_value_heads": 2,
                                                      "tie_word_embeddings": True}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**_COMMON, "num_key_value_heads": 2, "head_dim": 16,
                                                      "tie_word_embeddings": False}),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", {**_COMMON, "num_key_value_heads": 1, "head_dim": 16}),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
            **_COMMON, "num_key_value_heads": 2, "head_dim": 16, **sliding, "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0, "query_pre_attn_scalar": 16}),
        "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
            **_COMMON, "num_key_value_heads": 1, "head_dim": 16, **sliding,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "query_pre_attn_scalar": 16}),
        "gpt2": ("GPT2Config", "GPT2LMHeadModel", {**_IDS, "n_embd": D, "n_layer": LAYERS, "n_head": HEADS,
                                                   "n_positions": 256}),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_COMMON, "rotary_pct": 0.5,
                                                             "tie_word_embeddings": False}),
        "gptj": ("GPTJConfig", "GPTJForCausalLM", {**_IDS, "n_embd": D, "n_layer": LAYERS, "n_head": HEADS,
                                                   "rotary_dim": 8, "n_positions": 256}),
        "phi": ("PhiConfig", "PhiForCausalLM", {**_COMMON, "partial_rotary_factor": 0.5}),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", {**_COMMON, "num_key_value_heads": 2,
                                                   "original_max_position_embeddings": 256}),
        "olmo": ("OlmoConfig", "OlmoForCausalLM", {**_COMMON, "clip_qkv": 8.0}),
        "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {**_COMMON, "num_key_value_heads": 2}),
        "stablelm": ("StableLmConfig", "StableLmForCausalLM", {**_COMMON, "num_key_value_heads": 2,
                                                               "use_qkv_bias": True, "partial_rotary_factor": 0.5}),
        "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {**_COMMON, "num_key_value_heads": 2,
                                                                     **sliding, "use_bias": True}),
        "granite": ("GraniteConfig", "GraniteForCausalLM", {
            **_COMMON, "num_key_value_heads": 2, "residual_multiplier": 0.5, "embedding_multiplier": 2.0,
            "logits_scaling": 4.0, "attention_multiplier": 0.2, "tie_word_embeddings": True}),
        "falcon": ("FalconConfig", "FalconForCausalLM", {**_IDS, "hidden_size": D, "num_hidden_layers": LAYERS,
                                                         "num_attention_heads": HEADS, "multi_query": True,
                                                         "parallel_attn": True, "bias": True}),
        "falcon_new": ("FalconConfig", "FalconForCausalLM", {
            **_IDS, "hidden_size": D, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_kv_heads": 2, "new_decoder_architecture": True, "parallel_attn": True}),
        "cohere": ("CohereConfig", "CohereForCausalLM", {**_COMMON, "num_key_value_heads": 2,
                                                         "logit_scale": 0.5, "tie_word_embeddings": True}),
    }[family]


VARIANTS = ("falcon_new",)
"""Extra configurations of a family (Falcon's new decoder architecture: grouped qkv layout)."""


def build_model(family: str, seed: int = 0):
    import transformers

    cfg_cls, model_cls, kwargs = _spec(family)
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_cls)(**kwargs)
    config._attn_implementation = "eager"
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():  # norms start at 1 / 0: random scales make post-norm effects visible
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name.split(".")[-2]:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@functools.cache
def _tokenizer():
    """One byte tokenizer for every tiny model: corpus windows (Wanda calibration, LoRA healing)
    are cached per tokenizer, so the book corpus is tokenised once per test session."""
    from tests.conftest import byte_tokenizer

    return byte_tokenizer()


def build(family: str, seed: int = 0):
    """A ``Loaded`` tiny model of ``family`` with the byte tokenizer."""
    from interp.model.loading import wrap

    return wrap(build_model(family, seed), _tokenizer(), name=f"tiny-{family}", revision=f"seed{seed}")

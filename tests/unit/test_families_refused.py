"""The README's family list is the code's table, and every other model is refused in one line
that names what is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from interp.model.families import FAMILIES
from interp.model.loading import ModelLoadError, wrap

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_exactly_the_supported_families():
    text = README.read_text()
    block = text.split("<!-- families -->")[1].split("<!-- /families -->")[0]
    listed = dict(re.findall(r"^- `([\w.-]+)`: (.+)$", block, flags=re.MULTILINE))
    assert listed == FAMILIES


def _tiny(config_cls: str, model_cls: str, **kw):
    import transformers

    config = getattr(transformers, config_cls)(**kw)
    return getattr(transformers, model_cls)(config)


@pytest.mark.parametrize("config_cls,model_cls,kw,msg", [
    ("MixtralConfig", "MixtralForCausalLM",
     {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 1, "num_local_experts": 2, "num_experts_per_tok": 1},
     "mixtral.* mixture-of-experts MLPs are not supported"),
    ("MambaConfig", "MambaForCausalLM", {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1},
     "mamba.* no decoder blocks with self-attention"),
    ("OPTConfig", "OPTForCausalLM", {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "ffn_dim": 32,
                                         "num_attention_heads": 2, "word_embed_proj_dim": 16},
     "unsupported model type 'opt' .*interp is tested on llama, mistral"),
    ("BioGptConfig", "BioGptForCausalLM", {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
                                               "num_attention_heads": 2, "intermediate_size": 32},
     "BioGptForCausalLM .*transformer-lens has no architecture adapter"),
])
def test_other_models_are_refused_in_one_line(config_cls, model_cls, kw, msg):
    from tests.conftest import byte_tokenizer

    with pytest.raises(ModelLoadError, match=msg) as e:
        wrap(_tiny(config_cls, model_cls, **kw), byte_tokenizer())
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)

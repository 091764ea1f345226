
import pytest
import torch

from interp.model.loading import ModelCfg, ModelLoadError, load_model


def test_local_directory_goes_through_from_pretrained(tiny, tmp_path):
    path = tmp_path / "tiny-model"
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    loaded = load_model(str(path))
    assert loaded.name == str(path.resolve()) and loaded.revision.startswith("local:")
    assert (loaded.n_layers, loaded.d_model, loaded.n_heads) == (4, 64, 4)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, tiny.model(input_ids=ids).logits)
    assert loaded.describe()["dtype"] == "float32"
    half = load_model(ModelCfg(str(path), dtype="bfloat16"))
    assert next(half.model.parameters()).dtype == torch.bfloat16


def test_unknown_path_and_bad_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_hub_unreachable_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as e:
        load_model("Qwen/Qwen3-0.6B")
    msg = str(e.value)
    assert "cannot reach the Hugging Face hub" in msg and "smollm2-135m-instruct" in msg and "\n" not in msg


def test_unsupported_architecture(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    path = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                             num_attention_heads=2, word_embed_proj_dim=16)).save_pretrained(path)
    with pytest.raises(ModelLoadError, match="unsupported model type 'opt'.*tested on llama") as e:
        load_model(str(path))
    assert "\n" not in str(e.value)


def test_bad_model_cfg():
    with pytest.raises(ValueError, match="unknown dtype"):
        ModelCfg(dtype="float8")
    with pytest.raises(ValueError, match="empty model spec"):
        ModelCfg(spec=" ")

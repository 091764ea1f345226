"""Shared fixtures: tiny random-init models built in code (fast unit tests) and the real
embedded model (integration tests, loaded once per session)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# The README's test command runs the suite on pytest-xdist workers (``-n auto --dist loadfile``): the
# cores share out among them, in this process and in the CLI subprocesses the tests start (OMP_NUM_THREADS).
# Measured on the 2-core CI machine (BENCHMARKS.md §14): one process kept about one core busy (56% of two, vmstat);
# two workers finish in 0.56x its time.


def _usable_cores() -> Callable[[], int]:
    """``store.cores.usable_cores`` (affinity and cgroup quota, not the host's count), loaded from its file.

    Not ``import store``: that would import duckdb and pyarrow here, before the threads are set below and
    before any test. Both fresh-clone CI runs of a version that did (8d246ef) lost a worker to a segmentation
    fault in DuckDB's ``Connection.close()``; the link is not proven, so the import order stays as it was in
    every passing run."""
    spec = importlib.util.spec_from_file_location("_store_cores", Path(__file__).resolve().parents[1] / "store" / "cores.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.usable_cores


_cores = _usable_cores()
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, _cores() // _WORKERS))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent under -p no:xdist
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most 4, and at most one per 4 GB of available memory (a worker that
    runs the real models' studies peaks near 3 GB)."""
    n = min(_cores(), 4)
    if (available := _available_memory()) is not None:
        n = min(n, available // (4 << 30))
    return max(1, n)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(chat: bool = True):
    """A byte-level tokenizer built in code: 256 byte tokens plus specials, no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for s in specials:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=specials)
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(n_layers: int = 4, d_model: int = 64, n_heads: int = 4, n_kv: int = 2, seed: int = 0,
               vocab: int = 259):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                      max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=256,
                      bos_token_id=257, eos_token_id=258)
    return LlamaForCausalLM(cfg)


def tiny_gpt2(n_layers: int = 3, d_model: int = 64, n_heads: int = 4, seed: int = 0, vocab: int = 259):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=256,
                     pad_token_id=256, bos_token_id=257, eos_token_id=258)
    return GPT2LMHeadModel(cfg)


def word_prompts(path, n: int, seed: int = 0) -> None:
    """A JSONL prompt file of ``n`` prompts p000.. of 2-30 random words (varied lengths, seeded)."""
    import json
    import random

    words = ["river", "garden", "stone", "light", "paper", "window", "music", "field", "cloud", "number"]
    rng = random.Random(seed)
    path.write_text("\n".join(json.dumps({"id": f"p{i:03d}", "text": " ".join(rng.choices(words, k=rng.randint(2, 30)))})
                              for i in range(n)))


@pytest.fixture
def tiny():
    """A 4-layer grouped-query Llama (4 query heads, 2 KV heads) with a byte tokenizer."""
    from interp.model.loading import wrap

    return wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")


@pytest.fixture
def tiny_gpt():
    from interp.model.loading import wrap

    return wrap(tiny_gpt2(), byte_tokenizer(chat=False), name="tiny-gpt2", revision="seed0")


@pytest.fixture
def one_thread():
    """One torch thread for the test: several times faster than two on a shared, loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def embedded():
    """The real embedded model (SmolLM2-135M-Instruct), loaded once per session."""
    from interp.model.loading import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture
def store(tmp_path):
    from store import Store

    return Store(tmp_path / "test.duckdb")


def read_only_fs(monkeypatch, root) -> None:
    """Every write under ``root`` fails with EROFS, as on a read-only mount (CI runs as root, where
    chmod does not stop writes, and cannot mount): Python-level opens for writing, os.open with a
    writing flag, and mkdir/replace/rename/unlink/rmdir."""
    import builtins
    import errno

    root = Path(root).resolve()

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def under(path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except (TypeError, ValueError):
            return False

    real_open, real_os_open = builtins.open, os.open

    def fake_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            refuse(path)
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    for name in ("mkdir", "replace", "rename", "unlink", "rmdir"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda p, *a, _real=real, **k: refuse(p) if under(p) else _real(p, *a, **k))

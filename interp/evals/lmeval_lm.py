"""lm-eval's ``LM`` interface over the model the suite already holds, edits and all.

``SuiteLM(loaded)`` scores with ``loaded.model`` itself: no copy, no reload, so whatever
intervention is active while a sweep evaluates a point (hooks, masked or swapped weights,
dropped layers, a router) is active while lm-eval scores it.

Why not lm-eval's ``HFLM(pretrained=model)``: its constructor calls ``model.tie_weights()``,
which re-ties an lm_head that an edit untied on purpose (``OrthogonalizedWeights`` swaps the
embedding but keeps the original unembedding) and would leave the model changed after the
edit is undone, and it may add a pad token to the shared tokenizer. Tokenisation follows
HFLM exactly (lm-eval's ``TemplateLM`` splits context and continuation; ``tok_encode`` is
HFLM's rule), so scores equal HFLM's on a saved checkpoint of the same point
(tests/unit/test_lmeval_hf.py). Requests that share their model input (the letters A-D after
one MMLU prompt) share one forward pass, as HFLM's logits cache does; batches are packed by
tokens (``batch_tokens``), right-padded.
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, cast

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from lm_eval.models.utils_hf import stop_sequences_criteria
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from interp.capture.batching import pad
from interp.evals.config import EvalError
from interp.evals.lm import _batches, logit_positions

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from interp.evals.lm import CausalLM
    from interp.model.loading import Loaded

Request = tuple[tuple[str, str] | None, list[int], list[int]]
"""A scoring request as lm-eval's ``TemplateLM`` hands it on: ((context, continuation) or None for a
rolling window, context tokens, continuation tokens)."""

MAX_GEN_TOKS = 256
"""Generation length when a task sets none (HFLM's default)."""

MIN_FILL = 0.75
"""A model input joins a batch only if it is at least this share of the batch's longest input."""


class SuiteLM(TemplateLM):
    """lm-eval model backed by a ``Loaded`` (``interp.model.loading``); greedy generation only."""

    backend = "causal"

    def __init__(self, loaded: Loaded, batch_tokens: int = 1024, gen_batch: int = 16) -> None:
        super().__init__()
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.batch_tokens = batch_tokens
        self.gen_batch = gen_batch
        self._device = loaded.device
        pad_id = self.tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else self.eot_token_id
        self._keeps_logits = "logits_to_keep" in inspect.signature(loaded.model.forward).parameters

    @property
    def model(self) -> CausalLM:
        return cast("CausalLM", self.loaded.model)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return resolve_max_length(self.model.config, self.tokenizer)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: object) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            kw["add_special_tokens"] = False  # the text already starts with BOS
        ids = self.tokenizer.encode(string, **kw)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    # -- scoring -----------------------------------------------------------------------------

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              **kwargs: object) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy one) per request."""
        limit = self.max_length
        inputs: dict[tuple[int, ...], int] = {}  # model input -> index: requests that share it share a forward
        jobs = []  # (input index, continuation tokens)
        for _, ctx, cont in requests:
            whole = (ctx + cont)[-(limit + 1):]  # too long: cut from the left, as lm-eval does
            jobs.append((inputs.setdefault(tuple(whole[:-1]), len(inputs)), whole[-len(cont):]))
        keys = list(inputs)
        tail = [0] * len(keys)  # how many final positions each input's readers need
        readers: list[list[int]] = [[] for _ in keys]
        for r, (k, cont) in enumerate(jobs):
            tail[k] = max(tail[k], len(cont))
            readers[k].append(r)
        out: list[tuple[float, bool] | None] = [None] * len(jobs)
        device = next(self.model.parameters()).device
        bar = tqdm(total=len(jobs), desc="lm-eval loglikelihood", unit="req", disable=disable_tqdm)
        # Only similar lengths share a batch: on CPU a batch saves little (about 20% per token) and padding
        # costs in full (2 MMLU prompts of 199 tokens with 2 ARC prompts of 17: 4.8 s padded together,
        # 3.2 s apart, embedded model, 1 thread).
        kept_max = logit_positions(self.model)  # the evaluations' bound on one pass's logits (interp.evals.lm)

        def fits(idx: list[int]) -> bool:  # idx[0] is the batch's longest input: its width
            width = len(keys[idx[0]])
            kept = width - min(len(keys[k]) - tail[k] for k in idx) if self._keeps_logits else width  # per row
            return len(idx) * width <= self.batch_tokens and (kept_max is None or len(idx) * kept <= kept_max)

        for idx in _batches([len(k) for k in keys], fits, min_fill=MIN_FILL):
            batch = pad([list(keys[i]) for i in idx], self.pad_id, side="right").to(device)
            # Input ids only, as HFLM does: right padding sits after every real token, so under causal
            # attention it never reaches the positions read here, and without an explicit mask SDPA
            # takes its causal fast path (a 600-token prompt of the embedded model: 2.2 s against 3.9 s
            # with an all-ones mask and position ids, 1 CPU thread).
            # Unembed only the positions read (from the earliest one any row needs): the unembedding is a
            # fifth of this model's weights and its logits the largest tensor (2 x 500 tokens: 6.7 s -> 5.2 s).
            width, start = batch.input_ids.shape[1], min(len(keys[k]) - tail[k] for k in idx)
            kw = {"logits_to_keep": width - start} if self._keeps_logits else {}
            logits = self.model(input_ids=batch.input_ids, **kw).logits  # (batch, kept positions, vocab)
            offset = width - logits.shape[1]
            for row, k in enumerate(idx):
                n = len(keys[k]) - offset
                logp = torch.log_softmax(logits[row, n - tail[k]:n].float(), dim=-1)  # (tail, vocab)
                for r in readers[k]:
                    want = torch.tensor(jobs[r][1], device=logp.device)
                    rows = logp[tail[k] - len(want):]
                    out[r] = (float(rows.gather(-1, want[:, None]).sum()), bool((rows.argmax(-1) == want).all()))
                    if requests[r][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[r][0], out[r])
                bar.update(len(readers[k]))
            del logits
        bar.close()
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in disjoint windows of the model's context (lm-eval's rule)."""
        windows: list[Request] = []
        owner: list[int] = []
        for i, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores, strict=True):
            totals[i] += lp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations cut at the task's stop strings (and EOS), batched by length with left padding."""
        eos = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="lm-eval generate", unit="req", disable=disable_tqdm)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], MAX_GEN_TOKS)
            if kwargs.get("do_sample"):
                raise EvalError(f"lm-eval task '{requests[members[0]].task_name}' asks for sampled generation: "
                                "the suite generates greedily only")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            new = int(kwargs.pop("max_gen_toks"))
            room = self.max_length - new
            if room <= 0:
                raise EvalError(f"the model's context ({self.max_length} tokens) leaves no room for a prompt "
                                f"before {new} generated tokens")
            ids = {i: self.tok_encode(requests[i].args[0], left_truncate_len=room) for i in members}
            order = sorted(members, key=lambda i: -len(ids[i]))
            for b in range(0, len(order), self.gen_batch):
                chunk = order[b:b + self.gen_batch]
                batch = pad([ids[i] for i in chunk], self.pad_id, side="left").to(self.loaded.device)
                width = batch.input_ids.shape[1]
                gen = self.model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=new,
                    do_sample=False, pad_token_id=self.pad_id, use_cache=True,
                    stopping_criteria=stop_sequences_criteria(self.tokenizer, until, width, len(chunk)))
                for row, i in enumerate(chunk):
                    text = self.tokenizer.decode(gen[row, width:].tolist(), skip_special_tokens=True)
                    out[i] = postprocess_generated_text(text, until, None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def get_model_info(self) -> dict:
        return {"model": self.loaded.name, "revision": self.loaded.revision}

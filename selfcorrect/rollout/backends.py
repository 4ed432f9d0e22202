"""Generation backends: token ids in, sampled token ids out.

A backend implements one method::

    generate(prompts: list[list[int]], params: SamplingParams, progress=None) -> list[Generation]

It sees only token ids, so episodes keep exactly what was sampled.  The
transformers backend lives here; a vLLM backend can implement the same
method (``selfcorrect.rollout.vllm_backend``, where installed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one attempt. ``temperature == 0`` means greedy decoding (the paper's eval protocol)."""

    temperature: float = 0.0
    """Softmax temperature; 0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 = off."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 = off."""
    max_new_tokens: int = 256
    """Token limit per attempt; an attempt that reaches it is marked truncated."""

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and 0.0 <= self.temperature <= 100.0):
            raise ConfigError(f"temperature must be a number in [0, 100] (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Generation:
    """One sampled continuation."""

    ids: list[int]
    """Sampled ids, up to and including the first end-of-turn token (if any)."""
    truncated: bool
    """No end-of-turn token within ``max_new_tokens``."""


class GenerationBackend(Protocol):
    eos_token_ids: set[int]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[Generation]:
        """Continue every prompt once; ``progress(n)`` is called as ``n`` more prompts finish."""
        ...


class TransformersBackend:
    """Batched sampling with a transformers model: left padding, a KV cache, and finished rows dropped.

    ``model.generate`` keeps every row of a batch alive until the *longest*
    row ends, so one rambling attempt makes 63 finished rows pay for all of
    its tokens.  This loop removes finished rows from the batch (and their KV
    cache) at every step, so compute follows the tokens actually sampled.
    Logits are computed for the last position only (``logits_to_keep=1``),
    never for the whole prompt.

    Prompts are sorted by length before batching so each batch pads little
    (for attempt 2 this also groups similar attempt-1 lengths), and results
    come back in input order.  Sampling uses transformers' logits warpers
    (temperature, top-k, top-p) on the global torch generator.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, eos_token_ids: set[int] | None = None):
        from .episodes import end_of_turn_ids

        if batch_size < 1:
            raise ConfigError(f"generation batch size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_token_ids = eos_token_ids or end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_token_ids)

    @staticmethod
    def _warpers(params: SamplingParams):
        from transformers.generation.logits_process import (
            LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

        warpers = LogitsProcessorList()
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(float(params.temperature)))
        if params.top_k:
            warpers.append(TopKLogitsWarper(int(params.top_k)))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(float(params.top_p)))
        return warpers

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[Generation]:
        if not prompts:
            return []
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo: lo + self.batch_size]
                for i, gen in zip(idx, self._generate_batch([prompts[i] for i in idx], params)):
                    results[i] = gen
                if progress is not None:
                    progress(len(idx))
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        device = next(self.model.parameters()).device
        warpers = None if params.greedy else self._warpers(params)
        eos = torch.tensor(sorted(self.eos_token_ids), device=device)
        b, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends at column width-1
            input_ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # Positions count real tokens only, so a left-padded row sees the same positions as unpadded.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

        cache_kwarg = _cache_argument(self.model)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, logits_to_keep=1)
        cache = getattr(out, cache_kwarg)
        logits = out.logits[:, -1, :].float()                 # [b_active, V]
        next_position = position_ids[:, -1:] + 1              # [b_active, 1]
        active = torch.arange(b, device=device)               # original row of each live row
        sampled: list[list[int]] = [[] for _ in range(b)]
        finished = [False] * b

        for step in range(params.max_new_tokens):
            if warpers is None:
                tokens = logits.argmax(-1)
            else:
                scores = warpers(None, logits)
                tokens = torch.multinomial(torch.softmax(scores, -1), 1).squeeze(-1)
            for row, tok in zip(active.tolist(), tokens.tolist()):
                sampled[row].append(tok)
            done = torch.isin(tokens, eos)
            for row in active[done].tolist():
                finished[row] = True
            if step + 1 == params.max_new_tokens:
                break
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            if keep.numel() < active.numel():                 # drop finished rows everywhere
                _select_rows(cache, keep)
                active, tokens = active[keep], tokens[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((active.numel(), 1))], dim=-1)
            out = self.model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_position,
                             use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
            cache = getattr(out, cache_kwarg)
            logits = out.logits[:, -1, :].float()
            next_position = next_position + 1
        return [Generation(ids=ids, truncated=not done_) for ids, done_ in zip(sampled, finished)]


def _cache_argument(model) -> str:
    """The forward() keyword of the KV cache: ``cache`` (transformers >= 5.20) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _select_rows(cache, keep: torch.Tensor) -> None:
    """Keep only the batch rows ``keep`` of a transformers KV cache (in place)."""
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            layer.batch_select_indices(keep)
    elif hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
    else:  # pragma: no cover - legacy tuple caches are gone from transformers >= 4.56
        raise TypeError(f"cannot drop rows from a cache of type {type(cache).__name__}")

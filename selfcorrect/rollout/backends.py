"""Generation backends: token ids in, sampled token ids out.

A backend implements one method::

    generate(prompts: list[list[int]], params: SamplingParams, progress=None) -> list[Generation]

It sees only token ids, so episodes keep exactly what was sampled.  The
transformers backend lives here; a vLLM backend can implement the same
method (``selfcorrect.rollout.vllm_backend``, where installed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    logprobs: list[float] | None = None
    """Log-prob of each sampled id under the distribution it was drawn from (after temperature,
    top-k and top-p; greedy: the untempered distribution).  The trainer compares these with
    its own log-probs of the same tokens (the rollout/trainer gap)."""


class GenerationBackend(Protocol):
    eos_token_ids: set[int]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 progress: Callable[[int], None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        """Continue every prompt once; ``progress(n)`` is called as ``n`` more prompts finish.

        With ``seeds`` (one per prompt), each row samples from its own generator,
        so a row's continuation does not depend on which other rows share its batch
        (or its process, in data-parallel training).
        """
        ...

    def sync_weights(self, weights: Callable[[], Iterable[tuple[str, torch.Tensor]]]) -> None:
        """Sample from the policy whose ``(Hugging Face name, tensor)`` pairs ``weights()`` returns.

        Called after every applied optimizer step.  A backend that generates with the live policy
        object ignores it (and never calls ``weights``); an engine holding its own copy loads them.
        """
        ...


class TransformersBackend:
    """Batched sampling with a transformers model: left padding, a KV cache, and finished rows dropped.

    ``model.generate`` keeps every row of a batch alive until the *longest*
    row ends, so one rambling attempt makes 63 finished rows pay for all of
    its tokens.  This loop removes finished rows from the batch (and their KV
    cache) at every step, so compute follows the tokens actually sampled.
    Logits are computed for the last position only (``logits_to_keep=1``),
    never for the whole prompt.  The prefix all prompts of a batch share
    (chat-template system turn, instruction, a problem's samples) is encoded
    once and its KV cache repeated (see :meth:`_prefill`).

    Prompts are sorted by length before batching so each batch pads little
    (for attempt 2 this also groups similar attempt-1 lengths), and results
    come back in input order.  Sampling uses transformers' logits warpers
    (temperature, top-k, top-p) on the global torch generator.
    """

    min_shared_prefix = 8
    """Shared prompt prefixes shorter than this are not worth a separate pass."""

    def __init__(self, model, tokenizer, batch_size: int = 64, eos_token_ids: set[int] | None = None):
        from .episodes import end_of_turn_ids

        if batch_size < 1:
            raise ConfigError(f"generation batch size must be >= 1, got {batch_size}")
        self.model = model
        self._cache_kwarg = _cache_argument(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_token_ids = eos_token_ids or end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_token_ids)

    def sync_weights(self, weights: Callable[[], Iterable[tuple[str, torch.Tensor]]]) -> None:
        """Nothing to do: this backend generates with the policy object itself."""

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
                 progress: Callable[[int], None] | None = None,
                 seeds: Sequence[int] | None = None) -> list[Generation]:
        if not prompts:
            return []
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo: lo + self.batch_size]
                row_seeds = [seeds[i] for i in idx] if seeds is not None else None
                for i, gen in zip(idx, self._generate_batch([prompts[i] for i in idx], params, row_seeds)):
                    results[i] = gen
                if progress is not None:
                    progress(len(idx))
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _prefill(self, prompts: Sequence[Sequence[int]], device: torch.device):
        """Run the prompts through the model; return (last-position logits, cache, attention mask, positions).

        The longest prefix shared by every prompt (system prompt, instruction,
        the problem for all samples of one problem, ...) is computed once at
        batch size 1 and its KV cache repeated across the batch; each row's
        remainder follows it, left-padded so all remainders end in the last
        column.  Row layout: ``[shared prefix][pads][remainder]`` (pads masked
        out, positions counting real tokens only).  Greedy outputs are the same
        as without sharing.
        """
        b = len(prompts)
        shared = _common_prefix_length(prompts) if b > 1 else 0
        shared = min(shared, min(len(p) for p in prompts) - 1)     # every row keeps >= 1 token to score
        if shared < self.min_shared_prefix:
            shared = 0
        cache_kwarg = self._cache_kwarg
        cache = None
        if shared:
            prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
            out = self.model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None],
                             use_cache=True, logits_to_keep=1)
            cache = getattr(out, cache_kwarg)
            cache.batch_repeat_interleave(b)
        rest = [list(p[shared:]) for p in prompts]
        width = max(len(r) for r in rest)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        rest_mask = torch.zeros((b, width), dtype=torch.long)
        for row, tokens in enumerate(rest):  # left padding: every remainder ends at the last column
            input_ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            rest_mask[row, width - len(tokens):] = 1
        input_ids, rest_mask = input_ids.to(device), rest_mask.to(device)
        attention_mask = torch.cat([rest_mask.new_ones((b, shared)), rest_mask], dim=-1)
        # Positions count real tokens only, so a padded row sees the same positions as an unpadded one.
        position_ids = shared + (rest_mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {cache_kwarg: cache} if cache is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :].float(), getattr(out, cache_kwarg), attention_mask, position_ids[:, -1:]

    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                        seeds: Sequence[int] | None = None) -> list[Generation]:
        device = next(self.model.parameters()).device
        generators = None if seeds is None or params.greedy else \
            [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        warpers = None if params.greedy else self._warpers(params)
        eos = torch.tensor(sorted(self.eos_token_ids), device=device)
        b = len(prompts)
        cache_kwarg = self._cache_kwarg
        logits, cache, attention_mask, last_position = self._prefill(prompts, device)   # [b, V], cache, [b, L], [b, 1]
        next_position = last_position + 1                     # [b_active, 1]
        active = torch.arange(b, device=device)               # original row of each live row
        sampled: list[list[int]] = [[] for _ in range(b)]
        sampled_logprobs: list[list[float]] = [[] for _ in range(b)]
        finished = [False] * b

        for step in range(params.max_new_tokens):
            if warpers is None:
                tokens = logits.argmax(-1)
                log_dist = torch.log_softmax(logits, -1)                          # [b_active, V]
            else:
                log_dist = torch.log_softmax(warpers(None, logits), -1)          # [b_active, V]
                probs = log_dist.exp()
                if generators is None:
                    tokens = torch.multinomial(probs, 1).squeeze(-1)
                else:   # exponential race: argmax p_i / E_i with E_i ~ Exp(1) samples i with probability p_i
                    race = torch.stack([torch.empty(probs.shape[-1], device=device).exponential_(generator=generators[r])
                                        for r in active.tolist()])
                    tokens = (probs / race).argmax(-1)
            chosen = log_dist.gather(-1, tokens[:, None]).squeeze(-1)            # [b_active]
            for row, tok, lp in zip(active.tolist(), tokens.tolist(), chosen.tolist()):
                sampled[row].append(tok)
                sampled_logprobs[row].append(lp)
            done = torch.isin(tokens, eos)
            for row in active[done].tolist():
                finished[row] = True
            if step + 1 == params.max_new_tokens:
                break
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            if keep.numel() < active.numel():                 # drop finished rows everywhere
                cache.batch_select_indices(keep)
                active, tokens = active[keep], tokens[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((active.numel(), 1))], dim=-1)
            out = self.model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_position,
                             use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
            cache = getattr(out, cache_kwarg)
            logits = out.logits[:, -1, :].float()
            next_position = next_position + 1
        return [Generation(ids=ids, truncated=not done_, logprobs=lps)
                for ids, done_, lps in zip(sampled, finished, sampled_logprobs)]


def _cache_argument(model) -> str:
    """The forward() keyword of the KV cache: ``cache`` (transformers >= 5.20) or ``past_key_values``."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model   # PEFT wraps forward(**kwargs)
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        tok = first[i]
        if any(s[i] != tok for s in sequences):
            return i
    return n


def make_backend(name: str, model, tokenizer, *, batch_size: int = 64, source: str | None = None,
                 generation_config=None, dtype: str = "auto", weight_dtype: torch.dtype | None = None,
                 seed: int = 0, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None) -> GenerationBackend:
    """The rollout backend ``name`` -- training and evaluation both build theirs here.

    ``transformers`` decodes with ``model`` itself (``batch_size`` sequences at a time).  ``vllm`` starts a
    colocated engine from the Hugging Face directory (or hub id) ``source`` in ``dtype`` (its parameters
    as ``weight_dtype``, which synced weights are cast to); ``generation_config`` names its end-of-turn
    tokens.  Give it the policy's weights with :meth:`GenerationBackend.sync_weights`.
    """
    if name == "transformers":
        return TransformersBackend(model, tokenizer, batch_size=batch_size)
    if name != "vllm":
        raise ConfigError(f"unknown rollout backend {name!r}; choose transformers or vllm")
    from .episodes import end_of_turn_ids
    from .vllm_backend import VLLMBackend

    return VLLMBackend.create(source, end_of_turn_ids(tokenizer, generation_config), dtype=dtype,
                              weight_dtype=weight_dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                              max_model_len=max_model_len)

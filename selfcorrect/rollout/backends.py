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
from typing import ClassVar, Protocol

import torch

from ..errors import ConfigError
from ..hf_compat import cache_argument, full_attention_only


GREEDY = 0.0
"""The temperature of every evaluation unless one is asked for: greedy decoding, the paper's protocol."""
MAX_NEW_TOKENS = 256
"""The one default token limit per attempt: of training rollouts, of the evaluations inside training and of
``selfcorrect eval`` (so a run's own test numbers and a later ``selfcorrect eval`` of it truncate alike)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one attempt. ``temperature == 0`` means greedy decoding (the paper's eval protocol)."""

    temperature: float = GREEDY
    """Softmax temperature; 0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 = off."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 = off."""
    max_new_tokens: int = MAX_NEW_TOKENS
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
    state: object | None = None
    """The backend's KV cache of this conversation (``generate(..., keep_state=True)``): pass it back
    as ``states=`` to continue the conversation without re-encoding it; opaque, ``None`` when not kept."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared on its class (the table in :mod:`selfcorrect.rollout.registry`)."""

    name: str
    """Its name in ``rollout_backend``."""
    loads_own_weights: bool
    """It starts from a model directory and receives the policy's weights by ``sync_weights`` (so it cannot
    decode an arbitrary in-memory model such as a frozen copy)."""
    own_precision: bool
    """It keeps its own precision: no autocast around its generation."""
    single_process: bool
    """One engine in one process: data-parallel runs cannot use it."""
    shardable: bool
    """It works under the sharded layouts (FSDP2 / DeepSpeed ZeRO: gathered generation)."""


class GenerationBackend(Protocol):
    eos_token_ids: set[int]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 progress: Callable[[int], None] | None = None,
                 seeds: Sequence[int] | None = None, states: Sequence[object | None] | None = None,
                 keep_state: bool = False) -> list[Generation]:
        """Continue every prompt once; ``progress(n)`` is called as ``n`` more prompts finish.

        With ``seeds`` (one per prompt), each row samples from its own generator,
        so a row's continuation does not depend on which other rows share its batch
        (or its process, in data-parallel training).  ``states`` (one per prompt, or None) are
        ``Generation.state`` values of an earlier call whose prompt + ids this prompt extends: a
        backend may start from them instead of re-encoding (and ignores ones it cannot use);
        ``keep_state`` asks for ``Generation.state``.  Neither changes what is sampled.
        """
        ...

    def sync_weights(self, weights: Callable[[], Iterable[tuple[str, torch.Tensor]]]) -> None:
        """Sample from the policy whose ``(Hugging Face name, tensor)`` pairs ``weights()`` returns.

        Called after every applied optimizer step.  A backend that generates with the live policy
        object ignores it (and never calls ``weights``); an engine holding its own copy loads them.
        """
        ...


DECODE_MODES = ("dynamic", "static", "graphs")


@dataclass
class DecodeState:
    """The KV cache of one conversation so far: what continuing it (attempt ``k+1``) can start from.

    Attempt ``k+1``'s prompt is attempt ``k``'s prompt + its sampled ids + the turn suffix, so the keys
    and values of ``tokens`` (everything the model was fed: the prompt and all sampled ids but the
    last) need not be computed again; only the rest of the new prompt is.  Opaque to callers.
    """

    tokens: list[int]
    """The ids whose keys/values are stored, in order (checked against the next prompt)."""
    keys: list[torch.Tensor]
    """Per layer ``[kv_heads, len(tokens), head_dim]``, padding removed."""
    values: list[torch.Tensor]
    owner: int
    """``id`` of the backend that made it, and of the weights it was computed with (see ``_weights_version``)."""
    weights_version: int


class TransformersBackend:
    """Batched sampling with a transformers model: left padding, a KV cache, and finished rows dropped.

    ``model.generate`` keeps every row of a batch alive until the *longest*
    row ends, so one rambling attempt makes 63 finished rows pay for all of
    its tokens.  This loop removes finished rows from the batch (and their KV
    cache), so compute follows the tokens actually sampled.  Logits are
    computed for the last position only (``logits_to_keep=1``), never for
    the whole prompt.  The prefix all prompts of a batch share (chat-template
    system turn, instruction, a problem's samples) is encoded once and its KV
    cache repeated (see :meth:`_prefill`), and a conversation's next attempt
    starts from its previous attempt's cache (:class:`DecodeState`) instead of
    re-encoding the whole conversation.

    ``decode`` picks the KV cache of the decode steps:

    * ``dynamic`` (default) -- grows by one column per step; finished rows leave at once.
    * ``static`` -- preallocated for ``prompt + max_new_tokens`` and written in place; the batch
      keeps a fixed size from a few buckets (powers of two), and rows that finish are compacted
      into the next smaller bucket only when the live rows fit it.  Fixed shapes are what CUDA
      graphs need; on a CPU it is exact but not faster.
    * ``graphs`` -- ``static`` with the decode step compiled by ``torch.compile(mode="reduce-overhead")``
      (CUDA graphs, one per bucket).  CUDA only, and opt-in: not yet verified on a GPU run.

    Prompts are sorted by length before batching so each batch pads little
    (for attempt 2 this also groups similar attempt-1 lengths), and results
    come back in input order.  Sampling uses transformers' logits warpers
    (temperature, top-k, top-p); with per-row seeds each row draws from its
    own generator.
    """

    min_shared_prefix = 8
    """Shared prompt prefixes shorter than this are not worth a separate pass."""
    state_budget_bytes = 2 * 2**30
    """At most this much KV cache is kept as ``Generation.state`` per :meth:`generate` call; rows past
    it get none (their next attempt re-encodes its prompt, as without states)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        name="transformers", loads_own_weights=False, own_precision=False, single_process=False, shardable=True)

    @classmethod
    def from_settings(cls, settings, model, tokenizer, *, model_spec: str, dtype: str, seed: int,
                      generation_config=None) -> TransformersBackend:
        """:func:`~selfcorrect.rollout.registry.build_backend`'s constructor: decodes ``model`` itself."""
        return cls(model, tokenizer, batch_size=settings.generation_batch_size, decode=settings.decode)

    def __init__(self, model, tokenizer, batch_size: int = 64, eos_token_ids: set[int] | None = None,
                 decode: str = "dynamic"):
        from .episodes import end_of_turn_ids

        if batch_size < 1:
            raise ConfigError(f"generation batch size must be >= 1, got {batch_size}")
        if decode not in DECODE_MODES:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        device = next(model.parameters()).device
        if decode == "graphs" and device.type != "cuda":
            raise ConfigError(f"decode graphs needs a CUDA device (the model is on {device.type}); "
                              "use decode static or dynamic")
        self._full_attention = full_attention_only(model.config)
        if decode != "dynamic" and not self._full_attention:
            raise ConfigError(f"decode {decode} supports full-attention models only "
                              f"({type(model.config).__name__} has sliding-window or linear-attention layers); "
                              "use decode dynamic")
        self.model = model
        self._cache_kwarg = cache_argument(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.decode = decode
        self.eos_token_ids = eos_token_ids or end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_token_ids)
        self._step_forward = None
        self._state_bytes = 0                  # DecodeState bytes kept so far in this generate() call
        self._static_caches: dict[tuple[int, int], object] = {}
        if decode == "graphs":
            # CUDA graphs of the decode step, one per (bucket, cache length): its shapes never vary within
            # one.  torch.compile's automatic dynamic shapes recompile once when a second size appears.
            self._step_forward = torch.compile(model, mode="reduce-overhead")

    def sync_weights(self, weights: Callable[[], Iterable[tuple[str, torch.Tensor]]]) -> None:
        """Nothing to do: this backend generates with the policy object itself."""

    def _weights_version(self) -> int:
        """Changes whenever a trainable weight is updated in place (an optimizer step): a stale
        :class:`DecodeState` is then recomputed rather than reused.  (Writes through ``p.data`` do
        not bump it; today a state never outlives one :func:`~selfcorrect.rollout.sample_episodes`
        call, inside which the weights do not change, so this is a second line of defence.)"""
        return sum(p._version for p in self.model.parameters() if p.requires_grad)

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
                 seeds: Sequence[int] | None = None,
                 states: Sequence[DecodeState | None] | None = None,
                 keep_state: bool = False) -> list[Generation]:
        """See :class:`GenerationBackend`.  ``states[i]``: prompt ``i``'s conversation so far, from an earlier
        call's ``Generation.state`` (used when it is this backend's, for the same weights, and a prefix of
        the prompt); ``keep_state``: return each row's cache as ``Generation.state``."""
        if not prompts:
            return []
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        usable = self._usable_states(prompts, states)
        self._state_bytes = 0
        was_training = self.model.training
        self.model.eval()
        try:
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo: lo + self.batch_size]
                row_seeds = [seeds[i] for i in idx] if seeds is not None else None
                row_states = [usable[i] for i in idx] if usable is not None else None
                if row_states is not None and all(st is None for st in row_states):
                    row_states = None          # this batch has none (e.g. past the state budget): plain prefill
                batch = self._generate_batch([prompts[i] for i in idx], params, row_seeds, row_states, keep_state)
                for i, gen in zip(idx, batch):
                    results[i] = gen
                if progress is not None:
                    progress(len(idx))
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _usable_states(self, prompts, states) -> list[DecodeState | None] | None:
        if states is None or all(s is None for s in states):
            return None
        version = self._weights_version()
        usable = [s if isinstance(s, DecodeState) and s.owner == id(self) and s.weights_version == version
                  and len(s.tokens) < len(p) and list(p[:len(s.tokens)]) == s.tokens else None
                  for s, p in zip(states, prompts, strict=True)]
        return usable if any(s is not None for s in usable) else None

    def _prefill(self, prompts: Sequence[Sequence[int]], device: torch.device,
                 states: Sequence[DecodeState | None] | None = None):
        """Run the prompts through the model; return (last-position logits, cache, attention mask, positions).

        Each row starts with what is already encoded: its :class:`DecodeState` if it has one, else
        the longest prefix shared by every prompt (system prompt, instruction, the problem for all
        samples of one problem, ...) computed once at batch size 1 and its KV cache repeated across
        the batch.  Each row's remainder follows, left-padded so all remainders end in the last
        column.  Row layout: ``[pads][encoded][pads][remainder]`` (pads masked out, positions
        counting real tokens only).  Greedy outputs are the same as without the cache.
        """
        b = len(prompts)
        cache_kwarg = self._cache_kwarg
        cache = None
        if states is not None:
            cache, cached_mask = self._stacked_states(states, device)          # [b, C] ones on stored tokens
            encoded = cached_mask.sum(-1).tolist()                              # tokens already encoded per row
        else:
            shared = _common_prefix_length(prompts) if b > 1 else 0
            shared = min(shared, min(len(p) for p in prompts) - 1)     # every row keeps >= 1 token to score
            if shared < self.min_shared_prefix:
                shared = 0
            cached_mask = torch.ones((b, shared), dtype=torch.long, device=device)
            encoded = [shared] * b
            if shared:
                prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
                out = self.model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None],
                                 use_cache=True, logits_to_keep=1)
                cache = getattr(out, cache_kwarg)
                cache.batch_repeat_interleave(b)
        rest = [list(p[n:]) for p, n in zip(prompts, encoded)]
        width = max(len(r) for r in rest)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        rest_mask = torch.zeros((b, width), dtype=torch.long)
        for row, tokens in enumerate(rest):  # left padding: every remainder ends at the last column
            input_ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            rest_mask[row, width - len(tokens):] = 1
        input_ids, rest_mask = input_ids.to(device), rest_mask.to(device)
        attention_mask = torch.cat([cached_mask, rest_mask], dim=-1)
        # Positions count real tokens only, so a padded row sees the same positions as an unpadded one.
        offset = torch.tensor(encoded, dtype=torch.long, device=device)[:, None]
        position_ids = offset + (rest_mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {cache_kwarg: cache} if cache is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :].float(), getattr(out, cache_kwarg), attention_mask, position_ids[:, -1:]

    @staticmethod
    def _stacked_states(states: Sequence[DecodeState | None], device: torch.device):
        """One batch cache from per-row states, each right-aligned (``[pads][stored]``); rows without a
        state have nothing stored.  Returns (cache, ``[b, C]`` mask of the stored columns)."""
        from transformers import DynamicCache

        template = next(s for s in states if s is not None)
        width = max(len(s.tokens) for s in states if s is not None)
        mask = torch.zeros((len(states), width), dtype=torch.long, device=device)
        for row, s in enumerate(states):
            if s is not None:
                mask[row, width - len(s.tokens):] = 1
        cache = DynamicCache()
        for layer, (k0, v0) in enumerate(zip(template.keys, template.values)):
            keys = k0.new_zeros((len(states), k0.shape[0], width, k0.shape[-1]))        # [b, h, C, d]
            values = v0.new_zeros((len(states), v0.shape[0], width, v0.shape[-1]))
            for row, s in enumerate(states):
                if s is not None:
                    keys[row, :, width - len(s.tokens):] = s.keys[layer]
                    values[row, :, width - len(s.tokens):] = s.values[layer]
            cache.update(keys, values, layer)
        return cache, mask

    def _row_state(self, cache, slot: int, mask_row: torch.Tensor, tokens: list[int], version: int):
        """Slot ``slot``'s stored keys/values (the columns ``mask_row`` marks), or None for models whose
        caches keep only a window of them (sliding-window and linear-attention layers)."""
        if not self._full_attention:
            return None
        layers = cache.layers
        first = layers[0].keys
        size = 2 * len(layers) * first.shape[1] * len(tokens) * first.shape[-1] * first.element_size()
        if self._state_bytes + size > self.state_budget_bytes:
            return None
        self._state_bytes += size
        keep = mask_row.bool()                                   # the row's real columns, pads left out
        return DecodeState(tokens=tokens, keys=[layer.keys[slot][:, keep] for layer in layers],
                           values=[layer.values[slot][:, keep] for layer in layers],
                           owner=id(self), weights_version=version)

    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                        seeds: Sequence[int] | None = None, states: Sequence[DecodeState | None] | None = None,
                        keep_state: bool = False) -> list[Generation]:
        device = next(self.model.parameters()).device
        generators = (None if seeds is None or params.greedy else
            [torch.Generator(device=device).manual_seed(int(s)) for s in seeds])
        warpers = None if params.greedy else self._warpers(params)
        eos = torch.tensor(sorted(self.eos_token_ids), device=device)
        b = len(prompts)
        version = self._weights_version() if keep_state else 0
        logits, cache, attention_mask, last_position = self._prefill(prompts, device, states)   # [b, V], cache, [b, L], [b, 1]
        decoder = (_StaticDecode(self, cache, attention_mask, params.max_new_tokens) if self.decode != "dynamic"
            else _DynamicDecode(self, cache, attention_mask))
        next_position = last_position + 1                     # [slots, 1]
        rows = torch.arange(b, device=device)                 # original row of each slot; -1: finished (static)
        sampled: list[list[int]] = [[] for _ in range(b)]
        sampled_logprobs: list[list[float]] = [[] for _ in range(b)]
        finished = [False] * b
        row_states: list[DecodeState | None] = [None] * b

        for step in range(params.max_new_tokens):
            live = rows >= 0                                                      # [slots]
            if warpers is None:
                tokens = logits.argmax(-1)
                log_dist = torch.log_softmax(logits, -1)                          # [slots, V]
            else:
                log_dist = torch.log_softmax(warpers(None, logits), -1)          # [slots, V]
                probs = log_dist.exp()
                if generators is None:
                    tokens = torch.multinomial(probs, 1).squeeze(-1)
                else:   # exponential race: argmax p_i / E_i with E_i ~ Exp(1) samples i with probability p_i
                    # A finished slot draws nothing: each row's generator advances once per own token.
                    race = torch.stack([torch.empty(probs.shape[-1], device=device).exponential_(generator=generators[r])
                                        if r >= 0 else torch.ones(probs.shape[-1], device=device)
                                        for r in rows.tolist()])
                    tokens = (probs / race).argmax(-1)
            chosen = log_dist.gather(-1, tokens[:, None]).squeeze(-1)            # [slots]
            for row, tok, lp in zip(rows.tolist(), tokens.tolist(), chosen.tolist()):
                if row >= 0:
                    sampled[row].append(tok)
                    sampled_logprobs[row].append(lp)
            last = step + 1 == params.max_new_tokens
            done = live & torch.isin(tokens, eos)
            ending = live if last else done
            for slot in ending.nonzero().squeeze(-1).tolist():
                row = int(rows[slot])
                finished[row] = bool(done[slot])
                if keep_state:   # the cache holds the prompt and every sampled id but the last (never fed)
                    row_states[row] = self._row_state(decoder.cache, slot, decoder.mask[slot],
                                                      list(prompts[row]) + sampled[row][:-1], version)
            if last:
                break
            rows = torch.where(done, -1, rows)
            if not bool((rows >= 0).any()):
                break
            keep, rows = decoder.compaction(rows)
            if keep is not None:
                tokens, next_position = tokens[keep], next_position[keep]
            logits = decoder.step(tokens, next_position)
            next_position = next_position + 1
        return [Generation(ids=ids, truncated=not done_, logprobs=lps, state=state)
                for ids, done_, lps, state in zip(sampled, finished, sampled_logprobs, row_states)]


class _DynamicDecode:
    """Decode steps on a cache that grows by concatenation; finished rows leave it at once."""

    def __init__(self, backend: TransformersBackend, cache, mask: torch.Tensor):
        self.backend, self.cache, self.mask = backend, cache, mask        # mask: [slots, columns so far]

    def compaction(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the slots kept -- the live ones -- or None when none finished, the new slots' rows)."""
        live = rows >= 0
        if bool(live.all()):
            return None, rows
        keep = live.nonzero().squeeze(-1)
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]
        return keep, rows[keep]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per slot; return the next ``[slots, V]`` logits."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
        out = self.backend.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=positions,
                                 use_cache=True, logits_to_keep=1, **{self.backend._cache_kwarg: self.cache})
        self.cache = getattr(out, self.backend._cache_kwarg)
        return out.logits[:, -1, :].float()


class _StaticDecode:
    """Decode steps on a preallocated cache written in place, at batch sizes from a few buckets.

    The cache holds ``prefill columns + max_new_tokens`` columns from the start and the attention
    mask is preallocated likewise, so every step of one bucket has the same shapes (what a captured
    CUDA graph replays).  Finished slots stay in the batch (their tokens are ignored) until the live
    ones fit the next smaller bucket; then the live slots are copied into a cache of that size,
    topped up with copies of a live slot whose results are dropped.
    """

    capacity_step = 256
    """Graph mode rounds the cache length up to a multiple of this, so that batches of similar prompt
    length reuse one cache (a captured graph replays on the same addresses) instead of allocating."""

    def __init__(self, backend: TransformersBackend, cache, mask: torch.Tensor, max_new_tokens: int):
        self.backend = backend
        self.column = mask.shape[1]                               # next column to write
        self.capacity = self.column + max_new_tokens
        if backend.decode == "graphs":
            self.capacity = -(-self.capacity // self.capacity_step) * self.capacity_step
        self.buckets = sorted({2 ** i for i in range(backend.batch_size.bit_length()) if 2 ** i < backend.batch_size}
                              | {backend.batch_size})
        slots = mask.shape[0]
        self.cache = self._new_cache(slots)
        for layer, source in zip(self.cache.layers, cache.layers):
            layer.update(source.keys, source.values)             # the prefill's columns, written in place
        self.mask = mask.new_zeros((slots, self.capacity))
        self.mask[:, :self.column] = mask

    def _new_cache(self, slots: int):
        """An empty cache of ``capacity`` columns (its tensors are allocated at the first write, for that
        write's batch size ``slots``).  Graph mode keeps one per (slots, capacity) and resets it for reuse."""
        from transformers import StaticCache

        if self.backend.decode != "graphs":
            return StaticCache(config=self.backend.model.config, max_cache_len=self.capacity)
        pool = self.backend._static_caches
        key = (slots, self.capacity)
        if key in pool:
            pool[key].reset()
        else:
            pool[key] = StaticCache(config=self.backend.model.config, max_cache_len=self.capacity)
        return pool[key]

    def compaction(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Like :meth:`_DynamicDecode.compaction`, but only when the live slots fit a smaller bucket;
        the top-up slots get row -1 (finished)."""
        live = (rows >= 0).nonzero().squeeze(-1)
        slots = rows.shape[0]
        smaller = [size for size in self.buckets if size < slots]
        if not smaller or live.numel() > smaller[-1]:
            return None, rows
        bucket = min(size for size in self.buckets if size >= live.numel())
        keep = torch.cat([live, live[:1].repeat(bucket - live.numel())])      # top up with a copy of a live slot
        old = self.cache
        self.cache = self._new_cache(bucket)
        for layer, source in zip(self.cache.layers, old.layers):
            layer.update(source.keys[keep, :, :self.column], source.values[keep, :, :self.column])
        self.mask = self.mask[keep]
        kept_rows = rows[keep].clone()
        kept_rows[live.numel():] = -1
        return keep, kept_rows

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.mask[:, self.column] = 1
        self.column += 1
        forward = self.backend._step_forward or self.backend.model
        out = forward(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=positions,
                      use_cache=True, logits_to_keep=1, **{self.backend._cache_kwarg: self.cache})
        return out.logits[:, -1, :].float()


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        tok = first[i]
        if any(s[i] != tok for s in sequences):
            return i
    return n

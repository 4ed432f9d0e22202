"""Log-probabilities of chosen tokens without full-vocabulary logits everywhere.

A causal LM's output layer maps every position's hidden state to ``V``
logits (49k for the default model): ``B × T × V`` floats dominate a training
step's memory.  RL only needs ``log π(token_t | < t)`` at the attempt tokens,
so :func:`token_logprobs` runs the backbone once, gathers the hidden states
of the positions that predict an attempt token, and applies the output layer
and log-softmax to those rows in chunks.  With gradients, each chunk is
checkpointed: its ``[chunk, V]`` logits are recomputed in the backward pass
instead of being stored, so peak memory holds one chunk of logits at a time.

:class:`TokenLogprobs` is the same computation as a module, for engines that
must see the log-probabilities as their model's output (DeepSpeed).  This
module knows no engine: one whose output layer is a collective passes
``align_calls``.

Rows that start with the same tokens -- the ``n`` samples of one problem share
their whole prompt -- can have that prefix computed once (``shared_prefix``):
one pass over each group's prefix keeps its keys and values, and every row's
remainder attends to them (:func:`shared_prefixes`, :func:`_hidden_after_prefixes`).
Gradients flow back through the shared keys and values into the prefix pass,
so the result equals scoring every row in full.  Models with sliding-window (or
linear-attention) layers are always scored in full: their caches keep only a window.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import DynamicLayer

from .hf_compat import cache_argument, full_attention_only


def _backbone_and_head(model):
    """(decoder returning hidden states, output embedding) of a causal LM, PEFT-wrapped or not."""
    inner = model
    if hasattr(inner, "get_base_model"):          # peft.PeftModel
        inner = inner.get_base_model()
    head = inner.get_output_embeddings()
    backbone = getattr(inner, inner.base_model_prefix, None)
    if head is None or backbone is None:
        raise TypeError(f"{type(inner).__name__} is not a causal LM with an output embedding and a backbone")
    return inner, backbone, head


def _last_hidden_state(model, backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       **forward) -> torch.Tensor:
    """The backbone's output, through the *whole* model's forward (``forward``: more of its arguments,
    e.g. positions and a cache).

    Calling the backbone directly would skip the outer module's hooks — those
    of PEFT, and FSDP's, which gather the embedding/output weights and reduce
    their gradients.  The full forward computes logits at one position only.
    """
    captured: list[torch.Tensor] = []
    handle = backbone.register_forward_hook(
        lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1, **forward)
    finally:
        handle.remove()
    return captured[-1]


def logit_transform(config) -> tuple[float | None, float]:
    """(soft cap, scale) that the model's own forward applies to its output layer's logits.

    Gemma 2/3 soft-cap them (``final_logit_softcapping``); Cohere multiplies by ``logit_scale``;
    Granite divides by ``logits_scaling``.  Scoring through the output layer directly must do the
    same, or the trainer's log-probs are those of another distribution than the sampler's.
    """
    softcap = getattr(config, "final_logit_softcapping", None) or None
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        scale /= float(scaling)
    return softcap, scale


def _chunk_logprobs(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                    softcap: float | None, scale: float, temperature: float) -> torch.Tensor:
    # A module call (not F.linear on its weight): the hooks of PEFT and DeepSpeed ZeRO-3 see it.
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) * scale   # [c, V], the model's own logits
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits / temperature                                             # the distribution sampled from
    return logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)   # [c]


def shared_prefixes(input_ids: torch.Tensor, label_mask: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    min_length: int = 8) -> tuple[list[int], list[int]]:
    """(group of each row, prefix length of each group): the runs of consecutive rows whose shared
    leading tokens are computed once, chosen to save the most token computations.

    A run of ``n`` rows sharing ``P`` leading tokens saves ``(n - 1) · P`` of them: the ``n`` samples of
    one problem share their whole prompt, all rows share the chat template's system turn, and an exact
    split (dynamic programming over the ``B`` rows, ``O(B²)``) picks between the two.  A prefix stops one
    token before its rows' earliest label, so the position predicting a first label is computed per
    row.  Groups that share fewer than ``min_length`` tokens (or one row alone) get length 0.
    """
    b = input_ids.shape[0]
    first_label = torch.where(label_mask.any(1), label_mask.int().argmax(1), label_mask.shape[1]).tolist()
    # prefix lengths allowed per row: before its first label, and (a row without labels) short of its end
    widths = attention_mask.sum(1).tolist() if attention_mask is not None else [input_ids.shape[1]] * b
    limit = [min(n - 1, int(w) - 2) for n, w in zip(first_label, widths)]
    # lcp[i][k]: how many leading tokens rows i and k (k >= i) share
    lcp = [(input_ids[i:] == input_ids[i]).int().cumprod(1).sum(1).tolist() for i in range(b)]
    shared = [[0] * b for _ in range(b)]                                # shared[i][j]: prefix of run i..j
    for i in range(b):
        run = limit[i]
        for j in range(i, b):
            run = min(run, lcp[i][j - i], limit[j])
            shared[i][j] = run
    best = [0] + [-1] * b                                               # best[j]: most saved in rows < j
    cut = [0] * (b + 1)                                                 # cut[j]: where the last run starts
    for j in range(1, b + 1):
        for i in range(j):
            p = shared[i][j - 1]
            gain = best[i] + ((j - 1 - i) * p if p >= min_length else 0)
            if gain > best[j]:
                best[j], cut[j] = gain, i
    runs = []
    j = b
    while j > 0:
        runs.append((cut[j], j))
        j = cut[j]
    groups: list[int] = []
    lengths: list[int] = []
    for g, (i, j) in enumerate(reversed(runs)):
        p = shared[i][j - 1]
        groups.extend([g] * (j - i))
        lengths.append(p if j - i > 1 and p >= min_length else 0)
    return groups, lengths


class _SharedPrefixLayer(DynamicLayer):
    """A cache layer holding a prefix's keys/values that is read, never written: each call returns
    ``prefix ++ new`` without storing ``new``.  So a checkpointed layer's recomputation in the
    backward reads exactly what the forward read (transformers keeps such a cache under gradient
    checkpointing for layers that declare ``_can_checkpoint_with_cache``)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True
        self.reads = 0

    def update(self, key_states, value_states, *args, **kwargs):
        self.reads += 1
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@contextlib.contextmanager
def _layer_flags(model: torch.nn.Module, **flags: bool) -> Iterator[None]:
    """Set the checkpointing attributes ``flags`` (``gradient_checkpointing``,
    ``_can_checkpoint_with_cache``) on every module of ``model`` that has them, for the block."""
    saved = [(m, name, m.__dict__.get(name, _UNSET)) for m in model.modules() for name in flags if hasattr(m, name)]
    try:
        for m, name, _ in saved:
            setattr(m, name, flags[name])
        yield
    finally:
        for m, name, value in saved:
            if value is _UNSET:
                m.__dict__.pop(name, None)
            else:
                setattr(m, name, value)


_UNSET = object()


def _hidden_after_prefixes(model, backbone, input_ids, attention_mask, label_mask, groups, lengths):
    """The backbone's output for each row's tokens after its group's shared prefix.

    Returns (hidden ``[B, S, H]``, ids ``[B, S]``, label mask ``[B, S]``): row ``b`` holds tokens
    ``lengths[groups[b]]`` onwards, right-padded to ``S``.

    1. One pass over the ``G`` prefixes (``[G, P]``; a shorter prefix is followed by its lead row's
       next tokens) keeps their keys and values, with gradients (checkpointing off for this short
       pass: its cache must be written once).
    2. Every row's remainder runs at positions ``P_g, P_g + 1, ...`` over a read-only cache of its
       group's prefix (``[b, h, P, d]`` per layer, each group's repeated for its rows), in up to three
       passes of rows of similar remainder length (:func:`length_buckets`).
    """
    device = input_ids.device
    cache_kwarg = cache_argument(model)
    prefix_len = torch.tensor(lengths, device=device)                              # [G]
    width = max(lengths)
    leads = [groups.index(g) for g in range(len(lengths))]                         # each group's first row
    prefix_ids = input_ids[leads, :width]                                          # [G, P]
    prefix_mask = (torch.arange(width, device=device)[None] < prefix_len[:, None]).long()   # [G, P]
    # No padding mask here: a group's columns past its prefix hold its lead row's next tokens, which the
    # causal prefix never sees; computing them keeps every key finite (the remainders mask them out).
    with _layer_flags(model, gradient_checkpointing=False):
        out = model(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True,
                    logits_to_keep=1)
    prefix_cache = getattr(out, cache_kwarg)
    rows = torch.tensor(groups, device=device)                                     # [B] group of each row

    start = prefix_len[rows]                                                       # [B] first token kept
    lengths_b = attention_mask.sum(-1)                                             # [B] (right padded)
    spans = lengths_b - start                                                      # [B] tokens after the prefix
    span = int(spans.max())
    cols = start[:, None] + torch.arange(span, device=device)[None]               # [B, S]
    inside = cols < lengths_b[:, None]
    cols = cols.clamp(max=input_ids.shape[1] - 1)
    ids = input_ids.gather(1, cols).masked_fill(~inside, 0)
    mask = label_mask.gather(1, cols) & inside
    full_mask = torch.cat([prefix_mask[rows], inside.long()], dim=-1)              # [B, P + S]

    # The remainders differ in length (attempt lengths vary): rows of similar length run together,
    # each bucket padded only to its own longest row.
    pieces, order = [], []
    for bucket in length_buckets(spans.tolist()):
        picked = torch.tensor(bucket, device=device)
        width_b = int(spans[picked].max())
        layers = [_SharedPrefixLayer(layer.keys[rows[picked]], layer.values[rows[picked]])
                  for layer in prefix_cache.layers]
        hidden = _run_over_cache(model, backbone, cache_kwarg, layers, ids[picked, :width_b],
                                 full_mask[picked, :width + width_b], cols[picked, :width_b])   # [b, S_b, H]
        pieces.append(torch.nn.functional.pad(hidden, (0, 0, 0, span - width_b)))
        order.extend(bucket)
    hidden = torch.cat(pieces)[torch.tensor(order, device=device).argsort()]      # [B, S, H], rows in order
    return hidden, ids, mask


def _run_over_cache(model, backbone, cache_kwarg: str, layers: list[_SharedPrefixLayer], ids, mask, positions):
    """The backbone's output for ``ids`` at ``positions``, attending to the read-only prefix ``layers``."""
    from transformers import Cache

    with _layer_flags(model, _can_checkpoint_with_cache=True):
        hidden = _last_hidden_state(model, backbone, ids, mask, position_ids=positions,
                                    **{cache_kwarg: Cache(layers=layers)})
    if any(layer.reads == 0 for layer in layers):
        raise RuntimeError(f"{type(model).__name__} ignored the shared-prefix cache; score it with shared_prefix off")
    return hidden


def length_buckets(lengths: list[int], max_buckets: int = 3) -> list[list[int]]:
    """Row indices in at most ``max_buckets`` runs of similar length that minimise the padded total
    (``Σ rows × longest row`` per bucket; exact, by dynamic programming over the sorted lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    inf = float("inf")
    # cost[k][j]: least padded total of the j shortest rows in k buckets; cut[k][j]: where the last starts
    cost = [[0.0] + [inf] * n] + [[inf] * (n + 1) for _ in range(max_buckets)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    for k in range(1, max_buckets + 1):
        cost[k][0] = 0.0
        for j in range(1, n + 1):
            for i in range(j):
                c = cost[k - 1][i] + (j - i) * sizes[j - 1]
                if c < cost[k][j]:
                    cost[k][j], cut[k][j] = c, i
    k = min(range(1, max_buckets + 1), key=lambda k: cost[k][n])
    buckets, j = [], n
    while j > 0:
        i = cut[k][j]
        buckets.append(order[i:j])
        j, k = i, k - 1
    return buckets[::-1]


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_mask: torch.Tensor,
                   chunk_size: int = 1024, temperature: float = 1.0,
                   align_calls: Callable[[int], int] | None = None, shared_prefix: bool = False) -> torch.Tensor:
    """``out[b, t] = log π_T(input_ids[b, t] | input_ids[b, < t])`` where ``label_mask[b, t]``, else 0.

    ``π_T`` is the model's next-token distribution at ``temperature`` (softmax of logits / T),
    the distribution a sampler at that temperature draws from: RL scores a rollout with the
    distribution that produced it.
    ``input_ids``, ``attention_mask``, ``label_mask``: ``[B, T]`` (right padded).
    Returns float32 (float64 for a float64 model) ``[B, T]``; differentiable when grad is enabled.  ``align_calls(n)``: the
    number of output-layer calls to make when this process needs ``n`` (an engine whose every call
    is a collective, such as DeepSpeed ZeRO-3, returns the largest ``n`` of all processes; the
    extra calls get empty chunks).  ``shared_prefix``: compute the prefix that consecutive rows share
    once per group (see :func:`shared_prefixes`; the same values, less work).
    """
    if not temperature > 0:
        raise ValueError(f"log-probs need a temperature > 0, got {temperature!r}")
    inner, backbone, head = _backbone_and_head(model)
    # A sliding-window layer's cache keeps only the window: a shared prefix longer than it would be cut.
    shared_prefix = shared_prefix and full_attention_only(inner.config)
    groups, lengths = shared_prefixes(input_ids, label_mask, attention_mask) if shared_prefix else ([], [])
    if any(lengths):
        # hidden: [B, S, H] for each row's tokens from its group's prefix length on; ids/mask likewise
        hidden, ids, mask = _hidden_after_prefixes(model, backbone, input_ids, attention_mask, label_mask,
                                                   groups, lengths)
    else:
        hidden, ids, mask = _last_hidden_state(model, backbone, input_ids, attention_mask), input_ids, label_mask
    # The labels in row-major order are the same whether or not a row's prefix was cut off.
    rows = hidden[:, :-1][mask[:, 1:]]                             # [N, H]: position t-1 predicts token t
    labels = ids[:, 1:][mask[:, 1:]]                               # [N]
    predicts = label_mask[:, 1:]                                   # [B, T-1]
    softcap, scale = logit_transform(inner.config)
    calls = max(1, math.ceil(rows.shape[0] / chunk_size))
    if align_calls is not None:
        calls = int(align_calls(calls))
    pieces = []
    for lo in range(0, calls * chunk_size, chunk_size):                   # trailing chunks may be empty
        args = (rows[lo:lo + chunk_size], labels[lo:lo + chunk_size], head, softcap, scale, float(temperature))
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(*args))
    scored = torch.cat(pieces)
    out = torch.zeros(input_ids.shape, dtype=scored.dtype, device=input_ids.device)
    out[:, 1:][predicts] = scored
    return out


class TokenLogprobs(torch.nn.Module):
    """``model`` whose forward returns :func:`token_logprobs` (``[B, T]``) instead of logits.

    DeepSpeed prepares its backward pass from hooks on the *output* of its
    engine's forward; wrapping the policy in this module makes the
    log-probabilities, from which every loss is built, that output.
    """

    def __init__(self, model: torch.nn.Module, align_calls: Callable[[int], int] | None = None):
        super().__init__()
        self.model = model
        self.align_calls = align_calls

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_mask: torch.Tensor,
                chunk_size: int = 1024, temperature: float = 1.0) -> torch.Tensor:
        return token_logprobs(self.model, input_ids, attention_mask, label_mask, chunk_size, temperature,
                              self.align_calls)


_DROPOUT_NAME = re.compile(r"(dropout|pdrop|layerdrop)", re.IGNORECASE)


@contextlib.contextmanager
def dropout_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Every dropout of ``model`` is off inside the block; the modules keep their train/eval mode.

    The policy-gradient term must score a rollout with the distribution that sampled it, and sampling
    runs without dropout.  ``model.eval()`` would turn dropout off too, but also gradient
    checkpointing (Hugging Face layers recompute only while ``training``), so instead every dropout
    *rate* is set to 0 for the block: ``nn.Dropout`` modules (PEFT's LoRA dropout among them), the
    float rates that attention modules read at forward time (``attention_dropout``, ``layerdrop``, ...)
    and the same fields of each model config.  At rate 0 dropout is the identity, bit for bit.
    """
    saved: list[tuple[object, str, float]] = []
    configs: dict[int, object] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            saved.append((module, "p", module.p))
            continue
        for name, value in vars(module).items():
            if isinstance(value, float) and not name.startswith("_") and _DROPOUT_NAME.search(name):
                saved.append((module, name, value))
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            configs[id(config)] = config
    for config in configs.values():
        for name, value in vars(config).items():
            if isinstance(value, float) and _DROPOUT_NAME.search(name):
                saved.append((config, name, value))
    try:
        for owner, name, _ in saved:
            setattr(owner, name, 0.0)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def full_logits_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         label_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Reference implementation: full ``[B, T, V]`` logits from the model's own forward, then gather
    (what :func:`token_logprobs` avoids)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float() / temperature
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = logp * label_mask[:, 1:]
    return out

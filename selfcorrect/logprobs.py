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
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint


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


def _last_hidden_state(model, backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The backbone's output, through the *whole* model's forward.

    Calling the backbone directly would skip the outer module's hooks — those
    of PEFT, and FSDP's, which gather the embedding/output weights and reduce
    their gradients.  The full forward computes logits at one position only.
    """
    captured: list[torch.Tensor] = []
    handle = backbone.register_forward_hook(
        lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
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
    logits = head(hidden).float() * scale                                     # [c, V], the model's own logits
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits / temperature                                             # the distribution sampled from
    return logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)   # [c]


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_mask: torch.Tensor,
                   chunk_size: int = 1024, temperature: float = 1.0,
                   align_calls: Callable[[int], int] | None = None) -> torch.Tensor:
    """``out[b, t] = log π_T(input_ids[b, t] | input_ids[b, < t])`` where ``label_mask[b, t]``, else 0.

    ``π_T`` is the model's next-token distribution at ``temperature`` (softmax of logits / T),
    the distribution a sampler at that temperature draws from: RL scores a rollout with the
    distribution that produced it.
    ``input_ids``, ``attention_mask``, ``label_mask``: ``[B, T]`` (right padded).
    Returns float32 ``[B, T]``; differentiable when grad is enabled.  ``align_calls(n)``: the
    number of output-layer calls to make when this process needs ``n`` (an engine whose every call
    is a collective, such as DeepSpeed ZeRO-3, returns the largest ``n`` of all processes; the
    extra calls get empty chunks).
    """
    if not temperature > 0:
        raise ValueError(f"log-probs need a temperature > 0, got {temperature!r}")
    inner, backbone, head = _backbone_and_head(model)
    hidden = _last_hidden_state(model, backbone, input_ids, attention_mask)      # [B, T, H]
    predicts = label_mask[:, 1:]                                   # [B, T-1]: position t-1 predicts token t
    rows = hidden[:, :-1][predicts]                                # [N, H]
    labels = input_ids[:, 1:][predicts]                            # [N]
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
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:][predicts] = torch.cat(pieces)
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

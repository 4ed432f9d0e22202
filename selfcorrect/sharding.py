"""Sharded data parallelism with PyTorch FSDP2 (``fully_shard``): ZeRO-2 / ZeRO-3 memory across processes.

``sharding: zero3`` (FSDP full shard) splits parameters, gradients and Adam
state over the processes: each holds ``1/world`` of them and gathers a layer's
parameters just before using it.  ``sharding: zero2`` (FSDP shard-grad-op)
keeps the gathered parameters from a layer's forward until its backward —
fewer gathers, more memory — and shards gradients and Adam state the same way.
Both are the memory layouts DeepSpeed calls ZeRO stage 3 and 2; this module
implements them with PyTorch's own FSDP2, which needs nothing beyond torch
(``sharding_engine: deepspeed`` runs them on DeepSpeed's engine instead, see
:mod:`selfcorrect.deepspeed_engine`).

How the trainer stays correct and deadlock-free (every FSDP forward and
backward is a collective that all processes must enter together):

* each decoder layer (the model's ``_no_split_modules``) is one FSDP unit, the
  root the last; the root's parameters (embeddings, final norm, output layer)
  stay gathered after its forward, which is what lets
  :func:`selfcorrect.logprobs.token_logprobs` apply the output layer to
  selected rows after the forward;
* every process runs the same number of micro-batches (``problems_per_step``
  must divide by the number of processes);
* generation runs inside :func:`gathered`: every process gathers all weights
  once (a collective), then decodes as many steps as *its* episodes need
  without further communication, then frees the gathered copies;
* FSDP averages gradients over processes; the trainer multiplies its loss by
  the number of processes so the update is the sum it would be on one process;
* checkpoints hold the full (gathered) weights and optimizer state, written by
  the main process, so they load on any number of processes — or none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from .errors import ConfigError

SHARDINGS = ("none", "zero2", "zero3")
ENGINES = ("fsdp", "deepspeed")


def sharding_from_launcher(configured: str, engine: str) -> tuple[str, str]:
    """(sharding, engine): the configured ones, else what ``accelerate launch`` with an FSDP or DeepSpeed config asks for.

    ``accelerate launch --config_file configs/accelerate/fsdp_zero3.yaml`` sets
    ``ACCELERATE_USE_FSDP=true`` and ``FSDP_RESHARD_AFTER_FORWARD`` (or, for
    FSDP1-style configs, ``FSDP_SHARDING_STRATEGY``); a DeepSpeed config sets
    ``ACCELERATE_USE_DEEPSPEED=true`` and ``ACCELERATE_DEEPSPEED_ZERO_STAGE``.
    """
    if configured != "none":
        return configured, engine
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return _deepspeed_launch(env), "deepspeed"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return "none", engine
    strategy = env.get("FSDP_SHARDING_STRATEGY", "").upper()
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "").lower()
    if reshard == "false" or strategy in ("2", "SHARD_GRAD_OP"):
        return "zero2", "fsdp"
    if strategy and strategy not in ("1", "FULL_SHARD"):
        raise ConfigError(f"FSDP sharding strategy {strategy} is not supported: use FULL_SHARD (zero3) or "
                          "SHARD_GRAD_OP (zero2), e.g. configs/accelerate/fsdp_zero3.yaml")
    return "zero3", "fsdp"


def _deepspeed_launch(env) -> str:
    """The sharding an accelerate DeepSpeed config asks for; settings selfcorrect does not drive are errors."""
    hint = "use configs/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml"
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise ConfigError("a DeepSpeed JSON config (deepspeed_config_file) is not read: selfcorrect builds the "
                          f"DeepSpeed config from its own training config; {hint}")
    for key in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if env.get(key, "none").lower() not in ("none", ""):
            raise ConfigError(f"DeepSpeed offloading ({key}={env[key]}) is not supported yet; {hint}")
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    if stage not in ("2", "3"):
        raise ConfigError(f"DeepSpeed ZeRO stage {stage or '(unset)'} is not supported: selfcorrect runs stages "
                          f"2 and 3; {hint}")
    return f"zero{stage}"


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's repeated blocks (transformers names their class in ``_no_split_modules``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or [])
    layers = [m for m in inner.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"sharding: cannot find the decoder layers of {type(inner).__name__} "
                          "(no _no_split_modules); use sharding: none")
    return layers


def shard(model, mode: str):
    """Wrap ``model`` in FSDP2 units in place (one per decoder layer, then the root); returns it."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=mode == "zero3")
    fully_shard(model, reshard_after_forward=False)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _units(model) -> list[torch.nn.Module]:
    """``model``'s FSDP units (each decoder layer, then the root)."""
    return [m for m in model.modules() if is_sharded(m)]


@contextlib.contextmanager
def gathered(model, mode: str) -> Iterator[None]:
    """All of ``model``'s weights gathered on every process for the duration (generation without collectives).

    Every process must enter (the gather is a collective); inside, processes
    may run different numbers of forward passes.  A no-op for unsharded models.
    """
    if model is None or not is_sharded(model):
        yield
        return
    units = _units(model)
    for unit in units:
        unit.unshard()
    model.set_reshard_after_forward(False)
    try:
        yield
    finally:
        model.set_reshard_after_forward(mode == "zero3")
        model.set_reshard_after_forward(False, recurse=False)     # the root keeps its weights (see module doc)
        for unit in units:
            unit.reshard()


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process's CPU; ``{}`` on the others (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict[str, Any]:
    """The optimizer state of the whole model, keyed by parameter name (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model, optimizer, state: dict[str, Any]) -> None:
    """Give each process its shard of a full optimizer state (as saved by :func:`full_optimizer_state`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


@torch.no_grad()
def copy_weights(target, source) -> None:
    """``target``'s weights := ``source``'s, shard by shard (identically sharded models)."""
    for unit in [*_units(target), *_units(source)]:
        unit.reshard()              # the root stays gathered after a forward: back to its shards first
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.copy_(s)


def scalar(value) -> torch.Tensor:
    """A plain tensor from what may be a (replicated) DTensor, e.g. a clipped gradient norm."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value

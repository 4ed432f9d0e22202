"""FSDP2 engine (``sharding: zero2|zero3``, ``sharding_engine: fsdp``): PyTorch's ``fully_shard``.

``sharding: zero3`` (FSDP full shard) splits parameters, gradients and Adam
state over the processes: each holds ``1/world`` of them and gathers a layer's
parameters just before using it.  ``sharding: zero2`` (FSDP shard-grad-op)
keeps the gathered parameters from a layer's forward until its backward —
fewer gathers, more memory — and shards gradients and Adam state the same way.
Both are the memory layouts DeepSpeed calls ZeRO stage 3 and 2; this module
implements them with PyTorch's own FSDP2, which needs nothing beyond torch
(``sharding_engine: deepspeed`` runs them on DeepSpeed's engine instead, see
:mod:`selfcorrect.engines.deepspeed`).

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_anchor
from ..errors import ConfigError
from .base import CheckpointParts, check_sharded
from .replicated import ReplicatedEngine


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


class FSDP2Engine(ReplicatedEngine):
    """Policy and reference wrapped in FSDP2 units; the torch optimizer steps on local shards."""

    can_share_prefixes = False        # every forward is an all-gather: all processes must run the same passes

    layout = "fsdp"
    lockstep = True
    whole_weights = False

    def __init__(self, dist, device: torch.device, max_grad_norm: float, sharding: str):
        super().__init__(dist, device, max_grad_norm, "fsdp")
        self.sharding = sharding

    def check(self, config) -> None:
        check_sharded(self, config)

    @property
    def load_device(self) -> torch.device:
        """Host memory: FSDP2 moves each unit's shard to the GPU as it wraps it, so a GPU never holds a whole
        policy + reference (or anchor) at once."""
        return torch.device("cpu")

    def prepare_models(self, policy, reference):
        # (after gradient checkpointing is enabled, before the optimizer is built on the sharded parameters)
        self.policy = shard(policy, self.sharding)
        if reference is not None:                 # (LoRA: the reference is the policy, adapter off)
            shard(reference, self.sharding)
        return reference

    @property
    def loss_scale(self) -> float:
        return float(self.dist.world)             # FSDP averages gradients over processes

    def _reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """FSDP's backward has already reduce-scattered them."""

    def gathered(self):
        return gathered(self.policy, self.sharding)

    def copy_weights(self, target, source) -> None:
        copy_weights(target, source)

    def new_anchor(self, anchor, reference, build):
        if anchor is reference:                   # built once, then refilled in place
            anchor = shard(build(), self.sharding)
        copy_weights(anchor, self.policy)
        return anchor

    def anchor_from_checkpoint(self, checkpoint: Path, template, build):
        anchor = build()
        load_anchor(checkpoint, anchor)
        return shard(anchor, self.sharding)

    def checkpoint_parts(self, run_dir: Path, step: int, anchor) -> CheckpointParts:
        # (torch would take a dummy Adam step to build a state that does not exist yet)
        optimizer = full_optimizer_state(self.policy, self.optimizer) if self.optimizer.state else {}
        return CheckpointParts(optimizer=optimizer, layout=self._layout(sharded=True), anchor=anchor,
                               weights=full_state_dict(self.policy),
                               anchor_weights=full_state_dict(anchor) if anchor is not None else None)

    def _load_optimizer(self, run_dir: Path, checkpoint: Path, state: dict[str, Any]) -> None:
        if state["optimizer"]:                    # empty: saved before any optimizer step
            load_full_optimizer_state(self.policy, self.optimizer, state["optimizer"])

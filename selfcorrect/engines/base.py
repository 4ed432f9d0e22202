"""The seam between the trainer and how the policy is laid out over processes.

The trainer runs the algorithm -- roll out, score, take the loss, step -- and
asks its :class:`Engine` for every verb whose implementation depends on where
the weights, gradients and Adam state live:

=========================  ==================================================
verb                       what the trainer needs from it
=========================  ==================================================
``check``                  refuse a config this layout cannot run, before any model loads
``load_device``            where whole models are loaded
``prepare_models``         wrap policy and reference (FSDP shards them in place)
``prepare_optimizer``      hand the optimizer over (DeepSpeed builds its engine)
``token_logprobs``         the log-probs of a model this engine prepared
``loss_scale``             what the loss is multiplied by before ``backward``
``backward``               accumulate one micro-batch's gradients
``step``                   reduce, clip, apply (or skip) -> (grad norm, applied)
``lockstep``               whether every forward/backward is a collective
``gathered``               all weights on every process while generating
``new_anchor`` ...         the frozen Stage I anchor: built, refilled, restored
``checkpoint_parts``       what a checkpoint holds (optimizer, full weights, extra files)
``load_checkpoint``        restore the optimizer (and engine state) from one
=========================  ==================================================

One file per layout: :mod:`.replicated` (every process holds everything;
gradients summed -- also the world of one), :mod:`.fsdp` (PyTorch FSDP2
ZeRO-2/3) and :mod:`.deepspeed` (DeepSpeed's ZeRO engine).  Nothing outside
``engines/`` asks which one it has.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_anchor
from ..errors import ConfigError
from ..logprobs import token_logprobs

LAYOUT_NAMES = {"none": "without sharding", "fsdp": "with FSDP sharding", "deepspeed": "with DeepSpeed"}


def frozen(model):
    """``model`` with gradients off, in eval mode (the reference and the anchor)."""
    model.requires_grad_(False)
    model.eval()
    return model


def frozen_copy(model):
    return frozen(copy.deepcopy(model))


@dataclass
class CheckpointParts:
    """What an engine contributes to ``checkpoint-N/`` (see :func:`selfcorrect.checkpoint.save_checkpoint`)."""

    optimizer: dict[str, Any]
    """The optimizer state for ``trainer_state.pt`` (``{}`` when the engine writes its own)."""
    layout: dict[str, Any]
    """How the checkpoint was laid out, checked on resume."""
    anchor: Any = None
    """The Hugging Face anchor model to save (None: no anchor of its own)."""
    weights: dict[str, torch.Tensor] | None = None
    """The policy's full weights when the policy object does not hold them (sharded)."""
    anchor_weights: dict[str, torch.Tensor] | None = None
    """The same for the anchor."""
    extra: dict[str, Path] = field(default_factory=dict)
    """Folders the engine wrote itself, moved into the checkpoint."""


class Engine:
    """The verbs above; :class:`~.replicated.ReplicatedEngine` is the plain implementation.

    ``dist`` is the job's :class:`~selfcorrect.distributed.DataParallel`, ``device`` this process's device,
    ``configured_engine`` the ``sharding_engine`` setting (recorded in checkpoints).
    """

    layout = "none"
    """The checkpoint layout this engine writes and resumes (``none``, ``fsdp`` or ``deepspeed``)."""
    sharding = "none"
    """The memory layout (``none``, ``zero2``, ``zero3``)."""
    lockstep = False
    """Every forward and backward pass is a collective: all processes run as many, even past a non-finite loss."""
    whole_weights = True
    """Every process's policy object holds all of its weights."""
    can_share_prefixes = False
    """Scoring may compute a shared prefix in a pass of its own (:func:`~selfcorrect.logprobs.token_logprobs`'s
    ``shared_prefix``): the number of forward passes may differ between processes, as nothing in them communicates."""

    def __init__(self, dist, device: torch.device, max_grad_norm: float, configured_engine: str = "fsdp"):
        self.dist, self.device, self.max_grad_norm = dist, device, max_grad_norm
        self.configured_engine = configured_engine
        self.shared_prefix = False
        """Score shared prefixes once (set by :func:`~selfcorrect.engines.make_engine` where the layout can)."""
        self.policy = None
        self.optimizer: torch.optim.Optimizer | None = None

    # ---- construction

    def check(self, config) -> None:
        """Refuse what this layout cannot run (called before any model is loaded)."""

    @property
    def load_device(self) -> torch.device:
        """Where whole models are loaded."""
        return self.device

    def prepare_models(self, policy, reference):
        """Wrap the policy and reference (None with LoRA) for this layout; returns the reference."""
        raise NotImplementedError

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer, reference):
        """Take over the optimizer (built on the prepared policy's parameters); returns the reference."""
        raise NotImplementedError

    @property
    def trained(self):
        """What the loss's forward passes run through (the policy, or an engine wrapping it)."""
        return self.policy

    # ---- one step

    def token_logprobs(self, model, input_ids, attention_mask, label_mask, chunk_size: int = 1024,
                       temperature: float = 1.0) -> torch.Tensor:
        """:func:`selfcorrect.logprobs.token_logprobs` of a model this engine prepared."""
        return token_logprobs(model, input_ids, attention_mask, label_mask, chunk_size, temperature,
                              shared_prefix=self.shared_prefix)

    @property
    def loss_scale(self) -> float:
        """Our losses are normalised for a sum over processes; engines that average gradients scale them back."""
        return 1.0

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate one micro-batch's gradients (``last``: the step's final micro-batch)."""
        raise NotImplementedError

    def step(self, loss: float, ran: bool) -> tuple[float, bool]:
        """Reduce and clip the step's gradients and apply them unless something is not finite.

        ``loss``: the step's loss summed over processes; ``ran``: this process ran a micro-batch.
        Returns (pre-clip gradient norm, whether the update was applied).
        """
        raise NotImplementedError

    def passes(self, count: int) -> int:
        """How many forward/backward passes this process runs for ``count`` micro-batches of its own."""
        return self.dist.max(count) if self.lockstep else count

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """All of the policy's weights on every process for the duration (generation without collectives)."""
        yield

    # ---- weights

    def copy_weights(self, target, source) -> None:
        """``target``'s weights := ``source``'s (models this engine prepared alike)."""
        raise NotImplementedError

    def new_anchor(self, anchor, reference, build: Callable[[], Any]):
        """The Stage I anchor := the current policy (a frozen copy, or ``anchor`` refilled in place).

        ``anchor`` is the current one (``reference`` until the first refresh); ``build()`` makes a frozen
        model laid out like the policy (the base model, with the adapter under LoRA).
        """
        return frozen_copy(self.policy)

    def anchor_from_checkpoint(self, checkpoint: Path, template, build: Callable[[], Any]):
        """The anchor saved in ``checkpoint``; ``template`` is a whole model of its layout."""
        anchor = frozen_copy(template)
        load_anchor(checkpoint, anchor)
        return anchor

    # ---- checkpoints

    def checkpoint_parts(self, run_dir: Path, step: int, anchor) -> CheckpointParts:
        """What ``checkpoint-<step>`` holds beyond the policy object (a collective when sharded).

        ``anchor``: the Stage I anchor, or None when it is the reference."""
        raise NotImplementedError

    def _layout(self, sharded: bool) -> dict[str, Any]:
        return {"sharded_optimizer": sharded, "sharding_engine": self.configured_engine,
                "zero_stage": self.zero_stage, "world": self.dist.world}

    @property
    def zero_stage(self) -> int:
        return {"zero2": 2, "zero3": 3}.get(self.sharding, 0)

    def load_checkpoint(self, run_dir: Path, checkpoint: Path, state: dict[str, Any]) -> None:
        """Restore the optimizer from ``checkpoint`` (refusing one written in another layout)."""
        saved = state.get("sharding_engine", "fsdp") if state.get("sharded_optimizer", False) else "none"
        if saved != self.layout:
            raise ConfigError(f"--resume {run_dir}: its checkpoint was written {LAYOUT_NAMES[saved]}, this launch "
                              f"runs {LAYOUT_NAMES[self.layout]}; resume it the same way")
        self._load_optimizer(run_dir, checkpoint, state)

    def _load_optimizer(self, run_dir: Path, checkpoint: Path, state: dict[str, Any]) -> None:
        raise NotImplementedError


def check_sharded(engine: Engine, config, requirement: Callable[[], Any] | None = None) -> None:
    """What every sharded layout needs: a config that allows it, its library (``requirement``), a process
    group, and batches that divide over the processes."""
    conflict = config.sharding_conflict(engine.sharding, engine.layout)   # the launcher may have chosen it
    if conflict:
        raise ConfigError(conflict)
    if requirement is not None:
        requirement()
    if not torch.distributed.is_initialized():
        raise ConfigError(f"sharding {engine.sharding} splits the model over processes: launch with "
                          "`accelerate launch` or `torchrun` (a single plain process has nothing to shard with)")
    world = engine.dist.world
    # Every sharded forward/backward is a collective: all processes must run the same number of micro-batches.
    if config.problems_per_step % world:
        raise ConfigError(f"sharding: problems_per_step ({config.problems_per_step}) must be a multiple of "
                          f"the number of processes ({world})")
    if any(p.kind != "rl" for p in config.schedule()) and config.sft_batch_episodes % world:
        raise ConfigError(f"sharding: sft_batch_episodes ({config.sft_batch_episodes}) must be a multiple of "
                          f"the number of processes ({world})")

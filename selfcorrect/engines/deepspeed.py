"""DeepSpeed engine (``sharding_engine: deepspeed``): the ZeRO-2 / ZeRO-3 layouts of :mod:`.fsdp`, driven by DeepSpeed.

``sharding_engine: deepspeed`` (or ``accelerate launch`` with
``configs/accelerate/deepspeed_zero{2,3}.yaml``) hands the policy to
``deepspeed.initialize`` with selfcorrect's own Adam: DeepSpeed partitions the
Adam state and gradients (ZeRO-2) and the weights too (ZeRO-3), reduces the
gradients, clips them and runs the optimizer.  What the trainer keeps:

* **The engine's output is the log-probabilities.**  The policy is wrapped in
  :class:`~selfcorrect.logprobs.TokenLogprobs`, whose forward returns
  ``log π(token)`` at the attempt tokens.  DeepSpeed hooks the *output* of an
  engine's forward to prepare its backward pass, so the tensor the loss is
  built from must be that output (not a hidden state captured on the side).
* **One optimizer step per training step.**  Every micro-batch's backward
  runs with the accumulation boundary set by hand (only the last one is a
  boundary), then one ``engine.step()``: the step's gradients are the sum over
  its micro-batches, whatever their number.
* **Generation without collectives.**  Under ZeRO-3 every forward gathers each
  layer's weights from all processes.  :func:`gathered` gathers all weights once
  and detaches DeepSpeed's module hooks while processes decode different
  numbers of tokens, then re-attaches them.
* **Frozen models.**  Under ZeRO-3 the reference and the iteration-2 anchor are
  inference engines (partitioned, no optimizer); under ZeRO-2 they are plain
  copies, as without sharding.
* **Checkpoints.**  The gathered weights are written as the usual Hugging Face
  directory; DeepSpeed's own per-process checkpoint (fp32 master weights and the
  partitioned Adam state) goes into ``checkpoint-N/deepspeed/`` for an exact
  resume with the same number of processes.
* **Skipped steps.**  DeepSpeed's overflow check skips a step whose gradients
  are not finite (and clears them), in fp32 and bf16 alike.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_anchor
from ..errors import ConfigError
from ..logprobs import TokenLogprobs
from .base import CheckpointParts, Engine, check_sharded

CHECKPOINT_TAG = "zero"
"""DeepSpeed's checkpoint tag (sub-folder) inside ``checkpoint-N/deepspeed``."""


def require_deepspeed():
    """``import deepspeed``, or a ConfigError that says how to install it."""
    try:
        import deepspeed
    except ImportError as error:
        raise ConfigError("sharding_engine deepspeed needs DeepSpeed: pip install 'selfcorrect[deepspeed]' "
                          f"({error}); or use sharding_engine fsdp (PyTorch's own)") from None
    return deepspeed


def ds_config(stage: int, max_grad_norm: float, bf16: bool, autocast: bool, train: bool = True) -> dict[str, Any]:
    """The DeepSpeed config selfcorrect builds from its own TrainConfig (no separate JSON to keep in sync).

    ``bf16``: bfloat16 weights (DeepSpeed keeps fp32 master weights in the
    optimizer).  ``autocast``: bf16 autocast, which the engine would otherwise
    switch off inside its forward (while a plain ZeRO-2 reference runs under
    it); no module is declared safe for lower-precision communication, so
    gradients are reduced in the weights' dtype.
    Batch sizes are bookkeeping only here: selfcorrect feeds the micro-batches
    and marks the accumulation boundary itself (see the module docstring).
    """
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,            # selfcorrect logs; DeepSpeed stays quiet
        "wall_clock_breakdown": False,
    }
    if autocast:    # (also with bf16 weights: the engine would switch an outer autocast off, unlike the reference)
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    if train:
        config["gradient_clipping"] = max_grad_norm
        config["zero_allow_untested_optimizer"] = True     # selfcorrect's torch Adam/AdamW
    return config


def train_engine(model, optimizer: torch.optim.Optimizer, stage: int, max_grad_norm: float, bf16: bool,
                 autocast: bool, align_calls=None):
    """``deepspeed.initialize`` on the policy (wrapped to output log-probs) and selfcorrect's optimizer."""
    deepspeed = require_deepspeed()
    engine, *_ = deepspeed.initialize(model=TokenLogprobs(model, align_calls), optimizer=optimizer,
                                      config=ds_config(stage, max_grad_norm, bf16, autocast))
    return engine


def frozen_engine(model, stage: int, bf16: bool, autocast: bool, align_calls=None):
    """A frozen model for log-probs: a partitioned inference engine under ZeRO-3, the model itself under ZeRO-2."""
    if stage != 3:
        return model
    deepspeed = require_deepspeed()
    engine, *_ = deepspeed.initialize(model=TokenLogprobs(model, align_calls),
                                      config=ds_config(3, 0.0, bf16, autocast, train=False))
    engine.eval()
    return engine


def is_engine(model) -> bool:
    return type(model).__name__ == "DeepSpeedEngine"


def hf_model(model):
    """The Hugging Face model inside an engine (or the model itself)."""
    return model.module.model if is_engine(model) else model


def _zero3(engine) -> bool:
    return is_engine(engine) and engine.zero_optimization_stage() == 3


def _offload(engine):
    """DeepSpeed's ZeRO-3 parameter manager (it owns the module hooks)."""
    optimizer = engine.optimizer
    return getattr(optimizer, "parameter_offload", optimizer)


@contextlib.contextmanager
def gathered(engine) -> Iterator[None]:
    """All of the engine's weights on every process, its ZeRO-3 hooks detached, for the duration.

    Every process must enter (the gather is a collective); inside, processes may
    run different numbers of forward passes.  A no-op below ZeRO-3.
    """
    if not _zero3(engine):
        yield
        return
    deepspeed = require_deepspeed()
    offload = _offload(engine)
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        # With the hooks attached, each module's forward would free its weights again (a collective to re-gather).
        for param in params:
            param.ds_active_sub_modules.clear()
        for hook in [*offload.forward_hooks, *offload.backward_hooks]:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            offload._register_deepspeed_module(offload.module)


def full_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The Hugging Face model's whole state dict on the main process's CPU, ``{}`` elsewhere (a collective).

    ``None`` when the weights are not partitioned (below ZeRO-3): the model itself holds them.
    """
    if not _zero3(model):
        return None
    main = torch.distributed.get_rank() == 0
    with gathered(model):
        return {k: v.detach().cpu().clone() for k, v in hf_model(model).state_dict().items()} if main else {}


@torch.no_grad()
def copy_weights(target, source) -> None:
    """``target``'s weights := ``source``'s (identically partitioned ZeRO-3 engines: partition by partition).

    A collective: small parameters (below ``stage3_param_persistence_threshold``)
    stay gathered between forwards, and their gathered copies are refreshed.
    """
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    pairs = list(zip(target.module.parameters(), source.module.parameters(), strict=True))
    for t, s in pairs:
        t.ds_tensor.copy_(s.ds_tensor)
    kept = [t for t, _ in pairs if t.ds_status == ZeroParamStatus.AVAILABLE]
    if kept:                    # what DeepSpeed does to its own persistent parameters after an optimizer step
        kept[0].partition(param_list=kept)
        kept[0].all_gather(param_list=kept)


def backward(engine, loss: torch.Tensor, last: bool, poison: bool = False) -> None:
    """Accumulate this micro-batch's gradients; the last micro-batch of a step is the reduction boundary.

    ``poison``: make the gradients NaN, so that DeepSpeed's overflow check skips
    the step (a non-finite loss can have finite gradients, e.g. an infinite
    constant term; the step must not be applied either way).
    """
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss * float("nan") if poison else loss, scale_wrt_gas=False)


def step(engine) -> tuple[float, bool]:
    """DeepSpeed's clip + optimizer step; returns (pre-clip gradient norm, whether the step was applied)."""
    engine.set_gradient_accumulation_boundary(True)
    engine.step()
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan"), engine.was_step_applied()


def save(engine, directory: Path) -> None:
    """DeepSpeed's own checkpoint (every process writes its partition; a collective)."""
    engine.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, save_latest=False)


def load(engine, directory: Path) -> None:
    """Restore weights, fp32 master weights and Adam state saved by :func:`save` (same number of processes)."""
    loaded, _ = engine.load_checkpoint(str(directory), tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                       load_lr_scheduler_states=False)
    if loaded is None:
        raise ConfigError(f"{directory}: no DeepSpeed checkpoint to resume from")


class DeepSpeedEngine(Engine):
    """DeepSpeed runs the policy's forward/backward and the optimizer; ``self.policy`` stays the Hugging Face
    model (generation, saving)."""

    layout = "deepspeed"
    lockstep = True

    def __init__(self, dist, device: torch.device, max_grad_norm: float, sharding: str, bf16: bool, autocast: bool):
        super().__init__(dist, device, max_grad_norm, "deepspeed")
        self.sharding, self.precision = sharding, {"bf16": bf16, "autocast": autocast}
        self.engine = None
        self._nonfinite_loss = False              # seen in this step's micro-batches

    @property
    def whole_weights(self) -> bool:              # ZeRO-2 partitions gradients and Adam state only
        return self.zero_stage == 2

    def check(self, config) -> None:
        check_sharded(self, config, require_deepspeed)

    def _align_calls(self):
        """ZeRO-3: each call of the output layer (and its recomputation in the backward pass) gathers its weight
        from all processes, so every process makes as many calls as the busiest one."""
        return self.dist.max if self.zero_stage == 3 else None

    def prepare_models(self, policy, reference):
        self.policy = policy
        return reference

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer, reference):
        self.optimizer = optimizer
        self.engine = train_engine(self.policy, optimizer, self.zero_stage, self.max_grad_norm,
                                   align_calls=self._align_calls(), **self.precision)
        return frozen_engine(reference, self.zero_stage, align_calls=self._align_calls(), **self.precision)

    @property
    def trained(self):
        return self.engine

    def token_logprobs(self, model, input_ids, attention_mask, label_mask, chunk_size: int = 1024,
                       temperature: float = 1.0) -> torch.Tensor:
        if is_engine(model):                      # its module is a TokenLogprobs: the engine's output
            return model(input_ids=input_ids, attention_mask=attention_mask, label_mask=label_mask,
                         chunk_size=chunk_size, temperature=temperature)
        return super().token_logprobs(model, input_ids, attention_mask, label_mask, chunk_size, temperature)

    @property
    def loss_scale(self) -> float:
        return float(self.dist.world)             # DeepSpeed averages gradients over processes

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # DeepSpeed steps unless the gradients are non-finite: a non-finite loss anywhere in the step (on any
        # process) poisons the last micro-batch's gradients, so the step is skipped as on the other paths.
        self._nonfinite_loss = self._nonfinite_loss or not bool(torch.isfinite(loss))
        poison = last and self.dist.max(int(self._nonfinite_loss)) > 0
        if last:
            self._nonfinite_loss = False
        backward(self.engine, loss, last, poison)

    def step(self, loss: float, ran: bool) -> tuple[float, bool]:
        # DeepSpeed reduces, clips, steps; it skips non-finite gradients itself
        return step(self.engine) if ran else (0.0, False)

    def gathered(self):
        return gathered(self.engine)

    def copy_weights(self, target, source) -> None:
        raise ConfigError("copying the policy's weights is not supported with DeepSpeed yet")

    def new_anchor(self, anchor, reference, build):
        if self.whole_weights:
            return super().new_anchor(anchor, reference, build)
        if anchor is reference:                   # built once and refilled (DeepSpeed never frees a ZeRO-3 engine)
            anchor = frozen_engine(build(), self.zero_stage, align_calls=self._align_calls(), **self.precision)
        copy_weights(anchor, self.engine)
        return anchor

    def anchor_from_checkpoint(self, checkpoint: Path, template, build):
        if self.whole_weights:
            return super().anchor_from_checkpoint(checkpoint, template, build)
        anchor = build()
        load_anchor(checkpoint, anchor)
        return frozen_engine(anchor, self.zero_stage, align_calls=self._align_calls(), **self.precision)

    def checkpoint_parts(self, run_dir: Path, step: int, anchor) -> CheckpointParts:
        # DeepSpeed's own checkpoint holds the optimizer; every process writes its partition
        folder = run_dir / f".tmp-deepspeed-{step}"
        if self.dist.main:                        # left over from an interrupted save
            shutil.rmtree(folder, ignore_errors=True)
        self.dist.barrier()
        save(self.engine, folder)
        return CheckpointParts(optimizer={}, layout=self._layout(sharded=True), anchor=hf_model(anchor),
                               weights=full_state_dict(self.engine), anchor_weights=full_state_dict(anchor),
                               extra={"deepspeed": folder})

    def _load_optimizer(self, run_dir: Path, checkpoint: Path, state: dict[str, Any]) -> None:
        if state.get("world") != self.dist.world:
            raise ConfigError(f"--resume {run_dir}: a DeepSpeed checkpoint resumes on the number of processes "
                              f"that wrote it ({state.get('world')}), not {self.dist.world}")
        if state.get("zero_stage") != self.zero_stage:
            raise ConfigError(f"--resume {run_dir}: its DeepSpeed checkpoint is ZeRO stage {state.get('zero_stage')}"
                              f", this launch runs stage {self.zero_stage}; resume it with the same stage")
        load(self.engine, checkpoint / "deepspeed")

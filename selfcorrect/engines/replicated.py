"""Replicated data parallelism (``sharding: none``): every process holds all weights and Adam state.

Each process rolls out and scores its share of a step's problems, then the
gradients are all-reduced (summed) before clipping and a plain torch optimizer
step -- the update equals the single-process update on the same global batch
(see :mod:`selfcorrect.distributed`).  A plain ``selfcorrect train`` is this
engine in a world of one, where nothing communicates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .base import CheckpointParts, Engine


class ReplicatedEngine(Engine):
    """Whole models on every process; a torch optimizer; gradients summed over processes."""

    can_share_prefixes = True

    def prepare_models(self, policy, reference):
        self.policy = policy
        return reference

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer, reference):
        self.optimizer = optimizer
        return reference

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self, loss: float, ran: bool) -> tuple[float, bool]:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self._reduce_gradients(params)
        limit = self.max_grad_norm if self.max_grad_norm else float("inf")
        grad_norm = (_scalar(torch.nn.utils.clip_grad_norm_(params, limit))
            if any(p.grad is not None for p in params) else torch.tensor(0.0))
        applied = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
        if applied:                       # never let a NaN/inf (or an empty dataset) touch weights or Adam
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm), applied

    def _reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        self.dist.sum_gradients(params)

    @torch.no_grad()
    def copy_weights(self, target, source) -> None:
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.copy_(s)

    def checkpoint_parts(self, run_dir: Path, step: int, anchor) -> CheckpointParts:
        return CheckpointParts(optimizer=self.optimizer.state_dict(), layout=self._layout(sharded=False),
                               anchor=anchor)

    def _load_optimizer(self, run_dir: Path, checkpoint: Path, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def _scalar(value) -> torch.Tensor:
    """A plain tensor from what may be a (replicated) DTensor, e.g. a clipped gradient norm."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value

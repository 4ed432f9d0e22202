"""Where a training step's time goes: wall seconds per phase, summed over the step's micro-batches.

The phases of an RL step, in order::

    generate          rollouts (all attempts) and their verification
    reference_score   π_ref's (and the Stage I anchor's) log-probs, without gradients
    policy_score      the policy's log-probs and the objective, with gradients (forward)
    backward          the backward pass
    optimizer         gradient reduction, clipping and the optimizer step
    weight_sync       pushing the new weights into an inference engine (vLLM; ~0 otherwise)

On a GPU the clock synchronises the device at each boundary, so a phase is charged for
its own kernels and not for the ones queued before it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

PHASES = ("generate", "reference_score", "policy_score", "backward", "optimizer", "weight_sync")


class PhaseClock:
    """``with clock("backward"): ...`` adds the block's wall time to ``clock.seconds["backward"]``."""

    def __init__(self, device: torch.device | None = None):
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._cuda = device is not None and device.type == "cuda"

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def row(self) -> dict[str, float]:
        """``time_<phase>_s`` for every phase (the keys metrics.jsonl logs)."""
        return {f"time_{phase}_s": seconds for phase, seconds in self.seconds.items()}


def untimed(phase: str) -> contextlib.AbstractContextManager:
    """The clock of a caller that does not time (``step_loss(..., clock=untimed)``)."""
    return contextlib.nullcontext()

"""Data-parallel training: each process rolls out its share of a step's problems; gradients are summed.

Launched with ``accelerate launch -m selfcorrect.cli train ...`` (or
``torchrun``), every process

* draws the *same* problems for a step (same seed, same data stream) and keeps
  its shard ``problems[rank::world]`` — so RLOO groups (all samples of a
  problem) never straddle processes;
* samples with per-(problem, sample, attempt) seeds, so an episode is the same
  whichever process generates it;
* normalises its loss by the episodes of the *whole* step and all-reduces
  (sums) gradients before clipping and the optimizer step — the update equals
  the single-process update on the same global batch;
* logs, evaluates and checkpoints on the main process only.

accelerate's :class:`~accelerate.PartialState` sets up the process group
(gloo on CPU, NCCL on GPUs) from the launcher's environment; a plain
``selfcorrect train`` is a world of one and nothing here communicates.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def all_reduce_scalar(value, dtype: torch.dtype, op, device: torch.device):
    """``value`` reduced with ``op`` over all processes of the default group (a collective)."""
    t = torch.tensor([value], dtype=dtype, device=device)
    torch.distributed.all_reduce(t, op=op)
    return t.item()


class DataParallel:
    """This process's rank in the job and the few collectives the trainer needs."""

    def __init__(self, cpu: bool):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)
        self.rank = self.state.process_index
        self.world = self.state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return self.state.device

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: every ``world``-th item starting at ``rank``."""
        return list(items[self.rank::self.world])

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """All-reduce (sum) gradients; a parameter without a gradient contributes zeros."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)

    def sum(self, value: float) -> float:
        """``value`` summed over all processes."""
        return float(self._all_reduce(value, torch.float64, torch.distributed.ReduceOp.SUM))

    def max(self, value: int) -> int:
        """The largest ``value`` over all processes."""
        return int(self._all_reduce(value, torch.int64, torch.distributed.ReduceOp.MAX))

    def _all_reduce(self, value, dtype: torch.dtype, op):
        return value if self.world == 1 else all_reduce_scalar(value, dtype, op, self.device)

    def gather_ranks(self, items: list[Any]) -> list[list[Any]]:
        """Every process's list, one per rank (on every process)."""
        if self.world == 1:
            return [list(items)]
        parts: list[list[Any] | None] = [None] * self.world
        torch.distributed.all_gather_object(parts, items)
        return [list(part or []) for part in parts]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's list, concatenated in rank order (on every process)."""
        return [x for part in self.gather_ranks(items) for x in part]

    def gather_in_order(self, local: list[Any], count: int, per: int) -> list[Any]:
        """All processes' items of ``count`` problems in the problems' order (on every process).

        Process ``r`` produced the items of ``problems[r::world]``, ``per`` items each, problem-major.
        """
        per_rank, ordered = self.gather_ranks(local), []
        for index in range(count):
            j = index // self.world
            ordered.extend(per_rank[index % self.world][j * per:(j + 1) * per])
        return ordered

    def on_main(self, work: Callable[[], T]) -> T | None:
        """``work()`` on the main process only (file checks, checksums: done once, reported once).

        A :class:`~selfcorrect.errors.ConfigError` it raises is raised on every process; returns its
        value on the main process and None on the others (see :meth:`share`).
        """
        from .errors import ConfigError

        value, error = None, ""
        if self.main:
            try:
                value = work()
            except ConfigError as exc:
                error = str(exc)
        error = self.share(error)
        if error:
            raise ConfigError(error)
        return value

    def share(self, value: T) -> T:
        """The main process's ``value``, on every process (a collective)."""
        return value if self.world == 1 else self.gather_ranks([value])[0][0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


class TrainingStopped(Exception):
    """A run stopped by SIGINT / SIGTERM at a step boundary, after writing ``checkpoint``."""

    def __init__(self, signum: int, checkpoint):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {checkpoint.name.split('-')[-1]}: "
                         f"checkpoint {checkpoint}")


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) stop a run between steps, in every process.

    While :meth:`catching`, either signal only records the request: the current step finishes (a step
    cut in half could not be resumed exactly), then the trainer writes a checkpoint and stops
    (:class:`TrainingStopped`).  :meth:`agreed`, called by every process between steps, is true on all of
    them once any of them saw a signal -- a multi-process job must stop between the same two steps, or a
    checkpoint being written hangs in its collectives.  In a single process a second Ctrl-C aborts at
    once (no checkpoint: the last one written stands).  (torchrun kills its workers 30 s after forwarding
    a signal: a longer step ends without the checkpoint, but never in a hang.)
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, dist: DataParallel):
        self.dist = dist
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield                       # signal handlers live on the main thread only
            return
        previous = {sig: signal.signal(sig, self._record) for sig in self.SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _record(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT and self.dist.world == 1:
            raise KeyboardInterrupt     # the second Ctrl-C: abort now
        if self.signum is None:
            self.signum = signum
            if self.dist.main:
                print(f"selfcorrect: {signal.Signals(signum).name}: stopping after this step with a checkpoint"
                      + (" (Ctrl-C again to abort at once)" if self.dist.world == 1 else ""),
                      file=sys.stderr, flush=True)

    def agreed(self) -> int | None:
        """The signal any process was asked to stop by, or None (a collective: every process calls it)."""
        if self.dist.world == 1:
            return self.signum
        signum = self.dist.max(self.signum or 0)
        return signum or None

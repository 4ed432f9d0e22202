"""The SFT baselines' steps (STaR, Pair-SFT, STaR in Stage II), as part of the :class:`~selfcorrect.trainer.Trainer`.

An SFT phase collects its dataset once (its share of the sample budget, rolled
out by the current model and filtered, or paired: :mod:`.sft_data`), saves it in
``RUN/sft/phase-N.pt`` so a resume trains on the same data, then takes
``sft_steps`` supervised steps on attempt 2.  A STaR round first restarts from
the initial model (docs/training.md).  The steps live on the trainer (a mixin) and
use its state; :class:`SupervisedHost` lists everything they may use, and a test
checks both that the trainer has it and that these methods use nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..lora import load_trainable, save_trainable
from ..rollout import Episode
from ..rollout.sampling import ProblemStream
from .methods import Phase
from .step import accumulate, collected_stats, sft_step_loss


@runtime_checkable
class SupervisedHost(Protocol):
    """The trainer state the SFT steps read and write (tests/test_methods.py checks it both ways)."""

    config: Any                  # TrainConfig
    run_dir: Path
    task: Any                    # the training Task
    builder: Any                 # ConversationBuilder
    tokenizer: Any
    device: torch.device
    dist: Any                    # DataParallel
    engine: Any                  # Engine
    policy: Any
    reference: Any               # None under LoRA
    optimizer: torch.optim.Optimizer
    backend: Any                 # GenerationBackend
    stream: ProblemStream        # replaced when a resumed phase reloads its dataset's data position
    step: int
    last_episodes: list[Episode]
    _sft: tuple[int, dict[str, Any], list[Episode]] | None
    _step_lr: float
    _initial_adapter_path: Path

    def _rollout(self, problems, attempts: int, base_share: float = 0.0) -> list[Episode]: ...

    def _optimizer_step(self, losses: list[float], clock=...) -> tuple[float, float, bool]: ...

    def _policy_weights(self) -> Iterable[tuple[str, torch.Tensor]]: ...


class SupervisedSteps:
    """The SFT half of the trainer (a mixin of :class:`~selfcorrect.trainer.Trainer`)."""

    def _sft_path(self, index: int) -> Path:
        return self.run_dir / "sft" / f"phase-{index}.pt"

    def _collect(self, index: int, phase: Phase) -> dict[str, Any]:
        """Build (or reload, on resume) the SFT dataset of a phase; returns the stored record."""
        path = self._sft_path(index)
        if path.is_file():      # resumed: reuse the dataset and the data position it was built at
            record = torch.load(path, map_location="cpu", weights_only=False)
            self.stream = ProblemStream(len(self.task.problems), self.config.seed, **record["stream"])
            return record
        config = self.config
        count = max(1, math.ceil(phase.collect_episodes / config.samples))
        problems = [self.task.problems[i] for i in self.stream.take(count)]
        # Every process rolls out its shard; all traces are put back in the order one process would have
        # produced them, and every process builds the same dataset from them (so the SFT batches do not
        # depend on the number of processes, even when a problem was drawn twice).
        traces = self.dist.gather_in_order(self._rollout(problems, phase.attempts), len(problems), config.samples)
        dataset = phase.dataset(traces, problems, self.task, self.builder, config.sft_keep)
        record = {"episodes": dataset, "collected": len(traces), "stats": collected_stats(traces, phase.attempts),
                  "stream": self.stream.state()}
        if self.dist.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(record, tmp)
            tmp.replace(path)
        self.dist.barrier()
        self.last_episodes = traces
        return record

    def _sft_dataset(self, index: int, phase: Phase) -> tuple[dict[str, Any], list[Episode]]:
        """(this phase's record, the episodes it trains on): its own, or for a STaR round every round's so far."""
        record = self._collect(index, phase)
        if not phase.restart:
            return record, record["episodes"]
        earlier = [i for i, p in enumerate(self.config.schedule()[:index]) if p.restart]
        dataset = [ep for i in earlier
                   for ep in torch.load(self._sft_path(i), map_location="cpu", weights_only=False)["episodes"]]
        return record, dataset + record["episodes"]

    def _restart_from_initial(self) -> None:
        """The policy := the initial model, with a fresh Adam (the warmup restarts through ``lr_factor``)."""
        if self.reference is None:                        # LoRA: the adapter as it was created
            load_trainable(self.policy, self._initial_adapter_path)
        else:
            self.engine.copy_weights(self.policy, self.reference)
        self.optimizer.state.clear()
        self.backend.sync_weights(self._policy_weights)

    def _sft_step(self, index: int, phase: Phase, offset: int) -> dict[str, Any]:
        config, engine = self.config, self.engine
        started = time.perf_counter()
        fresh = offset == 0 and not self._sft_path(index).is_file()
        if phase.restart and self.step == 0 and self.reference is None and self.dist.main:
            # LoRA has no frozen copy of the initial model to restart from: keep its initial adapter.
            save_trainable(self.policy, self._initial_adapter_path)
        self.dist.barrier()                               # nobody reads the file before everyone checked it
        if self._sft is None or self._sft[0] != index:
            self._sft = (index, *self._sft_dataset(index, phase))
            if phase.restart and offset == 0 and self.step > 0:
                self._restart_from_initial()              # after collecting: the round samples the last model
        _, record, dataset = self._sft
        generated = time.perf_counter()
        losses: list[float] = []
        if dataset:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(
                config.seed * 7919 + index * 104729 + (offset * config.sft_batch_episodes) // len(dataset)))
            start = (offset * config.sft_batch_episodes) % len(dataset)
            picks = [dataset[int(order[(start + i) % len(dataset)])] for i in range(config.sft_batch_episodes)]
            norm = sum(len(ep.attempts[1].ids) for ep in picks)      # trained tokens of the whole step
            picks, size = self.dist.shard(picks), config.micro_batch_problems * config.samples
            losses = accumulate(engine, [picks[lo: lo + size] for lo in range(0, len(picks), size)],
                                lambda batch: (sft_step_loss(config, engine.token_logprobs, engine.trained, batch,
                                                             self.tokenizer.pad_token_id, norm, self.device), None))
        trained = time.perf_counter()
        loss, grad_norm, skipped = self._optimizer_step(losses)
        row = {"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "lr": self._step_lr,
               "sft_dataset": len(dataset), "sft_collected": record["collected"],
               "time_generate_s": generated - started, "time_train_s": trained - generated}
        if fresh:
            row.update(record["stats"])
        return row

"""``selfcorrect train``: SCoRe (Stage I → Stage II, repeated), its ablations and the paper's baselines.

One training step::

    problems ──rollout──▶ episodes (K attempts, n samples/problem, exact ids)
             ──verifier──▶ rewards [B, K]
             ──forward (policy, grad; reference/anchor, no grad)──▶ token log-probs [B, T]
             ──objective (the phase's: Stage I | Stage II | single-turn)──▶ loss ──backward──▶ optimizer step

This module is the loop: build the run (:meth:`Trainer.create` / :meth:`Trainer.resume`), run each
phase's steps, checkpoint, evaluate.  The settings, the methods' phases, one micro-batch's tensors, the
SFT datasets and the run log live in :mod:`selfcorrect.training`; how weights, gradients and Adam state
are laid out over processes in :mod:`selfcorrect.engines` (the trainer never asks which engine it has).

**KL anchors.**  The β1 terms are always anchored to the *initial* model
π_ref (frozen).  The β2 term of Stage I pins attempt 1 to the model at the
*start of that Stage I*: in iteration 1 that is π_ref; in later iterations it
is the Stage II model of the previous iteration.  Stage I's job is to teach
correction without moving attempt 1; anchoring it to π_ref again would drag
attempt 1 back to the base model and undo what Stage II learnt for it.

**Micro-batches** hold whole problems (all ``n`` samples), so RLOO baselines
are exact; losses are normalised by the episodes of the whole step so
accumulated gradients equal the full-batch gradient.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import faults
from .checkpoint import (has_anchor, intact_checkpoint, load_state, prune_checkpoints, save_checkpoint,
    set_rng_state, write_best)
from .config import from_dict, load_yaml
from .distributed import DataParallel, StopRequest, TrainingStopped
from .engines import make_engine
from .errors import ConfigError
from .logprobs import dropout_disabled
from .lora import export_merged, merged_weights
from .models import load_model, load_tokenizer, resolve_device
from .results import summarize_episodes, write_eval_outputs, write_eval_records
from .rollout import (ConversationBuilder, Episode, SamplingParams, TransformersBackend, attempt_progress,
                      backend_capabilities, build_backend, sample_episodes)
from .rollout.sampling import ProblemStream, draw_indices, sample_with_offline_first_attempts
from .run_dir import RunLock, check_output_dir, claim_run_dir, write_config
from .algorithms.score import adapt_beta2
from .training.clock import PhaseClock, untimed
from .training.config import TrainConfig, resumed_config, run_splits
from .training.methods import METHODS, Phase
from .training.policy import base_model, load_policy
from .training.run_log import RunLogger, log_samples, plot_curves, truncate_logs
from .training.sft_steps import SupervisedSteps
from .training.step import (StepRecords, accumulate, autocast, batch_metrics, gap_warning, micro_batches, rloo_group,
                            step_loss)

__all__ = ["METHODS", "Phase", "ProblemStream", "TrainConfig", "Trainer", "micro_batches", "rloo_group"]


class Trainer(SupervisedSteps):
    """Holds the models, optimizer, engine and data stream of one run; :meth:`train` runs the schedule.

    RL steps are here; the SFT baselines' steps are :class:`~selfcorrect.training.sft_steps.SupervisedSteps`.

    Construct with :meth:`create` (new run) or :meth:`resume` (continue a run
    directory exactly where its last checkpoint left it).
    """

    def __init__(self, config: TrainConfig, run_dir: Path, checkpoint: Path | None = None,
                 lock: RunLock | None = None):
        self.config = config
        self.run_dir = run_dir
        self.lock = lock                                  # the run directory's lock (main process), see run_dir.py
        device = resolve_device(config.device)
        self.dist = DataParallel(cpu=device == "cpu")    # a world of one unless launched by accelerate/torchrun
        self.device = self.dist.device if self.dist.world > 1 else torch.device(device)
        self.engine = make_engine(config, self.dist, self.device)   # checks the layout before any model loads
        torch.manual_seed(config.seed)
        self.splits = run_splits(config)                  # train / validation / test, checked for overlap
        self.task, self.validation_task, self.test_task = self.splits.train, self.splits.validation, self.splits.test
        if config.eval_every and self.validation_task is None:
            raise ConfigError(f"eval_every {config.eval_every} needs validation problems, but task "
                              f"{self.task.name!r} has no {config.validation_split!r} split and "
                              f"validation_fraction {config.validation_fraction} carved none of its "
                              f"{len(self.task.problems)} training problems: raise validation_fraction or set "
                              "eval_every 0")
        level = self.task.options.get("sandbox_isolation")
        if level not in (None, "full") and self.dist.main:
            # The task factory warned already; training is where a gameable reward does damage.
            print(f"WARNING: TRAINING against code rewards under sandbox isolation {level!r}: "
                  "a policy can learn to game them (docs/sandbox.md).", file=sys.stderr, flush=True)
        self.tokenizer = load_tokenizer(config.model, chat_template=config.chat_template)
        self.policy, self.reference = load_policy(config, self.engine.load_device, checkpoint)
        self.reference = self.engine.prepare_models(self.policy, self.reference)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optim_cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        self.optimizer = optim_cls(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: config.lr_factor(s))
        self.reference = self.engine.prepare_optimizer(self.optimizer, self.reference)
        self.anchor = self.reference                      # Stage I anchor of attempt 1 (see module docstring)
        self.builder = ConversationBuilder(self.tokenizer, self.task.correction_instruction)
        self.backend = self._make_backend()
        self._base_backend = None                         # π_ref's sampler (base_first_attempts), made on first use
        self.stream = ProblemStream(len(self.task.problems), config.seed)
        self.step = 0
        self.beta2 = config.beta2                         # Stage I's β2 now (it moves with adaptive_beta2)
        self.best: dict[str, Any] | None = None
        self.skipped = 0
        self.last_episodes: list[Episode] = []            # the latest step's (samples.jsonl)
        self._gap_warned = False
        self.eval_progress: Callable[[str, int], Callable[[int], None]] | None = None
        """``(description, total) -> advance(n)`` for the held-out evaluations (the CLI shows their progress)."""
        self._sft: tuple[int, dict[str, Any], list[Episode]] | None = None   # (phase index, record, dataset)
        self._step_lr = float("nan")                      # the rate the last optimizer step applied
        self._initial_adapter_path = run_dir / "sft" / "initial-adapter.pt"  # LoRA STaR: restarts from it

    # ---- construction

    def _make_backend(self):
        """The rollout backend; an engine that loads its own weights gets the policy's (a resumed or LoRA
        policy differs from the files on disk)."""
        config = self.config
        backend = build_backend(config, self.policy, self.tokenizer, model_spec=config.model,
                                dtype="bfloat16" if config.autocast == "bf16" else config.dtype, seed=config.seed,
                                processes=self.dist.world,
                                generation_config=getattr(self.policy, "generation_config", None))
        backend.sync_weights(self._policy_weights)
        return backend

    def _policy_weights(self):
        """The policy as ``(name, tensor)`` pairs an inference engine loads (LoRA merged in)."""
        return merged_weights(self.policy)

    def _generation_autocast(self):
        """bf16 autocast around our own decode loop; an inference engine keeps its own precision."""
        return (contextlib.nullcontext() if backend_capabilities(self.config).own_precision else
                autocast(self.config, self.device))

    @classmethod
    def create(cls, config: TrainConfig) -> Trainer:
        """A new run in ``config.out`` (locked; an earlier run there is refused, or removed with ``overwrite``)."""
        run_dir = Path(config.out)
        check_output_dir(run_dir)
        created = not run_dir.exists()
        lock = claim_run_dir(run_dir, _job(config), config.overwrite, fresh=True)
        try:
            trainer = cls(config, run_dir, lock=lock)
        except BaseException:
            if lock is not None:                          # a failed start leaves nothing behind
                lock.release()
                if created:
                    shutil.rmtree(run_dir, ignore_errors=True)
            raise
        trainer.dist.barrier()                            # every process checked the directory before we write
        if trainer.dist.main:
            write_config(run_dir, config)
        trainer.dist.barrier()
        return trainer

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: dict[str, Any] | None = None) -> Trainer:
        """Continue ``run_dir`` exactly from its newest intact checkpoint.

        ``overrides``: settings given again on the command line; those outside
        :data:`~selfcorrect.training.config.RESUMABLE` must equal the run's (else one error lists them).
        """
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        saved = from_dict(TrainConfig, load_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
        dist = _job(saved)
        lock = claim_run_dir(run_dir, dist, saved.overwrite, fresh=False)
        try:
            # Checksums read once, on the main process (the others would re-read every file and re-warn).
            checkpoint = dist.share(dist.on_main(lambda: intact_checkpoint(run_dir)))
            state = load_state(checkpoint)
            config = resumed_config(saved, overrides or {}, str(run_dir), state["step"])
            fingerprint = run_splits(config).fingerprint()    # before any model loads
            if state.get("train_problems", fingerprint) != fingerprint:
                raise ConfigError(f"--resume {run_dir}: the task now gives other training problems than the run "
                                  "trained on (a changed data file, or a version that splits them differently); "
                                  "start a new run")
            trainer = cls(config, run_dir, checkpoint, lock=lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if trainer.dist.main and config != saved:
            write_config(run_dir, config)
        trainer.engine.load_checkpoint(run_dir, checkpoint, state)
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.stream = ProblemStream(len(trainer.task.problems), config.seed, **state["data"])
        trainer.step, trainer.best, trainer.skipped = state["step"], state.get("best"), state.get("skipped", 0)
        trainer.beta2 = state.get("beta2", config.beta2)
        if has_anchor(checkpoint):
            template = trainer.policy if trainer.reference is None else trainer.reference
            trainer.anchor = trainer.engine.anchor_from_checkpoint(checkpoint, template, trainer._base_model)
        if trainer.dist.main:
            truncate_logs(run_dir, trainer.step)
        trainer.dist.barrier()
        set_rng_state(state["rng"])
        return trainer

    def _base_model(self):
        return base_model(self.config, self.engine.load_device)

    # ---- checkpoints

    def save(self) -> Path:
        """``checkpoint-<step>`` (every process takes part: the engine may gather weights)."""
        anchor = self.anchor if self._anchor_read_after_resume() else None
        parts = self.engine.checkpoint_parts(self.run_dir, self.step, anchor)
        state = {"optimizer": parts.optimizer, **parts.layout, "scheduler": self.scheduler.state_dict(),
                 "data": self.stream.state(), "step": self.step, "best": self.best, "skipped": self.skipped,
                 "beta2": self.beta2, "train_problems": self.splits.fingerprint(),
                 "phase": self.config.phase(self.step - 1) if self.step else None,
                 "sft_index": self._sft[0] if self._sft else None}
        self.dist.barrier()                               # every process has written its engine's files
        if self.dist.main:                                # every process holds the same weights
            save_checkpoint(self.run_dir, self.step, self.policy, self.tokenizer, state, parts.anchor,
                            weights=parts.weights, anchor_weights=parts.anchor_weights, extra=parts.extra)
            protect = {self.run_dir / self.best["checkpoint"]} if self.best else set()
            prune_checkpoints(self.run_dir, self.config.keep_last, protect)
        self.dist.barrier()
        return self.run_dir / f"checkpoint-{self.step}"

    def _anchor_read_after_resume(self) -> bool:
        """Whether a resume from the step just taken reads the current Stage I anchor: only when the next step
        is inside (not at the start of) a Stage I whose anchor is not π_ref.  Anywhere else the anchor is π_ref,
        rebuilt before it is read, or never read again, so the checkpoint leaves it out (a whole model's
        weights: 538 MB for the 135M model in float32)."""
        if self.anchor is self.reference or self.step >= self.config.total_steps:
            return False
        _, phase, offset = self.config.phase_at(self.step)
        return phase.kind == "rl" and phase.objective.anchored and offset > 0

    # ---- one step

    def train_step(self) -> dict[str, Any]:
        """One optimizer step of the current phase; returns its log row."""
        index, phase, offset = self.config.phase_at(self.step)
        if phase.kind == "rl":
            if (phase.objective.anchored and phase.iteration > 1 and offset == 0 and
                    self.config.stage1_anchor == "iteration"):
                # Stage I of iteration ≥ 2: attempt 1 is pinned to the policy as it is now.
                self.anchor = self.engine.new_anchor(self.anchor, self.reference, self._base_model)
            row = self._rl_step(phase)
        else:
            row = self._sft_step(index, phase, offset)
        return {"iteration": phase.iteration, "stage": phase.stage, "phase": phase.name, **row}

    def _optimizer_step(self, losses: list[float], clock=untimed) -> tuple[float, float, bool]:
        """Reduce, clip and apply (or skip) the step's gradients; returns (loss, grad norm, skipped)."""
        lr = self.scheduler.get_last_lr()[0]              # the rate this step applies (logged as `lr`)
        with clock("optimizer"):
            loss = self.dist.sum(float(sum(losses)) if losses else float("nan"))
            grad_norm, applied = self.engine.step(loss, ran=bool(losses))
        faults.point("optimizer")
        if applied:
            with clock("weight_sync"):
                self.backend.sync_weights(self._policy_weights)   # an inference engine holds its own copy
        self.skipped += not applied
        self.scheduler.step()
        self.step += 1
        self._step_lr = lr
        return loss, grad_norm, not applied

    def _rollout(self, problems, attempts: int, base_share: float = 0.0) -> list[Episode]:
        """This process's share of the problems, rolled out with per-row seeds (batch- and process-invariant).

        ``base_share``: the first ``round(base_share · len(problems))`` problems of the step get their first
        attempts from π_ref (``base_first_attempts``), marked offline; every later attempt is the policy's.
        """
        draws = draw_indices(problems)      # over the whole step, so every process numbers repeats alike
        seed = self.config.seed * 1_000_003 + self.step
        params = self.config.sampling_params()
        with self.engine.gathered(), self._generation_autocast():
            if not base_share:
                episodes = sample_episodes(self.backend, self.builder, self.task, self.dist.shard(problems),
                                           samples=self.config.samples, attempts=attempts, params=params,
                                           per_row_seed=seed, draws=self.dist.shard(draws))
            else:
                episodes = self._rollout_from_base_first_attempts(problems, draws, attempts, base_share, seed)
        faults.point("rollout")
        return episodes

    def _rollout_from_base_first_attempts(self, problems, draws, attempts: int, share: float,
                                          seed: int) -> list[Episode]:
        """:meth:`_rollout` with some first attempts sampled by π_ref (paper §5.3's offline first attempts)."""
        config = self.config
        count = math.floor(share * len(problems) + 0.5)                                # half up, never to even
        offline = [i < count for i in range(len(problems))]                            # which problems, step-wide
        if self._base_backend is None:
            self._base_backend = TransformersBackend(self.reference, self.tokenizer,
                                                     batch_size=config.generation_batch_size, decode=config.decode)
        return sample_with_offline_first_attempts(
            self.backend, self._base_backend, self.builder, self.task, self.dist.shard(problems),
            self.dist.shard(draws), self.dist.shard(offline), samples=config.samples, attempts=attempts,
            params=config.sampling_params(), seed=seed)

    def _rl_step(self, phase: Phase) -> dict[str, Any]:
        config, engine, attempts = self.config, self.engine, phase.attempts
        problems = [self.task.problems[i] for i in self.stream.take(config.problems_per_step)]
        clock = PhaseClock(self.device)
        started = time.perf_counter()
        base_share = config.base_first_attempts if phase.stage == 2 and attempts >= 2 else 0.0
        with clock("generate"):
            episodes = self._rollout(problems, attempts, base_share)
        generated = time.perf_counter()

        records = StepRecords(attempts)
        norm = len(problems) * config.samples             # episodes of the whole step, over all processes

        def loss_of(batch):
            out = step_loss(config, phase, engine.token_logprobs, engine.trained, self.reference, self.anchor,
                            batch, self.tokenizer.pad_token_id, norm, self.device, self.beta2, clock=clock)
            return out.loss, out

        # The sampler ran without dropout, so the policy is scored without it -- through the backward pass
        # too, where checkpointed layers recompute their forward (docs/training.md, "Dropout").
        with dropout_disabled(engine.trained):
            losses = accumulate(engine, micro_batches(episodes, config.micro_batch_problems, config.samples),
                                loss_of, records.keep, clock)
        trained = time.perf_counter()
        loss, grad_norm, skipped = self._optimizer_step(losses, clock)

        ordered, kl = records.whole_step(self.dist, episodes)   # the whole step, over all processes
        tokens = sum(len(a.ids) for ep in ordered for a in ep.attempts)
        self.last_episodes = ordered
        checked = records.gap_metrics(self.dist)
        warning = None if self._gap_warned or not self.dist.main else gap_warning(checked, config.logprob_gap_warn)
        if warning:                                       # once per run
            self._gap_warned = True
            print(warning, file=sys.stderr, flush=True)
        beta2 = {}
        if phase.objective.anchored:                      # Stage I: the β2 this step used, then the next one
            # KL(attempt 1 ‖ π_ref) beside the anchor's kl_t1 (the same number while the anchor is π_ref)
            ref_kl = kl[:, 0] if self.anchor is self.reference else records.reference_kl(self.dist)
            beta2 = {"beta2": self.beta2, "kl_ref_t1": float(ref_kl.nanmean()) if len(ref_kl) else float("nan")}
            if config.adaptive_beta2 and not skipped and records.advantages:
                second = records.second_advantages(self.dist)
                self.beta2 = adapt_beta2(self.beta2, float(kl[:, 0].nanmean()), float(second.abs().mean()),
                                         config.beta2_balance)
        return {"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "lr": self._step_lr, **beta2,
                **batch_metrics(ordered, kl), **checked, "generated_tokens": tokens,
                "tokens_per_s": tokens / max(trained - started, 1e-9),
                **clock.row(), "time_train_s": trained - generated}

    # ---- evaluation

    def evaluate_on_main(self, split: str = "test") -> tuple[dict[str, Any] | None, list[Episode] | None]:
        """:meth:`evaluate` on the main process; every process must call it (sharded weights are gathered).

        Returns ``(None, None)`` on the other processes.
        """
        with self.engine.gathered():
            result = self.evaluate(split) if self.dist.main else (None, None)
        self.dist.barrier()
        return result

    def evaluate(self, split: str = "test") -> tuple[dict[str, Any], list[Episode]]:
        """Greedy K-attempt episodes on the ``validation`` (first ``validation_limit``) or ``test`` (first
        ``eval_limit``) problems, in this process (see :meth:`evaluate_on_main`)."""
        if split not in ("validation", "test") or (split == "validation" and self.validation_task is None):
            raise ConfigError(f"no {split!r} problems to evaluate in this run")
        task, limit = ((self.validation_task, self.config.validation_limit) if split == "validation" else
                       (self.test_task, self.config.eval_limit))
        problems = task.problems[:limit]
        builder = ConversationBuilder(self.tokenizer, task.correction_instruction)
        progress = None
        if self.eval_progress is not None:
            progress = attempt_progress(self.eval_progress, f"{split} evaluation at step {self.step}",
                                        len(problems), self.config.attempts)
        with self._generation_autocast():
            episodes = sample_episodes(self.backend, builder, task, problems, samples=1,
                                       attempts=self.config.attempts,
                                       params=SamplingParams(max_new_tokens=self.config.eval_max_new_tokens),
                                       progress=progress)
        summary = summarize_episodes(episodes, seed=self.config.seed)
        summary["split"] = {**self.splits.sources[split], "evaluated": len(problems)}
        return summary, episodes

    def _save_keeping_best(self, validation: dict[str, Any] | None) -> Path:
        """Checkpoint this step; when its *validation* last-attempt accuracy is the highest so far, it becomes
        the best (``best.json``; the test split never chooses).  ``self.best`` is updated before the
        checkpoint is written, so the checkpoint's own state knows it is the best (a resume keeps it)."""
        better = validation is not None and (self.best is None or validation["accuracy"][-1] > self.best["score"])
        if better:
            self.best = {"checkpoint": f"checkpoint-{self.step}", "score": validation["accuracy"][-1],
                         "step": self.step}
        saved = self.save()
        if better and self.dist.main:
            write_best(self.run_dir, saved, self.best["score"], self.step)
        return saved

    # ---- the loop

    def train(self, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the remaining steps; checkpoint periodically, when stopped and at the end. Returns the last row.

        Only the main process logs, evaluates and writes files (the others return ``{"final_eval": None}``).
        SIGINT / SIGTERM finish the step, checkpoint and raise :class:`~selfcorrect.distributed.TrainingStopped`;
        a ``KeyboardInterrupt`` between steps checkpoints, one inside a step (a half step cannot be resumed
        exactly) does not.  The run directory's lock is released when this returns.
        """
        stop = StopRequest(self.dist)
        try:
            with stop.catching():
                return self._train(stop, on_step)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _train(self, stop: StopRequest, on_step: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
        config = self.config
        main = self.dist.main
        logger = RunLogger(self.run_dir, config, resume=self.step > 0) if main else None
        row: dict[str, Any] = {}
        evaluated = None                                    # the latest validation summary
        saved_at, between_steps = time.monotonic(), True
        try:
            while self.step < config.total_steps:
                between_steps = False
                row = self.train_step()
                if main and config.log_samples_every and self.step % config.log_samples_every == 0:
                    log_samples(self.run_dir, self.step, self.last_episodes)
                evaluated = None
                last = self.step == config.total_steps
                if config.eval_every and (self.step % config.eval_every == 0 or last):
                    evaluated, _ = self.evaluate_on_main("validation")   # the final checkpoint competes too
                    if main:
                        row.update(_eval_columns("validation", evaluated))
                if config.test_every and self.step % config.test_every == 0 and not last:   # curves only
                    tested, tested_episodes = self.evaluate_on_main("test")
                    if main:
                        row.update(_eval_columns("test", tested))
                        # Per-problem records, so a curve over seeds gets the same pooled CIs as the table.
                        write_eval_records(self.run_dir / "test-evals" / f"step-{self.step}", tested,
                                           tested_episodes, {"step": self.step, "splits": self.splits.sources})
                if main:
                    logger.log(self.step, row)
                between_steps = True                      # the step is complete, logs included
                if main and on_step is not None:
                    on_step(self.step, row)
                minutes = config.save_every_minutes
                timed = self.dist.max(int(main and minutes > 0 and time.monotonic() - saved_at >= 60 * minutes))
                saved = None
                if ((timed or config.save_every and self.step % config.save_every == 0)
                        and self.step < config.total_steps):
                    saved, saved_at = self._save_keeping_best(evaluated), time.monotonic()
                signum = stop.agreed()
                if signum:                # every process is between the same two steps
                    raise TrainingStopped(signum, saved or self.save())
        except (KeyboardInterrupt, TrainingStopped) as stopped:
            if isinstance(stopped, KeyboardInterrupt) and between_steps:
                self.save()
            if logger is not None:
                logger.close()
            raise
        # `prompting` trains nothing: no checkpoint.  The last step's validation, if any, competes for best.
        final = self._save_keeping_best(evaluated) if self.step else None
        summary, episodes = self.evaluate_on_main("test")  # the one test evaluation of the run
        if not main:
            self.dist.barrier()                             # wait for the main process's files
            return {**row, "final_eval": None}
        write_eval_outputs(self.run_dir / "eval", summary, episodes, f"{config.method} after {self.step} steps",
                           {"step": self.step, "skipped_steps": self.skipped, "splits": self.splits.sources})
        if config.lora_r and self.engine.whole_weights:
            export_merged(self.policy, self.tokenizer, self.run_dir / "merged")
        elif config.lora_r and final is not None:         # sharded: merge the gathered adapter just saved
            export_merged(load_model(str(final), dtype=config.dtype), self.tokenizer, self.run_dir / "merged")
        logger.close()
        plot_curves(self.run_dir)
        self.dist.barrier()
        return {**row, "final_eval": summary}


def _eval_columns(split: str, summary: dict[str, Any]) -> dict[str, float]:
    """The metrics.jsonl columns of a periodic evaluation: ``validation_acc_t1``, ..., ``validation_delta``."""
    return {**{f"{split}_acc_t{k + 1}": a for k, a in enumerate(summary["accuracy"])},
            f"{split}_delta": summary["delta"]}


def _job(config: TrainConfig) -> DataParallel:
    """This job's processes (the same object the trainer builds: accelerate's state is process-wide)."""
    return DataParallel(cpu=resolve_device(config.device) == "cpu")

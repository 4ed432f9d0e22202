"""``TrainConfig``: every setting of a ``selfcorrect train`` run (YAML file + flags), validated on construction.

A docstring per field: ``selfcorrect train --help`` prints them.  The method's
phases come from :mod:`selfcorrect.training.methods`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..algorithms.policy_gradient import BASELINES, KL_PLACEMENTS
from ..engines import ENGINES, SHARDINGS, layout_conflict
from ..errors import ConfigError, DataError
from ..rollout.registry import backend_capabilities
from ..rollout.backends import MAX_NEW_TOKENS
from ..rollout.settings import SamplingSettings
from .methods import METHODS, Phase, schedule
from .sft_data import KEEP

OPTIMIZERS = ("adam", "adamw")
OPERATIONAL = ("save_every", "save_every_minutes", "keep_last", "log_samples_every", "report_to", "device",
               "logprob_gap_warn", "overwrite", "out", "probe", "probe_problems", "probe_min_corrections",
               "probe_min_variance")
"""Fields that change how a run is kept and watched, never what it computes."""
RESUMABLE = (*OPERATIONAL, "iterations", "eval_every", "test_every")
"""Fields ``--resume`` may change (docs/training.md): the operational ones, more iterations (the
schedule so far must stay the same) and the evaluation intervals."""


@dataclass
class TrainConfig(SamplingSettings):
    """Settings of one ``selfcorrect train`` run (YAML file + flags; see ``selfcorrect/configs/``).

    The sampling fields (temperature, top_p, top_k, max_new_tokens, generation_batch_size,
    rollout_backend, vllm_*) are :class:`~selfcorrect.rollout.settings.SamplingSettings`, shared
    with ``selfcorrect eval``.
    """

    # ---- what to train on
    model: str = "default"
    """Model spec to start from: default, a local HF directory, a .gguf file, or a hub id."""
    chat_template: str = ""
    """Chat template for every attempt's turns and the correction instruction: empty = the model's own; a built-in name (plain: Question/Answer turns for base models), a Jinja file, or an inline template.  Saved with the tokenizer in checkpoints."""
    task: str = "arithmetic"
    """Task name or ``module:function`` (see ``selfcorrect tasks``)."""
    task_options: dict[str, Any] = field(default_factory=dict, metadata={"append": True, "aliases": ("-o",)})
    """Task factory options as KEY=VALUE (repeatable)."""
    train_split: str = "train"
    """Split trained on (given as the task's ``split`` option when it has one)."""
    validation_split: str = "validation"
    """The training task's split for the periodic evaluations and the best-checkpoint choice, where the task has it by construction (arithmetic, MBPP files); otherwise ``validation_fraction`` of the training problems are carved off instead."""
    validation_fraction: float = 0.1
    """Share of the training problems carved into validation (by a hash of each problem's text, so the same ones for any seed) when the task has no validation split; 0 = no validation."""
    eval_split: str = "test"
    """Split of the final test evaluation: computed once, at the end, and never used to choose anything."""
    eval_task: str = ""
    """Task of the test evaluation, when not ``task`` (the paper trains on MBPP and evaluates on HumanEval)."""
    eval_task_options: dict[str, Any] = field(default_factory=dict, metadata={"append": True})
    """Options of the test task as KEY=VALUE (repeatable), e.g. ``path=test.jsonl`` for a separate test file.
    Without ``eval_task`` they override ``task_options`` (the same task, another source); with it they are
    the evaluation task's only options."""
    allow_train_test_overlap: bool = False
    """Evaluate even when test problems are also training or validation problems (normalised text); by default
    such a run is refused, because its "held-out" numbers would not be."""
    out: str = "runs/train"
    """Run directory: config, metrics.jsonl, TensorBoard logs, samples, checkpoints, plots."""

    # ---- method and schedule
    method: str = "score"
    """score, stage2-only, no-shaping, single-turn, star, pair-sft, star-stage2 or prompting (docs/training.md)."""
    iterations: int = 1
    """How many times the Stage I → Stage II pair runs (the stages are interleaved)."""
    stage1_steps: int = 10
    """Optimizer steps of Stage I per iteration."""
    stage2_steps: int = 10
    """Optimizer steps of Stage II per iteration."""
    alpha: float = 10.0
    """Reward-shaping weight α in r̂2 = r2 + α·(r2 − r1) (paper: 10)."""
    beta1: float = 0.01
    """KL coefficient to the initial model on rewarded attempts (paper: 0.01)."""
    beta2: float = 0.1
    """Stage I KL coefficient pinning attempt 1 (paper: 0.1 MATH, 0.25 code)."""
    adaptive_beta2: bool = False
    """Adapt β2 after every Stage I step so that β2·KL(attempt 1) stays near ``beta2_balance`` × the mean
    |advantage| of attempt 2 (paper §5.3 mentions "an adaptive β2 that attempts to balance the magnitudes" of
    the two; the rule is ours: ``algorithms.score.adapt_beta2``); ``beta2`` is its start value."""
    stage1_anchor: str = "iteration"
    """What Stage I pins attempt 1 to: iteration (the model at the start of that Stage I: π_ref in iteration
    1, the previous Stage II's model after it; our reading of the paper) or reference (π_ref in every
    iteration, so β2 also holds attempt 1 near the base model across iterations)."""
    stage1_kl_in: str = ""
    """Where Stage I puts attempt 1's β2 KL: empty = like kl_in; reward, loss-k2 or loss-k3.  In the reward
    its gradient is a REINFORCE estimate that RLOO baselines away except for the samples' spread (with
    ~10-token attempts β2·KL stayed <= 0.04 beside advantages up to 1); loss-k2 pulls every token back."""
    beta2_balance: float = 1.0
    """Target ratio of the adaptive β2: β2·KL(attempt 1) / mean |advantage of attempt 2|."""
    base_first_attempts: float = 0.0
    """Stage II: share of each step's problems whose first attempts are sampled from the initial model π_ref and
    used only as prompts for the later attempts, which are trained as usual (paper §5.3: "first-attempt
    solutions obtained by repeatedly sampling the base model as offline prompts in RL ... especially in Stage
    II"; it gives no share).  0 = every attempt on-policy.  Needs lora_r 0, sharding none and the transformers
    rollout backend."""
    baseline: str = "rloo"
    """Policy-gradient baseline: rloo (leave one out over a problem's samples) or none (plain REINFORCE)."""
    kl_in: str = "reward"
    """Where the KL goes: reward (sequence k1 in the returns, RLOO-style: its expected gradient is the paper's KL(π‖π_ref)), loss-k2 (per-token ½·log-ratio² in the loss: exact for one-token outputs, drops a token's effect on later tokens' KL) or loss-k3 (per-token k3 in the loss: the forward-KL gradient; `loss` is its old name). docs/training.md."""
    star_rounds: int = 3
    """STaR: rounds of sample → filter → fine-tune (the sample budget is split evenly over them)."""
    sft_steps: int = 8
    """Supervised steps per STaR round, per star-stage2 iteration, and for Pair-SFT."""
    sft_keep: str = "D"
    """Which traces the SFT baselines keep: D (wrong → right) or D+ (also right → right)."""
    sft_batch_episodes: int = 32
    """Episodes per supervised step (the dataset is cycled in a seeded order)."""

    # ---- rollouts
    problems_per_step: int = 8
    """Problems sampled per optimizer step."""
    samples: int = 4
    """Episodes per problem per step (RLOO group size; >= 2 for rloo)."""
    attempts: int = 2
    """Attempts per episode K (SCoRe: 2)."""
    logprob_gap_warn: float = 0.05
    """Warn (once per run) when the mean |trainer − sampler| log-prob of an attempt's tokens exceeds this many
    nats: a wrong temperature, stale sampler weights or a masking bug makes the gradient off-policy.  Measured
    in docs/training.md (float32 and bf16 differ)."""

    # ---- the correction-signal probe (selfcorrect.probe; `selfcorrect probe` runs it alone)
    probe: bool = False
    """Before training, sample the probe's episodes on the training problems (``probe_problems`` × ``samples``
    at the training temperature; its own seeds, so training is unchanged), write ``probe.json`` to the run
    directory, print its verdict, and warn when it finds no correction signal."""
    probe_problems: int = 64
    """Training problems the probe samples (each ``samples`` times, ``attempts`` attempts)."""
    probe_min_corrections: float = 2.0
    """Answer corrections per 100 episodes (attempt 1 wrong in every reading → attempt 2 right) the probe
    needs, with its 95% CI above 0, to call the correction signal present."""
    probe_min_variance: float = 0.2
    """Share of RLOO groups whose attempt-2 rewards differ that the probe needs (below it the attempt-2 policy
    gradient is mostly zero)."""

    # ---- optimisation
    optimizer: str = "adam"
    """adam (paper) or adamw."""
    lr: float = 1e-5
    """Learning rate (paper: 5e-6 MATH, 1e-5 code)."""
    weight_decay: float = 0.0
    """Weight decay (adamw)."""
    warmup_steps: int = 0
    """Linear learning-rate warmup steps, then constant."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""
    micro_batch_problems: int = 2
    """Problems (all their samples) per forward/backward micro-batch; gradients accumulate over the step."""
    logprob_chunk: int = 1024
    """Rows of the output layer computed at once when scoring tokens (memory knob)."""
    score_shared_prefix: bool = True
    """Score the prompt that a problem's samples share once per problem (its keys and values reused by every sample, gradients included) instead of once per sample; the same log-probs up to rounding.  Replicated engine only (sharding none); the sharded engines score every row in full."""
    dtype: str = "float32"
    """Parameter dtype of the trained model (float32 keeps Adam exact; bfloat16 halves memory)."""
    autocast: str = "bf16"
    """Mixed precision for forward passes and generation: bf16 or none."""
    lora_r: int = 0
    """LoRA rank (0 = train all weights). With LoRA, π_ref is the base model with the adapter disabled: no second copy."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters (names like q_proj,v_proj, or all-linear)."""
    sharding: str = "none"
    """Multi-process memory layout: none (every process holds all weights and Adam state; gradients summed), zero2 (gradients and Adam state sharded) or zero3 (weights too). `accelerate launch` with configs/accelerate/{fsdp,deepspeed}_zero{2,3}.yaml selects it."""
    sharding_engine: str = "fsdp"
    """Who implements zero2/zero3: fsdp (PyTorch FSDP2, built in) or deepspeed (DeepSpeed's ZeRO engine, `pip install 'selfcorrect[deepspeed]'`; resume needs the same number of processes). A DeepSpeed accelerate config selects deepspeed."""
    gradient_checkpointing: bool = True
    """Recompute each layer's activations in the backward pass: several times less activation memory for some extra compute (see benchmarks/train_step.py)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    seed: int = 0
    """Seed of data order, sampling and initialisation of any randomness."""

    # ---- evaluation, logging, checkpoints
    eval_every: int = 0
    """Evaluate on the validation problems every N steps and at the end, and keep the best checkpoint by
    their last-attempt accuracy (0 = no validation evaluations, no best checkpoint)."""
    validation_limit: int = 200
    """Validation problems per periodic evaluation (greedy, K attempts)."""
    test_every: int = 0
    """Also evaluate on the test problems every N steps, for learning curves only: logged as
    ``test_acc_t*``, never used to choose a checkpoint (0 = only the final test evaluation)."""
    eval_limit: int = 200
    """Test problems of the final evaluation (greedy, K attempts)."""
    eval_max_new_tokens: int = MAX_NEW_TOKENS
    """Token limit per attempt of the greedy evaluations (validation and test); the default is
    ``max_new_tokens``'s and ``selfcorrect eval``'s."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only at the end); Ctrl-C and SIGTERM also checkpoint (after the current step)."""
    save_every_minutes: float = 30.0
    """Also checkpoint when this many minutes passed since the last checkpoint (0 = off): bounds what a crash
    or a kill -9 can lose, even with save_every 0."""
    keep_last: int = 2
    """Checkpoints kept besides the best one."""
    log_samples_every: int = 5
    """Write a few episodes to samples.jsonl every N steps (0 = never)."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Loggers besides metrics.jsonl: tensorboard, wandb (needs `pip install wandb`), or none."""
    overwrite: bool = False
    """Allow writing into a non-empty run directory (otherwise refuse, to protect earlier runs)."""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        need(bool(str(self.out).strip()), "out is empty: give a run directory (an unset shell variable?)")
        if "wandb" in self.report_to:                 # before any directory or model: not after the first step
            import importlib.util

            need(importlib.util.find_spec("wandb") is not None,
                 "report_to includes wandb but wandb is not installed: pip install wandb")
        if self.chat_template:
            from ..models import chat_template_text

            chat_template_text(self.chat_template)          # a missing file or unknown name: one line, now
        need(self.sft_keep in KEEP, f"sft_keep must be one of {', '.join(KEEP)}, got {self.sft_keep!r}")
        need(self.baseline in BASELINES, f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.kl_in == "loss":      # the earlier name of loss-k3 (configs and runs written before it changed)
            self.kl_in = "loss-k3"
        need(self.kl_in in KL_PLACEMENTS, f"kl_in must be one of {', '.join(KL_PLACEMENTS)}, got {self.kl_in!r}")
        need(self.stage1_kl_in in ("", *KL_PLACEMENTS),
             f"stage1_kl_in must be empty or one of {', '.join(KL_PLACEMENTS)}, got {self.stage1_kl_in!r}")
        need(self.stage1_anchor in ("iteration", "reference"),
             f"stage1_anchor must be iteration or reference, got {self.stage1_anchor!r}")
        need(self.temperature > 0, f"temperature must be > 0 for training rollouts, got {self.temperature!r}")
        need(self.top_p == 1.0 and self.top_k == 0,
             f"top_p={self.top_p!r} / top_k={self.top_k!r}: training scores rollouts with the untruncated "
             "distribution at `temperature`, so truncated sampling would make the gradient off-policy; "
             "keep top_p 1 and top_k 0 for training (evaluation may use them)")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.autocast in ("bf16", "none"), f"autocast must be bf16 or none, got {self.autocast!r}")
        need(self.sharding in SHARDINGS, f"sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}")
        need(self.sharding_engine in ENGINES,
             f"sharding_engine must be one of {', '.join(ENGINES)}, got {self.sharding_engine!r}")
        self.check_sampling()
        for name in ("iterations", "problems_per_step", "samples", "attempts", "micro_batch_problems",
                     "logprob_chunk", "eval_limit", "validation_limit", "eval_max_new_tokens", "star_rounds",
                     "sft_batch_episodes", "probe_problems"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("stage1_steps", "stage2_steps", "warmup_steps", "eval_every", "test_every", "save_every",
                     "keep_last", "log_samples_every", "sft_steps"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)!r}")
        conflict = self.sharding_conflict(self.sharding, self.sharding_engine)   # asks the schedule and backend
        need(conflict is None, conflict or "")
        need(math.isfinite(self.beta2_balance) and self.beta2_balance > 0,
             f"beta2_balance must be a positive number, got {self.beta2_balance!r}")
        for name in ("alpha", "beta1", "beta2", "weight_decay", "max_grad_norm", "save_every_minutes"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0,
                 f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        need(math.isfinite(self.probe_min_corrections) and self.probe_min_corrections >= 0,
             f"probe_min_corrections must be a finite number >= 0, got {self.probe_min_corrections!r}")
        need(0.0 <= self.probe_min_variance <= 1.0,
             f"probe_min_variance must be in [0, 1], got {self.probe_min_variance!r}")
        need(not self.probe or self.samples >= 2,
             "probe needs samples >= 2 per problem (its re-sample and agreement estimates use the other samples)")
        need(0.0 <= self.base_first_attempts <= 1.0,
             f"base_first_attempts must be in [0, 1], got {self.base_first_attempts!r}")
        if self.base_first_attempts:
            need(self.lora_r == 0 and self.sharding == "none" and not backend_capabilities(self).loads_own_weights,
                 "base_first_attempts samples first attempts from a full frozen copy of the initial model on "
                 "the transformers backend: it needs lora_r 0, sharding none and rollout_backend transformers")
        need(0.0 <= self.validation_fraction < 1.0,
             f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        need(self.lora_r >= 0, f"lora_r must be >= 0 (0 = no LoRA), got {self.lora_r!r}")
        need(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        need(self.total_steps >= 1 or self.method == "prompting",
             "the schedule has no steps: set stage1_steps/stage2_steps (and sft_steps for SFT methods)")
        need(self.baseline != "rloo" or self.samples >= 2,
             "baseline 'rloo' needs samples >= 2 per problem (or use baseline: none)")
        need(self.attempts >= 2, f"attempts must be >= 2 (a self-correction episode), got {self.attempts}")
        unknown = set(self.report_to) - {"tensorboard", "wandb", "none"}
        need(not unknown, f"report_to: unknown logger(s) {sorted(unknown)}; choose tensorboard, wandb or none")

    def sharding_conflict(self, sharding: str, engine: str) -> str | None:
        """Why ``sharding`` on ``engine`` (configured, or chosen by the launcher) cannot run with this config."""
        return layout_conflict(self, sharding, engine)

    @property
    def episode_budget(self) -> int:
        """Episodes SCoRe generates with these settings; every method spends this many."""
        return self.iterations * (self.stage1_steps + self.stage2_steps) * self.problems_per_step * self.samples

    def schedule(self) -> list[Phase]:
        """The method's phases in order (:mod:`selfcorrect.training.methods`)."""
        return schedule(self)

    @property
    def sampled_episodes(self) -> int:
        """Episodes the schedule generates (RL steps, and SFT datasets rounded up to whole problems)."""
        per_problem = self.samples
        return sum(p.steps * self.problems_per_step * per_problem if p.kind == "rl" else
                   max(1, math.ceil(p.collect_episodes / per_problem)) * per_problem for p in self.schedule())

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.schedule())

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at 0-based optimizer step ``step``: linear warmup over ``warmup_steps``, then 1.

        The warmup counts from the start of the run -- the schedule, like Adam's moments, carries on
        across Stage I → Stage II and across iterations (docs/training.md, "Optimizer state") -- except
        in a STaR round, which fine-tunes the initial model afresh and so warms up again.
        """
        if not self.warmup_steps:
            return 1.0
        since = step
        if step < self.total_steps:
            _, phase, offset = self.phase_at(step)
            if phase.restart:
                since = offset
        return min(1.0, (since + 1) / self.warmup_steps)

    def phase_at(self, step: int) -> tuple[int, Phase, int]:
        """(phase index, phase, step within the phase) of a 0-based step."""
        for index, phase in enumerate(self.schedule()):
            if step < phase.steps:
                return index, phase, step
            step -= phase.steps
        raise IndexError("step beyond the end of the schedule")

    def phase(self, step: int) -> tuple[int, int]:
        """(iteration, stage) of a 0-based step."""
        _, phase, _ = self.phase_at(step)
        return phase.iteration, phase.stage


def run_splits(config: TrainConfig):
    """The run's train, validation and test problems (:class:`~selfcorrect.tasks.splits.RunSplits`), checked
    for overlap; every task error surfaces here, before a model loads."""
    from ..tasks import accepts_option, load_task
    from ..tasks.splits import RunSplits, source_label

    options = dict(config.task_options)
    native = "split" not in options and accepts_option(config.task, "split")   # the factory picks splits
    train = load_task(config.task, **({**options, "split": config.train_split} if native else options))
    validation = None
    if native and config.validation_split in train.splits and config.validation_split != config.train_split:
        try:
            validation = load_task(config.task, **{**options, "split": config.validation_split})
        except (ConfigError, DataError):      # e.g. an MBPP file without the validation task ids: carve instead
            validation = None
    name = config.eval_task or config.task
    test_options = (dict(config.eval_task_options) if config.eval_task else
        {**{k: v for k, v in options.items() if k != "split"}, **config.eval_task_options})   # eval_split decides
    if "split" not in test_options and accepts_option(name, "split"):
        test_options["split"] = config.eval_split
    test = load_task(name, **test_options)
    return RunSplits.build(train, test, native_validation=validation, fraction=config.validation_fraction,
                           allow_overlap=config.allow_train_test_overlap,
                           test_label=source_label(name, test_options))


def differing_fields(a: TrainConfig, b: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """``name: a → b`` for every field whose value differs (``ignore`` left out)."""
    from dataclasses import fields

    return [f"{f.name}: {getattr(a, f.name)!r} → {getattr(b, f.name)!r}" for f in fields(a)
            if f.name not in ignore and getattr(a, f.name) != getattr(b, f.name)]


def resumed_config(saved: TrainConfig, overrides: dict[str, Any], where: str, step: int) -> TrainConfig:
    """``saved`` with the flags given to ``--resume``; refuses a change a resume cannot honour."""
    from dataclasses import asdict

    from ..config import from_dict

    config = from_dict(TrainConfig, {**asdict(saved), **overrides}, "command line")
    refused = differing_fields(saved, config, ignore=RESUMABLE)
    if refused:
        raise ConfigError(f"--resume {where}: these settings differ from the run's and cannot change on resume: "
                          f"{'; '.join(refused)} (may change: {', '.join(RESUMABLE)}; or start a new run)")
    old, new = saved.schedule(), config.schedule()
    if new[:len(old)] != old or config.total_steps < step:
        raise ConfigError(f"--resume {where}: iterations {saved.iterations} → {config.iterations} would change "
                          f"the schedule the run has followed so far (step {step}); only more iterations of a "
                          "schedule that extends it can be added")
    return config

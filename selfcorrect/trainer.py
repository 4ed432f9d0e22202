"""``selfcorrect train``: SCoRe (Stage I → Stage II, repeated), its ablations and the paper's baselines.

One training step::

    problems ──rollout──▶ episodes (K attempts, n samples/problem, exact ids)
             ──verifier──▶ rewards [B, K]
             ──forward (policy, grad; reference/anchor, no grad)──▶ token log-probs [B, T]
             ──objective (Stage I | Stage II | single-turn)──▶ loss ──backward──▶ Adam step

``method`` picks what runs (:meth:`TrainConfig.schedule` lists its phases).
Every method spends the same *sample budget* — the number of episodes SCoRe
generates, ``iterations × (stage1_steps + stage2_steps) × problems_per_step ×
samples`` — so comparisons are fair:

* ``score``       — ``iterations`` × (``stage1_steps`` of Stage I, then ``stage2_steps`` of Stage II);
* ``no-shaping``  — the same with α = 0 (the paper's "w/o reward shaping");
* ``stage2-only`` — Stage II for all ``stage1_steps + stage2_steps`` steps of each
  iteration (multi-turn RL "w/o Stage I");
* ``single-turn`` — RL on attempt 1 only for the same number of steps (K = 1
  while training, K attempts at evaluation);
* ``star``        — ``star_rounds`` rounds of: sample K-attempt traces from the
  current model (budget / rounds episodes), keep wrong → right (``D``; ``D+``
  adds right → right), ``sft_steps`` of SFT on attempt 2;
* ``pair-sft``    — one round: budget first attempts of the base model, pair a
  wrong with a right answer per problem (``D+``: also right with right), ``sft_steps`` of SFT;
* ``star-stage2`` — per iteration, Stage I RL as in SCoRe, then one STaR round
  with the Stage II budget instead of RL;
* ``prompting``   — no training (the base model's own self-correction).

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
import copy
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics
from .algorithms.policy_gradient import BASELINES, KL_PLACEMENTS
from .algorithms.score import single_turn_loss, stage_one_loss, stage_two_loss
from .algorithms.sft import KEEP, pair_episodes, sft_loss, star_filter
from .checkpoint import (has_anchor, latest_checkpoint, load_anchor, load_state, prune_checkpoints,
                         save_checkpoint, set_rng_state, write_best)
from .config import from_dict, load_yaml, to_dict
from .errors import ConfigError
from .logprobs import dropout_disabled, token_logprobs
from .distributed import DataParallel, StopRequest
from .lora import apply_lora, base_model_context, export_merged, load_adapter
from . import deepspeed_engine as ds
from .sharding import ENGINES, SHARDINGS, copy_weights, full_optimizer_state, full_state_dict, gathered, \
    load_full_optimizer_state, scalar, shard, sharding_from_launcher
from .rollout import (ConversationBuilder, Episode, SamplingParams, TransformersBackend, collate, end_of_turn_ids,
                      sample_episodes)
from .rollout.sampling import draw_indices

METHODS = ("score", "stage2-only", "no-shaping", "single-turn", "star", "pair-sft", "star-stage2", "prompting")


@dataclass(frozen=True)
class Phase:
    """A contiguous block of optimizer steps of one kind."""

    kind: str
    """``rl`` (sample → reward → policy gradient each step) or ``sft`` (collect once, then supervised steps)."""
    iteration: int
    """1-based iteration of the method's schedule."""
    stage: int
    """1 = Stage I (attempt 1 pinned), 2 = everything else."""
    steps: int
    """Optimizer steps in this phase."""
    objective: str = ""
    """RL phases: ``stage1``, ``stage2`` or ``single``."""
    collect: str = ""
    """SFT phases: ``star`` (filter the current model's K-attempt traces) or ``pair`` (base-model pairs)."""
    collect_episodes: int = 0
    """SFT phases: episodes generated to build the dataset (its share of the sample budget)."""
    restart: bool = False
    """STaR rounds: fine-tune the *initial* model afresh (its weights, a fresh Adam, the LR warmup again)
    on every trace kept in this and the earlier rounds, as the STaR paper does."""
OPTIMIZERS = ("adam", "adamw")
BACKENDS = ("transformers", "vllm")


@dataclass
class TrainConfig:
    """Settings of one ``selfcorrect train`` run (YAML file + flags; see ``selfcorrect/configs/``)."""

    # ---- what to train on
    model: str = "default"
    """Model spec to start from: default, a local HF directory, a .gguf file, or a hub id."""
    task: str = "arithmetic"
    """Task name or ``module:function`` (see ``selfcorrect tasks``)."""
    task_options: dict[str, Any] = field(default_factory=dict, metadata={"append": True, "aliases": ("-o",)})
    """Task factory options as KEY=VALUE (repeatable)."""
    train_split: str = "train"
    """Split trained on (given as the task's ``split`` option when it has one)."""
    eval_split: str = "test"
    """Held-out split for periodic evaluation and best-checkpoint selection."""
    eval_task: str = ""
    """Task evaluated on, when not ``task`` (the paper trains on MBPP and evaluates on HumanEval)."""
    eval_task_options: dict[str, Any] = field(default_factory=dict, metadata={"append": True})
    """Options of the evaluation task as KEY=VALUE (repeatable; e.g. another data file); when neither this nor
    ``eval_task`` is set, ``task_options``."""
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
    temperature: float = 1.0
    """Sampling temperature of training rollouts (paper: 1.0); policy, reference and anchor log-probs are all scored at it."""
    top_p: float = 1.0
    """Nucleus sampling mass of training rollouts: must stay 1 (the trainer scores the untruncated distribution)."""
    top_k: int = 0
    """Top-k of training rollouts: must stay 0 (the trainer scores the untruncated distribution)."""
    max_new_tokens: int = 64
    """Token limit per attempt."""
    logprob_gap_warn: float = 0.05
    """Warn (once per run) when the mean |trainer − sampler| log-prob of an attempt's tokens exceeds this many
    nats: a wrong temperature, stale sampler weights or a masking bug makes the gradient off-policy.  Measured
    in docs/training.md (float32 and bf16 differ)."""
    generation_batch_size: int = 64
    """Sequences generated per batch (transformers backend)."""
    rollout_backend: str = "transformers"
    """Who samples rollouts: transformers (selfcorrect's batched decode loop) or vllm (experimental, `pip install 'selfcorrect[vllm]'`: a colocated engine with prefix caching; policy weights are pushed into it after every optimizer step)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory the colocated vLLM engine may take (its weights + KV cache); training gets the rest."""
    vllm_max_model_len: int = 0
    """Longest sequence (prompt + all attempts) the vLLM engine plans its KV cache for; 0 = the model's own limit."""

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
    """Evaluate on the held-out split every N steps (0 = only at the end)."""
    eval_limit: int = 200
    """Held-out problems per evaluation (greedy, K attempts)."""
    eval_max_new_tokens: int = 64
    """Token limit per attempt during evaluation."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only at the end); Ctrl-C also checkpoints."""
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
        need(self.sft_keep in KEEP, f"sft_keep must be one of {', '.join(KEEP)}, got {self.sft_keep!r}")
        need(self.baseline in BASELINES, f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.kl_in == "loss":      # the earlier name of loss-k3 (configs and runs written before it changed)
            self.kl_in = "loss-k3"
        need(self.kl_in in KL_PLACEMENTS, f"kl_in must be one of {', '.join(KL_PLACEMENTS)}, got {self.kl_in!r}")
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
        conflict = self.sharding_conflict(self.sharding, self.sharding_engine)
        need(conflict is None, conflict or "")
        need(self.rollout_backend in BACKENDS,
             f"rollout_backend must be one of {', '.join(BACKENDS)}, got {self.rollout_backend!r}")
        need(0.0 < self.vllm_gpu_memory_utilization <= 1.0,
             f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization!r}")
        need(self.vllm_max_model_len >= 0, f"vllm_max_model_len must be >= 0, got {self.vllm_max_model_len!r}")
        for name in ("iterations", "problems_per_step", "samples", "attempts", "micro_batch_problems",
                     "generation_batch_size", "logprob_chunk", "eval_limit", "eval_max_new_tokens", "star_rounds",
                     "sft_batch_episodes"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("stage1_steps", "stage2_steps", "warmup_steps", "eval_every", "save_every", "keep_last",
                     "log_samples_every", "sft_steps"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("alpha", "beta1", "beta2", "weight_decay", "max_grad_norm"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0,
                 f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
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
        self.sampling_params()

    def sharding_conflict(self, sharding: str, engine: str) -> str | None:
        """Why ``sharding`` on ``engine`` (configured, or chosen by the launcher) cannot run with this config."""
        if sharding == "none":
            return None
        if self.lora_r and engine == "deepspeed":
            return "LoRA with DeepSpeed sharding is not supported yet (use sharding_engine fsdp, or sharding: none)"
        if self.rollout_backend != "transformers":
            return "rollout_backend vllm cannot be combined with sharding yet (use sharding: none)"
        if self.method == "star" and (engine == "deepspeed" or self.lora_r):
            return ("method star restarts each round from the initial model, which is not supported yet with "
                    f"{'DeepSpeed' if engine == 'deepspeed' else 'LoRA'} sharding (use sharding_engine fsdp "
                    "without LoRA, or sharding: none)")
        return None

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens)

    @property
    def episode_budget(self) -> int:
        """Episodes SCoRe generates with these settings; every method spends this many."""
        return self.iterations * (self.stage1_steps + self.stage2_steps) * self.problems_per_step * self.samples

    def schedule(self) -> list[Phase]:
        """The method's phases in order (see the module docstring)."""
        per_iteration = self.stage1_steps + self.stage2_steps
        phases: list[Phase] = []
        for it in range(1, self.iterations + 1):
            if self.method in ("score", "no-shaping", "star-stage2") and self.stage1_steps:
                phases.append(Phase("rl", it, 1, self.stage1_steps, objective="stage1"))
            if self.method in ("score", "no-shaping") and self.stage2_steps:
                phases.append(Phase("rl", it, 2, self.stage2_steps, objective="stage2"))
            elif self.method == "stage2-only" and per_iteration:
                phases.append(Phase("rl", it, 2, per_iteration, objective="stage2"))
            elif self.method == "single-turn" and per_iteration:
                phases.append(Phase("rl", it, 2, per_iteration, objective="single"))
            elif self.method == "star-stage2" and self.stage2_steps:
                phases.append(Phase("sft", it, 2, self.sft_steps, collect="star",
                                    collect_episodes=self.stage2_steps * self.problems_per_step * self.samples))
        if self.method == "star":
            share = self.episode_budget // self.star_rounds
            phases = [Phase("sft", r, 2, self.sft_steps, collect="star", collect_episodes=share, restart=True)
                      for r in range(1, self.star_rounds + 1)]
        elif self.method == "pair-sft":
            phases = [Phase("sft", 1, 2, self.sft_steps, collect="pair", collect_episodes=self.episode_budget)]
        return [p for p in phases if p.steps > 0]

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


# --------------------------------------------------------------------------- #
# Data order
# --------------------------------------------------------------------------- #


class ProblemStream:
    """Problems in a fresh seeded permutation each epoch; its position is part of the checkpoint."""

    def __init__(self, n: int, seed: int, epoch: int = 0, position: int = 0):
        self.n, self.seed, self.epoch, self.position = n, seed, epoch, position

    def _order(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            order = self._order()
            take = min(count - len(out), self.n - self.position)
            out.extend(order[self.position:self.position + take])
            self.position += take
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


# --------------------------------------------------------------------------- #
# One step
# --------------------------------------------------------------------------- #


def _autocast(config: TrainConfig, device: torch.device):
    if config.autocast == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rloo_group(episode: Episode, samples: int) -> tuple[str, int]:
    """The RLOO group of an episode: its problem and which draw of it (a problem drawn twice in one
    step, across an epoch boundary, is two groups with their own seeds)."""
    return episode.problem.id, episode.sample // samples


def micro_batches(episodes: Sequence[Episode], per_batch: int, samples: int) -> list[list[Episode]]:
    """Whole RLOO groups per micro-batch, groups sorted by longest episode (less padding)."""
    by_problem: dict[tuple[str, int], list[Episode]] = {}
    for ep in episodes:
        by_problem.setdefault(rloo_group(ep, samples), []).append(ep)
    groups = sorted(by_problem.values(), key=lambda g: max(len(e.tokens) for e in g))
    return [[ep for g in groups[i:i + per_batch] for ep in g] for i in range(0, len(groups), per_batch)]


def step_loss(config: TrainConfig, objective: str, policy, reference, anchor, batch: list[Episode], pad_id: int,
              norm: int, device: torch.device):
    """Forward passes and the objective (stage1 | stage2 | single) for one micro-batch; returns the LossOutput."""
    k = 1 if objective == "single" else config.attempts
    tensors = collate(batch, pad_token_id=pad_id, num_attempts=k)
    input_ids = tensors["input_ids"].to(device)                   # [B, T]
    attention_mask = tensors["attention_mask"].to(device)         # [B, T]
    attempt_mask = tensors["attempt_mask"].to(device)             # [B, K, T]
    label_mask = attempt_mask.any(1)                              # [B, T]
    rewards = torch.tensor([[a.reward for a in ep.attempts[:k]] for ep in batch], device=device)   # [B, K]
    keys = [rloo_group(ep, config.samples) for ep in batch]
    ids = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    groups = torch.tensor([ids[key] for key in keys], device=device)                                # [B]

    with torch.no_grad(), _autocast(config, device):
        # Everything at the sampling temperature: the policy term must be the distribution that sampled
        # the rollout (on-policy), and the KL then compares π_θ and π_ref as that sampler sees them.
        scored = dict(chunk_size=config.logprob_chunk, temperature=config.temperature)
        if reference is None:          # LoRA: π_ref = the policy with its adapter switched off
            with base_model_context(policy):
                ref_logp = token_logprobs(policy, input_ids, attention_mask, label_mask, **scored)
        else:
            ref_logp = token_logprobs(reference, input_ids, attention_mask, label_mask, **scored)
        anchor_logp = ref_logp if anchor is reference or objective != "stage1" else \
            token_logprobs(anchor, input_ids, attention_mask, label_mask, **scored)
    with _autocast(config, device):
        logp = token_logprobs(policy, input_ids, attention_mask, label_mask, **scored)

    common = dict(baseline=config.baseline, kl_in=config.kl_in, norm=norm)
    if objective == "single":
        return single_turn_loss(logp, ref_logp, attempt_mask, rewards, groups, beta1=config.beta1, **common)
    if objective == "stage1":
        return stage_one_loss(logp, ref_logp, anchor_logp, attempt_mask, rewards, groups,
                              beta1=config.beta1, beta2=config.beta2, **common)
    alpha = 0.0 if config.method == "no-shaping" else config.alpha
    return stage_two_loss(logp, ref_logp, attempt_mask, rewards, groups, alpha=alpha, beta1=config.beta1, **common)


def sft_step_loss(config: TrainConfig, policy, batch: list[Episode], pad_id: int, norm: int,
                  device: torch.device) -> torch.Tensor:
    """Supervised loss on attempt 2 of each episode (STaR / Pair-SFT) for one micro-batch."""
    tensors = collate(batch, pad_token_id=pad_id, num_attempts=2)
    attempt_mask = tensors["attempt_mask"].to(device)             # [B, 2, T]
    with _autocast(config, device):
        logp = token_logprobs(policy, tensors["input_ids"].to(device), tensors["attention_mask"].to(device),
                              attempt_mask[:, 1], config.logprob_chunk)
    return sft_loss(logp, attempt_mask, trained=[False, True], norm=norm)


def logprob_gaps(batch: Sequence[Episode], logp: torch.Tensor, attempts: int) -> list[tuple[list[float], list[float]]]:
    """Per attempt: (|trainer − sampler| log-prob of every token, Σ_t (trainer − sampler) per attempt).

    ``logp``: ``[B, T]`` the trainer's log-probs of ``batch``'s episode tokens (the collated layout puts
    token ``t`` of an episode at column ``t``).  Attempts whose sampler reported no log-probs are left out.
    """
    logp = logp.float().cpu()
    gaps: list[tuple[list[float], list[float]]] = [([], []) for _ in range(attempts)]
    for row, ep in enumerate(batch):
        for k, attempt in enumerate(ep.attempts[:attempts]):
            if attempt.sample_logprobs is None:
                continue
            diff = logp[row, attempt.start:attempt.end] - torch.tensor(attempt.sample_logprobs)   # [len]
            gaps[k][0].extend(diff.abs().tolist())
            gaps[k][1].append(float(diff.sum()))
    return gaps


def gap_metrics(gaps: Sequence[tuple[list[float], list[float]]]) -> dict[str, float]:
    """logp_gap_mean/max_t{k} (nats per token) and importance_ratio_t{k} (mean π_trainer(y)/π_sampler(y))."""
    out: dict[str, float] = {}
    for k, (tokens, sequences) in enumerate(gaps):
        out[f"logp_gap_mean_t{k + 1}"] = float(np.mean(tokens)) if tokens else float("nan")
        out[f"logp_gap_max_t{k + 1}"] = float(np.max(tokens)) if tokens else float("nan")
        out[f"importance_ratio_t{k + 1}"] = float(np.mean(np.exp(sequences))) if sequences else float("nan")
    return out


def batch_metrics(episodes: Sequence[Episode], kl: torch.Tensor) -> dict[str, float]:
    """Rollout statistics of one step: reward per attempt, Δ, i→c, c→i, KL per attempt, edit ratio, copy rate."""
    rewards = np.array([[a.reward for a in ep.attempts] for ep in episodes], dtype=float)   # [B, K]
    out: dict[str, float] = {}
    for k in range(rewards.shape[1]):
        out[f"reward_t{k + 1}"] = float(rewards[:, k].mean())
        out[f"kl_t{k + 1}"] = float(kl[:, k].mean()) if k < kl.shape[1] else float("nan")
        out[f"length_t{k + 1}"] = float(np.mean([len(ep.attempts[k].ids) for ep in episodes]))
    if rewards.shape[1] >= 2:
        rates = metrics.transition_rates(rewards)
        out.update(delta=rates["delta"], delta_i2c=rates["i2c"], delta_c2i=rates["c2i"])
        edits = metrics.edit_stats([[a.text for a in ep.attempts] for ep in episodes])
        out.update(edit_distance_ratio=edits["mean"], copy_rate=edits["copy_rate"])
    return out


# --------------------------------------------------------------------------- #
# Logging
# --------------------------------------------------------------------------- #


class RunLogger:
    """metrics.jsonl always; TensorBoard and W&B when asked for."""

    def __init__(self, run_dir: Path, config: TrainConfig, resume: bool):
        self.path = run_dir / "metrics.jsonl"
        self.tensorboard = None
        self.wandb = None
        if "tensorboard" in config.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in config.report_to:
            try:
                import wandb
            except ImportError:
                raise ConfigError("report_to includes wandb but wandb is not installed: pip install wandb") from None
            self.wandb = wandb.init(project="selfcorrect", dir=str(run_dir), config=to_dict(config),
                                    resume="allow" if resume else None)

    def log(self, step: int, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **row}) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


# --------------------------------------------------------------------------- #
# The trainer
# --------------------------------------------------------------------------- #


def _frozen(model):
    model.requires_grad_(False)
    model.eval()
    return model


def _frozen_copy(model):
    return _frozen(copy.deepcopy(model))


def _task_spec(config: TrainConfig, evaluation: bool) -> tuple[str, dict[str, Any]]:
    """(task name, factory options) of the training or the evaluation task."""
    from .tasks import accepts_option

    name = (config.eval_task or config.task) if evaluation else config.task
    shared = evaluation and not (config.eval_task or config.eval_task_options)   # the same task, its options
    options = dict(config.eval_task_options if evaluation and not shared else config.task_options)
    if "split" not in options and accepts_option(name, "split"):
        options["split"] = config.eval_split if evaluation else config.train_split
    return name, options


class Trainer:
    """Holds the models, optimizer and data stream of one run; :meth:`train` runs the schedule.

    Construct with :meth:`create` (new run) or :meth:`resume` (continue a run
    directory exactly where its last checkpoint left it).
    """

    def __init__(self, config: TrainConfig, run_dir: Path, checkpoint: Path | None = None):
        from .evaluation import resolve_device
        from .models import load_model, load_tokenizer
        from .tasks import load_task

        self.config = config
        self.run_dir = run_dir
        device = resolve_device(config.device)
        self.dist = DataParallel(cpu=device == "cpu")    # a world of one unless launched by accelerate/torchrun
        self.device = self.dist.device if self.dist.world > 1 else torch.device(device)
        self.sharding, self.sharding_engine = sharding_from_launcher(config.sharding, config.sharding_engine)
        self._check_sharding()
        torch.manual_seed(config.seed)
        name, options = _task_spec(config, evaluation=False)
        self.task = load_task(name, **options)
        name, options = _task_spec(config, evaluation=True)
        self.eval_task = load_task(name, **options)
        level = self.task.options.get("sandbox_isolation")
        if level not in (None, "full") and self.dist.main:
            # The task factory warned already; training is where a gameable reward does damage.
            print(f"WARNING: TRAINING against code rewards under sandbox isolation {level!r}: "
                  "a policy can learn to game them (docs/sandbox.md).", file=sys.stderr, flush=True)
        self.tokenizer = load_tokenizer(config.model)
        self.policy = load_model(config.model, dtype=config.dtype, device=self._load_device)
        if config.lora_r:
            # π_ref is the policy with its adapter disabled (lora.base_model_context): no second copy.
            self.reference = None
            self.policy = (load_adapter(self.policy, checkpoint, trainable=True) if checkpoint is not None else
                           apply_lora(self.policy, config.lora_r, config.lora_alpha, config.lora_dropout,
                                      config.lora_target_modules))
        else:
            self.reference = _frozen_copy(self.policy)    # π_ref: the initial model, never updated
            if checkpoint is not None:                    # resume: the policy continues from the checkpoint
                self.policy = load_model(str(checkpoint), dtype=config.dtype, device=self._load_device)
        if config.gradient_checkpointing and config.lora_r:
            self.policy.enable_input_require_grads()     # frozen embeddings: let checkpointed layers get grads
        if config.gradient_checkpointing:
            enable = getattr(self.policy, "activation_checkpointing_enable", None) or \
                self.policy.gradient_checkpointing_enable              # renamed in transformers 5.x
            enable()
        self.policy.config.use_cache = True
        self.policy.train()
        if self.sharding != "none" and self.sharding_engine == "fsdp":    # after checkpointing, before the optimizer
            shard(self.policy, self.sharding)
            if self.reference is not None:                # (LoRA: the reference is the policy, adapter off)
                shard(self.reference, self.sharding)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optim_cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        self.optimizer = optim_cls(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: config.lr_factor(s))
        # DeepSpeed: its engine runs the policy's forward/backward and the optimizer (see deepspeed_engine.py);
        # self.policy stays the Hugging Face model (generation, saving).
        self.engine = None
        self._nonfinite_loss = False                      # (DeepSpeed: seen in this step's micro-batches)
        if self.sharding != "none" and self.sharding_engine == "deepspeed":
            self.engine = ds.train_engine(self.policy, self.optimizer, self._zero_stage, config.max_grad_norm,
                                          **self._ds_precision)
            self.reference = ds.frozen(self.reference, self._zero_stage, **self._ds_precision)
        self.anchor = self.reference                      # Stage I anchor of attempt 1 (see module docstring)
        self.builder = ConversationBuilder(self.tokenizer, self.task.correction_instruction)
        self.backend = self._make_backend()
        self.stream = ProblemStream(len(self.task.problems), config.seed)
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.skipped = 0

    # ---- construction

    def _check_sharding(self) -> None:
        if self.sharding == "none":
            return
        config, world = self.config, self.dist.world
        conflict = config.sharding_conflict(self.sharding, self.sharding_engine)   # the launcher may have chosen it
        if conflict:
            raise ConfigError(conflict)
        if self.sharding_engine == "deepspeed":
            ds.require_deepspeed()
        if not torch.distributed.is_initialized():
            raise ConfigError(f"sharding {self.sharding} splits the model over processes: launch with "
                              "`accelerate launch` or `torchrun` (a single plain process has nothing to shard with)")
        # Every FSDP forward/backward is a collective: all processes must run the same number of micro-batches.
        if config.problems_per_step % world:
            raise ConfigError(f"sharding: problems_per_step ({config.problems_per_step}) must be a multiple of "
                              f"the number of processes ({world})")
        if any(p.kind != "rl" for p in config.schedule()) and config.sft_batch_episodes % world:
            raise ConfigError(f"sharding: sft_batch_episodes ({config.sft_batch_episodes}) must be a multiple of "
                              f"the number of processes ({world})")

    def _generation_autocast(self):
        """bf16 autocast around our own decode loop; an inference engine keeps its own precision."""
        if isinstance(self.backend, TransformersBackend):
            return _autocast(self.config, self.device)
        return contextlib.nullcontext()

    def _gathered(self):
        """All weights on every process while generating (see selfcorrect.sharding.gathered); a no-op unsharded."""
        if self.engine is not None:
            return ds.gathered(self.engine)
        return gathered(self.policy, self.sharding)

    @property
    def _zero_stage(self) -> int:
        return {"zero2": 2, "zero3": 3}.get(self.sharding, 0)

    @property
    def _load_device(self) -> torch.device:
        """Where whole models are loaded: host memory when FSDP2 shards them (it moves each unit's shard to
        the GPU as it wraps it), so a GPU never holds a whole policy + reference (or anchor) at once."""
        return torch.device("cpu") if self.sharding != "none" and self.sharding_engine == "fsdp" else self.device

    @property
    def _ds_precision(self) -> dict[str, bool]:
        return {"bf16": self.config.dtype == "bfloat16", "autocast": self.config.autocast == "bf16"}

    @property
    def _whole_weights(self) -> bool:
        """Every process holds all of the policy's weights (unsharded, or DeepSpeed ZeRO-2)."""
        return self.sharding == "none" or (self.engine is not None and self._zero_stage == 2)

    @property
    def _trained(self):
        """What the loss's forward passes run through: the DeepSpeed engine, else the policy itself."""
        return self.engine if self.engine is not None else self.policy

    @property
    def _loss_scale(self) -> float:
        """FSDP and DeepSpeed average gradients over processes; our losses are normalised for a sum."""
        return float(self.dist.world) if self.sharding != "none" else 1.0

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate one micro-batch's gradients (``last``: the step's final micro-batch)."""
        if self.engine is None:
            loss.backward()
            return
        # DeepSpeed steps unless the gradients are non-finite: a non-finite loss anywhere in the step (on any
        # process) poisons the last micro-batch's gradients, so the step is skipped as on the other paths.
        self._nonfinite_loss = self._nonfinite_loss or not bool(torch.isfinite(loss))
        poison = last and self.dist.max(int(self._nonfinite_loss)) > 0
        if last:
            self._nonfinite_loss = False
        ds.backward(self.engine, loss, last, poison)

    def _make_backend(self):
        """The rollout backend; a vLLM engine starts from the base model and gets the policy's weights."""
        config = self.config
        if config.rollout_backend == "transformers":
            return TransformersBackend(self.policy, self.tokenizer, batch_size=config.generation_batch_size)
        if self.dist.world > 1:
            raise ConfigError("rollout_backend vllm runs one engine in a single process for now; "
                              "data-parallel runs use rollout_backend transformers")
        from .rollout.vllm_backend import VLLMBackend, engine_source

        backend = VLLMBackend.create(
            engine_source(config.model), end_of_turn_ids(self.tokenizer, getattr(self.policy, "generation_config", None)),
            dtype="bfloat16" if config.autocast == "bf16" else config.dtype, seed=config.seed,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            max_model_len=config.vllm_max_model_len or None)
        backend.sync_weights(self.policy)            # a resumed (or LoRA) policy differs from the files on disk
        return backend

    @classmethod
    def create(cls, config: TrainConfig) -> Trainer:
        run_dir = Path(config.out)
        if run_dir.exists() and any(run_dir.iterdir()) and not config.overwrite:
            raise ConfigError(f"run directory {run_dir} is not empty: use --resume {run_dir} to continue it, "
                              "--overwrite true to reuse it, or another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        trainer = cls(config, run_dir)
        trainer.dist.barrier()                            # every process checked the directory before we write
        if trainer.dist.main:
            import yaml

            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        trainer.dist.barrier()
        return trainer

    @classmethod
    def resume(cls, run_dir: str | Path) -> Trainer:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        config = from_dict(TrainConfig, load_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
        checkpoint = latest_checkpoint(run_dir)
        trainer = cls(config, run_dir, checkpoint)
        state = load_state(checkpoint)
        saved = state.get("sharding_engine", "fsdp") if state.get("sharded_optimizer", False) else "none"
        running = trainer.sharding_engine if trainer.sharding != "none" else "none"
        if saved != running:
            layout = {"none": "without sharding", "fsdp": "with FSDP sharding", "deepspeed": "with DeepSpeed"}
            raise ConfigError(f"--resume {run_dir}: its checkpoint was written {layout[saved]}, this launch runs "
                              f"{layout[running]}; resume it the same way")
        if trainer.engine is not None:                    # DeepSpeed's own per-process checkpoint
            if state.get("world") != trainer.dist.world:
                raise ConfigError(f"--resume {run_dir}: a DeepSpeed checkpoint resumes on the number of processes "
                                  f"that wrote it ({state.get('world')}), not {trainer.dist.world}")
            if state.get("zero_stage") != trainer._zero_stage:
                raise ConfigError(f"--resume {run_dir}: its DeepSpeed checkpoint is ZeRO stage {state.get('zero_stage')}"
                                  f", this launch runs stage {trainer._zero_stage}; resume it with the same stage")
            ds.load(trainer.engine, checkpoint / "deepspeed")
        elif trainer.sharding != "none":
            if state["optimizer"]:                        # empty: saved before any optimizer step
                load_full_optimizer_state(trainer.policy, trainer.optimizer, state["optimizer"])
        else:
            trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.stream = ProblemStream(len(trainer.task.problems), config.seed, **state["data"])
        trainer.step, trainer.best, trainer.skipped = state["step"], state.get("best"), state.get("skipped", 0)
        if has_anchor(checkpoint):
            if not trainer._whole_weights:
                trainer.anchor = trainer._sharded_anchor(checkpoint=checkpoint)
            else:
                trainer.anchor = _frozen_copy(trainer.policy if trainer.reference is None else trainer.reference)
                load_anchor(checkpoint, trainer.anchor)
        if trainer.dist.main:
            _truncate_log(run_dir / "metrics.jsonl", trainer.step)
        trainer.dist.barrier()
        set_rng_state(state["rng"])
        return trainer

    # ---- checkpoints

    def save(self) -> Path:
        sharded = self.sharding != "none"
        anchor = None if self.anchor is self.reference else self.anchor
        path = self.run_dir / f"checkpoint-{self.step}"
        extra: dict[str, Path] = {}
        # Collectives below: every process takes part.
        if self.engine is not None:                       # DeepSpeed: its own checkpoint holds the optimizer
            optimizer: dict[str, Any] = {}
            extra["deepspeed"] = self.run_dir / f".tmp-deepspeed-{self.step}"
            if self.dist.main:                            # left over from an interrupted save
                shutil.rmtree(extra["deepspeed"], ignore_errors=True)
            self.dist.barrier()
            ds.save(self.engine, extra["deepspeed"])
            weights, anchor_weights = ds.full_state_dict(self.engine), ds.full_state_dict(anchor)
            anchor = ds.hf_model(anchor)
        elif sharded:   # (torch would take a dummy Adam step to build a state that does not exist yet)
            optimizer = full_optimizer_state(self.policy, self.optimizer) if self.optimizer.state else {}
            weights = full_state_dict(self.policy)
            anchor_weights = full_state_dict(anchor) if anchor is not None else None
        else:
            optimizer, weights, anchor_weights = self.optimizer.state_dict(), None, None
        state = {"optimizer": optimizer, "sharded_optimizer": sharded, "sharding_engine": self.sharding_engine,
                 "zero_stage": self._zero_stage, "world": self.dist.world, "scheduler": self.scheduler.state_dict(),
                 "data": self.stream.state(), "step": self.step, "best": self.best, "skipped": self.skipped,
                 "phase": self.config.phase(self.step - 1) if self.step else None,
                 "sft_index": getattr(self, "_sft_index", None)}
        self.dist.barrier()                               # every process has written its DeepSpeed partition
        if self.dist.main:                                # every process holds the same weights
            save_checkpoint(self.run_dir, self.step, self.policy, self.tokenizer, state, anchor,
                            weights=weights, anchor_weights=anchor_weights, extra=extra)
            protect = {self.run_dir / self.best["checkpoint"]} if self.best else set()
            prune_checkpoints(self.run_dir, self.config.keep_last, protect)
        self.dist.barrier()
        return path

    # ---- one step

    def train_step(self) -> dict[str, Any]:
        """One optimizer step of the current phase; returns its log row."""
        index, phase, offset = self.config.phase_at(self.step)
        if phase.kind == "rl":
            self._update_anchor(phase, offset)
            row = self._rl_step(phase)
        else:
            row = self._sft_step(index, phase, offset)
        return {"iteration": phase.iteration, "stage": phase.stage, "phase": phase.objective or phase.collect,
                **row}

    def _optimizer_step(self, losses: list[float]) -> tuple[float, float, bool]:
        """Sum gradients over processes, clip, check for non-finite values, step (or skip).

        Returns (loss, grad norm, skipped); ``losses`` are this process's micro-batch losses.
        """
        self._step_lr = self.scheduler.get_last_lr()[0]   # the rate this step applies (logged as `lr`)
        loss = self.dist.sum(float(sum(losses)) if losses else float("nan"))
        if self.engine is not None:       # DeepSpeed reduces, clips, steps; it skips non-finite gradients itself
            grad_norm, applied = ds.step(self.engine) if losses else (0.0, False)
            self.skipped += not applied
            self.scheduler.step()
            self.step += 1
            return loss, grad_norm, not applied
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.sharding == "none":                       # FSDP has already reduced (and sharded) them
            self.dist.sum_gradients(params)
        limit = self.config.max_grad_norm if self.config.max_grad_norm else float("inf")
        grad_norm = scalar(torch.nn.utils.clip_grad_norm_(params, limit)) if any(p.grad is not None for p in params) \
            else torch.tensor(0.0)
        skipped = not (math.isfinite(loss) and torch.isfinite(grad_norm))
        if skipped:                       # never let a NaN/inf (or an empty dataset) touch weights or Adam
            self.skipped += 1
        else:
            self.optimizer.step()
            if hasattr(self.backend, "sync_weights"):   # an inference engine holds its own copy of the weights
                self.backend.sync_weights(self.policy)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return loss, float(grad_norm), skipped

    def _rollout(self, problems, attempts: int) -> list[Episode]:
        """This process's share of the problems, rolled out with per-row seeds (batch- and process-invariant)."""
        draws = draw_indices(problems)      # over the whole step, so every process numbers repeats alike
        with self._gathered(), self._generation_autocast():
            return sample_episodes(self.backend, self.builder, self.task, self.dist.shard(problems),
                                   samples=self.config.samples, attempts=attempts,
                                   params=self.config.sampling_params(),
                                   per_row_seed=self.config.seed * 1_000_003 + self.step,
                                   draws=self.dist.shard(draws))

    def _rl_step(self, phase: Phase) -> dict[str, Any]:
        config = self.config
        problems = [self.task.problems[i] for i in self.stream.take(config.problems_per_step)]
        started = time.perf_counter()
        attempts = 1 if phase.objective == "single" else config.attempts
        episodes = self._rollout(problems, attempts)
        generated = time.perf_counter()

        losses, kls, ordered = [], [], []
        gaps: list[tuple[list[float], list[float]]] = [([], []) for _ in range(attempts)]
        norm = len(problems) * config.samples             # episodes of the whole step, over all processes
        batches = micro_batches(episodes, config.micro_batch_problems, config.samples)
        # Sharded, every process must run as many forward/backward passes (collectives); a problem drawn
        # twice in one step merges into one group and can leave a process a micro-batch short.
        passes = self.dist.max(len(batches)) if self.sharding != "none" else len(batches)
        # The sampler ran without dropout, so the policy is scored without it -- through the backward pass
        # too, where checkpointed layers recompute their forward (docs/training.md, "Dropout").
        with dropout_disabled(self._trained):
            for i in range(passes):
                padding = i >= len(batches)               # a pass that keeps collectives aligned, adding nothing
                batch = batches[-1] if padding else batches[i]
                out = step_loss(config, phase.objective, self._trained, self.reference, self.anchor, batch,
                                self.tokenizer.pad_token_id, norm, self.device)
                if not torch.isfinite(out.loss) and self.sharding == "none":
                    losses.append(float("nan"))
                    break             # (sharded: every process must run every backward; the step is skipped later)
                self._backward(out.loss * (0.0 if padding else self._loss_scale), last=i == passes - 1)
                if not padding:
                    losses.append(float(out.loss.detach()))
                    kls.append(out.kl.cpu())
                    ordered.extend(batch)
                    for total, part in zip(gaps, logprob_gaps(batch, out.logp, attempts)):
                        total[0].extend(part[0])
                        total[1].extend(part[1])
        trained = time.perf_counter()
        loss, grad_norm, skipped = self._optimizer_step(losses)

        kl = torch.cat(kls) if kls else torch.full((len(episodes), attempts), float("nan"))
        if len(ordered) != len(episodes):                 # a micro-batch failed: keep rows aligned with kl
            ordered, kl = episodes, torch.full((len(episodes), attempts), float("nan"))
        ordered, kl = self.dist.gather(ordered), torch.cat(self.dist.gather([kl]))     # the whole step
        tokens = sum(len(a.ids) for ep in ordered for a in ep.attempts)
        self._last_episodes = ordered
        everyone = self.dist.gather([gaps])               # one list of per-attempt gaps per process
        checked = gap_metrics([(sum((p[k][0] for p in everyone), []), sum((p[k][1] for p in everyone), []))
                               for k in range(attempts)])
        self._warn_on_gap(checked)
        return {"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "lr": self._step_lr,
                **batch_metrics(ordered, kl), **checked, "generated_tokens": tokens,
                "tokens_per_s": tokens / max(trained - started, 1e-9),
                "time_generate_s": generated - started, "time_train_s": trained - generated}

    def _warn_on_gap(self, checked: dict[str, float]) -> None:
        """One warning per run when the sampler's and the trainer's log-probs of the same tokens disagree."""
        if getattr(self, "_gap_warned", False) or not self.dist.main:
            return
        worst = max(((v, k) for k, v in checked.items() if k.startswith("logp_gap_mean") and v == v), default=None)
        if worst is not None and worst[0] > self.config.logprob_gap_warn:
            self._gap_warned = True
            attempt = worst[1].rsplit("_t", 1)[1]
            print(f"WARNING: on attempt {attempt} the trainer's log-probs differ from the sampler's by "
                  f"{worst[0]:.3g} nats per token on average (logprob_gap_warn {self.config.logprob_gap_warn:g}): "
                  "the gradient is off-policy -- a wrong temperature, stale sampler weights after a weight sync, "
                  "or a masking bug (metrics.jsonl: logp_gap_*, importance_ratio_*).", file=sys.stderr, flush=True)

    # ---- supervised baselines

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
        traces = self._gather_in_problem_order(self._rollout(problems, 1 if phase.collect == "pair" else
                                                             config.attempts), len(problems))
        if phase.collect == "star":        # the current model's own K-attempt traces, filtered
            dataset = star_filter(traces, config.sft_keep)
        else:                              # Pair-SFT: independent first attempts of the (base) model
            prompts = {p.id: self.task.first_prompt(p) for p in problems}
            dataset = pair_episodes(self.builder, traces, prompts, config.sft_keep)
        if phase.collect == "star":
            stats = batch_metrics(traces, torch.full((len(traces), config.attempts), float("nan")))
        else:
            stats = {"reward_t1": float(np.mean([ep.attempts[0].reward for ep in traces]))}
        record = {"episodes": dataset, "collected": len(traces), "stats": stats, "stream": self.stream.state()}
        if self.dist.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(record, tmp)
            tmp.replace(path)
        self.dist.barrier()
        self._last_episodes = traces
        return record

    def _gather_in_problem_order(self, local: list[Episode], count: int) -> list[Episode]:
        """All processes' episodes of a step's ``count`` problems in the problems' order.

        Process ``r`` rolled out ``problems[r::world]``, ``samples`` episodes each, problem-major.
        """
        per_rank, world, n = self.dist.gather_ranks(local), self.dist.world, self.config.samples
        ordered = []
        for index in range(count):
            j = index // world
            ordered.extend(per_rank[index % world][j * n:(j + 1) * n])
        return ordered

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
        with torch.no_grad():
            if self.reference is None:                    # LoRA: the adapter as it was created
                initial = torch.load(self._initial_adapter_path, map_location=self.device, weights_only=True)
                for name, param in self.policy.named_parameters():
                    if param.requires_grad:
                        param.copy_(initial[name])
            else:
                copy_weights(self.policy, self.reference)
        self.optimizer.state.clear()
        if hasattr(self.backend, "sync_weights"):
            self.backend.sync_weights(self.policy)

    @property
    def _initial_adapter_path(self) -> Path:
        return self.run_dir / "sft" / "initial-adapter.pt"

    def _sft_step(self, index: int, phase: Phase, offset: int) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        fresh = offset == 0 and not self._sft_path(index).is_file()
        if phase.restart and self.step == 0 and self.reference is None and self.dist.main:
            # LoRA has no frozen copy of the initial model to restart from: keep its initial adapter.
            self._initial_adapter_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._initial_adapter_path.with_suffix(".tmp")
            torch.save({n: p.detach().cpu() for n, p in self.policy.named_parameters() if p.requires_grad}, tmp)
            tmp.replace(self._initial_adapter_path)
        self.dist.barrier()                               # nobody reads the file before everyone checked it
        if getattr(self, "_sft_index", None) != index:
            (self._sft_record, self._sft_data), self._sft_index = self._sft_dataset(index, phase), index
            if phase.restart and offset == 0 and self.step > 0:
                self._restart_from_initial()              # after collecting: the round samples the last model
        record, dataset = self._sft_record, self._sft_data
        generated = time.perf_counter()
        losses: list[float] = []
        if dataset:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(
                config.seed * 7919 + index * 104729 + (offset * config.sft_batch_episodes) // len(dataset)))
            start = (offset * config.sft_batch_episodes) % len(dataset)
            picks = [dataset[int(order[(start + i) % len(dataset)])] for i in range(config.sft_batch_episodes)]
            norm = sum(len(ep.attempts[1].ids) for ep in picks)      # trained tokens of the whole step
            picks, size = self.dist.shard(picks), config.micro_batch_problems * config.samples
            starts = range(0, len(picks), size)
            for lo in starts:
                loss = sft_step_loss(config, self._trained, picks[lo: lo + size], self.tokenizer.pad_token_id,
                                     norm, self.device)
                if not torch.isfinite(loss) and self.sharding == "none":
                    losses.append(float("nan"))
                    break
                self._backward(loss * self._loss_scale, last=lo == starts[-1])
                losses.append(float(loss.detach()))
        trained = time.perf_counter()
        loss, grad_norm, skipped = self._optimizer_step(losses)
        row = {"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "lr": self._step_lr,
               "sft_dataset": len(dataset), "sft_collected": record["collected"],
               "time_generate_s": generated - started, "time_train_s": trained - generated}
        if fresh:
            row.update(record["stats"])
        return row

    def _update_anchor(self, phase: Phase, offset: int) -> None:
        """At the first step of a Stage I in iteration ≥ 2, freeze the current policy as attempt 1's anchor."""
        if phase.stage == 1 and phase.iteration > 1 and offset == 0:
            if self._whole_weights:
                self.anchor = _frozen_copy(self.policy)
                return
            if self.anchor is self.reference:
                self.anchor = self._sharded_anchor()
            # A sharded anchor is built once and refilled in place (DeepSpeed never frees a ZeRO-3 engine).
            if self.engine is not None:
                ds.copy_weights(self.anchor, self.engine)
            else:
                copy_weights(self.anchor, self.policy)

    def _sharded_anchor(self, checkpoint: Path | None = None):
        """A frozen, sharded model laid out like the policy: the base model, or the anchor saved in ``checkpoint``."""
        from .models import load_model

        config = self.config
        anchor = load_model(config.model, dtype=config.dtype, device=self._load_device)
        if config.lora_r:                                 # the anchor is the adapted policy: the same adapter layout
            anchor = apply_lora(anchor, config.lora_r, config.lora_alpha, config.lora_dropout,
                                config.lora_target_modules)
        anchor = _frozen(anchor)
        if checkpoint is not None:
            load_anchor(checkpoint, anchor)
        if self.engine is not None:                       # DeepSpeed ZeRO-3: an inference engine
            return ds.frozen(anchor, self._zero_stage, **self._ds_precision)
        shard(anchor, self.sharding)
        return anchor

    # ---- evaluation

    def evaluate_on_main(self, limit: int | None = None) -> tuple[dict[str, Any] | None, list[Episode] | None]:
        """:meth:`evaluate` on the main process; every process must call it (sharded weights are gathered).

        Returns ``(None, None)`` on the other processes.
        """
        with self._gathered():
            result = self.evaluate(limit) if self.dist.main else (None, None)
        self.dist.barrier()
        return result

    def evaluate(self, limit: int | None = None) -> tuple[dict[str, Any], list[Episode]]:
        """Greedy K-attempt episodes on the held-out problems, in this process (see :meth:`evaluate_on_main`)."""
        from .evaluation import summarize_episodes

        problems = self.eval_task.problems[: limit or self.config.eval_limit]
        builder = ConversationBuilder(self.tokenizer, self.eval_task.correction_instruction)
        with self._generation_autocast():
            episodes = sample_episodes(self.backend, builder, self.eval_task, problems, samples=1,
                                       attempts=self.config.attempts,
                                       params=SamplingParams(max_new_tokens=self.config.eval_max_new_tokens))
        return summarize_episodes(episodes, seed=self.config.seed), episodes

    def _maybe_best(self, summary: dict[str, Any], checkpoint: Path | None) -> None:
        score = summary["accuracy"][-1]
        if checkpoint is not None and (self.best is None or score > self.best["score"]):
            self.best = {"checkpoint": checkpoint.name, "score": score, "step": self.step}
            write_best(self.run_dir, checkpoint, score, self.step)

    # ---- the loop

    def train(self, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the remaining steps; checkpoint periodically, on Ctrl-C and at the end. Returns the last row.

        In a data-parallel job only the main process logs, evaluates and writes
        files; the others return ``{"final_eval": None}``.  Ctrl-C stops a single
        process at once; in a multi-process job every process first finishes its
        current step (:class:`~selfcorrect.distributed.StopRequest`).
        """
        stop = StopRequest(self.dist)
        with stop.catching():
            return self._train(stop, on_step)

    def _train(self, stop: StopRequest, on_step: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
        config = self.config
        main = self.dist.main
        logger = RunLogger(self.run_dir, config, resume=self.step > 0) if main else None
        row: dict[str, Any] = {}
        try:
            while self.step < config.total_steps:
                row = self.train_step()
                if main and config.log_samples_every and self.step % config.log_samples_every == 0:
                    self._log_samples()
                evaluated = None
                if config.eval_every and self.step % config.eval_every == 0 and self.step < config.total_steps:
                    evaluated, _ = self.evaluate_on_main()
                    if main:
                        row.update({f"eval_acc_t{k + 1}": a for k, a in enumerate(evaluated["accuracy"])},
                                   eval_delta=evaluated["delta"])
                if main:
                    logger.log(self.step, row)
                    if on_step is not None:
                        on_step(self.step, row)
                if config.save_every and self.step % config.save_every == 0 and self.step < config.total_steps:
                    path = self.save()
                    if evaluated is not None:
                        self._maybe_best(evaluated, path)
                if stop.agreed():         # Ctrl-C in a multi-process job: all processes are between steps
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.save()
            if logger is not None:
                logger.close()
            raise
        final = self.save() if self.step else None          # `prompting` trains nothing: no checkpoint
        summary, episodes = self.evaluate_on_main()
        if not main:
            self.dist.barrier()                             # wait for the main process's files
            return {**row, "final_eval": None}
        self._maybe_best(summary, final)
        from .evaluation import write_eval_outputs

        write_eval_outputs(self.run_dir / "eval", summary, episodes, f"{config.method} after {self.step} steps",
                           {"step": self.step, "skipped_steps": self.skipped})
        if config.lora_r and self.sharding == "none":
            export_merged(self.policy, self.tokenizer, self.run_dir / "merged")
        elif config.lora_r and final is not None:         # sharded: merge the gathered adapter just saved
            from .models import load_model

            export_merged(load_model(str(final), dtype=config.dtype), self.tokenizer, self.run_dir / "merged")
        logger.close()
        _plot_curves(self.run_dir)
        self.dist.barrier()
        return {**row, "final_eval": summary}

    def _log_samples(self, count: int = 4) -> None:
        from .evaluation import episode_record

        with open(self.run_dir / "samples.jsonl", "a", encoding="utf-8") as fh:
            for ep in getattr(self, "_last_episodes", [])[:count]:
                fh.write(json.dumps({"step": self.step, **episode_record(ep)}, ensure_ascii=False) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(r + "\n" for r in rows))


def _plot_curves(run_dir: Path) -> None:
    from .plots import plot_training_curves

    log = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if rows:
        plot_training_curves(rows, run_dir / "training_curves.png")

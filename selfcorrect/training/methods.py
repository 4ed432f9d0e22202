"""Methods as one table: each method is a function from the config to its phases.

A :class:`Phase` is a block of optimizer steps of one kind, and it carries
everything a step needs to know about it: an RL phase its :class:`Objective`
(one function of :mod:`selfcorrect.algorithms.score` with its hyperparameters
already bound, so "no shaping" is simply Stage II with α = 0) and the number of
attempts its episodes have; an SFT phase how its dataset is collected
(:mod:`selfcorrect.training.sft_data`).  The trainer runs phases; it never
reads the method's name.

Adding a method is one schedule function and one line in :data:`SCHEDULES`
(plus its objective or dataset builder if it needs a new one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..algorithms.policy_gradient import LossOutput
from ..algorithms.score import single_turn_loss, stage_one_loss, stage_two_loss
from .sft_data import pair_dataset, star_dataset


@dataclass(frozen=True)
class Objective:
    """An RL phase's loss: a function of :mod:`selfcorrect.algorithms.score` with its hyperparameters bound."""

    name: str
    """What ``metrics.jsonl`` calls the phase (``stage1``, ``stage2``, ``single``)."""
    loss: Callable[..., LossOutput] = field(compare=False, repr=False)
    """``loss(logp, ref_logp, [anchor_logp,] attempt_mask, rewards, groups, norm=...)``."""
    anchored: bool = False
    """Attempt 1 is pinned to the Stage I anchor: the loss takes the anchor's log-probs."""
    per_step: tuple[str, ...] = ()
    """Hyperparameters not bound here because the trainer holds them and may move them between steps (Stage
    I's β2, which ``adaptive_beta2`` adapts): every call must give exactly these."""

    def __call__(self, logp: torch.Tensor, ref_logp: torch.Tensor, anchor_logp: torch.Tensor,
                 attempt_mask: torch.Tensor, rewards: torch.Tensor, groups: torch.Tensor, norm: int,
                 **hyper: float) -> LossOutput:
        """``hyper``: this step's values of :attr:`per_step`."""
        if set(hyper) != set(self.per_step):
            raise TypeError(f"objective {self.name} takes {self.per_step or 'no'} per-step hyperparameters, "
                            f"got {sorted(hyper)}")
        if self.anchored:
            return self.loss(logp, ref_logp, anchor_logp, attempt_mask, rewards, groups, norm=norm, **hyper)
        return self.loss(logp, ref_logp, attempt_mask, rewards, groups, norm=norm, **hyper)


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
    name: str
    """What ``metrics.jsonl`` calls it: ``stage1``, ``stage2``, ``single`` (RL); ``star``, ``pair`` (SFT)."""
    attempts: int
    """Attempts per episode this phase samples (single-turn RL and Pair-SFT's base-model answers: 1)."""
    objective: Objective | None = None
    """RL phases: the loss of one micro-batch."""
    collect_episodes: int = 0
    """SFT phases: episodes generated to build the dataset (its share of the sample budget)."""
    dataset: Callable[..., list] | None = field(default=None, compare=False, repr=False)
    """SFT phases: ``dataset(traces, problems, task, builder, keep) -> episodes`` (:mod:`.sft_data`)."""
    restart: bool = False
    """STaR rounds: fine-tune the *initial* model afresh (its weights, a fresh Adam, the LR warmup again)
    on every trace kept in this and the earlier rounds, as the STaR paper does."""


# --------------------------------------------------------------------------- objectives


def _common(config) -> dict[str, Any]:
    return dict(baseline=config.baseline, kl_in=config.kl_in)


def stage_one(config) -> Objective:
    """Stage I: reward attempt 2, pin attempt 1 (β2, the trainer's: it may adapt) to the anchor."""
    return Objective("stage1", functools.partial(stage_one_loss, beta1=config.beta1,
                                                 first_kl_in=config.stage1_kl_in or None, **_common(config)),
                     anchored=True, per_step=("beta2",))


def stage_two(config, alpha: float) -> Objective:
    """Stage II: reward both attempts, attempt 2 with the bonus α·(r2 − r1)."""
    return Objective("stage2", functools.partial(stage_two_loss, alpha=alpha, beta1=config.beta1, **_common(config)))


def single_turn(config) -> Objective:
    """RL on attempt 1 alone."""
    return Objective("single", functools.partial(single_turn_loss, beta1=config.beta1, **_common(config)))


# --------------------------------------------------------------------------- schedules, one per method


def _rl(config, iteration: int, stage: int, steps: int, objective: Objective, attempts: int | None = None) -> Phase:
    return Phase("rl", iteration, stage, steps, objective.name, attempts or config.attempts, objective)


def _iterations(config):
    return range(1, config.iterations + 1)


def score(config, alpha: float | None = None) -> list[Phase]:
    """``iterations`` × (``stage1_steps`` of Stage I, then ``stage2_steps`` of Stage II)."""
    alpha = config.alpha if alpha is None else alpha
    return [phase for it in _iterations(config)
            for phase in (_rl(config, it, 1, config.stage1_steps, stage_one(config)),
                          _rl(config, it, 2, config.stage2_steps, stage_two(config, alpha)))]


def no_shaping(config) -> list[Phase]:
    """SCoRe with α = 0 (the paper's "w/o reward shaping")."""
    return score(config, alpha=0.0)


def stage2_only(config) -> list[Phase]:
    """Stage II for all ``stage1_steps + stage2_steps`` steps of each iteration ("w/o Stage I")."""
    steps = config.stage1_steps + config.stage2_steps
    return [_rl(config, it, 2, steps, stage_two(config, config.alpha)) for it in _iterations(config)]


def single_turn_rl(config) -> list[Phase]:
    """RL on attempt 1 only for as many steps (K = 1 while training, K attempts at evaluation)."""
    steps = config.stage1_steps + config.stage2_steps
    return [_rl(config, it, 2, steps, single_turn(config), attempts=1) for it in _iterations(config)]


def _star_round(config, round_: int, episodes: int, restart: bool) -> Phase:
    return Phase("sft", round_, 2, config.sft_steps, "star", config.attempts, collect_episodes=episodes,
                 restart=restart, dataset=star_dataset)


def star(config) -> list[Phase]:
    """``star_rounds`` rounds of sample → keep → fine-tune the initial model afresh, sharing the budget evenly."""
    share = config.episode_budget // config.star_rounds
    return [_star_round(config, r, share, restart=True) for r in range(1, config.star_rounds + 1)]


def pair_sft(config) -> list[Phase]:
    """One round: all of the budget as base-model first attempts, paired wrong → right."""
    return [Phase("sft", 1, 2, config.sft_steps, "pair", 1, collect_episodes=config.episode_budget,
                  dataset=pair_dataset)]


def star_stage2(config) -> list[Phase]:
    """Per iteration, Stage I RL as in SCoRe, then one STaR round (continuing) with the Stage II budget."""
    episodes = config.stage2_steps * config.problems_per_step * config.samples
    return [phase for it in _iterations(config)
            for phase in (_rl(config, it, 1, config.stage1_steps, stage_one(config)),
                          *([_star_round(config, it, episodes, restart=False)] if config.stage2_steps else []))]


def prompting(config) -> list[Phase]:
    """No training: the base model's own self-correction."""
    return []


SCHEDULES: dict[str, Callable[[Any], list[Phase]]] = {
    "score": score,
    "stage2-only": stage2_only,
    "no-shaping": no_shaping,
    "single-turn": single_turn_rl,
    "star": star,
    "pair-sft": pair_sft,
    "star-stage2": star_stage2,
    "prompting": prompting,
}
"""Method name → its schedule (docs/training.md describes each)."""

METHODS = tuple(SCHEDULES)


def schedule(config) -> list[Phase]:
    """The phases of ``config.method``, empty ones left out."""
    return [p for p in SCHEDULES[config.method](config) if p.steps > 0]

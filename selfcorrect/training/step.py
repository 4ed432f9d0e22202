"""One training step's tensors: collate → log-probs → objective, and the numbers a step logs.

The data flow of one RL micro-batch (:func:`step_loss`)::

    episodes ──collate──▶ input_ids, attention_mask [B, T], attempt_mask [B, K, T], rewards [B, K], groups [B]
             ──score (policy with grad; π_ref, anchor without; all at the sampling temperature)──▶ [B, T]
             ──phase.objective (selfcorrect.algorithms.score)──▶ LossOutput

Everything here is a function of tensors and episodes; which engine runs the
forward passes arrives as ``score`` (its ``token_logprobs``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import faults, metrics
from ..algorithms.policy_gradient import LossOutput
from ..algorithms.sft import sft_loss
from ..lora import base_model_context
from ..rollout import Episode, collate
from .clock import untimed
from .methods import Phase

Scorer = Callable[..., torch.Tensor]
"""``score(model, input_ids, attention_mask, label_mask, chunk_size, temperature) -> [B, T]`` log-probs."""


def autocast(config, device: torch.device):
    """bf16 autocast when ``config.autocast`` asks for it."""
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


def accumulate(engine, batches: Sequence[list[Episode]], loss_of: Callable[[list[Episode]], tuple[torch.Tensor, Any]],
               keep: Callable[[list[Episode], Any], None] | None = None, clock=untimed) -> list[float]:
    """The micro-batch accumulation loop of every step, RL and SFT: a forward and a backward pass per
    micro-batch, the engine summing gradients; returns the losses of the passes that count.

    ``loss_of(batch) -> (loss, extra)``; ``keep(batch, extra)`` sees every pass that counts.  In lockstep
    (sharded engines) every process runs as many passes as the busiest one, each a collective: a process
    short of micro-batches (a problem drawn twice in one step) repeats its last one with its loss scaled by
    0, adding nothing.  A non-finite loss ends the loop at once where processes are independent (the step is
    then skipped); in lockstep every pass still runs and the step is skipped after the reduction.
    """
    losses: list[float] = []
    passes = engine.passes(len(batches))
    for i in range(passes):
        padding = i >= len(batches)
        batch = batches[-1] if padding else batches[i]
        loss, extra = loss_of(batch)
        faults.point("score")
        if not torch.isfinite(loss) and not engine.lockstep:
            losses.append(float("nan"))
            break
        with clock("backward"):
            engine.backward(loss * (0.0 if padding else engine.loss_scale), last=i == passes - 1)
        faults.point("backward")
        if not padding:
            losses.append(float(loss.detach()))
            if keep is not None:
                keep(batch, extra)
    return losses


def step_loss(config, phase: Phase, score: Scorer, policy, reference, anchor, batch: list[Episode], pad_id: int,
              norm: int, device: torch.device, beta2: float, clock=untimed) -> LossOutput:
    """Collate → log-probs (policy with grad; π_ref and the anchor without) → the phase's objective.

    ``score`` is the engine's :meth:`~selfcorrect.engines.Engine.token_logprobs`; ``reference`` is None
    under LoRA (π_ref = the policy with its adapter switched off); ``clock`` a
    :class:`~selfcorrect.training.clock.PhaseClock` that times the reference and policy passes; ``beta2``
    this step's Stage I coefficient (the trainer's: ``beta2``, moved by ``adaptive_beta2``).
    """
    k = phase.attempts
    tensors = collate(batch, pad_token_id=pad_id, num_attempts=k)
    input_ids = tensors["input_ids"].to(device)                   # [B, T]
    attention_mask = tensors["attention_mask"].to(device)         # [B, T]
    attempt_mask = tensors["attempt_mask"].to(device)             # [B, K, T]
    label_mask = attempt_mask.any(1)                              # [B, T]
    # An offline attempt (π_ref's first attempt, base_first_attempts) is a prompt: no policy gradient, no KL.
    offline = torch.tensor([[a.offline for a in ep.attempts[:k]] for ep in batch], device=device)   # [B, K]
    attempt_mask = attempt_mask & ~offline[:, :, None]
    rewards = torch.tensor([[a.reward for a in ep.attempts[:k]] for ep in batch], device=device)   # [B, K]
    keys = [rloo_group(ep, config.samples) for ep in batch]
    ids = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    groups = torch.tensor([ids[key] for key in keys], device=device)                                # [B]

    with clock("reference_score"), torch.no_grad(), autocast(config, device):
        # Everything at the sampling temperature: the policy term must be the distribution that sampled
        # the rollout (on-policy), and the KL then compares π_θ and π_ref as that sampler sees them.
        scored = dict(chunk_size=config.logprob_chunk, temperature=config.temperature)
        if reference is None:          # LoRA: π_ref = the policy with its adapter switched off
            with base_model_context(policy):
                ref_logp = score(policy, input_ids, attention_mask, label_mask, **scored)
        else:
            ref_logp = score(reference, input_ids, attention_mask, label_mask, **scored)
        anchor_logp = (ref_logp if anchor is reference or not phase.objective.anchored else
            score(anchor, input_ids, attention_mask, label_mask, **scored))
    with clock("policy_score"):
        with autocast(config, device):
            logp = score(policy, input_ids, attention_mask, label_mask, **scored)
        hyper = {name: {"beta2": beta2}[name] for name in phase.objective.per_step}
        out = phase.objective(logp, ref_logp, anchor_logp, attempt_mask, rewards, groups, norm=norm, **hyper)
    if anchor_logp is not ref_logp:                                # Stage I pinned to another model: also vs π_ref
        out.kl_reference = ((logp.detach() - ref_logp) * attempt_mask[:, 0]).sum(-1)   # [B]
    return out


def sft_step_loss(config, score: Scorer, policy, batch: list[Episode], pad_id: int, norm: int,
                  device: torch.device) -> torch.Tensor:
    """Supervised loss on attempt 2 of each episode (STaR / Pair-SFT) for one micro-batch."""
    tensors = collate(batch, pad_token_id=pad_id, num_attempts=2)
    attempt_mask = tensors["attempt_mask"].to(device)             # [B, 2, T]
    with autocast(config, device):
        logp = score(policy, tensors["input_ids"].to(device), tensors["attention_mask"].to(device),
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


@dataclass
class StepRecords:
    """What one RL step keeps of its micro-batches (:func:`accumulate`'s ``keep``), in their order, for the
    step's log row: per-attempt KLs, the advantages, the sampler-vs-trainer log-prob gaps."""

    attempts: int
    kls: list[torch.Tensor] = field(default_factory=list)             # [b, K] per micro-batch
    kl_refs: list[torch.Tensor] = field(default_factory=list)         # [b] KL(attempt 1 ‖ π_ref), Stage I
    advantages: list[torch.Tensor] = field(default_factory=list)      # [b, K] per micro-batch
    episodes: list[Episode] = field(default_factory=list)             # the micro-batches' episodes, in order
    gaps: list[tuple[list[float], list[float]]] = field(default_factory=list)   # per attempt, see logprob_gaps

    def __post_init__(self) -> None:
        self.gaps = [([], []) for _ in range(self.attempts)]

    def keep(self, batch: list[Episode], out: LossOutput) -> None:
        self.kls.append(out.kl.cpu())
        if out.kl_reference is not None:
            self.kl_refs.append(out.kl_reference.cpu())
        self.advantages.append(out.advantages.detach().cpu())
        self.episodes.extend(batch)
        for total, part in zip(self.gaps, logprob_gaps(batch, out.logp, self.attempts)):
            total[0].extend(part[0])
            total[1].extend(part[1])

    def whole_step(self, dist, episodes: list[Episode]) -> tuple[list[Episode], torch.Tensor]:
        """Every process's episodes and their ``[B, K]`` KLs, rows aligned (NaN KLs when a micro-batch failed)."""
        kl = torch.cat(self.kls) if self.kls else torch.full((len(episodes), self.attempts), float("nan"))
        ordered = self.episodes
        if len(ordered) != len(episodes):                 # a micro-batch failed: keep rows aligned with kl
            ordered, kl = episodes, torch.full((len(episodes), self.attempts), float("nan"))
        return dist.gather(ordered), torch.cat(dist.gather([kl]))

    def gap_metrics(self, dist) -> dict[str, float]:
        """:func:`gap_metrics` over every process's tokens."""
        everyone = dist.gather([self.gaps])               # one list of per-attempt gaps per process
        return gap_metrics([(sum((p[k][0] for p in everyone), []), sum((p[k][1] for p in everyone), []))
                            for k in range(self.attempts)])

    def reference_kl(self, dist) -> torch.Tensor:
        """KL(attempt 1 ‖ π_ref) of every process's episodes (kept when the anchor is not π_ref)."""
        return torch.cat(dist.gather([torch.cat(self.kl_refs) if self.kl_refs else torch.empty(0)]))

    def second_advantages(self, dist) -> torch.Tensor:
        """``[B, K-1]`` the advantages of every attempt after the first, whole step."""
        return torch.cat(dist.gather([torch.cat(self.advantages)]))[:, 1:]


def gap_metrics(gaps: Sequence[tuple[list[float], list[float]]]) -> dict[str, float]:
    """logp_gap_mean/max_t{k} (nats per token) and importance_ratio_t{k} (mean π_trainer(y)/π_sampler(y))."""
    out: dict[str, float] = {}
    for k, (tokens, sequences) in enumerate(gaps):
        out[f"logp_gap_mean_t{k + 1}"] = float(np.mean(tokens)) if tokens else float("nan")
        out[f"logp_gap_max_t{k + 1}"] = float(np.max(tokens)) if tokens else float("nan")
        out[f"importance_ratio_t{k + 1}"] = float(np.mean(np.exp(sequences))) if sequences else float("nan")
    return out


def gap_warning(checked: dict[str, float], threshold: float) -> str | None:
    """The warning to print when the sampler's and the trainer's log-probs of the same tokens disagree."""
    worst = max(((v, k) for k, v in checked.items() if k.startswith("logp_gap_mean") and v == v), default=None)
    if worst is None or worst[0] <= threshold:
        return None
    attempt = worst[1].rsplit("_t", 1)[1]
    return (f"WARNING: on attempt {attempt} the trainer's log-probs differ from the sampler's by "
            f"{worst[0]:.3g} nats per token on average (logprob_gap_warn {threshold:g}): "
            "the gradient is off-policy -- a wrong temperature, stale sampler weights after a weight sync, "
            "or a masking bug (metrics.jsonl: logp_gap_*, importance_ratio_*).")


def batch_metrics(episodes: Sequence[Episode], kl: torch.Tensor) -> dict[str, float]:
    """Rollout statistics of one step: reward, KL, length and format compliance per attempt, Δ, i→c, c→i,
    edit ratio, copy rate."""
    rewards = np.array([[a.reward for a in ep.attempts] for ep in episodes], dtype=float)   # [B, K]
    out: dict[str, float] = {}
    for k in range(rewards.shape[1]):
        out[f"reward_t{k + 1}"] = float(rewards[:, k].mean())
        out[f"kl_t{k + 1}"] = float(kl[:, k].mean()) if k < kl.shape[1] else float("nan")
        out[f"length_t{k + 1}"] = float(np.mean([len(ep.attempts[k].ids) for ep in episodes]))
        formatted = [ep.attempts[k].formatted for ep in episodes]
        if None not in formatted:                         # the task has an instructed answer form
            out[f"format_t{k + 1}"] = float(np.mean(formatted))
    offline = [ep.attempts[0].offline for ep in episodes]
    if any(offline):                                      # base_first_attempts: t1 numbers include π_ref's
        out["offline_t1"] = float(np.mean(offline))
    if rewards.shape[1] >= 2:
        rates = metrics.transition_rates(rewards)
        out.update(delta=rates["delta"], delta_i2c=rates["i2c"], delta_c2i=rates["c2i"])
        edits = metrics.edit_stats([[a.text for a in ep.attempts] for ep in episodes])
        out.update(edit_distance_ratio=edits["mean"], copy_rate=edits["copy_rate"])
    return out


def collected_stats(traces: Sequence[Episode], attempts: int) -> dict[str, float]:
    """What an SFT phase logs about the traces it collected."""
    if attempts >= 2:
        return batch_metrics(traces, torch.full((len(traces), attempts), float("nan")))
    return {"reward_t1": float(np.mean([ep.attempts[0].reward for ep in traces]))}

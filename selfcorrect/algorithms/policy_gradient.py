"""The shared estimator: REINFORCE with a leave-one-out baseline (RLOO) and a KL penalty.

Notation (all objectives in this package use it):

* ``B`` episodes, ``K`` attempts, ``T`` tokens per (right-padded) episode;
* ``logp[b, t]``       — log π_θ(token t | tokens < t) of episode ``b``, valid
  where some attempt mask is set (0 elsewhere);
* ``ref_logp[b, k, t]`` — the same under the frozen reference that attempt
  ``k``'s KL term is anchored to (SCoRe Stage I anchors attempt 1 elsewhere);
* ``attempt_mask[b, k, t]`` — True exactly on attempt ``k``'s sampled tokens;
* ``returns[b, k]`` — the (shaped) scalar return of attempt ``k``; discount
  γ = 0, so attempt ``k``'s tokens are weighted by attempt ``k``'s return only;
* ``groups[b]`` — which problem episode ``b`` samples (RLOO baselines are
  computed among the ``n`` samples of a problem).

Loss, per batch of ``B`` episodes (``norm`` = episodes in the *whole* batch,
so gradient accumulation over micro-batches gives the same gradient)::

    L = −1/norm Σ_b Σ_k  pg_on[k] · A[b, k] · Σ_t∈k logp[b, t]          (policy gradient)
        + 1/norm Σ_b Σ_k  β[k] · Σ_t∈k kl_token(logp[b, t], ref_logp[b, k, t])   (kl_in = loss-k2 | loss-k3)

with ``A`` the RLOO advantage of the returns.  Where the KL goes (``kl_in``):

* ``reward`` (the default): the sequence-level k1 estimate ``Σ_t∈k (logp − ref_logp)``
  is subtracted from the returns, ``returns[b, k] −= β[k] · k1``, as RLOO does, with no
  gradient through it.  Its expected gradient *is* the gradient of the paper's
  sequence-level KL(π_θ ‖ π_ref): ``∇KL = E_π[(log π − log π_ref) ∇log π]`` (the
  score-function identity; the leave-one-out baseline keeps it unbiased).
* ``loss-k2``: per-token ``½·(logp − ref_logp)²`` differentiated in the loss.  Its
  expected gradient is ``Σ_t E_prefix[∇KL(π_θ(·|prefix) ‖ π_ref(·|prefix))]`` with the
  prefix distribution held fixed: exact for one-token outputs, but it drops the effect
  a token has on the later tokens' KL.
* ``loss-k3``: per-token ``exp(ref − logp) − (ref − logp) − 1`` in the loss (the earlier
  default, once called ``loss``).  k3 is an unbiased estimate of the reverse KL's
  *value*, but its expected gradient is per-token ``∇KL(π_ref ‖ π_θ)``: the forward KL.

``tests/test_objectives.py`` checks all three against exact sums over every output of a
tiny policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

BASELINES = ("rloo", "none")
KL_PLACEMENTS = ("reward", "loss-k2", "loss-k3")


@dataclass
class LossOutput:
    """A differentiable loss and the detached statistics behind it."""

    loss: torch.Tensor
    """Scalar to call ``backward()`` on."""
    advantages: torch.Tensor
    """``[B, K]`` advantages used (0 where an attempt gets no policy gradient)."""
    kl: torch.Tensor
    """``[B, K]`` sequence KL estimate per attempt (k1: Σ_t logp − ref_logp), detached."""
    returns: torch.Tensor
    """``[B, K]`` returns after shaping (and the KL, if it is placed in the reward)."""
    logp: torch.Tensor | None = None
    """``[B, T]`` the policy log-probs the loss was built from, detached (for the rollout/trainer check)."""
    kl_reference: torch.Tensor | None = None
    """``[B]`` k1 of attempt 1 to π_ref when its anchor is another model (Stage I after iteration 1),
    detached; logged as ``kl_ref_t1`` beside the anchor's ``kl_t1``."""


def attempt_sums(values: torch.Tensor, attempt_mask: torch.Tensor) -> torch.Tensor:
    """Σ_t over each attempt's tokens: ``[B, T]`` (or ``[B, K, T]``) values → ``[B, K]``."""
    if values.dim() == 2:
        values = values[:, None, :]                                   # [B, 1, T]
    return (values * attempt_mask).sum(-1)                            # [B, K]


def rloo_advantages(returns: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages: ``A_i = R_i − mean_{j ≠ i, same group} R_j``, per attempt.

    ``returns``: ``[B, K]``; ``groups``: ``[B]`` long.  Every group needs at
    least two members (a lone sample has no baseline).
    """
    groups = groups.to(returns.device)
    n_groups = int(groups.max()) + 1
    counts = torch.bincount(groups, minlength=n_groups).to(returns.dtype)      # [G]
    if (counts[groups] < 2).any():
        raise ValueError("RLOO needs at least 2 samples per problem (set samples >= 2 or baseline='none')")
    totals = torch.zeros(n_groups, returns.shape[1], dtype=returns.dtype, device=returns.device)
    totals.index_add_(0, groups, returns)                                       # [G, K]
    others_mean = (totals[groups] - returns) / (counts[groups] - 1)[:, None]    # [B, K]
    return returns - others_mean


def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k2: ``½·(logp − ref)²``; its gradient is the per-token reverse-KL gradient (module docstring)."""
    return 0.5 * (logp - ref_logp) ** 2


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3: ``exp(ref − logp) − (ref − logp) − 1`` ≥ 0, an unbiased *value* of KL(π_θ ‖ π_ref)
    whose gradient is that of the forward KL(π_ref ‖ π_θ) (module docstring)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


KL_IN_LOSS = {"loss-k2": k2, "loss-k3": k3}


def reinforce_with_kl(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    attempt_mask: torch.Tensor,
    returns: torch.Tensor,
    groups: torch.Tensor,
    pg_on: Sequence[bool],
    kl_coef: Sequence[float],
    *,
    baseline: str = "rloo",
    kl_in: str | Sequence[str] = "reward",
    norm: int | None = None,
) -> LossOutput:
    """The estimator of the module docstring.

    Args:
        logp: ``[B, T]`` policy log-probs of the episode tokens (with grad).
        ref_logp: ``[B, K, T]`` reference log-probs per attempt's anchor (no grad).
        attempt_mask: ``[B, K, T]`` bool.
        returns: ``[B, K]`` shaped returns (already 0 where an attempt has no reward).
        groups: ``[B]`` problem index of each episode (RLOO groups).
        pg_on: ``K`` flags — which attempts receive a reward (policy-gradient) term.
        kl_coef: ``K`` KL coefficients β_k.
        baseline: ``rloo`` (leave-one-out over a problem's samples) or ``none`` (plain REINFORCE).
        kl_in: ``reward`` (k1 subtracted from the returns), ``loss-k2`` or ``loss-k3`` (per-token
            estimates differentiated directly); see the module docstring for what each one's
            gradient is.  One placement for every attempt, or ``K`` of them (Stage I can put attempt
            1's β2 term in the loss and keep the others' KL in the reward).
        norm: divide sums by this many episodes (default ``B``; pass the full batch size when
            the batch is split into micro-batches — which must hold whole RLOO groups).
    """
    b, k_attempts, _ = attempt_mask.shape
    mask = attempt_mask.to(logp.dtype)                                  # [B, K, T]
    pg = torch.tensor(list(pg_on), dtype=torch.bool, device=logp.device)        # [K]
    beta = torch.tensor(list(kl_coef), dtype=logp.dtype, device=logp.device)    # [K]
    if pg.numel() != k_attempts or beta.numel() != k_attempts:
        raise ValueError(f"pg_on and kl_coef need one entry per attempt ({k_attempts})")
    norm = norm or b

    placements = [kl_in] * k_attempts if isinstance(kl_in, str) else list(kl_in)
    if len(placements) != k_attempts or any(p not in KL_PLACEMENTS for p in placements):
        raise ValueError(f"kl_in must be one of {KL_PLACEMENTS} or one of them per attempt, got {kl_in!r}")
    in_reward = torch.tensor([p == "reward" for p in placements], device=logp.device)   # [K]

    log_ratio = (logp[:, None, :] - ref_logp) * mask                     # [B, K, T]
    kl_seq = log_ratio.sum(-1).detach()                                  # [B, K]  k1, sequence level
    returns = returns.to(logp.dtype)
    active = pg.clone()
    if in_reward.all():
        returns = returns - beta * kl_seq                                # KL as a per-attempt cost
        active = active | (beta > 0)                                     # attempts with only a KL cost still get a PG term
    elif in_reward.any():                                                # mixed: only these attempts' KL is a cost
        returns = returns - (beta * in_reward) * kl_seq
        active = active | ((beta > 0) & in_reward)

    if baseline == "rloo":
        advantages = rloo_advantages(returns, groups)
    elif baseline == "none":
        advantages = returns
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    advantages = advantages.detach() * active                            # [B, K]

    seq_logp = attempt_sums(logp, attempt_mask)                          # [B, K]
    loss = -(advantages * seq_logp).sum() / norm
    if len(set(placements)) == 1 and placements[0] in KL_IN_LOSS:
        kl_tokens = KL_IN_LOSS[placements[0]](logp[:, None, :], ref_logp) * mask   # [B, K, T]
        loss = loss + (beta * kl_tokens.sum(-1)).sum() / norm
    elif not in_reward.all():                                            # mixed placements: attempt by attempt
        for k, placement in enumerate(placements):
            if placement in KL_IN_LOSS:
                kl_tokens = KL_IN_LOSS[placement](logp, ref_logp[:, k]) * mask[:, k]   # [B, T]
                loss = loss + beta[k] * kl_tokens.sum() / norm
    return LossOutput(loss=loss, advantages=advantages, kl=kl_seq, returns=returns.detach(), logp=logp.detach())

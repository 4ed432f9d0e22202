"""SCoRe's two objectives (Kumar et al., 2024, Section 5), as functions of one batch.

Both reuse :func:`~.policy_gradient.reinforce_with_kl`; they differ only in
which attempts are rewarded, how returns are shaped, and which KL anchors and
coefficients each attempt gets.  Shapes as in :mod:`.policy_gradient`:
``rewards`` ``[B, K]`` verifier rewards in {0, 1}.

**K > 2** (our generalisation, the paper has K = 2): Stage I pins attempt 1
(β2, no reward) and rewards every later attempt with its own reward (β1);
Stage II rewards attempt 1 with r1 and every later attempt k with
``r_k + α·(r_k − r_{k−1})`` — the bonus compares each attempt with the one it
revises, so both "fix the previous attempt" and "do not break it" carry over
to every turn.
"""

from __future__ import annotations

import math

import torch

from .policy_gradient import LossOutput, reinforce_with_kl


def shaped_returns(rewards: torch.Tensor, alpha: float) -> torch.Tensor:
    """Stage II returns ``[B, K]``: r̂1 = r1, r̂k = rk + α·(rk − r_{k−1}) for k ≥ 2."""
    shaped = rewards.clone()
    shaped[:, 1:] = rewards[:, 1:] + alpha * (rewards[:, 1:] - rewards[:, :-1])
    return shaped


def stage_one_loss(
    logp: torch.Tensor,            # [B, T]    policy log-probs (with grad)
    ref_logp: torch.Tensor,        # [B, T]    initial model π_ref (no grad)
    anchor_logp: torch.Tensor,     # [B, T]    model attempt 1 is pinned to (no grad)
    attempt_mask: torch.Tensor,    # [B, K, T] bool
    rewards: torch.Tensor,         # [B, K]    verifier rewards
    groups: torch.Tensor,          # [B]       problem index (RLOO groups)
    *,
    beta1: float,
    beta2: float,
    baseline: str = "rloo",
    kl_in: str = "reward",
    first_kl_in: str | None = None,
    norm: int | None = None,
) -> LossOutput:
    """Stage I:  max E[ r(y2) ] − β2·KL(π_θ(·|x1) ‖ π_anchor(·|x1)) − β1·KL(π_θ(·|x2) ‖ π_ref(·|x2)).

    Attempt 1 gets no reward gradient — only the strong KL β2 that keeps it
    where the anchor puts it; attempts ≥ 2 are rewarded (β1 KL to π_ref).
    ``first_kl_in`` places attempt 1's β2 term on its own (default: ``kl_in``): in the reward, its
    gradient is a REINFORCE estimate whose RLOO baseline removes all but the spread of the samples' KLs;
    in the loss (``loss-k2``), every token is pulled back toward the anchor directly.
    """
    k = attempt_mask.shape[1]
    returns = rewards.clone()
    returns[:, 0] = 0.0                                                   # attempt 1: no reward
    anchors = torch.stack([anchor_logp] + [ref_logp] * (k - 1), dim=1)   # [B, K, T]
    placement = kl_in if first_kl_in in (None, "", kl_in) else [first_kl_in] + [kl_in] * (k - 1)
    return reinforce_with_kl(
        logp, anchors, attempt_mask, returns, groups,
        pg_on=[False] + [True] * (k - 1),
        kl_coef=[beta2] + [beta1] * (k - 1),
        baseline=baseline, kl_in=placement, norm=norm,
    )


def adapt_beta2(beta2: float, kl_first: float, advantage_second: float, balance: float = 1.0,
                max_change: float = 0.2, bounds: tuple[float, float] = (1e-4, 10.0)) -> float:
    """The next Stage I β2 of an adaptive controller (ours: the paper, §5.3, only says "an adaptive β2 that
    attempts to balance the magnitudes of the first-attempt KL regularization and the second-attempt policy
    objective").

    With the step's magnitudes ``m_kl = β2 · mean_b KL(attempt 1)`` and ``m_pg = mean_b |A(attempt 2)|``
    (the weight the policy gradient puts on an attempt-2 sequence), move β2 multiplicatively toward
    ``m_kl / m_pg = balance``::

        β2' = β2 · exp(clip(log(balance · m_pg / m_kl), −max_change, max_change)),  clamped to ``bounds``

    so one step changes β2 by at most ``e^{±max_change}`` (±22% at 0.2), like the clipped proportional KL
    controller of Ziegler et al. (2019).  A zero magnitude counts as 1e-8 (attempt 1 has not moved: β2 rises).
    """
    if not (math.isfinite(beta2) and math.isfinite(kl_first) and math.isfinite(advantage_second)):
        return beta2                                                    # nothing to learn from this step
    m_kl = max(beta2 * max(kl_first, 0.0), 1e-8)
    m_pg = max(abs(advantage_second), 1e-8)
    error = math.log(balance * m_pg / m_kl)
    step = min(max(error, -max_change), max_change)
    return min(max(beta2 * math.exp(step), bounds[0]), bounds[1])


def stage_two_loss(
    logp: torch.Tensor,            # [B, T]
    ref_logp: torch.Tensor,        # [B, T]    initial model π_ref (no grad)
    attempt_mask: torch.Tensor,    # [B, K, T]
    rewards: torch.Tensor,         # [B, K]
    groups: torch.Tensor,          # [B]
    *,
    alpha: float,
    beta1: float,
    baseline: str = "rloo",
    kl_in: str = "reward",
    norm: int | None = None,
) -> LossOutput:
    """Stage II:  max E[ Σ_k r̂_k − β1·KL(π_θ(·|x_k) ‖ π_ref(·|x_k)) ] with r̂ from :func:`shaped_returns`.

    ``alpha = 0`` is plain multi-turn RL (the paper's "w/o reward shaping" ablation).
    """
    k = attempt_mask.shape[1]
    anchors = ref_logp[:, None, :].expand(-1, k, -1)                      # [B, K, T]
    return reinforce_with_kl(
        logp, anchors, attempt_mask, shaped_returns(rewards, alpha), groups,
        pg_on=[True] * k, kl_coef=[beta1] * k,
        baseline=baseline, kl_in=kl_in, norm=norm,
    )


def single_turn_loss(
    logp: torch.Tensor,            # [B, T]
    ref_logp: torch.Tensor,        # [B, T]
    attempt_mask: torch.Tensor,    # [B, 1, T]
    rewards: torch.Tensor,         # [B, 1]
    groups: torch.Tensor,          # [B]
    *,
    beta1: float,
    baseline: str = "rloo",
    kl_in: str = "reward",
    norm: int | None = None,
) -> LossOutput:
    """Single-turn RL (the paper's baseline that only optimises attempt 1): max E[r(y1)] − β1·KL."""
    return reinforce_with_kl(
        logp, ref_logp[:, None, :], attempt_mask[:, :1], rewards[:, :1], groups,
        pg_on=[True], kl_coef=[beta1], baseline=baseline, kl_in=kl_in, norm=norm,
    )

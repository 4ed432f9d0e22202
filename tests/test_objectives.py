"""SCoRe objectives on hand-computed examples: baselines, shaping, which tokens get which gradient."""

from __future__ import annotations

import math

import pytest
import torch

from selfcorrect.algorithms.policy_gradient import k3, reinforce_with_kl, rloo_advantages
from selfcorrect.algorithms.score import shaped_returns, single_turn_loss, stage_one_loss, stage_two_loss


def test_rloo_advantages_by_hand():
    # two problems: rows 0-2 are problem 0, rows 3-4 problem 1
    returns = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    groups = torch.tensor([0, 0, 0, 1, 1])
    adv = rloo_advantages(returns, groups)
    expected = torch.tensor([
        [1 - 0.0, 0 - 1.0],      # others in group 0: mean of rows 1, 2
        [0 - 0.5, 1 - 0.5],
        [0 - 0.5, 1 - 0.5],
        [1 - 0.0, 1 - 0.0],      # group 1: the other sample is the baseline
        [0 - 1.0, 0 - 1.0],
    ])
    assert torch.allclose(adv, expected)
    assert torch.allclose(adv[:3].sum(0), torch.zeros(2))  # advantages within a group sum to zero...
    with pytest.raises(ValueError, match="at least 2 samples"):
        rloo_advantages(returns[:1], torch.tensor([0]))


def test_shaped_returns_by_hand():
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert shaped_returns(rewards, alpha=10.0).tolist() == [[0, 11], [1, -10], [1, 1], [0, 0]]
    # K = 3: each later attempt is compared with the one it revises
    assert shaped_returns(torch.tensor([[0.0, 1.0, 1.0]]), alpha=2.0).tolist() == [[0, 3, 1]]


def test_k3_is_zero_at_equality_and_matches_formula():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.0, -1.5])
    out = k3(logp, ref)
    assert out[0] == 0
    assert math.isclose(out[1].item(), math.exp(0.5) - 0.5 - 1, rel_tol=1e-6)


def _episode_batch():
    """One problem, two samples, K = 2; tokens: [prompt, a1, a1, suffix, a2]."""
    mask = torch.zeros(2, 2, 5, dtype=torch.bool)
    mask[:, 0, 1:3] = True
    mask[:, 1, 4] = True
    logp = torch.log(torch.tensor([[0.9, 0.5, 0.4, 0.9, 0.25], [0.9, 0.8, 0.5, 0.9, 0.5]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.9, 0.5, 0.2, 0.9, 0.5], [0.9, 0.4, 0.5, 0.9, 0.5]]))
    anchor = torch.log(torch.tensor([[0.9, 0.25, 0.4, 0.9, 0.5], [0.9, 0.8, 0.5, 0.9, 0.1]]))
    rewards = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    return logp, ref, anchor, mask, rewards, torch.tensor([0, 0])


def test_stage_one_by_hand_and_gradient_placement():
    logp, ref, anchor, mask, rewards, groups = _episode_batch()
    out = stage_one_loss(logp, ref, anchor, mask, rewards, groups, beta1=0.01, beta2=0.1, kl_in="loss-k3")
    # attempt 1 gets no reward: returns [0, 1], [0, 1] → RLOO advantages all zero at attempt 2 too
    assert out.returns.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert out.advantages.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # the loss is only the KL: β2·k3 vs the anchor on attempt-1 tokens, β1·k3 vs the reference on attempt 2
    lp, rf, an = logp.detach(), ref, anchor
    kl1 = [k3(lp[b, 1:3], an[b, 1:3]).sum() for b in range(2)]
    kl2 = [k3(lp[b, 4:5], rf[b, 4:5]).sum() for b in range(2)]
    expected = sum(0.1 * kl1[b] + 0.01 * kl2[b] for b in range(2)) / 2
    assert torch.isclose(out.loss, expected)
    out.loss.backward()
    grad = logp.grad
    assert grad[:, 0].eq(0).all() and grad[:, 3].eq(0).all()      # prompt and turn suffix: no gradient
    # token 1 of row 0 differs from the anchor (0.5 vs 0.25): it is pulled; row 1 equals its anchor there
    assert grad[0, 1] != 0 and grad[1, 1] == 0
    # the k1 statistic is anchored the same way
    assert torch.allclose(out.kl[:, 0], (lp[:, 1:3] - an[:, 1:3]).sum(-1))


def test_stage_one_rewards_only_attempt_two():
    logp, ref, anchor, mask, rewards, groups = _episode_batch()
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = stage_one_loss(logp, logp.detach(), logp.detach(), mask, rewards, groups, beta1=0.0, beta2=0.0)
    # KL terms vanish (policy == anchors); only attempt 2 carries the advantage ±1
    assert out.advantages.tolist() == [[0.0, -1.0], [0.0, 1.0]]
    out.loss.backward()
    g = logp.grad
    assert g[:, 1:3].eq(0).all()                                   # attempt 1: no reward gradient
    assert torch.allclose(g[:, 4], torch.tensor([1.0 / 2, -1.0 / 2]))  # d(−A·logp)/dlogp / B


def test_stage_two_shaping_and_both_attempts_rewarded():
    logp, ref, anchor, mask, rewards, groups = _episode_batch()
    out = stage_two_loss(logp, logp.detach(), mask, rewards, groups, alpha=10.0, beta1=0.01)
    # rewards [[0,1],[1,1]] → shaped [[0, 11], [1, 1]] → RLOO [[−1, 10], [1, −10]]
    assert out.returns.tolist() == [[0.0, 11.0], [1.0, 1.0]]
    assert out.advantages.tolist() == [[-1.0, 10.0], [1.0, -10.0]]
    seq = torch.stack([logp[:, 1:3].sum(-1), logp[:, 4]], dim=1)
    assert torch.isclose(out.loss, -(out.advantages * seq).sum() / 2)  # KL zero: policy is the reference
    out.loss.backward()
    assert torch.allclose(logp.grad[0, 1:3], torch.tensor([0.5, 0.5]))
    assert torch.allclose(logp.grad[:, 4], torch.tensor([-5.0, 5.0]))


def test_kl_in_reward_uses_k1_and_gives_attempt_one_a_pg_term():
    logp, ref, anchor, mask, rewards, groups = _episode_batch()
    out = stage_one_loss(logp, ref, anchor, mask, rewards, groups, beta1=0.01, beta2=0.1, kl_in="reward")
    k1 = (logp.detach()[:, None, :] - torch.stack([anchor, ref], 1)) * mask
    expected_returns = torch.tensor([[0.0, 1.0], [0.0, 1.0]]) - torch.tensor([0.1, 0.01]) * k1.sum(-1)
    assert torch.allclose(out.returns, expected_returns)
    assert out.advantages[:, 0].abs().sum() > 0        # attempt 1 is steered by its KL cost alone


def test_plain_reinforce_and_norm_for_micro_batches():
    logp, ref, anchor, mask, rewards, groups = _episode_batch()
    full = stage_two_loss(logp, ref, mask, rewards, groups, alpha=1.0, beta1=0.0, baseline="none")
    assert full.advantages.tolist() == [[0.0, 2.0], [1.0, 1.0]]
    halves = [stage_two_loss(logp[i:i + 1], ref[i:i + 1], mask[i:i + 1], rewards[i:i + 1], groups[i:i + 1],
                             alpha=1.0, beta1=0.0, baseline="none", norm=2).loss for i in range(2)]
    assert torch.isclose(sum(halves), full.loss)


def test_single_turn_uses_attempt_one_only():
    logp, ref, anchor, mask, rewards, groups = _episode_batch()
    out = single_turn_loss(logp, logp.detach(), mask[:, :1], rewards[:, :1], groups, beta1=0.05)
    assert out.advantages.tolist() == [[-1.0], [1.0]]
    out.loss.backward()
    assert logp.grad[:, 4].eq(0).all() and logp.grad[:, 1:3].ne(0).all()


def test_bad_options():
    logp, ref, anchor, mask, rewards, groups = _episode_batch()
    with pytest.raises(ValueError, match="baseline"):
        stage_two_loss(logp, ref, mask, rewards, groups, alpha=1.0, beta1=0.0, baseline="ppo")
    with pytest.raises(ValueError, match="kl_in"):
        stage_two_loss(logp, ref, mask, rewards, groups, alpha=1.0, beta1=0.0, kl_in="both")
    with pytest.raises(ValueError, match="one entry per attempt"):
        reinforce_with_kl(logp, ref[:, None].expand(-1, 2, -1), mask, rewards, groups, [True], [0.0, 0.0])


# --------------------------------------------------------------------------- the KL's expected gradient, exactly
V = 3  # vocabulary of the toy policy


def _toy(length: int, seed: int = 0):
    """A tiny autoregressive policy and reference over all V**length sequences (float64).

    θ holds the policy's logits: ``first[V]`` for token 1 and ``then[V, V]`` for token 2 given token 1.
    Returns (θ list, sequences [S, L], function θ -> token log-probs [S, L], reference log-probs [S, L]).
    """
    g = torch.Generator().manual_seed(seed)
    theta = [torch.randn(V, generator=g, dtype=torch.float64).requires_grad_(),
             torch.randn(V, V, generator=g, dtype=torch.float64).requires_grad_()]
    phi = [torch.randn(V, generator=g, dtype=torch.float64), torch.randn(V, V, generator=g, dtype=torch.float64)]
    seqs = torch.cartesian_prod(*[torch.arange(V)] * length) if length > 1 else torch.arange(V)[:, None]

    def token_logp(params):
        first = torch.log_softmax(params[0], -1)[seqs[:, 0]]                              # [S]
        if length == 1:
            return first[:, None]
        then = torch.log_softmax(params[1], -1)[seqs[:, 0], seqs[:, 1]]                   # [S]
        return torch.stack([first, then], 1)                                             # [S, L]

    return theta, seqs, token_logp, token_logp(phi).detach()


def _expected_gradient(kl_in: str, length: int, beta: float = 0.7):
    """E over two i.i.d. samples (one RLOO group) of ∇θ of the trainer's loss, summed exactly over all pairs."""
    theta, seqs, token_logp, ref = _toy(length)
    lp = token_logp(theta)                                                   # [S, L], with grad
    weights = lp.sum(1).exp().detach()                                       # π(y): the sampling distribution
    s = lp.shape[0]
    i, j = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    i, j = i.flatten(), j.flatten()                                          # all S² sample pairs
    # Episode layout: [prompt, y_1, ..., y_L]; one attempt covering the L sampled tokens.
    pad = torch.zeros(s, 1, dtype=torch.float64)
    logp_all, ref_all = torch.cat([pad, lp], 1), torch.cat([pad, ref], 1)    # [S, 1 + L]
    mask = torch.zeros(2, 1, 1 + length, dtype=torch.bool)
    mask[:, 0, 1:] = True
    total = 0.0
    for a, b in zip(i.tolist(), j.tolist()):
        pair = [a, b]
        out = reinforce_with_kl(logp_all[pair], ref_all[pair][:, None], mask, torch.zeros(2, 1, dtype=torch.float64),
                                torch.tensor([0, 0]), pg_on=[True], kl_coef=[beta], kl_in=kl_in)
        total = total + weights[a] * weights[b] * out.loss
    return torch.autograd.grad(total, theta, allow_unused=True, materialize_grads=True), theta, token_logp, ref, beta


def _flat(grads):
    return torch.cat([g.flatten() for g in grads])


def _reverse_kl_gradient(theta, token_logp, ref, beta):
    """∇ β·KL(π_θ ‖ π_ref) over whole sequences, exactly."""
    lp = token_logp(theta).sum(1)
    return torch.autograd.grad(beta * (lp.exp() * (lp - ref.sum(1))).sum(), theta, allow_unused=True,
                               materialize_grads=True)


def _per_token_kl_gradient(theta, token_logp, ref, beta, forward: bool):
    """Σ_t E_prefix~π[∇ β·KL_t] with the prefix distribution held fixed (KL_t reverse or forward)."""
    lp = token_logp(theta)
    prefix = torch.cat([torch.ones(lp.shape[0], 1, dtype=lp.dtype), lp[:, :-1].cumsum(1).exp()], 1).detach()
    # For a fixed prefix, E_{y_t ~ π_t}[.] over the enumerated sequences counts each prefix once per
    # continuation, so weight each row by π(prefix)·p(y_t | prefix) / (number of continuations past t).
    length = lp.shape[1]
    total = 0.0
    for t in range(length):
        later = V ** (length - 1 - t)
        if forward:   # KL(ref_t ‖ π_t) = Σ_y ref_t(y) (log ref_t(y) − log π_t(y))
            term = ref[:, t].exp() * (ref[:, t] - lp[:, t])
        else:         # KL(π_t ‖ ref_t)
            term = lp[:, t].exp() * (lp[:, t] - ref[:, t])
        total = total + (prefix[:, t] * term).sum() / later
    return torch.autograd.grad(beta * total, theta)


def test_the_default_kl_has_the_gradient_of_the_sequence_reverse_kl():
    """kl_in=reward (k1 in the returns, RLOO baseline): E[∇loss] = ∇ β·KL(π_θ ‖ π_ref) to 1e-6."""
    grads, theta, token_logp, ref, beta = _expected_gradient("reward", length=2)
    exact = _reverse_kl_gradient(theta, token_logp, ref, beta)
    assert torch.allclose(_flat(grads), _flat(exact), atol=1e-6, rtol=0), (_flat(grads), _flat(exact))
    assert _flat(exact).abs().max() > 1e-2                       # a real gradient, not two zeros


def test_k2_in_the_loss_is_the_per_token_reverse_kl_gradient():
    grads, theta, token_logp, ref, beta = _expected_gradient("loss-k2", length=2)
    per_token = _per_token_kl_gradient(theta, token_logp, ref, beta, forward=False)
    exact = _reverse_kl_gradient(theta, token_logp, ref, beta)
    assert torch.allclose(_flat(grads), _flat(per_token), atol=1e-6, rtol=0)
    # ... which misses a token's effect on the later tokens' KL: not the sequence gradient
    assert (_flat(grads) - _flat(exact)).abs().max() > 1e-3
    # For one-token outputs the two coincide.
    grads1, theta1, token_logp1, ref1, beta1 = _expected_gradient("loss-k2", length=1)
    assert torch.allclose(_flat(grads1)[:V], _flat(_reverse_kl_gradient(theta1, token_logp1, ref1, beta1))[:V],
                          atol=1e-6, rtol=0)


def test_k3_in_the_loss_is_the_forward_kl_gradient():
    grads, theta, token_logp, ref, beta = _expected_gradient("loss-k3", length=2)
    forward = _per_token_kl_gradient(theta, token_logp, ref, beta, forward=True)
    exact = _reverse_kl_gradient(theta, token_logp, ref, beta)
    assert torch.allclose(_flat(grads), _flat(forward), atol=1e-6, rtol=0)
    assert (_flat(grads) - _flat(exact)).abs().max() > 1e-3      # not the paper's KL


def test_adaptive_beta2_moves_toward_balance_by_at_most_its_clip():
    """adapt_beta2 by hand: m_kl = β2·KL1, m_pg = |A2|, β2' = β2·exp(clip(log(balance·m_pg/m_kl), ±0.2))."""
    import math

    from selfcorrect.algorithms.score import adapt_beta2

    assert adapt_beta2(0.1, kl_first=0.5, advantage_second=0.055) == pytest.approx(0.11)      # log(1.1) < 0.2
    assert adapt_beta2(0.1, kl_first=2.0, advantage_second=0.05) == pytest.approx(0.1 * math.exp(-0.2))  # clipped
    assert adapt_beta2(0.1, kl_first=0.0, advantage_second=0.3) == pytest.approx(0.1 * math.exp(0.2))   # unmoved
    assert adapt_beta2(0.1, kl_first=0.5, advantage_second=0.11, balance=0.5) == pytest.approx(0.11)
    assert adapt_beta2(9.9, kl_first=0.0, advantage_second=1.0) == 10.0                     # upper bound
    assert adapt_beta2(1e-4, kl_first=5.0, advantage_second=1e-9) == 1e-4                   # lower bound


def test_stage_one_attempt_one_kl_in_the_loss_by_hand():
    """stage1_kl_in=loss-k2: attempt 1's β2 term leaves the returns and enters the loss as Σ k2 to the anchor;
    attempt 2 keeps its KL in the reward.  So the loss is Stage I with β2 = 0 plus β2·Σ k2 / B, gradient too."""
    from selfcorrect.algorithms.policy_gradient import k2

    logp, ref, anchor, mask, rewards, groups = _episode_batch()
    mixed = stage_one_loss(logp, ref, anchor, mask, rewards, groups, beta1=0.01, beta2=0.1, first_kl_in="loss-k2")
    (grad_mixed,) = torch.autograd.grad(mixed.loss, logp)
    plain = stage_one_loss(logp, ref, anchor, mask, rewards, groups, beta1=0.01, beta2=0.0)
    pull = 0.1 * sum(k2(logp[b, 1:3], anchor[b, 1:3]).sum() for b in range(2)) / 2
    (grad_expected,) = torch.autograd.grad(plain.loss + pull, logp)
    assert torch.isclose(mixed.loss, plain.loss + pull)
    assert torch.allclose(grad_mixed, grad_expected)
    # attempt 1 has no policy-gradient term left (its KL is not a cost in the returns), attempt 2 keeps β1·k1
    assert mixed.advantages[:, 0].eq(0).all()
    assert torch.allclose(mixed.returns[:, 1], rewards[:, 1] - 0.01 * mixed.kl[:, 1])
    # the same placement as kl_in is the plain objective, bit for bit
    same = stage_one_loss(logp, ref, anchor, mask, rewards, groups, beta1=0.01, beta2=0.1, first_kl_in="reward")
    default = stage_one_loss(logp, ref, anchor, mask, rewards, groups, beta1=0.01, beta2=0.1)
    assert torch.equal(same.loss, default.loss)
    with pytest.raises(ValueError, match="kl_in"):
        reinforce_with_kl(logp, ref[:, None].expand(-1, 2, -1), mask, rewards, groups, [True, True], [0.0, 0.0],
                          kl_in=["reward"])

"""The RL tensor functions against values computed by hand (see the comments for the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch

from alignflow.rlhf import core_algos as ca


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_masked_mean_and_var_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert ca.masked_mean(x, m).item() == pytest.approx(2.0)
    assert ca.masked_var(x, m).item() == pytest.approx(1.0)  # ((1-2)^2 + 0 + 1) / (3 - 1)
    assert ca.masked_mean(x, torch.zeros_like(m)).item() == 0.0  # empty mask: 0, not NaN


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert close(ca.masked_whiten(x, m), [[-1.0, 0.0, 1.0, 0.0]], 1e-4)
    # shift_mean=False keeps the mean: 2 + [-1, 0, 1]
    assert close(ca.masked_whiten(x, m, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], 1e-4)
    full = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    std = math.sqrt(5 / 3)  # unbiased variance of 1..4
    assert close(ca.masked_whiten(full, torch.ones_like(full)), [[-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std]], 1e-4)


def test_gae_hand_computed():
    # r = [0, 0, 1], V = [1, 2, 3], γ = 0.9, λ = 0.5 (γλ = 0.45)
    # δ2 = 1 - 3 = -2            A2 = -2
    # δ1 = 0.9·3 - 2 = 0.7       A1 = 0.7 + 0.45·(-2) = -0.2
    # δ0 = 0.9·2 - 1 = 0.8       A0 = 0.8 + 0.45·(-0.2) = 0.71
    adv, ret = ca.compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), 0.9, 0.5)
    assert close(adv, [[0.71, -0.2, -2.0]])
    assert close(ret, [[1.71, 1.8, 1.0]])


def test_gae_stops_at_the_mask():
    # The padded position (V = 99) must not leak: δ1 = 1 + 0 - 2 = -1, A0 = 0.8 + 0.45·(-1) = 0.35
    adv, ret = ca.compute_gae(
        torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[1.0, 2.0, 99.0]]), torch.tensor([[1, 1, 0]]), 0.9, 0.5
    )
    assert close(adv, [[0.35, -1.0, 0.0]])
    assert close(ret, [[1.35, 1.0, 0.0]])


def test_gae_undiscounted_is_return_minus_value():
    # γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t
    r = torch.tensor([[0.5, -1.0, 2.0]])
    v = torch.tensor([[0.3, 0.1, -0.4]])
    adv, _ = ca.compute_gae(r, v, torch.ones(1, 3), 1.0, 1.0)
    assert close(adv, [[1.5 - 0.3, 1.0 - 0.1, 2.0 + 0.4]])


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    assert ca.kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert ca.kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    # k3 = q/p − 1 − log(q/p) = 0.5 − 1 + log 2
    assert ca.kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2), rel=1e-5)
    assert ca.kl_penalty(logp, ref, "low_var_kl").item() == pytest.approx(0.5 - 1 + math.log(2), rel=1e-5)
    assert ca.kl_penalty(ref, logp, "k3").item() >= 0
    with pytest.raises(ValueError, match="unknown KL estimator 'k9'"):
        ca.kl_penalty(logp, ref, "k9")


def test_kl_estimators_are_unbiased_on_samples():
    # Monte Carlo over samples of p: k1 and k3 average to the true KL(p||q); k3 has lower variance.
    torch.manual_seed(0)
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    true_kl = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True)
    k1 = ca.kl_k1(p.log()[x], q.log()[x])
    k3 = ca.kl_k3(p.log()[x], q.log()[x])
    assert k1.mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert k3.mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert k3.var() < k1.var()


def test_adaptive_kl_controller():
    # e = clip(KL/target − 1, ±0.2); β ← β (1 + e · n / horizon)
    ctl = ca.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))  # clipped at +0.2
    ctl = ca.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(6.6, 256) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10000))
    ctl = ca.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(0.0, 256) == pytest.approx(0.1 * (1 - 0.2 * 256 / 10000))  # clipped at −0.2
    fixed = ca.build_kl_controller("fixed", 0.05)
    assert fixed.update(100.0, 1000) == 0.05
    with pytest.raises(ValueError):
        ca.build_kl_controller("adaptive", 0.1, target=None)


def test_clipped_policy_loss():
    # ratio = 1.5 on both tokens, ε = 0.2:
    #   A = +1: max(−1.5, −1.2) = −1.2 (clipped);  A = −1: max(1.5, 1.2) = 1.5 (not clipped)
    old = torch.zeros(1, 3)
    new = torch.full((1, 3), math.log(1.5))
    adv = torch.tensor([[1.0, -1.0, 7.0]])
    loss, stats = ca.clipped_policy_loss(old, new, adv, torch.tensor([[1, 1, 0]]), 0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["policy_clipfrac"] == pytest.approx(0.5)
    # gradient flows only through the unclipped token: d/dlogp(−A·r) = −A·r = 1.5 / 2 tokens
    new.requires_grad_(True)
    ca.get_policy_loss("ppo_clip")(old, new, adv, torch.tensor([[1, 1, 0]]), 0.2)[0].backward()
    assert close(new.grad, [[0.0, 0.75, 0.0]])


def test_clipped_value_loss():
    # V_old = 0, V = 0.5, R = 1, ε_v = 0.2 → V_clip = 0.2: max(0.25, 0.64) = 0.64 → 0.5·0.64
    loss, stats = ca.clipped_value_loss(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.32)
    assert stats["value_clipfrac"] == 1.0
    # moving towards the return within the clip range is not clipped: (0.1 − 1)² = 0.81 vs same
    loss, _ = ca.clipped_value_loss(torch.tensor([[0.1]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.5 * 0.81)


def test_shape_token_rewards_puts_score_on_last_token():
    # k1 = logp − ref = [0.5, 0, (1 masked)], β = 0.1 → [−0.05, 0 + 2.0, 0]
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -2.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    rewards, kl = ca.shape_token_rewards(torch.tensor([2.0, 5.0]), logp, ref, mask, kl_coef=0.1)
    assert close(rewards, [[-0.05, 2.0, 0.0], [0.0, 0.0, 0.0]])  # an empty response gets no score
    assert close(ca.sequence_kl(kl, mask), [0.5, 0.0])


def test_missing_eos_penalty_and_last_index():
    scores = ca.apply_missing_eos_penalty(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), 1.0)
    assert close(scores, [1.0, 0.0])
    assert ca.last_token_index(torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])).tolist() == [1, 2, 0]


def test_entropy_and_logprobs():
    logits = torch.zeros(1, 2, 4)
    assert close(ca.entropy_from_logits(logits), [[math.log(4), math.log(4)]])
    peaked = torch.tensor([[[100.0, 0.0, 0.0, 0.0]]])
    assert ca.entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-4)
    assert close(ca.logprobs_from_logits(logits, torch.tensor([[1, 3]])), [[math.log(0.25)] * 2])


def test_explained_variance():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert ca.explained_variance(r, r, torch.ones(1, 3)) == pytest.approx(1.0)
    assert ca.explained_variance(torch.zeros(1, 3), r, torch.ones(1, 3)) == pytest.approx(0.0)

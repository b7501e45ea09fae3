"""The RL math of the align stage as pure, masked tensor functions (verl's core_algos style).

Shapes: every per-token tensor is (batch, response_len); `mask` is 1 on response tokens up to and
including EOS and 0 on padding after it. Nothing here touches a model, so each piece is unit-tested
against hand-computed values (tests/rlhf/test_core_algos.py) and the PPO loop (ppo.py) only wires
them together. Conventions follow InstructGPT (Ouyang et al. 2022) and "The N Implementation
Details of RLHF with PPO" (Huang et al. 2024): reward-model score at the last response token,
a per-token KL penalty against the frozen reference, GAE over the response, whitened advantages,
clipped policy and value losses. Guards as in verl: the log-ratio is clamped to ±20 before exp, the
k3 KL estimate to ±10, and an optional dual clip bounds the loss of negative advantages.

Registries let params pick an estimator by name (`align.ppo.kl_estimator`, `policy_loss`,
`advantage_estimator`); new variants register themselves with a decorator. GRPO's and RLOO's group
baselines are not here: those methods run TRL's trainers, whose own estimators also drop
unscorable completions from the baseline (one implementation per idea).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

# --------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------

KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {}
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}


def _register(registry: dict, name: str):
    def decorator(fn):
        if name in registry and registry[name] is not fn:
            raise ValueError(f"{name!r} is already registered to {registry[name].__name__}")
        registry[name] = fn
        return fn

    return decorator


def register_kl_estimator(name: str):
    return _register(KL_ESTIMATORS, name)


def register_policy_loss(name: str):
    return _register(POLICY_LOSSES, name)


def register_advantage_estimator(name: str):
    return _register(ADVANTAGE_ESTIMATORS, name)


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; registered: {', '.join(sorted(registry))}")
    return registry[name]


def get_kl_estimator(name: str):
    return _lookup(KL_ESTIMATORS, name, "KL estimator")


def get_policy_loss(name: str):
    return _lookup(POLICY_LOSSES, name, "policy loss")


def get_advantage_estimator(name: str):
    return _lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() if dim is None else (values * mask).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where mask == 1 (an all-zero mask gives 0, not NaN)."""
    mask = mask.to(values.dtype)
    total = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / total.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions; Bessel's correction as in the reference implementations."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            return torch.zeros((), dtype=values.dtype, device=values.device)
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions; `shift_mean=False` keeps the mean (for rewards)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


# --------------------------------------------------------------------------------------------
# Log-probs and entropy from logits
# --------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position; logits (B, T, V), labels (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the token distribution per position: logsumexp(z) - sum softmax(z) * z."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# KL estimators (Schulman, "Approximating KL divergence", 2020): per-token estimates of
# KL(policy || reference) from samples of the policy.
# --------------------------------------------------------------------------------------------


@register_kl_estimator("k1")
def kl_k1(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """log p - log q: unbiased, high variance, can be negative per token (InstructGPT's penalty)."""
    return logprob - ref_logprob


@register_kl_estimator("k2")
def kl_k2(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """0.5 (log p - log q)^2: biased, low variance, always >= 0."""
    return 0.5 * (logprob - ref_logprob) ** 2


LOG_RATIO_CLAMP = 20.0  # |log π/π'| cap before exp (verl): exp(20) ≈ 5e8 stays finite in fp32
K3_CLAMP = 10.0  # cap of the k3 estimate per token (verl, OpenRLHF): one wild token cannot dominate


@register_kl_estimator("k3")
def kl_k3(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """q/p - 1 - log(q/p): unbiased and always >= 0 (the "low-variance" estimator), clamped to ±10."""
    log_ratio = (ref_logprob - logprob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(log_ratio) - log_ratio - 1.0).clamp(-K3_CLAMP, K3_CLAMP)


KL_ESTIMATORS["low_var_kl"] = kl_k3


@register_kl_estimator("abs")
def kl_abs(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    return (logprob - ref_logprob).abs()


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    return get_kl_estimator(estimator)(logprob, ref_logprob)


# --------------------------------------------------------------------------------------------
# KL coefficient controllers
# --------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al. 2019 (arXiv:1909.08593) §2.2: steer the observed KL towards `target`.

    β ← β · (1 + K_β · e_t · n_steps), e_t = clip(KL_t / target − 1, −0.2, 0.2), K_β = 1 / horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL controller: target and horizon must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


def build_kl_controller(kind: str, init_kl_coef: float, target: float | None = None, horizon: int = 10000):
    if kind == "fixed":
        return FixedKLController(init_kl_coef)
    if kind == "adaptive":
        if target is None:
            raise ValueError("adaptive KL controller needs a target KL")
        return AdaptiveKLController(init_kl_coef, target, horizon)
    raise ValueError(f"unknown KL controller {kind!r}; expected 'fixed' or 'adaptive'")


# --------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last response token of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).max(dim=-1).values


def apply_missing_eos_penalty(scores: torch.Tensor, contains_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract `penalty` from the score of every response cut off before EOS (N details: "EOS trick").

    Without it the policy can pad its reward with long, unfinished answers the reward model
    likes; a penalty of 0 disables it.
    """
    return scores - penalty * (~contains_eos.bool()).to(scores.dtype)


def shape_token_rewards(
    scores: torch.Tensor,
    logprob: torch.Tensor,
    ref_logprob: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: −β·KL_t on every response token, plus the sequence score on the last one.

    Returns (token_rewards, kl) with kl the per-token estimate (masked), so the caller can log the
    sequence KL sum the adaptive controller tracks.
    """
    kl = kl_penalty(logprob, ref_logprob, kl_estimator) * mask.to(logprob.dtype)
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rows = torch.arange(scores.shape[0], device=scores.device)
    has_tokens = mask.sum(dim=-1) > 0
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards, kl


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


@register_advantage_estimator("gae")
def compute_gae(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016) over the response tokens.

    δ_t = r_t + γ V_{t+1} − V_t; A_t = δ_t + γλ A_{t+1}; the value after the last token is 0.
    Returns (advantages, returns = advantages + values), both zero outside the mask (not whitened).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[-1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        # Padding after EOS neither takes nor passes on value/advantage.
        m = mask[:, t]
        advantages[:, t] = adv_t * m
        next_value = values[:, t] * m + next_value * (1 - m)
        next_adv = adv_t * m + next_adv * (1 - m)
    return advantages, (advantages + values) * mask


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _ratio_and_kl(old_logprob: torch.Tensor, logprob: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(r = π_new/π_old with the log-ratio clamped before exp, k3 estimate of KL(old‖new)).

    The tokens were sampled from π_old, so E_old[(r − 1) − log r] = KL(old‖new): how far the
    update moved the policy (≥ 0 per token, unlike the naive mean of −log r).
    """
    log_ratio = (logprob - old_logprob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask).item()
    return ratio, approx_kl


@register_policy_loss("ppo_clip")
def clipped_policy_loss(
    old_logprob: torch.Tensor,
    logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017): mean over tokens of max(−A·r, −A·clip(r, 1±ε)).

    `dual_clip_c` (> 1; Ye et al. 2020, verl's clip_ratio_c) also caps the loss of a negative
    advantage at −A·c: with A < 0 the clipped surrogate grows with r without bound.
    """
    ratio, approx_kl = _ratio_and_kl(old_logprob, logprob, mask)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    losses = torch.maximum(loss_unclipped, loss_clipped)
    stats = {"policy_clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask).item(), "approx_kl": approx_kl}
    if dual_clip_c is not None:
        if dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1 (got {dual_clip_c})")
        capped = torch.minimum(losses, -advantages * dual_clip_c)
        negative = advantages < 0
        stats["policy_clipfrac_lower"] = masked_mean((negative & (capped < losses)).float(), mask).item()
        losses = torch.where(negative, capped, losses)
    return masked_mean(losses, mask), stats


@register_policy_loss("vanilla_pg")
def policy_gradient_loss(
    old_logprob: torch.Tensor, logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    clip_range: float = 0.2, dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Unclipped importance-weighted policy gradient (for ablations against ppo_clip; no clip of any kind)."""
    ratio, approx_kl = _ratio_and_kl(old_logprob, logprob, mask)
    return masked_mean(-advantages * ratio, mask), {"policy_clipfrac": 0.0, "approx_kl": approx_kl}


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 · mean max((V − R)², (V_clip − R)²), V_clip = old + clip(V − old, ±ε_v)."""
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"value_clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask).item()}
    return loss, stats


def sequence_kl(kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL (sum over tokens), the quantity InstructGPT reports and the controller targets."""
    return masked_sum(kl, mask, dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R): how much of the return the value head explains (1 = all)."""
    var_r = masked_var(returns, mask).item()
    if var_r == 0 or math.isnan(var_r):
        return float("nan")
    return 1.0 - masked_var(returns - values, mask).item() / var_r


def describe() -> dict[str, Any]:
    """The registered names, for error messages and docs."""
    return {
        "kl_estimators": sorted(KL_ESTIMATORS),
        "policy_losses": sorted(POLICY_LOSSES),
        "advantage_estimators": sorted(ADVANTAGE_ESTIMATORS),
    }

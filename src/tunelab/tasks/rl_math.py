"""The arithmetic of RL fine-tuning (PPO, GRPO): KL estimators, the KL controller, GAE, whitening,
clipped losses, group-relative advantages. Pure tensor functions, no model, no config.

Every ``[B, T]`` tensor here is over the *response* tokens of a rollout batch, with ``mask`` 1 on
real response tokens (the end-of-turn token included) and 0 on padding after a response ended.

References:

- Schulman et al., 2017, "Proximal Policy Optimization Algorithms" (arXiv:1707.06347): the clipped
  surrogate, eq. 7.
- Schulman et al., 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation" (arXiv:1506.02438): GAE, eq. 16.
- Ziegler et al., 2019, "Fine-Tuning Language Models from Human Preferences" (arXiv:1909.08593):
  the per-token KL penalty and the adaptive KL controller, sec. 2.2.
- Schulman, 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html): the k1 and k3
  estimators.
- Shao et al., 2024, "DeepSeekMath" (arXiv:2402.03300), sec. 4.1: GRPO, eq. 3 (group-normalised
  advantages, k3 KL term in the loss).
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k3")


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over everything, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries (0 for fewer than two of them)."""
    n = mask.sum()
    if n < 2:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    mean = masked_mean(values, mask)
    return masked_mean((values - mean) ** 2, mask) * n / (n - 1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale the masked entries to unit variance (and zero mean unless ``shift_mean`` is False);
    padding comes out as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probabilities.

    ``k1 = log p - log q`` (unbiased, can be negative); ``k3 = (r - 1) - log r`` with
    ``r = q / p`` (unbiased, never negative, lower variance).
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_ratio = ref_logp - logp
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; accepted: {', '.join(KL_ESTIMATORS)}")


class KLController:
    """The KL coefficient: fixed, or adapted towards a target KL (Ziegler et al., 2019, sec. 2.2):
    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``coef <- coef * (1 + e * n / horizon)`` after each
    rollout batch of ``n`` sequences."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000) -> None:
        self.coef, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = float(state["coef"])


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards ``[B, T]``: ``-kl_coef * KL_t`` at every response token, plus the sequence's
    score at its last real token (Ziegler et al., 2019, eq. 2)."""
    rewards = -kl_coef * kl * mask.to(kl.dtype)
    last = (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True)) & mask.bool()
    return rewards + last.to(kl.dtype) * scores.unsqueeze(-1).to(kl.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response (Schulman et al., 2016, eq. 16):
    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, with
    ``V`` = 0 after the last real token. Returns (advantages, returns = advantages + values),
    zero on padding."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate (PPO eq. 7), as a loss: ``max(-A r, -A clip(r, 1-e, 1+e))``,
    and whether the clipped branch was taken (the clip fraction's numerator)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped value loss ``0.5 max((V - R)^2, (V_clip - R)^2)`` with ``V_clip`` kept
    within ``clip`` of the rollout's value, and whether the clipped branch was taken."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    plain, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(plain, clipped), (clipped > plain)


def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantage of each of the ``G`` samples of a prompt (DeepSeekMath eq. 3, outcome
    supervision): ``(r - mean_group) / (std_group + eps)``; ``scale=False`` keeps only the mean
    shift (Dr. GRPO, Liu et al., 2025). ``scores`` holds the groups one after another."""
    grouped = scores.view(-1, group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(-1, keepdim=True, unbiased=True) + eps)
    return centred.reshape(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution ``[..., V] -> [...]``."""
    logits = logits.float() if logits.dtype not in (torch.float32, torch.float64) else logits
    logz = torch.logsumexp(logits, dim=-1)
    return logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)

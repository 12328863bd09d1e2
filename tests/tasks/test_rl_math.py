"""The arithmetic of PPO and GRPO against hand-computed values and a plain per-sequence reference
implementation (lists and loops, written from the papers' equations)."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.tasks.rl_math import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_per_token,
    masked_mean,
    token_rewards,
    whiten,
)


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """GAE of one response of length n (Schulman et al., 2016, eq. 16), V = 0 after the last token."""
    n, out = len(rewards), []
    for t in range(n):
        total = 0.0
        for k in range(t, n):
            next_value = values[k + 1] if k + 1 < n else 0.0
            delta = rewards[k] + gamma * next_value - values[k]
            total += (gamma * lam) ** (k - t) * delta
        out.append(total)
    return out


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_the_per_sequence_sum_of_discounted_deltas(gamma, lam) -> None:
    torch.manual_seed(0)
    lengths = [5, 2, 7, 1]
    width = max(lengths)
    rewards, values = torch.randn(4, width, dtype=torch.float64), torch.randn(4, width, dtype=torch.float64)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    advantages, returns = gae(rewards * mask, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        expected = reference_gae(rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam)
        assert advantages[i, :n].tolist() == pytest.approx(expected, abs=1e-12)
        assert advantages[i, n:].abs().sum() == 0 and returns[i, n:].abs().sum() == 0
        assert returns[i, :n].tolist() == pytest.approx((advantages[i, :n] + values[i, :n]).tolist(), abs=1e-12)


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value() -> None:
    rewards = torch.tensor([[0.0, -0.1, 2.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.3, 1.0]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert advantages[0].tolist() == pytest.approx([1.9 - 0.5, 1.9 - 0.3, 2.0 - 1.0])
    assert returns[0].tolist() == pytest.approx([1.9, 1.9, 2.0])


def test_kl_estimators_by_hand() -> None:
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -0.1])
    assert kl_per_token(logp, ref, "k1").tolist() == pytest.approx([0.5, 0.0, -0.4])
    r = torch.exp(ref - logp)
    assert kl_per_token(logp, ref, "k3").tolist() == pytest.approx(((r - 1) - torch.log(r)).tolist())
    assert kl_per_token(logp, ref, "k3")[1] == 0 and (kl_per_token(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="accepted: k1, k3"):
        kl_per_token(logp, ref, "k2")


def test_both_kl_estimators_are_unbiased_for_the_true_kl() -> None:
    """Sampled from p, E[k1] = E[k3] = KL(p || q) (Schulman, 2020)."""
    p, q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    tokens = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, ref = p.log()[tokens], q.log()[tokens]
    for estimator in ("k1", "k3"):
        assert float(kl_per_token(logp, ref, estimator).mean()) == pytest.approx(true_kl, abs=5e-3)


def test_token_rewards_put_the_score_on_the_last_real_token() -> None:
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    rewards = token_rewards(torch.tensor([1.0, -2.0]), kl, mask, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.1, -0.15, -0.2 + 1.0], [-0.25, -0.3 - 2.0, 0.0, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_whitening_gives_zero_mean_unit_variance_over_the_mask_and_zero_padding() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 99.0, 99.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = whiten(values, mask)
    real = out[mask.bool()]
    assert float(real.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(real.var(unbiased=True)) == pytest.approx(1.0, abs=1e-6)
    assert out[~mask.bool()].abs().sum() == 0
    kept = whiten(values, mask, shift_mean=False)[mask.bool()]
    assert float(kept.mean()) == pytest.approx(3.0)


def test_masked_mean_ignores_padding_overall_and_per_row() -> None:
    values, mask = torch.tensor([[1.0, 3.0, 100.0], [2.0, 100.0, 100.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert float(masked_mean(values, mask)) == pytest.approx(2.0)
    assert masked_mean(values, mask, dim=-1).tolist() == pytest.approx([2.0, 2.0])


def test_clipped_policy_loss_by_hand() -> None:
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))
    advantages = torch.tensor([1.0, -1.0, -1.0, 2.0])
    loss, clipped = clipped_policy_loss(logp, old, advantages, clip=0.2)
    # A>0, r=1.5: the gain is capped at 1.2; A<0, r=1.5: no cap; A<0, r=0.5: capped at 0.8; inside: plain
    assert loss.tolist() == pytest.approx([-1.2, 1.5, 0.8, -2.2])
    assert clipped.tolist() == [True, False, True, False]


def test_clipped_value_loss_by_hand() -> None:
    old, returns = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, -1.0, 1.0])
    values = torch.tensor([0.5, 0.5, 1.1])
    loss, clipped = clipped_value_loss(values, old, returns, clip=0.2)
    # row 1: V=0.5, V_clip=0.2: max(0.25, 0.64)/2; row 2: max(2.25, 1.44)/2; row 3: inside the clip range
    assert loss.tolist() == pytest.approx([0.32, 1.125, 0.005])
    assert clipped.tolist() == [True, False, False]


def test_group_advantages_by_hand() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    scaled = group_advantages(scores, 3)
    assert scaled[:3].tolist() == pytest.approx([-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4)])
    assert scaled[3:].tolist() == [0.0, 0.0, 0.0]  # a group that all scored the same teaches nothing
    assert group_advantages(scores, 3, scale=False)[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert group_advantages(scores, 2).view(-1, 2).sum(-1).abs().max() < 1e-12


def test_adaptive_kl_controller_moves_towards_the_target_and_a_fixed_one_does_not() -> None:
    fixed = KLController(0.1)
    fixed.update(50.0, 64)
    assert fixed.coef == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=1000)
    adaptive.update(12.0, 100)  # error clipped to +0.2
    assert adaptive.coef == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    adaptive.update(5.4, 100)  # error -0.1
    assert adaptive.coef == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 100 / 1000))
    restored = KLController(0.5, target=6.0)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.coef == adaptive.coef


def test_entropy_of_uniform_and_one_hot_distributions() -> None:
    logits = torch.stack([torch.zeros(10), torch.tensor([0.0] + [-1e4] * 9)])
    assert entropy_from_logits(logits).tolist() == pytest.approx([math.log(10), 0.0], abs=1e-6)

"""The losses of the DPO family, as functions of sequence log-probabilities.

Every loss takes the policy's summed log-probabilities of the chosen and rejected responses
(``[B]`` each), their token counts, and -- for the losses that have one -- the reference's, and
returns ``(per-pair loss [B], chosen reward [B], rejected reward [B])``. Rewards are the implicit
rewards each paper defines (for the reference-based losses ``beta * (log pi - log pi_ref)``).

With ``delta = (log pi(c) - log pi_ref(c)) - (log pi(r) - log pi_ref(r))`` and label smoothing
``eps``:

* ``sigmoid`` -- DPO (Rafailov et al., 2023, eq. 7): ``-log sigmoid(beta * delta)``; with
  ``eps > 0`` the conservative DPO of Mitchell (2023):
  ``-(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)``;
* ``hinge`` -- SLiC-HF (Zhao et al., 2023): ``max(0, 1 - beta * delta)``;
* ``ipo`` -- IPO (Azar et al., 2023, eq. 17): ``(delta_avg - 1 / (2 beta))^2`` on log-ratios
  *averaged over each response's tokens* (as TRL computes it, with the authors' agreement);
* ``robust`` -- robust DPO (Chowdhury et al., 2024, eq. 8): the unbiased loss under label noise
  ``eps``: ``(-(1 - eps) log sigmoid(beta delta) + eps log sigmoid(-beta delta)) / (1 - 2 eps)``;
* ``simpo`` -- SimPO (Meng et al., 2024, eq. 6), reference-free: with average log-probabilities
  ``a``, ``-log sigmoid(beta (a_c - a_r) - gamma)``, smoothed like ``sigmoid``;
* ``orpo`` -- ORPO (Hong et al., 2024, eq. 6-7), reference-free: the chosen response's NLL (mean
  over its tokens) minus ``beta * log sigmoid(log odds(c) - log odds(r))``, odds from average
  log-probabilities, ``odds(y) = p / (1 - p)``.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

LOSSES = ("sigmoid", "ipo", "hinge", "robust", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable on both sides of ``-ln 2`` (Maechler, 2012)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def smoothed_logistic(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def preference_loss(loss: str, beta: float, logp_c: torch.Tensor, logp_r: torch.Tensor,
                    n_c: torch.Tensor, n_r: torch.Tensor, ref_c: torch.Tensor | None = None,
                    ref_r: torch.Tensor | None = None, *, label_smoothing: float = 0.0,
                    simpo_gamma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen reward, rejected reward); see the module docstring."""
    eps = label_smoothing
    if loss in REFERENCE_FREE:
        avg_c, avg_r = logp_c / n_c.clamp(min=1), logp_r / n_r.clamp(min=1)
        rewards = (beta * avg_c.detach(), beta * avg_r.detach())
        if loss == "simpo":
            return smoothed_logistic(beta * (avg_c - avg_r) - simpo_gamma, eps), *rewards
        log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
        return -beta * F.logsigmoid(log_odds), *rewards  # + the NLL term, added by the caller
    if ref_c is None or ref_r is None:
        raise ValueError(f"loss '{loss}' needs the reference's log-probabilities")
    ratio_c, ratio_r = logp_c - ref_c, logp_r - ref_r
    rewards = (beta * ratio_c.detach(), beta * ratio_r.detach())
    delta = ratio_c - ratio_r
    if loss == "sigmoid":
        return smoothed_logistic(beta * delta, eps), *rewards
    if loss == "hinge":
        return torch.relu(1 - beta * delta), *rewards
    if loss == "ipo":
        avg_delta = ratio_c / n_c.clamp(min=1) - ratio_r / n_r.clamp(min=1)
        return (avg_delta - 1 / (2 * beta)) ** 2, *rewards
    if loss == "robust":
        value = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
        return value, *rewards
    raise ValueError(f"unknown preference loss '{loss}'; accepted: {', '.join(LOSSES)}")


def chosen_nll(per_token_logps: torch.Tensor, shifted_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the chosen responses' tokens (``[B, T-1]`` inputs, the
    chosen rows only): the SFT term and ORPO's first term."""
    mask = shifted_mask.bool()
    return -per_token_logps[mask].mean() if mask.any() else per_token_logps.sum() * 0.0

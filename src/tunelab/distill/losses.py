"""Distillation losses: how far the student's output distribution is from the teacher's.

With ``p = softmax(z_teacher / T)`` and ``q = softmax(z_student / T)`` at each counted position
(a row of a classifier, a labelled token of a causal LM):

* ``forward_kl`` -- ``KL(p || q) = sum p (log p - log q)``, Hinton, Vinyals & Dean (2015),
  "Distilling the Knowledge in a Neural Network", sec. 2: mass-covering, the classic choice;
* ``reverse_kl`` -- ``KL(q || p)``, mode-seeking (Gu et al., 2024, MiniLLM, eq. 1, for language
  models: the student does not spread mass over what the teacher finds unlikely);
* ``jsd`` -- the generalised Jensen-Shannon divergence of Agarwal et al. (2024, "On-Policy
  Distillation of Language Models", GKD, eq. 1): with ``m = beta p + (1 - beta) q``,
  ``beta KL(p || m) + (1 - beta) KL(q || m)``; it tends to forward KL as beta -> 0 and to reverse
  KL as beta -> 1 (TRL's ``generalized_jsd_loss`` uses the same convention; tested against it).

Each is averaged over positions and multiplied by ``T^2``, which keeps the gradient's scale
independent of T (Hinton et al., sec. 2.1). The training loss is
``alpha * task_loss + (1 - alpha) * T^2 * divergence (+ hidden_weight * MSE(features))``.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "forward_kl",
               temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """The mean over positions (rows of ``[N, C]``) of the chosen divergence at temperature T (no T^2)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32  # fp32 at least
    s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if kind == "forward_kl":
        per_position = (t.exp() * (t - s)).sum(-1)
    elif kind == "reverse_kl":
        per_position = (s.exp() * (s - t)).sum(-1)
    elif kind == "jsd":
        if not 0 < beta < 1:
            raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log1p(-beta)]), dim=0)
        per_position = beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    else:
        raise ValueError(f"unknown divergence {kind!r}; accepted: {', '.join(DIVERGENCES)}")
    return per_position.mean() if per_position.numel() else student_logits.sum() * 0.0


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, task_loss: torch.Tensor, *,
                      alpha: float, temperature: float, kind: str = "forward_kl", beta: float = 0.5
                      ) -> torch.Tensor:
    """``alpha * task_loss + (1 - alpha) * T^2 * divergence`` (module docstring)."""
    kd = divergence(student_logits, teacher_logits.detach(), kind, temperature, beta)
    return alpha * task_loss + (1 - alpha) * temperature ** 2 * kd


def feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (projected) student features and the teacher's, per element."""
    return F.mse_loss(student.float(), teacher.detach().float())

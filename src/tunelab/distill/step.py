"""The distillation step: the task's step with the teacher's term added to its loss.

``loss = alpha * task_loss + (1 - alpha) * T^2 * D(teacher || student) + w * MSE(P f_s, f_t)``
(:mod:`tunelab.distill.losses`), where ``f`` are the features each model's head reads and ``P``
a linear projection trained with the student when the widths differ (it is removed before the
student is saved: it only exists to compare the two). Everything else -- batches, counting,
length grouping, state -- is the task's own step's.

Teacher outputs are cached once, before the first batch, when they are fixed per training row
(the teacher is frozen and in eval mode; the task says its training inputs are deterministic and
small enough: classification logits, images without augmentation); otherwise the teacher runs on
every batch under ``no_grad``. Either way the teacher sees exactly the student's batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from tunelab.distill.losses import divergence, feature_mse
from tunelab.distill.teacher import Teacher
from tunelab.errors import UserError
from tunelab.models.layers import head_module
from tunelab.train.step import WrappedStep

PROJECTION = "tunelab_distill_projection"
"""Name of the feature projection on the student while it trains (never saved with the run)."""


class DistillStep(WrappedStep):
    """See the module docstring; ``inner`` is the task's own step."""

    def __init__(self, inner: Any, task: Any, teacher: Teacher, options: Any, *, cache: bool, collate,
                 batch_size: int, log: Callable[[str], None] = print) -> None:
        super().__init__(inner)
        self.task, self.teacher, self.o = task, teacher, options
        self.cache, self.collate, self.batch_size, self.log = cache, collate, batch_size, log
        self.cached: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._sums = {"task_loss": 0.0, "kd_loss": 0.0, "feature_mse": 0.0}
        self._count = 0
        if hasattr(inner, "order"):  # the task's own batch order (if it has one) stays
            self.order = inner.order

    @property
    def features(self) -> bool:
        return self.o.hidden_weight > 0

    # ------------------------------------------------------------------ the engine's seam
    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]:
        rows = self.inner.prepare(model, rows)
        self.teacher.model.to(next(model.parameters()).device)
        if not self.cache:
            return rows
        t0 = time.perf_counter()
        self.cached = [None] * len(rows)  # type: ignore[list-item]
        device = next(self.teacher.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                idx = list(range(start, min(start + self.batch_size, len(rows))))
                batch = self.collate([rows[i] for i in idx])
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                logits, _, feats = self.task.distill_outputs(self.teacher.model, batch, self.features)
                if logits.shape[0] != len(idx):
                    raise RuntimeError("cached teacher outputs must be one per row")
                for j, i in enumerate(idx):
                    self.cached[i] = (logits[j].float().cpu(), feats[j].float().cpu() if feats is not None else None)
        self.log(f"cached the teacher's outputs for {len(rows)} training rows in {time.perf_counter() - t0:.1f} s")
        return [dict(r, row_index=i) for i, r in enumerate(rows)]

    # ------------------------------------------------------------------ the loss
    def teacher_outputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cache:
            index = batch["row_index"].tolist()
            logits = torch.stack([self.cached[i][0] for i in index])
            feats = torch.stack([self.cached[i][1] for i in index]) if self.features else None
            device = batch["row_index"].device
            return logits.to(device), feats.to(device) if feats is not None else None
        with torch.no_grad():
            logits, _, feats = self.task.distill_outputs(self.teacher.model, batch, self.features)
        return logits, feats

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        o = self.o
        inputs = {k: v for k, v in batch.items() if k != "row_index"}
        logits, task_loss, feats = self.task.distill_outputs(model, inputs, self.features)
        t_logits, t_feats = self.teacher_outputs(batch if self.cache else inputs)
        kd = divergence(logits, t_logits, o.divergence, o.temperature, o.jsd_beta)
        loss = o.alpha * task_loss + (1 - o.alpha) * o.temperature ** 2 * kd
        mse = torch.zeros((), device=loss.device)
        if self.features:
            projection = getattr(getattr(model, "module", model), PROJECTION, None)
            mse = feature_mse(projection(feats) if projection is not None else feats, t_feats)
            loss = loss + o.hidden_weight * mse
        for key, value in (("task_loss", task_loss), ("kd_loss", kd), ("feature_mse", mse)):
            self._sums[key] = self._sums[key] + value.detach()  # a tensor: read once per log line, no sync per step
        self._count += 1
        return loss

    def log_metrics(self) -> dict[str, float]:
        """Mean task loss, divergence (without T^2) and feature MSE since the last log line."""
        n = max(self._count, 1)
        out = {k: float(v) / n for k, v in self._sums.items() if k != "feature_mse" or self.features}
        inner = getattr(self.inner, "log_metrics", None)
        if callable(inner):
            out.update(inner())
        self._sums = dict.fromkeys(self._sums, 0.0)
        self._count = 0
        return out

    def finish(self, model: nn.Module) -> None:
        """Remove the training-only projection before the student is saved."""
        core = getattr(model, "module", model)
        if hasattr(core, PROJECTION):
            delattr(core, PROJECTION)


def head_width(model: nn.Module) -> tuple[int, int]:
    """(input features, outputs) of the head: what hidden-state matching and the label check read."""
    head = head_module(model)
    weight = getattr(head, "weight", None)
    if weight is None or weight.dim() != 2:
        raise UserError(f"cannot find the head of {type(model).__name__} to distil through")
    return int(weight.shape[1]), int(weight.shape[0])


def check_fit(model: nn.Module, teacher: Teacher) -> None:
    """The teacher's head predicts as many classes / tokens as the student's (one line otherwise)."""
    (_, s_out), (_, t_out) = head_width(model), head_width(teacher.model)
    if s_out != t_out:
        raise UserError(f"distill.teacher {teacher.ref} has {t_out} outputs but the student has {s_out}; they must "
                        "predict the same classes / vocabulary")


def distill_step(cfg: Any, task: Any, inner: Any, model: nn.Module, teacher: Teacher, collate,
                 log: Callable[[str], None] = print) -> DistillStep:
    """Wrap the task's step; add the feature projection to the student when the widths differ."""
    check_fit(model, teacher)
    (s_in, _), (t_in, _) = head_width(model), head_width(teacher.model)
    o = cfg.distill
    cache = task.distill_cacheable(cfg) if o.cache_teacher is None else o.cache_teacher
    if o.hidden_weight > 0 and s_in != t_in:
        gen = torch.Generator().manual_seed(cfg.seed)
        projection = nn.Linear(s_in, t_in)
        with torch.no_grad():
            bound = 1 / s_in ** 0.5
            projection.weight.uniform_(-bound, bound, generator=gen)
            projection.bias.zero_()
        setattr(model, PROJECTION, projection.to(next(model.parameters()).device))
    return DistillStep(inner, task, teacher, o, cache=cache, collate=collate,
                       batch_size=cfg.train.eval_batch_size, log=log)

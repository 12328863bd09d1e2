"""The step seam between the engine and a task.

The engine (:mod:`tunelab.train.engine`) owns the loop's services: cadence, gradient accumulation,
clipping, evaluation, early stopping, best checkpoint, exact resume and logging. What one training
step *is* comes from the task, as a :class:`TrainStep`:

- ``prepare(model, rows)``: once, before the first batch (e.g. cache a frozen trunk); returns the
  rows to train on;
- ``micro_batches(model, batch)``: what one loader batch becomes (``micro_per_batch()`` of them,
  so the engine can plan its schedule). Supervised tasks train on the
  batch itself; an RL task (PPO/GRPO) turns a batch of prompts into rollouts, scores them and
  returns several minibatches to update on. Each micro-batch is one backward pass; every
  ``train.grad_accum`` of them make one optimizer step;
- ``loss(model, batch)``: the scalar to minimise;
- ``count(batch)``: (samples, tokens) it counts towards throughput;
- ``state_dict()`` / ``load_state_dict()``: extra JSON state saved with every checkpoint
  (e.g. a running reward baseline), so resume stays exact;
- optionally ``log_metrics()``: the step's own numbers since the previous train log line (e.g.
  mean reward, KL, clip fraction), merged into the engine's ``train`` events;
- optionally ``order(rows, batch_size, seed)``: the training order as a sampler (None: the
  default shuffle or length grouping), e.g. batches that keep duplicate texts apart;
- optionally ``backward(model, batch, backward) -> loss``: the step runs its own backward passes
  through ``backward(tensor)`` (which scales for accumulation and calls the accelerator) and
  returns the detached loss; GradCache uses it to back-propagate one chunk at a time;
- optionally ``finish(model)``: called once after training (best weights restored), before the
  model is evaluated and saved, to remove training-only modules (a distillation projection).

:class:`SupervisedStep` is the default: ``model(**batch).loss``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

Batch = dict[str, Any]

COUNTER_KEYS = ("num_tokens", "row_index")
"""Batch entries that describe the batch rather than feed the model."""


@runtime_checkable
class TrainStep(Protocol):
    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]: ...
    def micro_batches(self, model: nn.Module, batch: Batch) -> list[Batch]: ...
    def micro_per_batch(self) -> int: ...
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...
    def count(self, batch: Batch) -> tuple[int, int]: ...
    def row_length(self, row: dict) -> int | None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def model_inputs(batch: Batch) -> Batch:
    """The batch without its counters (what the model's forward takes)."""
    return {k: v for k, v in batch.items() if k not in COUNTER_KEYS}


def batch_size_of(batch: Batch) -> int:
    """Rows in a batch: the length of its first tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 0


class WrappedStep:
    """Base of steps that change how another step's loss is computed (a cached trunk, a teacher's
    term) and hand everything else -- batches, counting, lengths, state -- to that ``inner`` step."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]:
        return self.inner.prepare(model, rows)

    def micro_batches(self, model: nn.Module, batch: Batch) -> list[Batch]:
        return self.inner.micro_batches(model, batch)

    def micro_per_batch(self) -> int:
        return self.inner.micro_per_batch()

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.inner.loss(model, batch)

    def count(self, batch: Batch) -> tuple[int, int]:
        return self.inner.count(batch)

    def row_length(self, row: dict) -> int | None:
        return self.inner.row_length(row)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class SupervisedStep:
    """The default step: the model computes its own loss from the batch's ``labels``.

    ``length_key`` names the row field whose length groups rows of similar length into batches,
    ``mask_key`` the batch's 2-D mask of real positions, counted as tokens (text tasks pass
    ``input_ids`` and ``attention_mask``); None means rows have no length or tokens (images).
    """

    def __init__(self, length_key: str | None = None, mask_key: str | None = None) -> None:
        self.length_key, self.mask_key = length_key, mask_key

    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]:
        return rows

    def micro_batches(self, model: nn.Module, batch: Batch) -> list[Batch]:
        return [batch]

    def micro_per_batch(self) -> int:
        return 1

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(**model_inputs(batch)).loss

    def count(self, batch: Batch) -> tuple[int, int]:
        """(rows, real tokens): the collator's token count, else the 2-D mask's sum, else 0."""
        counted = batch.get("num_tokens")
        if counted is not None:
            return batch_size_of(batch), int(counted)
        mask = batch.get(self.mask_key) if self.mask_key else None
        tokens = int(mask.sum()) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else 0
        return batch_size_of(batch), tokens

    def row_length(self, row: dict) -> int | None:
        return len(row[self.length_key]) if self.length_key and self.length_key in row else None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

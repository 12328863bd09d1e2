"""DataLoaders for training and evaluation (what tasks and the engine share).

Training order is a pure function of (seed, epoch) and sharded by process, so a resumed run sees
the batches the uninterrupted run would have (:mod:`tunelab.data.batching`). Evaluation keeps the
data order and is prepared by ``accelerate`` so each process scores its shard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from tunelab.data.batching import EpochShuffleSampler, LengthGroupedSampler, ShardedBatchSampler


def make_loader(rows: Sequence[dict], batch_size: int, collate, *, train: bool, seed: int,
                group_by_length: bool, rank: int = 0, world: int = 1,
                row_length: Callable[[dict], int | None] | None = None,
                order: Callable[[Sequence[dict], int, int], Any] | None = None
                ) -> tuple[DataLoader, ShardedBatchSampler | None]:
    """A DataLoader; for training, its batches are this process's shard of an order that is a
    pure function of (seed, epoch), and the returned batch sampler can skip batches on resume.

    ``row_length(row)`` gives a row's length for ``group_by_length`` (default: its ``input_ids``);
    rows without a length are shuffled without grouping. ``order(rows, batch_size, seed)``, when
    given and not None, is the training order instead (e.g. :class:`DistinctTextBatches`).
    """
    # Own generator: making an iterator must not draw from the global RNG (dropout's).
    gen = torch.Generator().manual_seed(seed)
    if not train:
        return DataLoader(list(rows), batch_size=batch_size, shuffle=False, collate_fn=collate,
                          generator=gen), None
    sampler: Any = order(rows, batch_size, seed) if order is not None else None
    if sampler is None:
        lengths = _lengths(rows, row_length) if group_by_length else None
        sampler = (LengthGroupedSampler(lengths, batch_size, seed) if lengths is not None
                   else EpochShuffleSampler(len(rows), seed))
    batches = ShardedBatchSampler(sampler, batch_size, rank, world)
    return DataLoader(list(rows), batch_sampler=batches, collate_fn=collate, generator=gen), batches


def _lengths(rows: Sequence[dict], row_length: Callable[[dict], int | None] | None) -> list[int] | None:
    length = row_length or (lambda r: len(r["input_ids"]) if "input_ids" in r else None)
    if not rows or length(rows[0]) is None:
        return None
    return [int(length(r)) for r in rows]  # type: ignore[arg-type]


def eval_loader(rows: Sequence[dict], batch_size: int, collate, accelerator) -> DataLoader:
    """An evaluation loader (data order kept), prepared so each process gets its shard."""
    loader, _ = make_loader(rows, batch_size, collate, train=False, seed=0, group_by_length=False)
    return accelerator.prepare(loader)

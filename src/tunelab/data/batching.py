"""Deterministic samplers: the data order is a pure function of (seed, epoch).

Both samplers draw their permutation from a fresh ``torch.Generator`` seeded with
``seed + epoch``; no global random state is read or advanced. A resumed run that calls
``set_epoch(epoch)`` and skips the batches it already trained on therefore sees exactly the
same examples in the same order as the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _permutation(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` drawn from a generator seeded with ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator).tolist()


class EpochShuffleSampler(Sampler[int]):
    """A seeded random permutation of ``range(num_samples)``, different every epoch."""

    def __init__(self, num_samples: int, seed: int) -> None:
        """``num_samples``: dataset size; ``seed``: base seed (the epoch is added to it)."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        """Yield the permutation for the current epoch."""
        return iter(_permutation(self.num_samples, self.seed + self.epoch))

    def __len__(self) -> int:
        """Number of indices yielded per epoch."""
        return self.num_samples


class LengthGroupedSampler(Sampler[int]):
    """Yield indices so that each batch holds examples of similar length (less padding).

    Per epoch: a seeded permutation is cut into megabatches of ``batch_size * megabatch_factor``
    indices; each megabatch is sorted by length (longest first) and cut into batches; the full
    batches are shuffled with the same generator, then the batch holding the longest example is
    moved to the front so an out-of-memory error shows on the first step. A final partial batch
    (when ``len(lengths)`` is not a multiple of ``batch_size``) stays last, so a DataLoader with
    the same ``batch_size`` cuts the flat index stream at exactly these batch boundaries.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        megabatch_factor: int = 50,
    ) -> None:
        """``lengths[i]``: token count of example ``i``; the DataLoader must use ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if megabatch_factor < 1:
            raise ValueError(f"megabatch_factor must be >= 1, got {megabatch_factor}")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.megabatch_factor = int(megabatch_factor)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        """The current epoch's batches (lists of indices), in training order."""
        n = len(self.lengths)
        if n == 0:
            return []
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=generator).tolist()
        mega = self.batch_size * self.megabatch_factor
        full: list[list[int]] = []
        partial: list[int] = []
        for start in range(0, n, mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            for b in range(0, len(chunk), self.batch_size):
                batch = chunk[b : b + self.batch_size]
                if len(batch) == self.batch_size:
                    full.append(batch)
                else:
                    partial = batch  # only the last megabatch can leave a partial batch
        shuffle = torch.randperm(len(full), generator=generator).tolist()
        full = [full[i] for i in shuffle]
        if full:
            longest = max(range(len(full)), key=lambda i: self.lengths[full[i][0]])
            full[0], full[longest] = full[longest], full[0]
            if partial and self.lengths[partial[0]] > self.lengths[full[0][0]]:
                # the longest example sits in the partial batch: trade it for the shortest
                # example of the first batch so the first step still sees the longest one
                full[0], partial = [partial[0], *full[0][:-1]], [*partial[1:], full[0][-1]]
                partial.sort(key=lambda i: -self.lengths[i])
        return [*full, partial] if partial else full

    def __iter__(self) -> Iterator[int]:
        """Yield the current epoch's indices, batch after batch."""
        return (index for batch in self.batches() for index in batch)

    def __len__(self) -> int:
        """Number of indices yielded per epoch."""
        return len(self.lengths)


class DistinctTextBatches(Sampler[int]):
    """Batches in which no text occurs twice, for losses that use the other rows as negatives.

    With in-batch negatives (multiple-negatives ranking, InfoNCE) a text that appears in two rows
    of one batch is a *false negative*: the loss pushes a row's anchor away from its own positive
    because the same text sits in another row. ``keys[i]`` are the texts of row ``i`` (anchor,
    positive, negatives; compared after stripping and lower-casing).

    Per epoch: a seeded permutation (``seed + epoch``) is scanned greedily; each batch takes, in
    order, the next rows none of whose texts is already in the batch, and rows that clash wait for
    a later batch. With ``lengths`` (a tuple of token counts per row, e.g. (positive, anchor)) the
    permutation is first cut into megabatches of ``batch_size * megabatch_factor`` rows, each sorted
    by length, so a batch holds texts of similar length (less padding: each text column is padded to
    its longest), and the planned batches are then shuffled with the same generator.

    There are always ``ceil(n / batch_size)`` batches, so an epoch's length and the schedule do not
    depend on the order; a batch that cannot be filled without a clash stays
    short, and rows still waiting after the last batch are left out of this epoch (they repeat a
    text that is trained on elsewhere in it; :attr:`left_out` counts them). The plan is a pure
    function of ``(keys, lengths, batch_size, seed, epoch)``, so resume stays exact.
    """

    def __init__(self, keys: Sequence[Sequence[str]], batch_size: int, seed: int,
                 lengths: Sequence[tuple[int, ...]] | None = None, megabatch_factor: int = 50) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.keys = [frozenset(" ".join(str(t).split()).lower() for t in row) for row in keys]
        self.lengths = [tuple(x) for x in lengths] if lengths is not None else None
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), 0
        self.megabatch_factor = int(megabatch_factor)
        self.left_out = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        """The current epoch's batches (row indices), in training order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        waiting = torch.randperm(len(self.keys), generator=generator).tolist()
        if self.lengths is not None:
            mega = self.batch_size * self.megabatch_factor
            waiting = [i for start in range(0, len(waiting), mega)
                       for i in sorted(waiting[start:start + mega], key=lambda i: self.lengths[i], reverse=True)]
        planned: list[list[int]] = []
        for _ in range(math.ceil(len(self.keys) / self.batch_size)):
            batch: list[int] = []
            seen: set[str] = set()
            later: list[int] = []
            for at, i in enumerate(waiting):
                if len(batch) == self.batch_size:
                    later.extend(waiting[at:])  # full: the rest waits, in order
                    break
                if self.keys[i] & seen:
                    later.append(i)
                else:
                    batch.append(i)
                    seen |= self.keys[i]
            planned.append(batch)
            waiting = later
        self.left_out = len(waiting)
        if self.lengths is not None:
            shuffle = torch.randperm(len(planned), generator=generator).tolist()
            planned = [planned[i] for i in shuffle]
        return planned

    def __iter__(self) -> Iterator[int]:
        return (index for batch in self.batches() for index in batch)

    def __len__(self) -> int:
        return len(self.keys)


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of one process's shard of an epoch, able to skip the first ``skip`` batches.

    The global batch list is a pure function of (seed, epoch); process ``rank`` of ``world`` takes
    batches ``rank, rank + world, ...``. When the count does not divide evenly, the first batches
    are repeated so every process takes the same number of steps (as DDP needs). Skipping happens
    here, before any row is read, which is what exact resume needs.
    """

    def __init__(self, sampler: EpochShuffleSampler | LengthGroupedSampler | DistinctTextBatches, batch_size: int,
                 rank: int = 0, world: int = 1) -> None:
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _global_batches(self) -> list[list[int]]:
        self.sampler.set_epoch(self.epoch)
        if isinstance(self.sampler, DistinctTextBatches):  # it plans whole batches itself
            batches = self.sampler.batches()
        else:
            order = list(self.sampler)
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        pad = (-len(batches)) % self.world
        return batches + batches[:pad]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._global_batches()[self.rank::self.world]
        yield from mine[self.skip:]

    def batches_per_epoch(self) -> int:
        n = math.ceil(len(self.sampler) / self.batch_size)
        return math.ceil(n / self.world)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip)

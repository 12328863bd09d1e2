"""Deterministic samplers."""

from __future__ import annotations

import random

import pytest

from tunelab.data.batching import EpochShuffleSampler, LengthGroupedSampler


def _lengths(n: int = 1037, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 512) for _ in range(n)]


def _padding(order: list[int], lengths: list[int], batch_size: int) -> int:
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        total += max(batch) * len(batch) - sum(batch)
    return total


def _order(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("make", [
    lambda: EpochShuffleSampler(1037, seed=7),
    lambda: LengthGroupedSampler(_lengths(), batch_size=16, seed=7, megabatch_factor=8),
])
def test_permutation_deterministic_and_epoch_dependent(make) -> None:
    a, b = make(), make()
    assert len(a) == 1037
    first = _order(a, 0)
    assert sorted(first) == list(range(1037))
    assert first == _order(b, 0)
    second = _order(a, 1)
    assert sorted(second) == list(range(1037))
    assert second != first
    assert _order(a, 0) == first  # going back to epoch 0 reproduces it


def test_seed_matters() -> None:
    assert list(EpochShuffleSampler(100, seed=1)) != list(EpochShuffleSampler(100, seed=2))


def test_seed_plus_epoch_rule() -> None:
    a = EpochShuffleSampler(50, seed=3)
    b = EpochShuffleSampler(50, seed=4)
    assert _order(a, 1) == _order(b, 0)


def test_length_grouping_reduces_padding() -> None:
    lengths = _lengths()
    grouped = LengthGroupedSampler(lengths, batch_size=16, seed=0)
    random_order = list(EpochShuffleSampler(len(lengths), seed=0))
    grouped_pad = _padding(list(grouped), lengths, 16)
    random_pad = _padding(random_order, lengths, 16)
    assert grouped_pad < random_pad / 3


def test_longest_batch_first_and_partial_batch_last() -> None:
    lengths = _lengths(103, seed=5)
    for epoch in range(5):
        sampler = LengthGroupedSampler(lengths, batch_size=10, seed=1, megabatch_factor=3)
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert [len(b) for b in batches] == [10] * 10 + [3]
        assert max(lengths) in [lengths[i] for i in batches[0]]
        assert [i for b in batches for i in b] == list(sampler)


def test_longest_example_in_partial_batch_is_moved_to_first_batch() -> None:
    lengths = [10] * 20 + [5, 5, 999]  # 23 rows, batch 10, megabatch 10: the last 3 form the tail
    for seed in range(20):
        sampler = LengthGroupedSampler(lengths, batch_size=10, seed=seed, megabatch_factor=1)
        batches = sampler.batches()
        assert 22 in batches[0]
        assert sorted(i for b in batches for i in b) == list(range(23))
        assert [len(b) for b in batches] == [10, 10, 3]


def test_empty_and_bad_arguments() -> None:
    assert list(LengthGroupedSampler([], batch_size=4, seed=0)) == []
    with pytest.raises(ValueError):
        LengthGroupedSampler([1, 2], batch_size=0, seed=0)


# ---------------------------------------------------------------------------- DistinctTextBatches

def _texts(rows, batch):
    return [" ".join(t.split()).lower() for i in batch for t in rows[i]]


def test_distinct_text_batches_never_repeat_a_text_and_keep_their_count() -> None:
    from tunelab.data.batching import DistinctTextBatches

    rows = [(f"anchor {i}", f"Gloss {i % 7}") for i in range(50)] + [("anchor 3", "  gloss   3 ")]  # case/space dup
    sampler = DistinctTextBatches(rows, batch_size=6, seed=1)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert len(batches) == 9  # ceil(51 / 6), whatever the order
        for batch in batches:
            texts = _texts(rows, batch)
            assert len(texts) == len(set(texts)), batch
        placed = [i for b in batches for i in b]
        assert len(placed) == len(set(placed)) and len(placed) + sampler.left_out == len(rows)
        assert sampler.batches() == batches  # a pure function of (seed, epoch)
    sampler.set_epoch(0)
    first = sampler.batches()
    sampler.set_epoch(1)
    assert sampler.batches() != first


def test_distinct_text_batches_fill_every_batch_when_texts_are_unique() -> None:
    from tunelab.data.batching import DistinctTextBatches

    rows = [(f"a{i}", f"b{i}") for i in range(20)]
    sampler = DistinctTextBatches(rows, batch_size=8, seed=0)
    assert [len(b) for b in sampler.batches()] == [8, 8, 4] and sampler.left_out == 0
    assert sorted(sampler) == list(range(20))


def test_sharded_sampler_uses_the_planned_batches_and_skips_on_resume() -> None:
    from tunelab.data.batching import DistinctTextBatches, ShardedBatchSampler

    rows = [(f"a{i}", f"g{i % 5}") for i in range(30)]
    plan = DistinctTextBatches(rows, batch_size=4, seed=3)
    sharded = ShardedBatchSampler(plan, 4)
    sharded.set_epoch(2)
    batches = list(sharded)
    plan.set_epoch(2)
    assert batches == plan.batches() and sharded.batches_per_epoch() == len(batches) == 8
    sharded.set_epoch(2, skip=3)
    assert list(sharded) == batches[3:]


def test_distinct_text_batches_grouped_by_length_pad_less_and_stay_distinct() -> None:
    import random as _random

    from tunelab.data.batching import DistinctTextBatches

    rng = _random.Random(0)
    rows = [(f"a{i}", f"g{i % 200}") for i in range(400)]  # every gloss twice
    lengths = [(rng.randint(5, 60), rng.randint(2, 12)) for _ in rows]

    def padding(batches):
        return sum(max(lengths[i][c] for i in b) * len(b) - sum(lengths[i][c] for i in b)
                   for b in batches for c in (0, 1))

    plain = DistinctTextBatches(rows, 16, seed=0).batches()
    grouped_sampler = DistinctTextBatches(rows, 16, seed=0, lengths=lengths, megabatch_factor=8)
    grouped = grouped_sampler.batches()
    assert len(grouped) == len(plain) == 25
    assert padding(grouped) < 0.6 * padding(plain)
    for batch in grouped:
        texts = [t for i in batch for t in rows[i]]
        assert len(texts) == len(set(texts))
    assert grouped_sampler.batches() == grouped
    grouped_sampler.set_epoch(1)
    assert grouped_sampler.batches() != grouped

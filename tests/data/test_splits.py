"""Carving validation/test splits from train."""

from __future__ import annotations

from collections import Counter

import datasets
import pytest

from tunelab.data.splits import make_splits
from tunelab.errors import UserError


def _train(n: int = 200, pos_every: int = 4) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"id": list(range(n)), "label": ["pos" if i % pos_every == 0 else "neg" for i in range(n)]}
    )


def _ids(ds: datasets.Dataset) -> list[int]:
    return ds["id"][:]


def test_sizes_and_no_overlap() -> None:
    out = make_splits({"train": _train()}, validation_ratio=0.1, test_ratio=0.2, seed=0)
    assert {k: len(v) for k, v in out.items()} == {"train": 140, "validation": 20, "test": 40}
    ids = [set(_ids(out[s])) for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == set(range(200))
    assert _ids(out["train"]) == sorted(_ids(out["train"]))  # original order kept


def test_ratio_rounding_is_not_fooled_by_float_noise() -> None:
    out = make_splits({"train": _train(100)}, validation_ratio=0.07, test_ratio=0.0, seed=0)
    assert len(out["validation"]) == 7


def test_deterministic_and_seed_dependent() -> None:
    a = make_splits({"train": _train()}, validation_ratio=0.1, test_ratio=0.1, seed=3)
    b = make_splits({"train": _train()}, validation_ratio=0.1, test_ratio=0.1, seed=3)
    c = make_splits({"train": _train()}, validation_ratio=0.1, test_ratio=0.1, seed=4)
    for split in ("train", "validation", "test"):
        assert _ids(a[split]) == _ids(b[split])
    assert _ids(a["validation"]) != _ids(c["validation"])


def test_stratified_keeps_class_proportions() -> None:
    out = make_splits(
        {"train": _train()}, validation_ratio=0.1, test_ratio=0.2, seed=1, stratify_column="label"
    )
    assert Counter(out["validation"]["label"][:]) == {"neg": 15, "pos": 5}
    assert Counter(out["test"]["label"][:]) == {"neg": 30, "pos": 10}
    assert Counter(out["train"]["label"][:]) == {"neg": 105, "pos": 35}


def test_stratify_falls_back_when_a_class_has_one_row() -> None:
    train = datasets.Dataset.from_dict({"id": list(range(20)), "label": ["a"] * 19 + ["b"]})
    out = make_splits({"train": train}, validation_ratio=0.2, test_ratio=0.0, seed=0, stratify_column="label")
    assert len(out["validation"]) == 4 and len(out["train"]) == 16


def test_zero_ratio_leaves_split_absent() -> None:
    out = make_splits({"train": _train()}, validation_ratio=0.25, test_ratio=0.0, seed=0)
    assert sorted(out) == ["train", "validation"]
    assert len(out["validation"]) == 50
    same = make_splits({"train": _train()}, validation_ratio=0.0, test_ratio=0.0, seed=0)
    assert sorted(same) == ["train"] and len(same["train"]) == 200


def test_existing_splits_are_kept() -> None:
    val = datasets.Dataset.from_dict({"id": [1000, 1001], "label": ["pos", "neg"]})
    splits = {"train": _train(), "validation": val}
    out = make_splits(splits, validation_ratio=0.1, test_ratio=0.1, seed=0)
    assert out["validation"] is val
    assert len(out["test"]) == 20 and len(out["train"]) == 180
    assert len(splits["train"]) == 200 and sorted(splits) == ["train", "validation"]
    both = make_splits({"train": _train(), "validation": val, "test": val}, validation_ratio=0.1, test_ratio=0.1, seed=0)
    assert len(both["train"]) == 200


@pytest.mark.parametrize(("val", "test"), [(1.0, 0.0), (-0.1, 0.0), (0.5, 0.5), (0.0, 1.2)])
def test_bad_ratios(val: float, test: float) -> None:
    with pytest.raises(UserError, match=r"data\.(validation_ratio|test_ratio)"):
        make_splits({"train": _train()}, validation_ratio=val, test_ratio=test, seed=0)


def test_train_too_small() -> None:
    with pytest.raises(UserError, match="the train split has 2 rows, too few"):
        make_splits({"train": _train(2)}, validation_ratio=0.4, test_ratio=0.4, seed=0)

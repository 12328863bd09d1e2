"""Carve validation/test splits out of train when the data does not provide them.

The result is a pure function of (the train rows in order, the ratios, the seed, the stratify
column): no global random state is used, so evaluation can rebuild exactly the same held-out
rows later from the saved config. Existing validation/test splits are never touched.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

import datasets

from tunelab.errors import UserError

logger = logging.getLogger(__name__)


def _check_ratio(name: str, value: float) -> None:
    """Raise :class:`UserError` unless ``0 <= value < 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise UserError(f"data.{name}={value!r} must be a number in [0, 1)")
    if not 0 <= value < 1:
        raise UserError(f"data.{name}={value!r} must be in [0, 1), e.g. 0.1")


def _holdout_size(n: int, ratio: float) -> int:
    """Rows to hold out: ``ceil(n * ratio)``, ignoring float noise (100 * 0.07 -> 7, not 8)."""
    return math.ceil(round(n * ratio, 6))


def _is_categorical(ds: datasets.Dataset, column: str, values: list[Any]) -> bool:
    """True for ClassLabel, string, bool and integer columns, and floats holding whole numbers."""
    feature = ds.features.get(column)
    if isinstance(feature, datasets.ClassLabel):
        return True
    if not isinstance(feature, datasets.Value):
        return False
    dtype = feature.dtype
    if dtype in ("string", "large_string", "bool") or dtype.startswith(("int", "uint")):
        return True
    if dtype.startswith("float"):
        return all(v is None or (not math.isnan(v) and float(v).is_integer()) for v in values)
    return False


def _strata_key(value: Any) -> str:
    """A hashable, sortable key for stratification (1 and 1.0 share a key)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _can_stratify(keys: list[str] | None, n_holdout: int) -> bool:
    """sklearn needs >= 2 rows per class and room for every class on both sides of the cut."""
    if keys is None:
        return False
    counts = Counter(keys)
    n_classes = len(counts)
    return (
        n_classes >= 2
        and min(counts.values()) >= 2
        and n_holdout >= n_classes
        and len(keys) - n_holdout >= n_classes
    )


def _cut(
    indices: list[int], keys: list[str] | None, n_holdout: int, seed: int
) -> tuple[list[int], list[int]]:
    """Split ``indices`` into (kept, held out) with ``n_holdout`` held out, both sorted."""
    from sklearn.model_selection import train_test_split  # imported when a split is cut (~190 MB)

    stratify = keys if _can_stratify(keys, n_holdout) else None
    if keys is not None and stratify is None:
        logger.warning("cannot stratify this split (a class has < 2 rows or the split is tiny)")
    kept, held = train_test_split(
        indices, test_size=n_holdout, random_state=seed, shuffle=True, stratify=stratify
    )
    return sorted(kept), sorted(held)


def make_splits(
    splits: dict[str, datasets.Dataset],
    *,
    validation_ratio: float,
    test_ratio: float,
    seed: int,
    stratify_column: str | None = None,
) -> dict[str, datasets.Dataset]:
    """Return ``splits`` with missing ``validation``/``test`` carved from ``train``.

    A missing split is carved only when its ratio is > 0 (a ratio of 0 leaves it absent). Ratios
    are fractions of the original train rows (rounded up, as sklearn does), must lie in [0, 1)
    and sum to < 1. When ``stratify_column`` is given and holds categorical values with at least
    2 rows per class, the cut keeps class proportions; otherwise it is a plain seeded shuffle.
    Rows inside each split keep their original order.

    The output is a pure function of (data, ratios, seed, stratify_column): the same inputs give
    the same rows, so evaluation can reproduce the split. The input mapping is not modified.

    Raises :class:`UserError` for bad ratios, a missing train split, or a train split that would
    end up empty.
    """
    _check_ratio("validation_ratio", validation_ratio)
    _check_ratio("test_ratio", test_ratio)
    if validation_ratio + test_ratio >= 1:
        raise UserError(
            f"data.validation_ratio + data.test_ratio = {validation_ratio + test_ratio:g} must "
            "be < 1 so some rows stay in train"
        )
    if "train" not in splits:
        raise UserError(
            f"no train split to carve from; found splits: {', '.join(sorted(splits)) or 'none'}"
        )

    result = dict(splits)
    train = splits["train"]
    n = len(train)
    n_val = _holdout_size(n, validation_ratio) if "validation" not in splits else 0
    n_test = _holdout_size(n, test_ratio) if "test" not in splits else 0
    if n == 0 or n - n_val - n_test <= 0:
        raise UserError(
            f"the train split has {n} rows, too few to carve validation "
            f"(data.validation_ratio={validation_ratio:g}) and test "
            f"(data.test_ratio={test_ratio:g}) from it and keep any training rows; add data or "
            "lower the ratios"
        )
    if n_val == 0 and n_test == 0:
        return result

    keys: list[str] | None = None
    if stratify_column is not None:
        if stratify_column not in train.column_names:
            raise UserError(
                f"stratify column {stratify_column!r} is not a column of the train split; "
                f"available: {', '.join(train.column_names)}"
            )
        values = train.with_format(None).select_columns([stratify_column])[:][stratify_column]
        if _is_categorical(train, stratify_column, values):
            keys = [_strata_key(v) for v in values]

    remaining = list(range(n))
    if n_test:
        remaining, test_idx = _cut(remaining, keys, n_test, seed)
        result["test"] = train.select(test_idx, keep_in_memory=True)
    if n_val:
        sub_keys = [keys[i] for i in remaining] if keys is not None else None
        remaining, val_idx = _cut(remaining, sub_keys, n_val, seed)
        result["validation"] = train.select(val_idx, keep_in_memory=True)
    result["train"] = train.select(remaining, keep_in_memory=True)
    return result

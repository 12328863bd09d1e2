"""Check that configured columns exist; find, refuse or drop rows whose required values are missing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import datasets

from tunelab.errors import UserError, did_you_mean


def require_columns(
    ds: datasets.Dataset, columns: Mapping[str, str | None], split: str
) -> None:
    """Raise :class:`UserError` unless every configured column is a column of ``ds``.

    ``columns`` maps a config field name (e.g. ``"data.text_column"``) to the column it names;
    fields set to ``None`` are optional and skipped. The message names the field, the value, the
    split and the available columns, e.g. ``data.text_column='txt' is not a column of the train
    split; available: label, text (did you mean 'text'?)``.
    """
    available = list(ds.column_names)
    for field, column in columns.items():
        if column is None or column in available:
            continue
        listed = ", ".join(available) if available else "(none)"
        raise UserError(
            f"{field}={column!r} is not a column of the {split} split; available: {listed}"
            f"{did_you_mean(str(column), available)}"
        )


def is_missing(value: Any) -> bool:
    """True for ``None``, a float NaN, or a string that is empty or only whitespace."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def drop_missing(
    ds: datasets.Dataset, columns: Mapping[str, str | None] | Iterable[str | None]
) -> tuple[datasets.Dataset, int]:
    """Drop rows where any of ``columns`` is missing (see :func:`is_missing`).

    ``columns`` is either a list of column names or the same field -> column mapping that
    :func:`require_columns` takes (``None`` entries are ignored). Returns the filtered dataset
    (the same object when nothing is dropped) and the number of rows dropped. Row order is kept.
    """
    names = list(columns.values()) if isinstance(columns, Mapping) else list(columns)
    names = list(dict.fromkeys(n for n in names if n is not None))
    if not names or len(ds) == 0:
        return ds, 0
    data = ds.with_format(None).select_columns(names)[:]
    columns_values = [data[name] for name in names]
    keep = [
        row
        for row in range(len(ds))
        if not any(is_missing(values[row]) for values in columns_values)
    ]
    dropped = len(ds) - len(keep)
    if dropped == 0:
        return ds, 0
    return ds.select(keep, keep_in_memory=True), dropped


def empty_rows(ds: datasets.Dataset, column: str) -> list[int]:
    """0-based rows whose ``column`` is missing (see :func:`is_missing`)."""
    values = ds.with_format(None)[column]
    return [row for row, value in enumerate(values) if is_missing(value)]


def refuse_or_drop_empty(ds: datasets.Dataset, columns: Iterable[str | None], split: str,
                         place: Callable[[str, int], str], drop: bool) -> tuple[datasets.Dataset, int]:
    """Rows whose text in any of ``columns`` is empty or missing: with ``drop`` (``data.drop_empty``)
    they are dropped and counted; otherwise the first one is a :class:`UserError` naming its place in
    the file (``place(split, row)``), how many there are, and the switch that drops them."""
    bad: set[int] = set()
    first: tuple[int, str] | None = None
    for column in dict.fromkeys(c for c in columns if c is not None):
        rows = empty_rows(ds, column)
        bad.update(rows)
        if rows and (first is None or rows[0] < first[0]):
            first = (rows[0], column)
    if first is None:
        return ds, 0
    if not drop:
        others = f"; {len(bad)} rows of the {split} split are empty" if len(bad) > 1 else ""
        raise UserError(f"{place(split, first[0])}: column '{first[1]}' is empty{others}; fill them in, or set "
                        "data.drop_empty: true to drop such rows")
    keep = [row for row in range(len(ds)) if row not in bad]
    return ds.select(keep, keep_in_memory=True), len(bad)

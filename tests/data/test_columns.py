"""Column checks and dropping rows with missing values."""

from __future__ import annotations

import datasets
import pytest

from tunelab.data.columns import drop_missing, require_columns
from tunelab.errors import UserError


@pytest.fixture
def ds() -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "text": ["a", "", None, "d", "  ", "f"],
            "label": [0, 1, 0, None, 1, float("nan")],
            "extra": [None] * 6,
        }
    )


def test_require_columns_accepts_present_and_none(ds: datasets.Dataset) -> None:
    require_columns(ds, {"data.text_column": "text", "data.text_pair_column": None}, "train")


def test_require_columns_message(ds: datasets.Dataset) -> None:
    with pytest.raises(UserError) as err:
        require_columns(ds, {"data.text_column": "txt", "data.label_column": "label"}, "train")
    assert str(err.value) == (
        "data.text_column='txt' is not a column of the train split; available: text, label, "
        "extra (did you mean 'text'?)"
    )


def test_require_columns_names_split(ds: datasets.Dataset) -> None:
    with pytest.raises(UserError, match="data.label_column='y' is not a column of the validation split"):
        require_columns(ds, {"data.label_column": "y"}, "validation")


def test_drop_missing(ds: datasets.Dataset) -> None:
    kept, dropped = drop_missing(ds, {"data.text_column": "text", "data.label_column": "label", "x": None})
    assert dropped == 5  # empty, None, whitespace-only text; None and NaN label
    assert kept["text"][:] == ["a"]
    assert kept["label"][:] == [0]
    assert len(ds) == 6  # the input is not modified


def test_drop_missing_list_and_nothing_to_drop(ds: datasets.Dataset) -> None:
    kept, dropped = drop_missing(ds, ["label"])
    assert dropped == 2  # None and NaN
    assert kept["text"][:] == ["a", "", None, "  "]
    same, none = drop_missing(kept.select_columns(["text"]).select([0]), ["text"])
    assert none == 0 and same["text"][:] == ["a"]


def test_drop_missing_respects_selected_view(ds: datasets.Dataset) -> None:
    view = ds.select([5, 3, 0])
    kept, dropped = drop_missing(view, ["text"])
    assert dropped == 0
    kept, dropped = drop_missing(view, ["label"])
    assert (dropped, kept["text"][:]) == (2, ["a"])

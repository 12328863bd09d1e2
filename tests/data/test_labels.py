"""Label maps: building, encoding, decoding, JSON round trip, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunelab.data.labels import LabelMap
from tunelab.errors import UserError


def test_string_labels_sorted() -> None:
    lm = LabelMap.from_values(["pos", "neg", "pos", "neutral"])
    assert lm.names == ["neg", "neutral", "pos"]
    assert lm.num_labels == 3
    assert lm.encode(["pos", "neg"], "train") == [2, 0]
    assert lm.decode([2, 0, 1]) == ["pos", "neg", "neutral"]


def test_given_names_fix_the_order() -> None:
    lm = LabelMap.from_values(["fresh", "rotten", "fresh"], names=["rotten", "fresh"])
    assert lm.names == ["rotten", "fresh"]
    assert lm.encode(["fresh", "rotten"], "validation") == [1, 0]


def test_given_names_reject_other_values() -> None:
    with pytest.raises(UserError) as err:
        LabelMap.from_values(["fresh", "meh"], names=["rotten", "fresh"])
    assert str(err.value) == (
        "label 'meh' at row 1 of the train split is not in data.label_names; known labels: "
        "'rotten', 'fresh'"
    )


def test_int_labels_keep_their_ids() -> None:
    lm = LabelMap.from_values([2, 0, 1, 1])
    assert lm.names == ["0", "1", "2"]
    assert lm.encode([2, 0], "train") == [2, 0]
    assert lm.encode([np.int64(1), 1.0, "1"], "test") == [1, 1, 1]


def test_float_valued_ints_equal_ints() -> None:
    lm = LabelMap.from_values([1.0, 0.0, 1.0])
    assert lm.names == ["0", "1"]
    assert lm.encode([1, 0.0], "validation") == [1, 0]


def test_non_contiguous_ints_sort_numerically() -> None:
    lm = LabelMap.from_values([10, 2, 5, 2])
    assert lm.names == ["2", "5", "10"]
    assert lm.encode([10], "train") == [2]


def test_bool_labels() -> None:
    lm = LabelMap.from_values([True, False, np.bool_(True)])
    assert lm.names == ["false", "true"]
    assert lm.encode([False, True], "train") == [0, 1]


def test_int_ids_with_named_labels() -> None:
    lm = LabelMap.from_values([0, 1, 1], names=["negative", "positive"])
    assert lm.encode([1, "negative"], "train") == [1, 0]


def test_unseen_label_error_names_value_split_row_and_known() -> None:
    lm = LabelMap.from_values(["neg", "pos"])
    with pytest.raises(UserError) as err:
        lm.encode(["pos", "neg", "neutral", "other"], "validation")
    assert str(err.value) == (
        "label 'neutral' at row 2 of the validation split was never seen in training; "
        "known labels: 'neg', 'pos'"
    )


def test_unseen_int_label() -> None:
    lm = LabelMap.from_values([0, 1])
    with pytest.raises(UserError, match="label 2 at row 0 of the test split was never seen"):
        lm.encode([2], "test")


def test_missing_label() -> None:
    with pytest.raises(UserError, match="the label at row 1 of the train split is missing"):
        LabelMap.from_values(["a", None, "b"])
    with pytest.raises(UserError, match="row 0 of the test split is missing"):
        LabelMap.from_values(["a", "b"]).encode([float("nan")], "test")


@pytest.mark.parametrize("values", [["pos", "pos"], [1, 1.0, "1"], []])
def test_fewer_than_two_labels(values: list) -> None:
    with pytest.raises(UserError, match="classification needs at least 2"):
        LabelMap.from_values(values)


def test_one_label_used_with_names() -> None:
    with pytest.raises(UserError, match="only one distinct label"):
        LabelMap.from_values(["a", "a"], names=["a", "b"])


def test_json_round_trip() -> None:
    lm = LabelMap.from_values(["rotten", "fresh"], names=["rotten", "fresh"])
    data = lm.to_dict()
    assert data == {"id2label": {"0": "rotten", "1": "fresh"}, "label2id": {"rotten": 0, "fresh": 1}}
    again = LabelMap.from_dict(json.loads(json.dumps(data)))
    assert again == lm and again.names == ["rotten", "fresh"]
    assert LabelMap.from_dict({"id2label": {1: "b", 0: "a"}}).names == ["a", "b"]


def test_from_dict_rejects_gaps_and_mismatch() -> None:
    with pytest.raises(UserError, match="label ids must be 0..1 without gaps"):
        LabelMap.from_dict({"id2label": {"0": "a", "2": "b"}})
    with pytest.raises(UserError, match="does not match"):
        LabelMap.from_dict({"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 1, "b": 0}})


def test_decode_out_of_range() -> None:
    with pytest.raises(ValueError):
        LabelMap(["a", "b"]).decode([2])


@pytest.mark.parametrize("value,numeric,shown", [
    (None, False, "is missing"), ("  ", False, "is empty"), (float("nan"), False, "missing (NaN)"),
    (float("inf"), False, "is inf"), (None, True, "is missing"), ("NaN", True, "'NaN' (not a number)"),
    ("-inf", True, "'-inf'"), (float("-inf"), True, "is -inf"), ("lots", True, "'lots' (str)"),
    (True, True, "True (a boolean)"),
])
def test_check_label_values_names_the_row_column_and_value(value, numeric, shown) -> None:
    from tunelab.data.labels import check_label_values

    values = [1, 0, value, 1]
    with pytest.raises(UserError) as err:
        check_label_values(values, "train", lambda split, row: f"line {row + 1} of f.jsonl", "score", numeric=numeric)
    assert str(err.value).startswith("line 3 of f.jsonl: the ") and "(column 'score')" in str(err.value)
    assert shown in str(err.value), str(err.value)


def test_check_label_values_accepts_good_values() -> None:
    from tunelab.data.labels import check_label_values

    place = lambda split, row: "?"  # noqa: E731
    check_label_values(["pos", "neg", "inf", 3, 2.5], "train", place, "label", numeric=False)  # "inf" is a name
    check_label_values([1, 2.5, "3.5", -0.0], "train", place, "label", numeric=True)

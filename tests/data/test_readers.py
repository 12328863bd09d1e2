"""Reading every accepted source format, and the errors for bad sources."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from tunelab.data.readers import is_builtin, load_source, read_file
from tunelab.errors import UserError

ROWS = [
    {"text": "great film", "label": "pos"},
    {"text": "dull, long", "label": "neg"},
    {"text": "fine", "label": "pos"},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _assert_rows(ds: datasets.Dataset) -> None:
    assert ds.column_names == ["text", "label"]
    assert ds["text"][:] == [r["text"] for r in ROWS]
    assert ds["label"][:] == [r["label"] for r in ROWS]


def test_jsonl(tmp_path: Path) -> None:
    splits = load_source(str(_write_jsonl(tmp_path / "d.jsonl", ROWS)))
    assert list(splits) == ["train"]
    _assert_rows(splits["train"])


def test_jsonl_skips_blank_lines_and_unions_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0, "extra": 5}\n')
    ds = load_source(str(path))["train"]
    assert len(ds) == 2
    assert ds["extra"][:] == [None, 5]
    assert ds["label"][:] == [1, 0]  # ints stay ints despite the missing key


def test_json_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    _assert_rows(load_source(str(path))["train"])


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.json", ROWS)
    _assert_rows(load_source(str(path))["train"])


def test_json_columns_and_wrapped_records(tmp_path: Path) -> None:
    cols = tmp_path / "cols.json"
    cols.write_text(json.dumps({"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}))
    _assert_rows(read_file(cols))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}))
    _assert_rows(read_file(wrapped))


def test_csv_and_tsv(tmp_path: Path) -> None:
    frame = pd.DataFrame(ROWS)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    _assert_rows(load_source(str(tmp_path / "d.csv"))["train"])
    _assert_rows(load_source(str(tmp_path / "d.tsv"))["train"])


def test_csv_keeps_na_text_and_marks_empty_fields_missing(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\nNA,1\n,0\n")
    ds = load_source(str(path))["train"]
    assert ds["text"][:] == ["NA", None]


def test_parquet(tmp_path: Path) -> None:
    pd.DataFrame(ROWS, index=[10, 11, 12]).to_parquet(tmp_path / "d.parquet")
    ds = load_source(str(tmp_path / "d.parquet"))["train"]
    _assert_rows(ds)  # the pandas index column is dropped


def test_save_to_disk_dataset(tmp_path: Path) -> None:
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    splits = load_source(str(tmp_path / "saved"))
    assert list(splits) == ["train"]
    _assert_rows(splits["train"])


def test_save_to_disk_dataset_dict_normalises_split_names(tmp_path: Path) -> None:
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS),
            "dev": datasets.Dataset.from_list(ROWS[:1]),
            "test": datasets.Dataset.from_list(ROWS[1:]),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    splits = load_source(str(tmp_path / "saved"))
    assert sorted(splits) == ["test", "train", "validation"]
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [3, 1, 2]
    assert splits["validation"]["text"][:] == ["great film"]


def test_folder_of_split_files(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", ROWS)
    pd.DataFrame(ROWS[:2]).to_csv(folder / "valid.csv", index=False)
    (folder / "test.json").write_text(json.dumps(ROWS[2:]))
    (folder / "README.md").write_text("ignored")
    splits = load_source(str(folder))
    assert sorted(splits) == ["test", "train", "validation"]
    _assert_rows(splits["train"])
    assert splits["validation"]["text"][:] == ["great film", "dull, long"]
    assert splits["test"]["label"][:] == ["pos"]


def test_validation_and_test_file_override(tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", ROWS)
    val = _write_jsonl(tmp_path / "v.jsonl", ROWS[:1])
    test = _write_jsonl(tmp_path / "t.jsonl", ROWS[1:])
    splits = load_source(str(train), validation_file=str(val), test_file=str(test))
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "validation": 1, "test": 2}


def test_missing_file_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data file or folder '.*nope\.jsonl' does not exist") as err:
        load_source(str(tmp_path / "nope.jsonl"))
    assert "rotten_tomatoes" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_builtin_suggests_closest() -> None:
    with pytest.raises(UserError) as err:
        load_source("rotten_tomato")
    message = str(err.value)
    assert "'rotten_tomato' is not a built-in dataset" in message
    assert "did you mean 'rotten_tomatoes'?" in message
    assert "built-in datasets: rotten_tomatoes, rotten_tomatoes_full" in message


def test_missing_validation_file(tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(UserError, match="validation_file '.*missing.csv' does not exist"):
        load_source(str(train), validation_file=str(tmp_path / "missing.csv"))


def test_bad_extension(tmp_path: Path) -> None:
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(UserError) as err:
        load_source(str(path))
    assert "unsupported data file extension '.xlsx'" in str(err.value)
    assert ".jsonl, .json, .csv, .tsv, .parquet" in str(err.value)


def test_malformed_jsonl_names_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": "c" "label": 1}\n')
    with pytest.raises(UserError, match=r"malformed JSON in .*d\.jsonl at line 3, column \d+"):
        load_source(str(path))


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2 of .* is a JSON list, not an object"):
        load_source(str(path))


def test_malformed_json_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[{"text": "a"},\n {"text": }]')
    with pytest.raises(UserError, match=r"malformed JSON in .*d\.json at line 2"):
        load_source(str(path))


def test_mixed_types_name_the_column(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"label": 1}, {"label": "pos"}])
    with pytest.raises(UserError, match="column 'label' of .* mixes value types"):
        load_source(str(path))


def test_malformed_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,0,extra\n")
    with pytest.raises(UserError, match=r"malformed CSV file .*d\.csv: .*line 3"):
        load_source(str(path))


def test_bad_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match=r"cannot read Parquet file .*d\.parquet"):
        load_source(str(path))


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.jsonl", ""), ("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.json", ""), ("e.csv", ""),
     ("e.csv", "text,label\n"), ("e.tsv", "")],
)
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=rf"{name}.*(has no rows|is empty)"):
        load_source(str(path))


def test_empty_parquet(tmp_path: Path) -> None:
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(UserError, match=r"e\.parquet has no rows"):
        load_source(str(tmp_path / "e.parquet"))


def test_empty_saved_split(tmp_path: Path) -> None:
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(ROWS).select([])}
    ).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserError, match="the validation split of folder .* has no rows"):
        load_source(str(tmp_path / "saved"))


def test_folder_without_train_file(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "validation.jsonl", ROWS)
    with pytest.raises(UserError, match="holds no train file; expected one of train.jsonl"):
        load_source(str(tmp_path))


def test_folder_with_two_validation_files(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "train.jsonl", ROWS)
    _write_jsonl(tmp_path / "dev.jsonl", ROWS)
    _write_jsonl(tmp_path / "val.jsonl", ROWS)
    with pytest.raises(UserError, match="two files for the validation split"):
        load_source(str(tmp_path))


def test_is_builtin() -> None:
    assert is_builtin("rotten_tomatoes")
    assert is_builtin("rotten_tomatoes_full")
    assert not is_builtin("rotten_tomato")
    assert not is_builtin("data/train.jsonl")


def test_load_builtin_through_load_source() -> None:
    splits = load_source("rotten_tomatoes")
    assert list(splits) == ["train"]
    assert len(splits["train"]) == 4866


# ---------------------------------------------------------------------------- encodings

WESTERN = "café crème, très bon\u2019s"  # é, è (latin-1 and cp1252) and a cp1252-only quote


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252", "utf-16"])
def test_named_encodings_are_decoded(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(f"text,label\n\"{WESTERN}\",1\nplain,0\n".encode(encoding))
    ds = read_file(path, encoding="utf-8" if encoding == "utf-8-sig" else encoding)  # a BOM is skipped
    assert ds["text"][:] == [WESTERN, "plain"] and ds.column_names == ["text", "label"]


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "utf-16"])
def test_auto_detects_the_encoding(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [{"text": f"{WESTERN} number {i}", "label": i % 2} for i in range(20)]
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode(encoding))
    assert read_file(path, encoding="auto")["text"][:] == [r["text"] for r in lines]


def test_undecodable_bytes_name_the_line_and_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nfine,1\ncaf\xe9,0\n".encode("latin-1"))
    with pytest.raises(UserError) as err:
        read_file(path)
    message = str(err.value)
    assert "not UTF-8 text (byte 0xe9 on line 3)" in message and "data.encoding" in message and "auto" in message
    with pytest.raises(UserError, match="not cp1252 text"):
        path.write_bytes(b"text,label\nx\x81y,1\n")  # 0x81 is undefined in cp1252
        read_file(path, encoding="cp1252")


def test_check_encoding_accepts_codecs_and_auto() -> None:
    from tunelab.data.readers import check_encoding

    assert check_encoding("auto") == "auto" and check_encoding("Latin-1") == "Latin-1"
    with pytest.raises(ValueError, match="not a known text encoding"):
        check_encoding("klingon")
    with pytest.raises(ValueError, match="not a text encoding"):
        check_encoding("rot13")


# ---------------------------------------------------------------------------- where a row came from

def test_places_count_rows_as_the_user_does(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')  # a blank line 2
    csv = tmp_path / "b.csv"
    csv.write_text("text,label\na,1\nb,0\n")
    records = tmp_path / "c.json"
    records.write_text(json.dumps(ROWS))
    assert load_source(str(jsonl)).place("train", 1) == f"line 3 of file {jsonl}"
    assert load_source(str(csv)).place("train", 1) == f"row 2 of file {csv} (after the header)"
    assert load_source(str(records)).place("train", 0) == f"record 1 of file {records}"
    both = load_source(str(csv), validation_file=str(jsonl))
    assert both.place("validation", 0) == f"line 1 of file {jsonl}"
    assert load_source("rotten_tomatoes").place("train", 4) == "row 5 of the train split of built-in dataset " \
                                                               "'rotten_tomatoes'"

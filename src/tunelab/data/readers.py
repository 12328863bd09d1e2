"""Read a dataset from a built-in name, a local file, or a local folder.

Everything is read in memory with json/pandas/pyarrow and wrapped as :class:`datasets.Dataset`;
nothing is written to the Hugging Face cache and no network is used.

Accepted sources (see :func:`load_source`):

* a built-in dataset name (``tunelab.data.builtin.BUILTIN_DATASETS``);
* a file ending in ``.jsonl``, ``.json``, ``.csv``, ``.tsv`` or ``.parquet`` (becomes ``train``);
* a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a folder holding ``train.<ext>`` plus optional ``validation|valid|val|dev.<ext>`` and
  ``test.<ext>``.

Text files are read as UTF-8 (a byte-order mark is skipped) unless ``encoding`` names another codec;
``encoding="auto"`` detects it with charset-normalizer. :func:`load_source` returns :class:`Splits`,
which remembers where every split came from, so a bad row can be named the way the user counts it
("line 7 of data/train.jsonl", "row 3 of data/train.csv after the header").
"""

from __future__ import annotations

import codecs
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from tunelab.data.builtin import BUILTIN_DATASETS, get_builtin_dataset
from tunelab.errors import UserError, did_you_mean

#: File extensions that :func:`read_file` understands.
ACCEPTED_EXTENSIONS: tuple[str, ...] = (".jsonl", ".json", ".csv", ".tsv", ".parquet")

#: Alternative split names and the canonical name they map to.
SPLIT_ALIASES: dict[str, str] = {"valid": "validation", "val": "validation", "dev": "validation"}

_FOLDER_SPLIT_STEMS: dict[str, str] = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}


#: ``data.encoding`` value that detects the encoding of each file.
AUTO_ENCODING = "auto"


def check_encoding(name: str) -> str:
    """Return ``name`` when it is ``auto`` or a text codec Python knows; raise ValueError otherwise."""
    if name == AUTO_ENCODING:
        return name
    try:
        codec = codecs.lookup(name)
    except LookupError:
        raise ValueError(f"'{name}' is not a known text encoding; accepted: auto (detect), utf-8, latin-1, "
                         "cp1252, utf-16, or any other Python codec name") from None
    if not getattr(codec, "_is_text_encoding", True):
        raise ValueError(f"'{name}' is not a text encoding; accepted: auto, utf-8, latin-1, cp1252, ...")
    return name


@dataclass(frozen=True)
class Origin:
    """Where a split's rows came from, to name one of its rows as the user counts them."""

    what: str  # "file data/train.csv", "built-in dataset 'rotten_tomatoes'", ...
    split: str
    kind: str = "table"  # "jsonl", "json", "csv" or "table" (parquet, saved folders, built-ins)
    lines: tuple[int, ...] | None = None  # jsonl: the file line of every row (blank lines skipped)

    def row(self, index: int) -> str:
        """The 0-based row ``index`` in the user's terms, e.g. ``line 7 of file data/train.jsonl``."""
        if self.kind == "jsonl" and self.lines is not None and index < len(self.lines):
            return f"line {self.lines[index]} of {self.what}"
        if self.kind == "csv":
            return f"row {index + 1} of {self.what} (after the header)"
        if self.kind == "json":
            return f"record {index + 1} of {self.what}"
        return f"row {index + 1} of the {self.split} split of {self.what}"


class Splits(dict):
    """Split name -> :class:`datasets.Dataset`, plus the :class:`Origin` of every split as read."""

    def __init__(self, splits: dict[str, datasets.Dataset], origins: dict[str, Origin]) -> None:
        super().__init__(splits)
        self.origins = origins

    def place(self, split: str, index: int) -> str:
        """Row ``index`` (0-based) of ``split`` as the user counts it."""
        origin = self.origins.get(split) or Origin(f"the {split} split", split)
        return origin.row(index)


def is_builtin(source: str) -> bool:
    """Return True when ``source`` names a built-in dataset."""
    return str(source) in BUILTIN_DATASETS


def normalize_split_name(name: str) -> str:
    """Map ``valid``/``val``/``dev`` (any case) to ``validation``; other names are kept."""
    return SPLIT_ALIASES.get(name.lower(), name)


def load_source(
    source: str,
    *,
    validation_file: str | None = None,
    test_file: str | None = None,
    encoding: str = "utf-8",
) -> Splits:
    """Load ``source`` as a mapping of split name to dataset (a :class:`Splits`).

    ``validation_file`` and ``test_file`` (paths to single files) replace or add the
    ``validation`` and ``test`` splits. Every returned split has at least one row.
    A built-in name wins over a same-named local folder; write ``./name`` to read the folder.
    ``encoding`` is the text encoding of the files (``auto``: detected per file).

    Raises :class:`UserError` for a missing path, an unsupported extension, an unreadable or
    malformed file, or an empty split.
    """
    source = str(source)
    origins: dict[str, Origin] = {}
    if is_builtin(source):
        splits = dict(get_builtin_dataset(source).load())
        origin = f"built-in dataset '{source}'"
        origins = {name: Origin(origin, name) for name in splits}
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise _missing_source_error(source, path)
        if path.is_dir():
            splits, origins = _read_folder(path, encoding)
            origin = f"folder {source}"
        else:
            splits, origins = {}, {}
            splits["train"], origins["train"] = _read_one(path, "train", encoding)
            origin = f"file {source}"

    for split, extra in (("validation", validation_file), ("test", test_file)):
        if extra is not None:
            extra_path = Path(str(extra)).expanduser()
            if not extra_path.exists():
                raise UserError(
                    f"{split}_file '{extra}' does not exist (resolved to {extra_path.resolve()})"
                )
            if extra_path.is_dir():
                raise UserError(
                    f"{split}_file '{extra}' is a folder; give a single "
                    f"{'/'.join(ACCEPTED_EXTENSIONS)} file"
                )
            splits[split], origins[split] = _read_one(extra_path, split, encoding)

    if "train" not in splits:
        raise UserError(
            f"{origin} has no train split; found splits: {', '.join(sorted(splits)) or 'none'}"
        )
    for split, ds in splits.items():
        if len(ds) == 0:
            raise UserError(f"the {split} split of {origin} has no rows")
    return Splits(splits, origins)


def read_file(path: str | os.PathLike[str], encoding: str = "utf-8") -> datasets.Dataset:
    """Read one ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file into a dataset.

    Raises :class:`UserError` when the extension is not supported, the file is not text in
    ``encoding`` (``auto``: detected), it cannot be parsed (naming the parser's reason, with the line
    number for JSON), or it holds no rows.
    """
    return _read_one(Path(path), "train", encoding)[0]


def _read_one(path: Path, split: str, encoding: str) -> tuple[datasets.Dataset, Origin]:
    """One file as a dataset, and the :class:`Origin` that names its rows."""
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_EXTENSIONS:
        raise UserError(
            f"unsupported data file extension '{path.suffix or '(none)'}' for {path}; "
            f"accepted: {', '.join(ACCEPTED_EXTENSIONS)}, a folder written by "
            "datasets.save_to_disk, or a built-in dataset name"
        )
    lines: tuple[int, ...] | None = None
    try:
        if suffix == ".parquet":
            table, kind = _read_parquet(path), "table"
        else:
            text = _read_text(path, encoding)
            if suffix == ".jsonl":
                records, numbers = _read_json_lines(text, path)
                table, kind, lines = _records_to_table(records, path), "jsonl", tuple(numbers)
            elif suffix == ".json":
                table, kind, lines = _read_json(text, path)
            else:
                table, kind = _read_delimited(text, path, sep="," if suffix == ".csv" else "\t"), "csv"
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror or exc}") from exc
    if table.num_rows == 0:
        raise UserError(f"data file {path} has no rows")
    return datasets.Dataset(InMemoryTable(table)), Origin(f"file {path}", split, kind, lines)


def _read_text(path: Path, encoding: str) -> str:
    """The file's text in ``encoding`` (``auto``: detected with charset-normalizer); a UTF-8
    byte-order mark is dropped. An undecodable file is one :class:`UserError` naming the byte."""
    raw = path.read_bytes()
    if encoding == AUTO_ENCODING:
        encoding = _detect_encoding(raw, path)
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        shown = "UTF-8" if encoding == "utf-8-sig" else encoding
        raise UserError(
            f"cannot read data file {path}: not {shown} text (byte 0x{raw[exc.start]:02x} on line {line}); set "
            f"data.encoding to the file's encoding (e.g. latin-1, cp1252) or data.encoding=auto to detect it"
        ) from None


#: Tie-break of :func:`_detect_encoding`: Western legacy encodings, commonest first.
_PREFERRED_ON_TIE = ("utf_8", "ascii", "cp1252", "latin_1", "iso8859_15")


def _detect_encoding(raw: bytes, path: Path) -> str:
    """The most likely text encoding of ``raw`` (charset-normalizer), UTF-8 when it is plain ASCII.

    Short Western text often decodes equally well (same chaos and coherence) as several code pages,
    e.g. cp1250 and cp1252; such a tie goes to the commonest (``_PREFERRED_ON_TIE``), so "très" does
    not come back as "trčs"."""
    from charset_normalizer import from_bytes

    if not raw:
        return "utf-8"
    matches = list(from_bytes(raw))
    if not matches:
        raise UserError(f"cannot read data file {path}: data.encoding=auto found no text encoding that "
                        "decodes it (is it a binary file?); set data.encoding to its encoding")
    top = matches[0]
    tied = {m.encoding for m in matches if (m.chaos, m.coherence) == (top.chaos, top.coherence)}
    chosen = next((name for name in _PREFERRED_ON_TIE if name in tied), top.encoding)
    return "utf-8" if chosen in ("ascii", "utf_8") else chosen


def _missing_source_error(source: str, path: Path) -> UserError:
    """Explain a source that is neither a built-in name nor an existing path."""
    builtins = ", ".join(sorted(BUILTIN_DATASETS))
    looks_like_path = (
        "/" in source
        or "\\" in source
        or source.startswith((".", "~"))
        or Path(source).suffix != ""
    )
    if looks_like_path:
        return UserError(
            f"data file or folder '{source}' does not exist (resolved to {path.resolve()}); "
            f"built-in datasets: {builtins}"
        )
    return UserError(
        f"'{source}' is not a built-in dataset{did_you_mean(source, BUILTIN_DATASETS)} and no "
        f"file or folder of that name exists in {Path.cwd()}; built-in datasets: {builtins}"
    )


def _read_folder(path: Path, encoding: str = "utf-8") -> tuple[dict[str, datasets.Dataset], dict[str, Origin]]:
    """Read a ``save_to_disk`` folder or a folder of ``<split>.<ext>`` files."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        saved = _read_saved(path)
        return saved, {name: Origin(f"dataset folder {path}", name) for name in saved}

    found: dict[str, Path] = {}
    for child in sorted(path.iterdir()):
        stem = child.name[: -len(child.suffix)] if child.suffix else child.name
        if (
            not child.is_file()
            or child.suffix.lower() not in ACCEPTED_EXTENSIONS
            or stem.lower() not in _FOLDER_SPLIT_STEMS
        ):
            continue
        split = _FOLDER_SPLIT_STEMS[stem.lower()]
        if split in found:
            raise UserError(
                f"folder {path} has two files for the {split} split: {found[split].name} and "
                f"{child.name}; keep one"
            )
        found[split] = child
    if "train" not in found:
        names = ", ".join(f"train{ext}" for ext in ACCEPTED_EXTENSIONS)
        raise UserError(
            f"folder {path} holds no train file; expected one of {names} (plus optional "
            "validation/valid/val/dev and test files), or a folder written by "
            "datasets.save_to_disk"
        )
    read = {split: _read_one(file, split, encoding) for split, file in found.items()}
    return {split: ds for split, (ds, _) in read.items()}, {split: origin for split, (_, origin) in read.items()}


def _read_saved(path: Path) -> dict[str, datasets.Dataset]:
    """Read a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    _check_saved_not_empty(path)
    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as exc:  # datasets raises many types for a damaged folder
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"cannot read dataset folder {path} (written by datasets.save_to_disk): {reason}"
        ) from exc
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    splits: dict[str, datasets.Dataset] = {}
    for name, ds in loaded.items():
        canonical = normalize_split_name(name)
        if canonical in splits:
            raise UserError(
                f"dataset folder {path} has more than one validation split "
                f"({', '.join(n for n in loaded if normalize_split_name(n) == canonical)}); "
                "keep one"
            )
        splits[canonical] = ds
    return splits


def _check_saved_not_empty(path: Path) -> None:
    """Name an empty saved split up front (datasets itself fails on it with an IndexError)."""
    try:
        if (path / "dataset_dict.json").is_file():
            names = json.loads((path / "dataset_dict.json").read_text())["splits"]
            folders = {name: path / name for name in names}
        else:
            folders = {"train": path}
        for name, folder in folders.items():
            state = json.loads((folder / "state.json").read_text())
            if state.get("_data_files") == []:
                raise UserError(f"the {name} split of folder {path} has no rows")
    except (OSError, ValueError, KeyError, TypeError):
        return  # let datasets.load_from_disk report the damage


def _read_json_lines(text: str, path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Parse JSON lines; blank lines are skipped; every line must be a JSON object. Returns the
    records and the (1-based) line of each."""
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"malformed JSON in {path} at line {lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
        if not isinstance(record, dict):
            raise UserError(
                f"line {lineno} of {path} is a JSON {type(record).__name__}, not an object; "
                'each line must look like {"text": ..., "label": ...}'
            )
        records.append(record)
        numbers.append(lineno)
    return records, numbers


def _read_json(text: str, path: Path) -> tuple[pa.Table, str, tuple[int, ...] | None]:
    """Parse a ``.json`` file: a list of records, a dict of equal-length columns, or JSON lines.
    Returns the table, how its rows are counted (``json`` records or ``jsonl`` lines) and the lines."""
    if not text.strip():
        raise UserError(f"data file {path} has no rows")
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            records, numbers = _read_json_lines(text, path)
            return _records_to_table(records, path), "jsonl", tuple(numbers)
        raise UserError(
            f"malformed JSON in {path} at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    if isinstance(content, dict):
        lists = {k: v for k, v in content.items() if isinstance(v, list)}
        only = next(iter(lists.values())) if len(content) == 1 and lists else None
        if only is not None and all(isinstance(r, dict) for r in only):
            content = only  # e.g. {"data": [{...}, {...}]}
        elif lists and len(lists) == len(content) and len({len(v) for v in lists.values()}) == 1:
            return _columns_to_table(content, path), "table", None
        else:
            raise UserError(
                f"JSON file {path} holds an object; expected a list of records "
                '([{"text": ..., "label": ...}, ...]), JSON lines, or equal-length columns'
            )
    if not isinstance(content, list):
        raise UserError(
            f"JSON file {path} holds a {type(content).__name__}; expected a list of records"
        )
    for index, record in enumerate(content):
        if not isinstance(record, dict):
            raise UserError(
                f"record {index} of {path} is a JSON {type(record).__name__}, not an object; "
                'expected a list like [{"text": ..., "label": ...}, ...]'
            )
    return _records_to_table(content, path), "json", None


def _records_to_table(records: list[dict[str, Any]], path: Path) -> pa.Table:
    """Turn records into an Arrow table; keys missing from a record become nulls."""
    columns: dict[str, None] = {}
    for record in records:
        for key in record:
            columns.setdefault(key, None)
    data = {name: [record.get(name) for record in records] for name in columns}
    return _columns_to_table(data, path)


def _columns_to_table(data: dict[str, list[Any]], path: Path) -> pa.Table:
    """Build an Arrow table column by column so a type clash names its column."""
    arrays = {}
    for name, values in data.items():
        values = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
        try:
            arrays[str(name)] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UserError(
                f"column '{name}' of {path} mixes value types ({_short(exc)}); "
                "every value of a column must have the same type"
            ) from exc
    return pa.table(arrays) if arrays else pa.table({})


def _read_delimited(text: str, path: Path, *, sep: str) -> pa.Table:
    """Read CSV/TSV text with a header row; only empty fields become missing values."""
    import io

    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as exc:
        raise UserError(f"data file {path} is empty (no header row and no rows)") from exc
    except pd.errors.ParserError as exc:
        raise UserError(f"malformed {path.suffix[1:].upper()} file {path}: {_short(exc)}") from exc
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UserError(f"cannot convert {path}: {_short(exc)}") from exc


def _read_parquet(path: Path) -> pa.Table:
    """Read a Parquet file, dropping pandas index columns."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise UserError(f"cannot read Parquet file {path}: {_short(exc)}") from exc
    keep = [n for n in table.column_names if not n.startswith("__index_level_")]
    metadata = table.schema.metadata or {}
    # keep the datasets features (e.g. ClassLabel names); drop pandas' index bookkeeping
    kept_meta = {k: v for k, v in metadata.items() if k == b"huggingface"} or None
    return table.select(keep).replace_schema_metadata(kept_meta)


def _short(exc: BaseException) -> str:
    """First line of an exception message, trimmed to a sensible length."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

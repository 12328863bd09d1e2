"""Read a dataset from a built-in name, a local file, or a local folder.

Everything is read in memory with json/pandas/pyarrow and wrapped as :class:`datasets.Dataset`;
nothing is written to the Hugging Face cache and no network is used.

Accepted sources (see :func:`load_source`):

* a built-in dataset name (``tunelab.data.builtin.BUILTIN_DATASETS``);
* a file ending in ``.jsonl``, ``.json``, ``.csv``, ``.tsv`` or ``.parquet`` (becomes ``train``);
* a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a folder holding ``train.<ext>`` plus optional ``validation|valid|val|dev.<ext>`` and
  ``test.<ext>``.
"""

from __future__ import annotations

import json
import math
import os
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
) -> dict[str, datasets.Dataset]:
    """Load ``source`` as a mapping of split name to dataset.

    ``validation_file`` and ``test_file`` (paths to single files) replace or add the
    ``validation`` and ``test`` splits. Every returned split has at least one row.
    A built-in name wins over a same-named local folder; write ``./name`` to read the folder.

    Raises :class:`UserError` for a missing path, an unsupported extension, an unreadable or
    malformed file, or an empty split.
    """
    source = str(source)
    if is_builtin(source):
        splits = dict(get_builtin_dataset(source).load())
        origin = f"built-in dataset '{source}'"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise _missing_source_error(source, path)
        if path.is_dir():
            splits = _read_folder(path)
            origin = f"folder {source}"
        else:
            splits = {"train": read_file(path)}
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
            splits[split] = read_file(extra_path)

    if "train" not in splits:
        raise UserError(
            f"{origin} has no train split; found splits: {', '.join(sorted(splits)) or 'none'}"
        )
    for split, ds in splits.items():
        if len(ds) == 0:
            raise UserError(f"the {split} split of {origin} has no rows")
    return splits


def read_file(path: str | os.PathLike[str]) -> datasets.Dataset:
    """Read one ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file into a dataset.

    Raises :class:`UserError` when the extension is not supported, the file cannot be parsed
    (naming the parser's reason, with the line number for JSON), or it holds no rows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_EXTENSIONS:
        raise UserError(
            f"unsupported data file extension '{path.suffix or '(none)'}' for {path}; "
            f"accepted: {', '.join(ACCEPTED_EXTENSIONS)}, a folder written by "
            "datasets.save_to_disk, or a built-in dataset name"
        )
    try:
        if suffix == ".jsonl":
            table = _records_to_table(_read_json_lines(path), path)
        elif suffix == ".json":
            table = _read_json(path)
        elif suffix in (".csv", ".tsv"):
            table = _read_delimited(path, sep="," if suffix == ".csv" else "\t")
        else:
            table = _read_parquet(path)
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(
            f"cannot read data file {path}: not UTF-8 text (byte {exc.start})"
        ) from exc
    if table.num_rows == 0:
        raise UserError(f"data file {path} has no rows")
    return datasets.Dataset(InMemoryTable(table))


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


def _read_folder(path: Path) -> dict[str, datasets.Dataset]:
    """Read a ``save_to_disk`` folder or a folder of ``<split>.<ext>`` files."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_saved(path)

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
    return {split: read_file(file) for split, file in found.items()}


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


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines file; blank lines are skipped; every line must be a JSON object."""
    records: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
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
    return records


def _read_json(path: Path) -> pa.Table:
    """Parse a ``.json`` file: a list of records, a dict of equal-length columns, or JSON lines."""
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise UserError(f"data file {path} has no rows")
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _records_to_table(_read_json_lines(path), path)
        raise UserError(
            f"malformed JSON in {path} at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    if isinstance(content, dict):
        lists = {k: v for k, v in content.items() if isinstance(v, list)}
        only = next(iter(lists.values())) if len(content) == 1 and lists else None
        if only is not None and all(isinstance(r, dict) for r in only):
            content = only  # e.g. {"data": [{...}, {...}]}
        elif lists and len(lists) == len(content) and len({len(v) for v in lists.values()}) == 1:
            return _columns_to_table(content, path)
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
    return _records_to_table(content, path)


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


def _read_delimited(path: Path, *, sep: str) -> pa.Table:
    """Read a CSV/TSV file with a header row; only empty fields become missing values."""
    try:
        frame = pd.read_csv(
            path, sep=sep, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
        )
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

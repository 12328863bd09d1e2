"""Contrastive data: which of the three row shapes a source has, its checks, rows and batches.

Three shapes, told apart by the columns (``task.*_column`` name them):

* **pairs** -- ``anchor``, ``positive`` and optional hard negatives (``negative``, ``negative_2``,
  ... or ``task.negative_columns``): the positive is the anchor's match, every other text of the
  batch is a negative (multiple-negatives ranking / InfoNCE);
* **scored** -- two texts (the same ``anchor``/``positive`` columns) and a ``score`` column (a
  graded similarity, e.g. STS 0-5): CoSENT learns the order of the scores;
* **labelled** -- ``text`` and ``label`` (``data.text_column`` / ``data.label_column``): rows with
  the same label are positives of each other (supervised contrastive).

Every text is checked before training: an empty side names its split, row (1-based) and column;
a split whose texts are all the same (no negatives to learn from) is refused.

Rows keep one token list per column (``input_ids_0`` anchor, ``input_ids_1`` positive,
``input_ids_2..`` negatives) because anchors and positives often differ in length (a word vs a
gloss): each column is padded and embedded on its own, as sentence-transformers does.
Evaluation rows also carry ``ids_<c>``, the index of the text in the split's corpus of unique
texts, so retrieval runs over each text once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch

from tunelab.data.columns import is_missing, require_columns
from tunelab.errors import UserError

FORMATS = ("pairs", "scored", "labelled")


@dataclass(frozen=True)
class ContrastiveColumns:
    """The columns a source is read with, and its shape (one of :data:`FORMATS`)."""

    format: str
    texts: tuple[str, ...]
    """Text columns in row order: (anchor, positive, negatives...) / (first, second) / (text,)."""
    score: str | None = None
    label: str | None = None

    def required(self) -> dict[str, str]:
        names = ["task.anchor_column", "task.positive_column"] if self.format != "labelled" else ["data.text_column"]
        fields = dict(zip(names, self.texts))
        fields.update({f"task.negative_columns[{i}]": c for i, c in enumerate(self.texts[2:])})
        if self.score:
            fields["task.score_column"] = self.score
        if self.label:
            fields["data.label_column"] = self.label
        return fields


def detect_columns(ds: datasets.Dataset, cfg: Any, text_column: str | None, label_column: str | None
                   ) -> ContrastiveColumns:
    """The shape of a split from its columns (module docstring); one clear line when it has none."""
    names = list(ds.column_names)
    anchor, positive = cfg.anchor_column, cfg.positive_column
    if anchor in names or positive in names:
        if cfg.score_column in names:
            return ContrastiveColumns("scored", (anchor, positive), score=cfg.score_column)
        negatives = cfg.negative_columns
        if negatives is None:
            negatives = sorted((n for n in names if n.startswith("negative")), key=_negative_order)
        return ContrastiveColumns("pairs", (anchor, positive, *negatives))
    text, label = text_column or "text", label_column or "label"
    if text in names and label in names:
        return ContrastiveColumns("labelled", (text,), label=label)
    raise UserError(f"contrastive data needs (anchor, positive[, negative...]) pairs, (anchor, positive, score) "
                    f"scored pairs, or (text, label) rows; the columns are {', '.join(names) or '(none)'} (set "
                    "task.anchor_column / task.positive_column / task.score_column, or data.text_column / "
                    "data.label_column)")


def _negative_order(name: str) -> tuple[int, str]:
    digits = name[len("negative"):].lstrip("_")
    return (int(digits) if digits.isdigit() else 0, name)


def check_rows(ds: datasets.Dataset, cols: ContrastiveColumns, split: str) -> None:
    """Every text present, every score a finite number; refuse a split with nothing to contrast."""
    require_columns(ds, cols.required(), split)
    for column in cols.texts:
        for i, value in enumerate(ds[column]):
            if is_missing(value) or not isinstance(value, str):
                what = "is empty" if is_missing(value) else f"is not a text ({type(value).__name__})"
                raise UserError(f"{split} row {i + 1}, column '{column}' {what}; every pair needs both sides")
    if cols.score:
        for i, value in enumerate(ds[cols.score]):
            try:
                ok = math.isfinite(float(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UserError(f"{split} row {i + 1}, column '{cols.score}' is {value!r}; scores must be numbers")
    if cols.label:
        for i, value in enumerate(ds[cols.label]):
            if is_missing(value):
                raise UserError(f"{split} row {i + 1}, column '{cols.label}' is empty; every row needs a label")


def check_contrast(ds: datasets.Dataset, cols: ContrastiveColumns, split: str) -> None:
    """The training split must hold something to contrast: different texts, labels or scores."""
    n = len(ds)
    if cols.format == "pairs":
        for column in cols.texts[:2]:
            if n > 1 and len({_key(t) for t in ds[column]}) == 1:
                raise UserError(f"all {n} rows of the {split} split have the same '{column}' text; in-batch "
                                "negatives need different texts")
    elif cols.format == "scored" and len({float(s) for s in ds[cols.score]}) < 2:
        raise UserError(f"all {n} scores of the {split} split are equal; CoSENT learns from their order")
    elif cols.format == "labelled":
        counts: dict[str, int] = {}
        for value in ds[cols.label]:
            counts[str(value)] = counts.get(str(value), 0) + 1
        if len(counts) < 2 or max(counts.values()) < 2:
            raise UserError(f"the {split} split has {len(counts)} label(s) and at most {max(counts.values())} "
                            "row(s) per label; supervised contrastive learning needs at least 2 labels and a "
                            "label with 2 rows")
    if n < 2:
        raise UserError(f"the {split} split has {n} row; contrastive learning needs at least 2")


def _key(text: str) -> str:
    return " ".join(str(text).split()).lower()


def clean(text: str) -> str:
    """Texts are embedded stripped (as sentence-transformers does)."""
    return str(text).strip()


@dataclass
class ContrastiveData:
    """Prepared contrastive data: encoded rows per split, the shape and columns."""

    columns: ContrastiveColumns
    rows: dict[str, list[dict[str, Any]]]
    corpus_sizes: dict[str, int] = field(default_factory=dict)
    labels: None = None


def encode_split(tokenizer: Any, ds: datasets.Dataset, cols: ContrastiveColumns, max_length: int
                 ) -> tuple[list[dict[str, Any]], int]:
    """Token rows of one split (module docstring) and the size of its corpus of unique texts."""
    texts = [[clean(t) for t in ds[c]] for c in cols.texts]
    corpus: dict[str, int] = {}
    ids: list[list[int]] = []
    retrieved = texts[1:] if cols.format == "pairs" else texts  # pairs: positives and negatives are the corpus
    for column in retrieved:
        ids.append([corpus.setdefault(_key(t), len(corpus)) for t in column])
    encoded = [tokenizer(column, truncation=True, max_length=max_length)["input_ids"] for column in texts]
    label_ids = _factorize(ds[cols.label]) if cols.label else None
    rows = []
    for i in range(len(ds)):
        row: dict[str, Any] = {f"input_ids_{c}": encoded[c][i] for c in range(len(texts))}
        offset = 1 if cols.format == "pairs" else 0
        for c, column_ids in enumerate(ids):
            row[f"ids_{c + offset}"] = column_ids[i]
        if cols.score:
            row["score"] = float(ds[cols.score][i])
        if label_ids is not None:
            row["label"] = label_ids[i]
        row["keys"] = tuple(texts[c][i] for c in range(len(texts)))
        rows.append(row)
    return rows, len(corpus)


def _factorize(values: Sequence[Any]) -> list[int]:
    index: dict[str, int] = {}
    return [index.setdefault(str(v), len(index)) for v in values]


def row_length(row: dict[str, Any]) -> int:
    """Tokens of a row over all its columns (for length grouping)."""
    return sum(len(v) for k, v in row.items() if k.startswith("input_ids_"))


@dataclass
class ColumnCollator:
    """Pads each text column of a batch on its own: ``input_ids_<c>`` / ``attention_mask_<c>``, plus
    ``score`` / ``label`` / ``ids_<c>`` tensors and ``num_tokens`` (all real tokens)."""

    pad_id: int

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        tokens = 0
        for key in rows[0]:
            if key.startswith("input_ids_"):
                c = key[len("input_ids_"):]
                width = max(len(r[key]) for r in rows)
                batch[key] = torch.tensor([r[key] + [self.pad_id] * (width - len(r[key])) for r in rows])
                batch[f"attention_mask_{c}"] = torch.tensor([[1] * len(r[key]) + [0] * (width - len(r[key]))
                                                             for r in rows])
                tokens += int(batch[f"attention_mask_{c}"].sum())
            elif key == "score":
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
            elif key == "label" or key.startswith("ids_"):
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        batch["num_tokens"] = torch.tensor(tokens)
        return batch


def column_count(batch: dict[str, Any]) -> int:
    """Text columns in a collated batch."""
    return sum(1 for k in batch if k.startswith("input_ids_"))

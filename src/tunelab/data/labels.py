"""Map classification labels to contiguous ids and back.

Labels may arrive as strings, ints, bools or whole-number floats (CSV columns with gaps are read
as floats, so ``1`` becomes ``1.0``). Every value is normalised to a string key first:
``1``, ``1.0`` and ``"1"`` are the same label, ``True`` is ``"true"``, strings are kept as they
are. Ids are assigned from those keys, so a label map saved as JSON encodes the same way later.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tunelab.errors import UserError

_MAX_LISTED = 20


def label_key(value: Any) -> str | None:
    """Normalise one label value to its string key; ``None`` for a missing value (None/NaN)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if bool(value) else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        as_float = float(value)
        if math.isnan(as_float):
            return None
        if as_float.is_integer():
            return str(int(as_float))
        return repr(as_float)
    return str(value)


def _int_value(value: Any) -> int | None:
    """The value as an int when it is an int or a whole-number float (not a bool), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(float(value))
    return None


def _is_int_string(text: str) -> bool:
    """True when ``text`` spells an integer, e.g. ``"3"`` or ``"-1"``."""
    try:
        int(text)
    except ValueError:
        return False
    return True


def _listed(names: Sequence[str]) -> str:
    """Comma-separated names, shortened when there are many."""
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


class LabelMap:
    """Label names in id order: ``names[i]`` is the label with id ``i``."""

    def __init__(self, names: Iterable[Any]) -> None:
        """Build a map from label names (normalised with :func:`label_key`) in id order."""
        keys = [label_key(n) for n in names]
        if any(k is None for k in keys):
            raise UserError("label names must not be empty/null")
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                raise UserError(f"label name {key!r} appears twice in the label names")
            seen.add(key)  # type: ignore[arg-type]
        self.names: list[str] = [k for k in keys if k is not None]
        self._ids: dict[str, int] = {name: i for i, name in enumerate(self.names)}
        # ints may stand for ids only when no name could itself be read as an int
        self._ints_as_ids = not any(_is_int_string(name) for name in self.names)

    @classmethod
    def from_values(
        cls,
        values: Iterable[Any],
        names: Sequence[Any] | None = None,
        *,
        split: str = "train",
    ) -> LabelMap:
        """Build the map from the training labels.

        * ``names`` given: ids follow that order; a value not among them is an error (ints
          ``0..len(names)-1`` that are not themselves names are read as ids into ``names``).
        * otherwise, if every value is an int (or whole float) and together they are ``0..K-1``,
          the ids are the values and the names ``"0".."K-1"``;
        * otherwise the names are the sorted distinct keys (numerically when all are numbers).

        Raises :class:`UserError` for a missing label, a value outside ``names``, or fewer than
        two distinct labels.
        """
        values = list(values)
        keys = []
        for row, value in enumerate(values):
            key = label_key(value)
            if key is None:
                raise UserError(
                    f"the label at row {row} of the {split} split is missing; drop or fill "
                    "rows without a label"
                )
            keys.append(key)
        distinct = list(dict.fromkeys(keys))
        if names is not None:
            label_map = cls(names)
            if label_map.num_labels < 2:
                raise UserError(
                    f"data.label_names has {label_map.num_labels} name(s); classification "
                    "needs at least 2"
                )
            ids = label_map.encode(values, split, context="data.label_names")
            used = sorted({label_map.names[i] for i in ids})
            if len(used) < 2:
                raise UserError(
                    f"the {split} split has only one distinct label ({_listed(used)}); "
                    "classification needs at least 2"
                )
            return label_map
        if len(distinct) < 2:
            raise UserError(
                f"the {split} split has only {len(distinct)} distinct label(s) "
                f"({_listed(distinct)}); classification needs at least 2"
            )
        ints = [_int_value(v) for v in values]
        if all(i is not None for i in ints):
            # 0..K-1 keeps its ids; other ints (e.g. star ratings 1..5) sort numerically
            return cls(str(i) for i in sorted(set(ints)))  # type: ignore[type-var]
        if all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
               for v in values):
            return cls(sorted(distinct, key=float))  # e.g. 0.5, 1.5: numeric order
        return cls(sorted(distinct))

    @property
    def num_labels(self) -> int:
        """Number of labels."""
        return len(self.names)

    @property
    def label2id(self) -> dict[str, int]:
        """Label name -> id."""
        return dict(self._ids)

    @property
    def id2label(self) -> dict[int, str]:
        """Id -> label name."""
        return dict(enumerate(self.names))

    def _lookup(self, value: Any) -> int | None:
        """Id of ``value``: by its key, else (for ints) as an id; None when unknown."""
        key = label_key(value)
        if key is None:
            return None
        if key in self._ids:
            return self._ids[key]
        as_int = _int_value(value)
        if self._ints_as_ids and as_int is not None and 0 <= as_int < self.num_labels:
            return as_int
        return None

    def encode(
        self, values: Iterable[Any], split: str, *, context: str = "training",
        place: Callable[[str, int], str] | None = None,
    ) -> list[int]:
        """Return the id of every value; raise :class:`UserError` at the first unknown label.

        The message names the value, the split, the row index and the known labels; with ``place``
        (``place(split, row)``, e.g. :meth:`tunelab.data.readers.Splits.place`) the row is named as
        the user counts it in the file instead.
        """
        ids: list[int] = []
        for row, value in enumerate(values):
            label_id = self._lookup(value)
            if label_id is None:
                if label_key(value) is None:
                    raise UserError(
                        f"the label at row {row} of the {split} split is missing; drop or fill "
                        "rows without a label"
                    )
                where = "was never seen in training" if context == "training" else (
                    f"is not in {context}"
                )
                at = f"at {place(split, row)}" if place else f"at row {row} of the {split} split"
                raise UserError(f"label {value!r} {at} {where}; known labels: {_listed(self.names)}")
            ids.append(label_id)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Return the label name of every id (ints, including NumPy/torch integer scalars)."""
        out = []
        for label_id in ids:
            index = int(label_id)
            if not 0 <= index < self.num_labels:
                raise ValueError(f"label id {index} is out of range 0..{self.num_labels - 1}")
            out.append(self.names[index])
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready form: ``{"id2label": {"0": name, ...}, "label2id": {name: 0, ...}}``."""
        return {
            "id2label": {str(i): name for i, name in enumerate(self.names)},
            "label2id": {name: i for i, name in enumerate(self.names)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelMap:
        """Rebuild a map from :meth:`to_dict` output (``id2label`` keys may be str or int).

        Raises :class:`UserError` when the ids are not ``0..K-1`` or ``label2id`` disagrees.
        """
        if "id2label" in data:
            try:
                pairs = sorted((int(k), str(v)) for k, v in data["id2label"].items())
            except (TypeError, ValueError) as exc:
                raise UserError(f"id2label keys must be integer ids; got {exc}") from exc
        elif "label2id" in data:
            pairs = sorted((int(v), str(k)) for k, v in data["label2id"].items())
        else:
            raise UserError("label map must have an 'id2label' or 'label2id' entry")
        ids = [i for i, _ in pairs]
        if ids != list(range(len(ids))):
            raise UserError(f"label ids must be 0..{len(ids) - 1} without gaps; got {ids}")
        label_map = cls(name for _, name in pairs)
        label2id = data.get("label2id")
        if label2id is not None and {str(k): int(v) for k, v in label2id.items()} != (
            label_map._ids
        ):
            raise UserError("label map's label2id does not match its id2label")
        return label_map

    def __eq__(self, other: object) -> bool:
        """Two maps are equal when they have the same names in the same order."""
        return isinstance(other, LabelMap) and self.names == other.names

    def __hash__(self) -> int:
        """Hash of the names, consistent with equality."""
        return hash(tuple(self.names))

    def __len__(self) -> int:
        """Number of labels."""
        return self.num_labels

    def __repr__(self) -> str:
        """``LabelMap(['neg', 'pos'])``."""
        return f"LabelMap({self.names!r})"


def check_label_values(values: Iterable[Any], split: str, place: Callable[[str, int], str], column: str,
                       *, numeric: bool) -> None:
    """Refuse, before any training, the first label that is missing (null, NaN, empty text) or not
    finite (inf); with ``numeric`` (regression targets) also one that is not a number. The message
    names the row as the user counts it (``place(split, row)``) and the column."""
    for row, value in enumerate(values):
        shown = _target_problem(value, numeric)
        if shown is not None:
            what = "regression target" if numeric else "label"
            accepted = "a finite number" if numeric else "a class name or number"
            raise UserError(f"{place(split, row)}: the {what} (column '{column}') is {shown}; every row needs "
                            f"{accepted}: fill it in or remove the row")


def _target_problem(value: Any, numeric: bool) -> str | None:
    """Why ``value`` cannot be a label/target (e.g. ``"missing"``, ``"inf"``), or None when it can."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "missing (empty, null or NaN)" if value is None else "empty"
    if isinstance(value, str) and not numeric:
        return None
    if isinstance(value, (bool, np.bool_)):
        return None if not numeric else f"{value!r} (a boolean)"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"{value!r:.40} ({type(value).__name__})" if numeric else None
    if math.isnan(number):
        return "missing (NaN)" if not isinstance(value, str) else f"{value!r} (not a number)"
    if math.isinf(number):
        return f"{value!r}" if isinstance(value, str) else str(number)
    return None

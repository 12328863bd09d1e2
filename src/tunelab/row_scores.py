"""Test metrics row by row, so a comparison can put intervals on them and test differences.

A task's ``test_metrics`` may add, under :data:`ROWS_KEY`, a mapping ``metric -> RowScores``: for
each of its test metrics that is an aggregate of per-row numbers, those numbers and how they
aggregate. The run keeps them in ``test_rows.json`` (:func:`write_row_scores`), and
``tunelab compare`` resamples them: a bootstrap interval over the test rows for a single run and a
paired bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 16) or McNemar's
test (McNemar, 1947) for two runs scored on the same rows (:mod:`tunelab.compare.stats`).

Aggregates: ``mean`` (accuracy = mean of 0/1 hits, recall@k, a reward), ``root_mean`` (RMSE = the
root of the mean squared error) and ``ratio`` (a token-weighted loss: Σ values / Σ weights, with a
row's summed loss as value and its token count as weight).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

ROWS_KEY = "per_row"
"""Key of a task's test metrics that holds its :class:`RowScores` (taken out before results.json)."""
FILE = "test_rows.json"
"""The run directory's file of per-row test scores."""

Aggregate = Literal["mean", "root_mean", "ratio"]


@dataclass
class RowScores:
    """One metric row by row: ``metric = aggregate(values[, weights])``."""

    values: np.ndarray
    aggregate: Aggregate = "mean"
    weights: np.ndarray | None = None
    binary: bool = False
    """The values are 0/1 hits (McNemar's test applies)."""

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if self.weights is not None:
            self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
            if self.weights.shape != self.values.shape:
                raise ValueError(f"{self.values.size} values but {self.weights.size} weights")
        elif self.aggregate == "ratio":
            raise ValueError("a ratio aggregate needs weights")

    def __len__(self) -> int:
        return int(self.values.size)

    def value(self, index: np.ndarray | None = None) -> float:
        """The metric over all rows, or over the rows ``index`` picks (with repeats: a resample)."""
        return float(self.resampled(index[None, :] if index is not None else np.arange(len(self))[None, :])[0])

    def resampled(self, indices: np.ndarray) -> np.ndarray:
        """The metric for each row of ``indices`` ([B, n] row numbers): one value per resample."""
        v = self.values[indices]
        if self.aggregate == "ratio":
            w = self.weights[indices]
            return v.sum(axis=1) / np.maximum(w.sum(axis=1), 1e-300)
        mean = v.mean(axis=1)
        return np.sqrt(mean) if self.aggregate == "root_mean" else mean

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"aggregate": self.aggregate, "binary": self.binary,
                               "values": [_round(x) for x in self.values]}
        if self.weights is not None:
            out["weights"] = [_round(x) for x in self.weights]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RowScores:
        return cls(np.asarray(data["values"], dtype=np.float64), data.get("aggregate", "mean"),
                   None if data.get("weights") is None else np.asarray(data["weights"], dtype=np.float64),
                   bool(data.get("binary", False)))


def _round(x: float) -> float:
    """Keep the file small: 0/1 hits stay integers, others keep 9 significant digits."""
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(f"{x:.9g}")


def hits(correct: Sequence[bool] | np.ndarray) -> RowScores:
    """Per-row 0/1 hits whose mean is an accuracy."""
    return RowScores(np.asarray(correct, dtype=np.float64), "mean", binary=True)


def split_rows(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, RowScores]]:
    """(the metrics without their per-row part, the per-row part) — a task's test metrics as returned."""
    rows = metrics.get(ROWS_KEY) or {}
    return {k: v for k, v in metrics.items() if k != ROWS_KEY}, dict(rows)


def write_row_scores(path: str | Path, rows: Mapping[str, RowScores], metrics: Mapping[str, Any]) -> None:
    """``test_rows.json``: each metric's per-row scores; each must reproduce the reported metric."""
    for name, scores in rows.items():
        reported = metrics.get(name)
        if isinstance(reported, (int, float)) and math.isfinite(reported) and len(scores):
            if not math.isclose(scores.value(), float(reported), rel_tol=1e-6, abs_tol=1e-9):
                raise ValueError(f"per-row {name} aggregates to {scores.value()} but the task reported {reported}")
    data = {"rows": len(next(iter(rows.values()))) if rows else 0,
            "metrics": {name: scores.to_dict() for name, scores in rows.items()}}
    Path(path).write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def read_row_scores(path: str | Path) -> dict[str, RowScores]:
    """The per-row scores a run saved ({} when it has none or the file cannot be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return {name: RowScores.from_dict(d) for name, d in (data.get("metrics") or {}).items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}

"""Statistics of a comparison: intervals for one method, tests between two.

* Over seeds: mean, sample standard deviation and a Student-t interval of the mean
  (:func:`seed_interval`).
* Over test rows, for one run: a percentile bootstrap interval of the metric, resampling the test
  rows with replacement (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13;
  :func:`bootstrap_interval`).
* Two methods scored on the same test rows: the paired bootstrap (resample row indices once and
  score both methods on the same resample; Koehn, *Statistical Significance Tests for Machine
  Translation Evaluation*, EMNLP 2004), two-sided p-value ``2 · min(P(Δ* ≤ 0), P(Δ* ≥ 0))``
  (:func:`paired_bootstrap`); for 0/1 hits also McNemar's exact test on the discordant rows
  (McNemar, *Psychometrika* 1947; exact binomial form, :func:`mcnemar`). With several seeds, each
  method's per-row scores are averaged over its seeds before resampling (the rows are what is
  resampled; seeds are averaged out), and McNemar pools the discordant rows of seed-matched runs.
* Without per-row scores but with 2+ seeds each: Welch's t-test on the seed values
  (:func:`welch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunelab.row_scores import RowScores


@dataclass(frozen=True)
class Interval:
    """A metric's centre, spread and interval, and how the interval was made."""

    mean: float
    low: float
    high: float
    std: float | None
    n: int
    kind: str
    """``seeds`` (t interval over n seeds) or ``bootstrap`` (over n test rows of one run)."""

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "std": self.std, "n": self.n,
                "kind": self.kind}


@dataclass(frozen=True)
class Test:
    """A two-sided test of ``a`` against ``b`` (the difference is ``a − b`` in the metric's units)."""

    a: str
    b: str
    difference: float
    p_value: float
    method: str
    detail: str = ""

    def significant(self, level: float) -> bool:
        return self.p_value < 1 - level

    def to_dict(self) -> dict[str, float | str]:
        return {"a": self.a, "b": self.b, "difference": self.difference, "p_value": self.p_value,
                "method": self.method, "detail": self.detail}


def seed_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean ± a Student-t interval over seeds (a single value gets a zero-width interval and no std)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, mean, mean, None, int(x.size), "seeds")
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, std, int(x.size), "seeds")


def resample_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` row numbers drawn with replacement (fixed seed: the report is reproducible)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(scores: RowScores, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """The metric over all rows and its percentile bootstrap interval over the rows."""
    values = scores.resampled(resample_indices(len(scores), resamples, seed))
    low, high = np.quantile(values, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(scores.value(), float(low), float(high), float(values.std(ddof=1)), len(scores), "bootstrap")


def average_rows(runs: Sequence[RowScores]) -> RowScores:
    """Per-row scores averaged over runs of one method (its seeds) on the same rows."""
    first = runs[0]
    if any(len(r) != len(first) or r.aggregate != first.aggregate for r in runs):
        raise ValueError("runs scored on different rows cannot be averaged row by row")
    weights = None if first.weights is None else np.mean([r.weights for r in runs], axis=0)
    return RowScores(np.mean([r.values for r in runs], axis=0), first.aggregate, weights,
                     binary=first.binary and len(runs) == 1)


def paired_bootstrap(a: RowScores, b: RowScores, names: tuple[str, str], resamples: int = 2000,
                     seed: int = 0) -> Test:
    """Two-sided paired bootstrap test of ``metric(a) − metric(b)`` over the same test rows."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs the same rows: {len(a)} vs {len(b)}")
    idx = resample_indices(len(a), resamples, seed)
    diff = a.resampled(idx) - b.resampled(idx)
    observed = a.value() - b.value()
    if observed == 0 and not diff.any():
        p = 1.0
    else:
        p = min(1.0, 2 * min(float((diff <= 0).mean()), float((diff >= 0).mean())))
    p = max(p, 1.0 / resamples)  # a finite number of resamples cannot show p = 0
    return Test(names[0], names[1], observed, p, "paired bootstrap", f"{resamples} resamples of {len(a)} rows")


def mcnemar(a: Sequence[RowScores], b: Sequence[RowScores], names: tuple[str, str]) -> Test:
    """McNemar's exact test on 0/1 hits of seed-matched runs (discordant rows pooled over the pairs)."""
    from scipy import stats

    only_a = only_b = rows = 0
    for x, y in zip(a, b):
        if len(x) != len(y):
            raise ValueError(f"McNemar's test needs the same rows: {len(x)} vs {len(y)}")
        hit_a, hit_b = x.values > 0.5, y.values > 0.5
        only_a += int((hit_a & ~hit_b).sum())
        only_b += int((~hit_a & hit_b).sum())
        rows += len(x)
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    diff = (only_a - only_b) / rows if rows else 0.0
    return Test(names[0], names[1], diff, min(p, 1.0), "McNemar",
                f"{only_a} rows right only for {names[0]}, {only_b} only for {names[1]}, over {rows} paired rows")


def welch(a: Sequence[float], b: Sequence[float], names: tuple[str, str]) -> Test | None:
    """Welch's t-test on seed values (None with fewer than 2 seeds on a side)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    result = stats.ttest_ind(a, b, equal_var=False)
    p = 1.0 if not math.isfinite(result.pvalue) else float(result.pvalue)
    return Test(names[0], names[1], float(np.mean(a) - np.mean(b)), p, "Welch t-test",
                f"{len(a)} vs {len(b)} seeds")

"""From runs to answers: methods averaged over seeds, intervals, ties, limits and the data-size picture.

A comparison may train each method (``runs`` entry, a *group*) once per seed and per training-set
size. :func:`methods_at` turns the runs of one size into one summary per method: the mean over its
seeds (costs too), the seeds' values, and an interval (a t interval over seeds, else a bootstrap
over the test rows, :mod:`tunelab.compare.stats`). :func:`significance` tests every method against
the best one on the same test rows; :func:`statistics_lines` states which differences are real.
:func:`data_size_lines` says which method to pick at each size and where the pick changes
(:func:`crossover`: the training-set size where two methods' learning curves cross, interpolated
linearly in log rows between the measured sizes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunelab.compare.formatting import fmt_value
from tunelab.compare.ranking import best_run, choose, goodness, scored_runs
from tunelab.compare.stats import (
    Interval,
    Test,
    average_rows,
    bootstrap_interval,
    mcnemar,
    paired_bootstrap,
    seed_interval,
    welch,
)
from tunelab.compare.summary import RunSummary, number


@dataclass(frozen=True)
class Settings:
    """How a comparison is judged beyond its budget and tolerance (the compare file's keys)."""

    level: float = 0.95
    resamples: int = 2000
    max_memory_mb: float | None = None
    max_params: int | None = None

    @property
    def percent(self) -> str:
        return f"{self.level * 100:g}%"


# ---------------------------------------------------------------------------- limits

def mark_limits(summaries: Sequence[RunSummary], settings: Settings) -> None:
    """Record, on each run, the hard limits it breaks (it stays in the tables, never recommended)."""
    for s in summaries:
        s.violations = []
        if settings.max_memory_mb is not None and s.peak_memory_mb is not None and \
                s.peak_memory_mb > settings.max_memory_mb:
            s.violations.append(f"peak memory {s.peak_memory_mb:,.0f} MB > max_memory_mb {settings.max_memory_mb:,.0f}")
        if settings.max_params is not None and s.trainable is not None and s.trainable > settings.max_params:
            s.violations.append(f"{s.trainable:,} trainable parameters > max_params {settings.max_params:,}")


def eligible(summaries: Sequence[RunSummary]) -> list[RunSummary]:
    """Runs within the hard limits."""
    return [s for s in summaries if not s.violations]


# ---------------------------------------------------------------------------- grouping

def sizes(summaries: Sequence[RunSummary]) -> list[int | str | None]:
    """The data sizes of the runs, smallest first ('all' last; None when sizes were not swept)."""
    found = dict.fromkeys(s.size for s in summaries)
    return sorted(found, key=lambda x: (x is None, x == "all", x if isinstance(x, int) else 0))


def at_size(summaries: Sequence[RunSummary], size: int | str | None) -> list[RunSummary]:
    return [s for s in summaries if s.size == size]


def methods_at(runs: Sequence[RunSummary], settings: Settings) -> list[RunSummary]:
    """One summary per method (group) among ``runs`` of one size: seeds averaged, with an interval;
    failed runs follow as themselves."""
    out, failed = [], []
    for group in dict.fromkeys(r.group for r in runs):
        members = [r for r in runs if r.group == group]
        ok = [r for r in members if r.ok and r.value is not None]
        failed += [r for r in members if not r.ok]
        if not ok:
            continue
        method = ok[0] if len(members) == 1 and members[0].label == group else _mean_summary(group, ok)
        method.member_runs = ok
        method.seed_values = [r.value for r in ok]
        method.interval = _interval(method, ok, settings)
        out.append(method)
    return out + failed


def _mean_summary(group: str, runs: list[RunSummary]) -> RunSummary:
    """The runs of one method (its seeds) as one summary: metrics and costs averaged."""
    def mean(name: str) -> float | None:
        values = [getattr(r, name) for r in runs]
        return float(np.mean(values)) if all(v is not None for v in values) else None

    common = set.intersection(*(set(r.metrics) for r in runs))
    metrics = {k: float(np.mean([r.metrics[k] for r in runs])) for k in sorted(common)}
    first = runs[0]
    trainable = mean("trainable")
    return dataclasses.replace(
        first, label=group, run_dir=first.run_dir.parent, value=mean("value"), metrics=metrics,
        trainable=None if trainable is None else int(round(trainable)), peak_memory_mb=mean("peak_memory_mb"),
        train_seconds=mean("train_seconds"), wall_seconds=mean("wall_seconds"),
        samples_per_second=mean("samples_per_second"), tokens_per_second=mean("tokens_per_second"),
        artifact_bytes=None if mean("artifact_bytes") is None else int(round(mean("artifact_bytes"))),
        latency_ms_per_row=mean("latency_ms_per_row"), seed=None, members=[r.label for r in runs],
        violations=sorted({v for r in runs for v in r.violations}))


def _interval(method: RunSummary, runs: list[RunSummary], settings: Settings) -> dict | None:
    if len(runs) >= 2:
        return seed_interval([r.value for r in runs], settings.level).to_dict()
    scores = runs[0].row_scores().get(method.metric)
    if scores is None or len(scores) < 2:
        return None
    return bootstrap_interval(scores, settings.level, settings.resamples).to_dict()


def interval_of(s: RunSummary) -> Interval | None:
    return Interval(**s.interval) if s.interval else None


# ---------------------------------------------------------------------------- tests

@dataclass(frozen=True)
class Verdict:
    """``a`` against ``b`` (the best): the test that decides, and the others that were run."""

    decisive: Test
    others: tuple[Test, ...] = ()

    def to_dict(self) -> dict:
        return {"decisive": self.decisive.to_dict(), "others": [t.to_dict() for t in self.others]}


def pair_test(a: RunSummary, b: RunSummary, settings: Settings) -> Verdict | None:
    """``a`` against ``b`` on the same test rows: McNemar decides for 0/1 hits (accuracy), the paired
    bootstrap for other metrics; without per-row scores, Welch's test on the seeds; else None."""
    metric, names = a.metric, (a.label, b.label)
    rows_a = [r.row_scores().get(metric) for r in a.member_runs or [a]]
    rows_b = [r.row_scores().get(metric) for r in b.member_runs or [b]]
    usable = all(x is not None for x in rows_a + rows_b) and len({len(x) for x in rows_a + rows_b}) == 1
    if usable:
        boot = paired_bootstrap(average_rows(rows_a), average_rows(rows_b), names, settings.resamples)
        if all(x.binary for x in rows_a + rows_b):
            pairs = _seed_pairs(a, b)
            mc = mcnemar([x.row_scores()[metric] for x, _ in pairs], [y.row_scores()[metric] for _, y in pairs], names)
            return Verdict(mc, (boot,))
        return Verdict(boot)
    w = welch(a.seed_values, b.seed_values, names)
    return Verdict(w) if w else None


def _seed_pairs(a: RunSummary, b: RunSummary) -> list[tuple[RunSummary, RunSummary]]:
    """Runs of the two methods matched by seed (in order when their seeds differ)."""
    xs, ys = a.member_runs or [a], b.member_runs or [b]
    by_seed = {y.seed: y for y in ys}
    if all(x.seed in by_seed for x in xs):
        return [(x, by_seed[x.seed]) for x in xs]
    return list(zip(xs, ys))


def significance(methods: Sequence[RunSummary], settings: Settings, best: RunSummary | None = None
                 ) -> dict[str, Verdict]:
    """Every scored method against ``best`` (default: the best by mean), keyed by label."""
    best = best or best_run(methods)
    if best is None:
        return {}
    out = {}
    for s in scored_runs(methods):
        if s is not best:
            verdict = pair_test(s, best, settings)
            if verdict is not None:
                out[s.label] = verdict
    return out


def fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def statistics_lines(methods: Sequence[RunSummary], settings: Settings, budget: str, tolerance: float,
                     where: str = "") -> list[str]:
    """Which differences from the best are real: intervals, ties and significant gaps, and the pick."""
    best = best_run(eligible(methods)) or best_run(methods)
    if best is None:
        return []
    verdicts = significance(methods, settings, best)
    lines = []
    iv = interval_of(best)
    if iv is not None:
        how = f"{iv.n} seeds" if iv.kind == "seeds" else f"bootstrap over {iv.n} test rows"
        lines.append(f"{where}Best {best.metric}: {best.label} {fmt_value(iv.mean)}, {settings.percent} interval "
                     f"[{fmt_value(iv.low)}, {fmt_value(iv.high)}] ({how}).")
    ties = [(lab, v) for lab, v in verdicts.items() if not v.decisive.significant(settings.level)]
    worse = [(lab, v) for lab, v in verdicts.items() if v.decisive.significant(settings.level)]
    for label, v in ties:
        extra = "".join(f"; {t.method} {fmt_p(t.p_value)}" for t in v.others)
        lines.append(f"{where}{label} and {best.label} tie{' at this data size' if where else ''}: the difference "
                     f"({fmt_value(abs(v.decisive.difference))}) is not significant ({fmt_p(v.decisive.p_value)}, "
                     f"{v.decisive.method}{extra}).")
    if worse:
        lines.append(f"{where}Significantly {'below' if best.greater_is_better else 'worse than'} {best.label} "
                     f"(p < {1 - settings.level:g}): "
                     + ", ".join(f"{lab} ({fmt_p(v.decisive.p_value)}, {v.decisive.method})" for lab, v in worse) + ".")
    untested = [s.label for s in scored_runs(methods) if s is not best and s.label not in verdicts]
    if untested:
        lines.append(f"{where}Not tested against {best.label} (no per-row test scores and fewer than 2 seeds): "
                     + ", ".join(untested) + ".")
    pick = choose(eligible(methods), budget, tolerance) if eligible(methods) else None
    if pick is not None and pick is not best and pick.label in verdicts:
        v = verdicts[pick.label].decisive
        state = "not distinguishable from" if not v.significant(settings.level) else "significantly worse than"
        lines.append(f"{where}The pick, {pick.label}, is {state} the best, {best.label} ({fmt_p(v.p_value)}, "
                     f"{v.method}).")
    over = [s for s in scored_runs(methods) if s.violations]
    if over:
        lines.append(f"{where}Over the hard limits, never recommended: "
                     + "; ".join(f"{s.label} ({', '.join(s.violations)})" for s in over) + ".")
    return lines


# ---------------------------------------------------------------------------- data sizes

@dataclass(frozen=True)
class SizeAnswer:
    """What a comparison says at one training-set size."""

    size: int | str
    rows: int
    best: RunSummary
    pick: RunSummary
    ties: tuple[str, ...]
    """Methods not distinguishable from the best at this size."""


BySize = dict[int | str | None, list[RunSummary]]
"""Per data size (smallest first), one summary per method (:func:`methods_at`)."""


def methods_by_size(summaries: Sequence[RunSummary], settings: Settings) -> BySize:
    """:func:`methods_at` of every data size, computed once (intervals and limits included)."""
    out = {}
    for size in sizes(summaries):
        out[size] = methods_at(at_size(summaries, size), settings)
        mark_limits(out[size], settings)
    return out


def answers_by_size(by_size: BySize, settings: Settings, budget: str, tolerance: float) -> list[SizeAnswer]:
    """Best, pick and ties at every swept size (sizes with no scored method are left out)."""
    out = []
    for size, found in by_size.items():
        if size is None:
            continue
        methods = [m for m in found if m.ok]
        pool = eligible(methods)
        best = best_run(pool)
        if best is None:
            continue
        verdicts = significance(pool, settings)
        ties = tuple(lab for lab, v in verdicts.items() if not v.decisive.significant(settings.level))
        rows = next((m.train_rows for m in methods if m.train_rows), 0) or 0
        out.append(SizeAnswer(size, rows, best, choose(pool, budget, tolerance) or best, ties))
    return out


def crossover(x0: float, d0: float, x1: float, d1: float) -> float:
    """Where a difference measured as ``d0`` at ``x0`` rows and ``d1`` at ``x1`` rows crosses 0, linear
    in log rows (``d0`` and ``d1`` of opposite signs)."""
    t = d0 / (d0 - d1)
    return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))


def curve(by_size: BySize, group: str) -> dict[int, float]:
    """A method's mean metric (signed: larger is better) by training rows."""
    out = {}
    for found in by_size.values():
        for m in found:
            if m.ok and m.group == group and m.train_rows and m.value is not None:
                out[m.train_rows] = goodness(m)
    return out


def data_size_lines(by_size: BySize, answers: Sequence[SizeAnswer]) -> list[str]:
    """Per size: the pick, the best and its ties; then where the pick changes, with the crossover."""
    if len(answers) < 2:
        return []
    lines = []
    for a in answers:
        tie = f"; not distinguishable from it: {', '.join(a.ties)}" if a.ties else ""
        lines.append(f"At {a.rows:,} training rows: pick {a.pick.label} ({fmt_value(a.pick.value)}); best "
                     f"{a.best.label} ({fmt_value(a.best.value)}){tie}.")
    changes = []
    for a, b in zip(answers, answers[1:]):
        if a.pick.group == b.pick.group:
            continue
        ca, cb = curve(by_size, a.pick.group), curve(by_size, b.pick.group)
        d0 = number(ca.get(a.rows, math.nan) - cb.get(a.rows, math.nan))
        d1 = number(ca.get(b.rows, math.nan) - cb.get(b.rows, math.nan))
        if d0 is not None and d1 is not None and d0 > 0 > d1:
            x = crossover(a.rows, d0, b.rows, d1)
            changes.append(f"below ~{_round_rows(x):,} rows pick {a.pick.label}; above, {b.pick.label} (their "
                           f"{a.best.metric} curves cross at ~{_round_rows(x):,} rows, interpolated in log rows "
                           f"between {a.rows:,} and {b.rows:,})")
        else:
            changes.append(f"between {a.rows:,} and {b.rows:,} rows the pick changes from {a.pick.label} to "
                           f"{b.pick.label} (by the budget and tolerance rule, not because their curves cross)")
    if changes:
        lines.append("By data size: " + "; ".join(changes) + ".")
    else:
        lines.append(f"By data size: pick {answers[0].pick.label} at every measured size "
                     f"({answers[0].rows:,} to {answers[-1].rows:,} rows).")
    return lines


def _round_rows(x: float) -> int:
    """Two significant digits: a crossover read off a few sizes is not more precise than that."""
    digits = max(0, int(math.floor(math.log10(max(x, 1)))) - 1)
    return int(round(x, -digits))

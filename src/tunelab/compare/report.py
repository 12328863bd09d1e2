"""The report half of ``tunelab compare``: run summaries, the Pareto front, a recommendation, report files.

Reading (:mod:`tunelab.compare.summary`): :func:`summarize_run` turns one run directory (``results.json``
and the size of ``model/weights.safetensors``) into a :class:`RunSummary`. A missing, unfinished or
unreadable run becomes ``status="failed"`` with its error, so the comparison goes on with the rest.
:func:`check_comparable` raises a one-line :class:`~tunelab.errors.UserError` when the successful runs solve
different tasks, are scored on different metrics or do not all report the chosen one.

Costs (the ``budget``): ``params`` (trainable parameters), ``memory`` (peak memory, MB) and ``time``
(training seconds). :func:`pareto_front` (:mod:`tunelab.compare.ranking`) keeps the runs that no other run
beats: another run dominates one when its metric is better or equal and its cost lower or equal, strictly
better in at least one of the two (``greater_is_better`` decides what "better" means).

Recommendation rule (:func:`choose`): among the runs on the Pareto front for the budget's cost, the cheapest
one whose metric is within ``tolerance`` of the best run's, relative to the best value and in the metric's
own direction (default 1%: accuracy >= 0.99 x best, or loss <= 1.01 x best). The cheapest of the best-metric
runs is always on the front, so there is a choice whenever a run reports the cost. :func:`recommend` states
the trade-off in numbers against the best-metric run and against ``full`` fine-tuning when it was run.

Writing: :func:`write_reports` writes ``comparison.md``, ``comparison.csv``, ``comparison.json``
(:mod:`tunelab.compare.tables`), three plots under ``plots/`` (:mod:`tunelab.compare.plots`) and
``report.html`` (:mod:`tunelab.compare.html_report`: plots embedded as data URIs, inline CSS, no external
resource; its one tiny script only records how many images loaded). :func:`rich_table` is the terminal
table. Plots draw on a matplotlib ``Figure`` directly (Agg rendering, no pyplot or global backend state).

Statistics (:mod:`tunelab.compare.study`, :mod:`tunelab.compare.stats`): :func:`analyse` averages each
method's seeds at the largest data size into one summary with an interval, marks runs over the hard limits,
tests every method against the best on the same test rows (ties and significant gaps are stated), and reads
the learning curves over the data sizes (the pick per size and where it changes). The tables, plots and
recommendation are of those per-method summaries; ``comparison.json`` adds the tests, the per-size answers
and (for a grid of seeds or sizes) every run, which ``runs.csv`` also lists. Two more plots: ``intervals``
(when a method has an interval) and ``learning_curves`` (when sizes were swept).

This module is the entry point: it writes every file and re-exports what the runner, the CLI and
the tests use from the modules above.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.compare.formatting import STAR
from tunelab.compare.html_report import render_html
from tunelab.compare.plots import PLOTS, plot_intervals, plot_learning_curves, plot_metric_vs_cost, plot_peak_memory
from tunelab.compare.ranking import (
    CHEAPEST,
    DEFAULT_TOLERANCE,
    best_run,
    choose,
    full_run,
    pareto_front,
    ranked,
    recommend,
    trade_off,
    within,
)
from tunelab.compare.study import (
    BySize,
    Settings,
    answers_by_size,
    data_size_lines,
    mark_limits,
    methods_by_size,
    significance,
    statistics_lines,
)
from tunelab.compare.summary import (
    COSTS,
    RunSummary,
    check_budget,
    check_comparable,
    default_metric,
    greater_is_better,
    summarize_run,
)
from tunelab.compare.tables import (
    CSV_FIELDS,
    comparison_record,
    markdown_table,
    render_markdown,
    rich_table,
    table_rows,
    write_csv,
)

__all__ = [
    "CHEAPEST", "COSTS", "CSV_FIELDS", "DEFAULT_TOLERANCE", "PLOTS", "STAR",
    "Analysis", "RunSummary", "Settings", "analyse",
    "best_run", "check_budget", "check_comparable", "choose", "comparison_record", "default_metric",
    "full_run", "greater_is_better", "markdown_table", "pareto_front", "ranked", "recommend", "render_html",
    "render_markdown", "rich_table", "summarize_run", "table_rows", "trade_off", "within", "write_csv",
    "write_reports",
]


@dataclass
class Analysis:
    """What a comparison concludes: one summary per method at the headline (largest) size, the
    recommendation in words, and the statistics and data-size records for ``comparison.json``."""

    methods: list[RunSummary]
    advice: str
    why: list[str]
    record: dict[str, Any]
    curves: dict[str, list[tuple[int, float, float, float]]]
    grid: bool
    """The runs form a grid (several seeds or data sizes): every run is listed apart too."""


def analyse(summaries: Sequence[RunSummary], budget: str = "params", tolerance: float = DEFAULT_TOLERANCE,
            settings: Settings | None = None) -> Analysis:
    """Average seeds, mark limits, test differences and read the learning curves."""
    settings = settings or Settings()
    check_budget(budget)
    check_comparable(summaries)
    mark_limits(summaries, settings)
    per_size = methods_by_size(summaries, settings)
    found = list(per_size)
    headline = found[-1]
    methods = per_size[headline]
    check_comparable(methods)
    base = recommend(methods, budget, tolerance)
    where = f"At {_rows_of(methods):,} training rows: " if headline is not None else ""
    stats = statistics_lines(methods, settings, budget, tolerance, where)
    verdicts = significance(methods, settings, best_run([m for m in methods if not m.violations]) or None)
    answers = answers_by_size(per_size, settings, budget, tolerance)
    by_size = data_size_lines(per_size, answers)
    grid = len(found) > 1 or any(s.seed is not None for s in summaries)
    record = {
        "level": settings.level, "resamples": settings.resamples,
        "limits": {"max_memory_mb": settings.max_memory_mb, "max_params": settings.max_params},
        "tests_against_best": {label: v.to_dict() for label, v in verdicts.items()},
        "by_size": [{"size": a.size, "train_rows": a.rows, "best": a.best.label, "recommended": a.pick.label,
                     "ties_with_best": list(a.ties)} for a in answers],
        "statistics": stats, "data_sizes": by_size,
    }
    if grid:
        record["all_runs"] = [s.to_dict() for s in summaries]
    curves = learning_curves(per_size) if len(found) > 1 else {}
    why = explain(methods, budget, tolerance, settings)
    return Analysis(methods, "\n".join([base, *stats, *by_size]), why, record, curves, grid)


def _rows_of(methods: Sequence[RunSummary]) -> int:
    return next((m.train_rows for m in methods if m.train_rows), 0) or 0


Curves = dict[str, list[tuple[int, float, float, float]]]


def learning_curves(per_size: BySize) -> Curves:
    """``method -> [(training rows, mean, interval low, interval high), ...]`` over the swept sizes."""
    out: Curves = {}
    for found in per_size.values():
        for m in found:
            if m.ok and m.value is not None and m.train_rows:
                iv = m.interval or {"low": m.value, "high": m.value}
                out.setdefault(m.group, []).append((m.train_rows, m.value, iv["low"], iv["high"]))
    return out


def explain(methods: Sequence[RunSummary], budget: str, tolerance: float, settings: Settings) -> list[str]:
    """The rule behind the recommendation, step by step, with this comparison's numbers."""
    from tunelab.compare.formatting import fmt_cost, fmt_value

    best, pick = best_run(methods), choose(methods, budget, tolerance)
    words = COSTS[budget][1]
    steps = [f"Each method is scored by its test {best.metric} ({'higher' if best.greater_is_better else 'lower'} "
             f"is better), averaged over its seeds when it has several."]
    over = [m.label for m in methods if m.ok and m.violations]
    if over:
        steps.append(f"Runs over the hard limits are set aside: {', '.join(over)}.")
    steps.append(f"The best {best.metric} is {best.label}'s ({fmt_value(best.value)}); a run is good enough when it "
                 f"is within {tolerance * 100:g}% of it (tolerance).")
    if pick is not None:
        steps.append(f"Of the good-enough runs on the Pareto front for {words}, {pick.label} costs least "
                     f"({fmt_cost(pick, budget)}), so it is the pick.")
    steps.append(f"Differences are tested on the same test rows at the {settings.percent} level (McNemar for "
                 "accuracy-like 0/1 scores, else a paired bootstrap; Welch's t-test on seeds without per-row "
                 "scores): a method whose difference from the best is not significant ties with it, so a tie is "
                 "no reason to pay more.")
    return steps


def write_reports(summaries: Sequence[RunSummary], out_dir: str | Path, budget: str = "params",
                  tolerance: float = DEFAULT_TOLERANCE, settings: Settings | None = None, *,
                  analysis: Analysis | None = None) -> dict[str, Path]:
    """Write markdown, CSV, JSON, the plots and ``report.html`` under ``out_dir``; return their paths.

    Plots: the three cost plots always; ``intervals`` when any method has an interval and
    ``learning_curves`` when data sizes were swept. A grid of seeds or sizes also gets ``runs.csv``
    (every run; ``comparison.csv`` holds one row per method)."""
    settings = settings or Settings()
    result = analysis or analyse(summaries, budget, tolerance, settings)
    methods, advice = result.methods, result.advice
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "comparison.md", "csv": out / "comparison.csv", "json": out / "comparison.json",
             **{name: out / "plots" / f"{name}.png" for name in PLOTS}, "html": out / "report.html"}
    if any(m.interval for m in methods):
        paths["intervals"] = out / "plots" / "intervals.png"
        plot_intervals(methods, paths["intervals"], settings.percent)
    if result.curves:
        paths["learning_curves"] = out / "plots" / "learning_curves.png"
        first = next(m for m in methods if m.ok)
        plot_learning_curves(result.curves, f"test {first.metric}", paths["learning_curves"], settings.percent)
    if result.grid:
        paths["runs_csv"] = out / "runs.csv"
        write_csv(summaries, paths["runs_csv"])
    paths["markdown"].write_text(render_markdown(methods, budget, advice, result.why), encoding="utf-8")
    write_csv(methods, paths["csv"])
    paths["json"].write_text(json.dumps(comparison_record(methods, budget, tolerance, advice, result.record),
                                        indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_metric_vs_cost(methods, "trainable_percent", pareto_front(methods, "params"),
                        "trainable parameters (% of the model, log scale)", paths["metric_vs_trainable"], log_x=True)
    plot_metric_vs_cost(methods, "train_seconds", pareto_front(methods, "time"), "training time (s)",
                        paths["metric_vs_time"])
    plot_peak_memory(methods, pareto_front(methods, "memory"), paths["peak_memory"])
    figures = {n: paths[n] for n in ("learning_curves", "intervals", *PLOTS) if n in paths}
    paths["html"].write_text(render_html(methods, budget, advice, figures, result.why), encoding="utf-8")
    return paths

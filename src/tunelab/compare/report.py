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

This module is the entry point: it writes every file and re-exports what the runner, the CLI and
the tests use from the modules above.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tunelab.compare.formatting import STAR
from tunelab.compare.html_report import render_html
from tunelab.compare.plots import PLOTS, plot_metric_vs_cost, plot_peak_memory
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
    "RunSummary", "best_run", "check_budget", "check_comparable", "choose", "comparison_record", "default_metric",
    "full_run", "greater_is_better", "markdown_table", "pareto_front", "ranked", "recommend", "render_html",
    "render_markdown", "rich_table", "summarize_run", "table_rows", "trade_off", "within", "write_csv",
    "write_reports",
]


def write_reports(summaries: Sequence[RunSummary], out_dir: str | Path, budget: str = "params",
                  tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Path]:
    """Write markdown, CSV, JSON, the three plots and ``report.html`` under ``out_dir``; return their paths."""
    check_budget(budget)
    check_comparable(summaries)
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    advice = recommend(summaries, budget, tolerance)
    paths = {"markdown": out / "comparison.md", "csv": out / "comparison.csv", "json": out / "comparison.json",
             **{name: out / "plots" / f"{name}.png" for name in PLOTS}, "html": out / "report.html"}
    paths["markdown"].write_text(render_markdown(summaries, budget, advice), encoding="utf-8")
    write_csv(summaries, paths["csv"])
    paths["json"].write_text(json.dumps(comparison_record(summaries, budget, tolerance, advice), indent=2,
                                        ensure_ascii=False) + "\n", encoding="utf-8")
    plot_metric_vs_cost(summaries, "trainable_percent", pareto_front(summaries, "params"),
                        "trainable parameters (% of the model, log scale)", paths["metric_vs_trainable"], log_x=True)
    plot_metric_vs_cost(summaries, "train_seconds", pareto_front(summaries, "time"), "training time (s)",
                        paths["metric_vs_time"])
    plot_peak_memory(summaries, pareto_front(summaries, "memory"), paths["peak_memory"])
    paths["html"].write_text(render_html(summaries, budget, advice, {n: paths[n] for n in PLOTS}), encoding="utf-8")
    return paths

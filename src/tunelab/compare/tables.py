"""The comparison as tables: the terminal (rich), markdown, CSV and the ``comparison.json`` record."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.compare.formatting import (
    STAR,
    fmt_bytes,
    fmt_int,
    fmt_mb,
    fmt_percent_cell,
    fmt_seconds,
    fmt_throughput,
    fmt_value,
)
from tunelab.compare.ranking import best_run, choose, goodness, pareto_front, ranked, scored_runs
from tunelab.compare.summary import CLASSIC_COSTS, COSTS, RunSummary, finite

if TYPE_CHECKING:
    from rich.table import Table


def _ordered(summaries: Sequence[RunSummary]) -> list[RunSummary]:
    """Scored runs best first, then unscored successful runs (failed runs are listed apart)."""
    scored = sorted(scored_runs(summaries), key=goodness, reverse=True)
    return scored + [s for s in summaries if s.ok and s.value is None]


def _metric_header(summaries: Sequence[RunSummary]) -> str:
    first = next((s for s in summaries if s.ok and s.metric), None)
    if first is None:
        return "metric"
    return f"{first.metric} {'↑' if first.greater_is_better else '↓'}"


def table_rows(summaries: Sequence[RunSummary], budget: str = "params") -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the successful runs, best first; ★ marks the budget's Pareto front."""
    front = pareto_front(summaries, budget)
    headers = [STAR, "run", "method", _metric_header(summaries), "trainable", "trainable %", "peak memory",
               "train time", "wall time", "throughput", "artifact"]
    rows = [[STAR if s.label in front else "", s.label + (" (over limit)" if s.violations else ""),
             "+".join(s.method) or "—", fmt_value(s.value),
             fmt_int(s.trainable), fmt_percent_cell(s.trainable_percent), fmt_mb(s.peak_memory_mb),
             fmt_seconds(s.train_seconds), fmt_seconds(s.wall_seconds), fmt_throughput(s),
             fmt_bytes(s.artifact_bytes)] for s in _ordered(summaries)]
    if any(s.interval for s in summaries):  # intervals: right after the metric
        headers.insert(4, "interval")
        for row, s in zip(rows, _ordered(summaries)):
            row.insert(4, fmt_interval(s.interval))
    if any(s.latency_ms_per_row is not None for s in summaries):
        headers.append("latency")
        for row, s in zip(rows, _ordered(summaries)):
            row.append("—" if s.latency_ms_per_row is None else f"{s.latency_ms_per_row:.3g} ms/row")
    return headers, rows


def fmt_interval(interval: dict | None) -> str:
    """``[0.776, 0.813] (3 seeds, sd 0.0120)`` or ``[0.776, 0.813] (bootstrap)``."""
    if not interval:
        return "—"
    span = f"[{fmt_value(interval['low'])}, {fmt_value(interval['high'])}]"
    if interval["kind"] == "seeds":
        sd = f", sd {fmt_value(interval['std'])}" if interval.get("std") is not None else ""
        return f"{span} ({interval['n']} seeds{sd})"
    return f"{span} (bootstrap)"


def rich_table(summaries: Sequence[RunSummary], budget: str = "params") -> Table:
    """The comparison for the terminal; failed runs and their errors go in the caption."""
    from rich.table import Table

    headers, rows = table_rows(summaries, budget)
    failed = [s for s in summaries if not s.ok]
    caption = f"{STAR} Pareto front for {COSTS[budget][1]}"
    if failed:
        caption += "\nfailed: " + "\n        ".join(f"{s.label}: {s.error}" for s in failed)
    table = Table(title="tunelab compare", caption=caption, caption_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if i >= 3 else "left", style="bold yellow" if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(summaries: Sequence[RunSummary], budget: str = "params") -> str:
    headers, rows = table_rows(summaries, budget)
    cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join(":-:" if i == 0 else "---:" if i >= 3 else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def heading(summaries: Sequence[RunSummary], budget: str) -> str:
    first = next(s for s in summaries if s.ok)
    direction = "higher" if first.greater_is_better else "lower"
    return (f"Task: {first.task}; metric: test {first.metric} ({direction} is better); budget: {COSTS[budget][1]}; "
            f"{STAR} = Pareto front (best {first.metric} for the {COSTS[budget][1]}).")


def render_markdown(summaries: Sequence[RunSummary], budget: str, recommendation: str,
                    why: Sequence[str] = ()) -> str:
    parts = ["# tunelab comparison", "", heading(summaries, budget), "", markdown_table(summaries, budget), "",
             "## Recommendation", "", *[f"- {line}" for line in recommendation.splitlines()]]
    if why:
        parts += ["", "## Why this recommendation", "", *[f"{i}. {line}" for i, line in enumerate(why, 1)]]
    failed = [s for s in summaries if not s.ok]
    if failed:
        parts += ["", "## Failed runs", "", *[f"- **{s.label}** (`{s.run_dir}`): {s.error}" for s in failed]]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- CSV / JSON

CSV_FIELDS = ["label", "status", "error", "task", "method", "metric", "value", "greater_is_better", "trainable",
              "trainable_percent", "total_params", "peak_memory_mb", "train_seconds", "wall_seconds",
              "samples_per_second", "tokens_per_second", "artifact_bytes", "pareto_params", "pareto_memory",
              "pareto_time", "run_dir", "group", "seed", "size", "train_rows", "latency_ms_per_row",
              "time_budget_reached", "interval_low", "interval_high", "interval_kind", "std", "seeds", "violations",
              "pareto_artifact", "pareto_latency"]


def write_csv(summaries: Sequence[RunSummary], path: Path) -> None:
    """One row per run (failed ones too); ``test_<name>`` columns hold every test metric."""
    fronts = {c: pareto_front(summaries, c) for c in COSTS}
    extra = sorted({k for s in summaries for k in s.metrics})
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS + [f"test_{k}" for k in extra])
        writer.writeheader()
        for s in summaries:
            row = {k: v for k, v in s.to_dict().items() if k in CSV_FIELDS}
            row["method"] = "+".join(s.method)
            iv = s.interval or {}
            row.update(interval_low=iv.get("low"), interval_high=iv.get("high"), interval_kind=iv.get("kind"),
                       std=iv.get("std"), seeds=len(s.seed_values) or None, violations="; ".join(s.violations))
            row.update({f"pareto_{c}": s.label in fronts[c] for c in COSTS})
            row.update({f"test_{k}": v for k, v in s.metrics.items()})
            writer.writerow(row)


def comparison_record(summaries: Sequence[RunSummary], budget: str, tolerance: float,
                      recommendation: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``comparison.json`` holds (``extra``: statistics, data sizes and every run of a grid)."""
    first = next(s for s in summaries if s.ok)
    fronts = {c: pareto_front(summaries, c) for c in COSTS}
    flags = [c for c in COSTS if c in CLASSIC_COSTS or c == budget]
    best, pick = best_run(summaries), choose(summaries, budget, tolerance)
    return finite({
        "task": first.task, "metric": first.metric, "greater_is_better": first.greater_is_better,
        "budget": budget, "tolerance": tolerance, "best": best.label if best else None,
        "recommended": pick.label if pick else None, "recommendation": recommendation,
        "pareto": {c: [s.label for s in ranked(summaries, c) if s.label in fronts[c]] for c in COSTS},
        "runs": [{**s.to_dict(), "pareto": {c: s.label in fronts[c] for c in flags}} for s in summaries],
        **(extra or {}),
    })

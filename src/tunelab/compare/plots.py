"""The comparison's plots: metric against trainable parameters and against training time (Pareto front
starred and joined), and peak memory per run. They draw on a matplotlib ``Figure`` directly (Agg
rendering, no pyplot or global backend state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunelab.compare.formatting import STAR
from tunelab.compare.ranking import scored_runs
from tunelab.compare.summary import RunSummary

PLOTS = ("metric_vs_trainable", "metric_vs_time", "peak_memory")
"""The plot files ``write_reports`` writes under ``plots/`` (``<name>.png``)."""
FRONT_COLOR, OTHER_COLOR = "#d9480f", "#868e96"


def _figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(7.0, 4.6), dpi=100, layout="constrained")


def _metric_label(summaries: Sequence[RunSummary]) -> str:
    first = next(s for s in summaries if s.ok)
    return f"test {first.metric} ({'higher' if first.greater_is_better else 'lower'} is better)"


def plot_metric_vs_cost(summaries: Sequence[RunSummary], x_field: str, front: set[str], xlabel: str,
                        path: Path, *, log_x: bool = False) -> None:
    """Scatter of the metric against one cost; the Pareto front is starred and joined."""
    fig = _figure()
    ax = fig.add_subplot()
    points = [(s, getattr(s, x_field)) for s in scored_runs(summaries)]
    points = [(s, x) for s, x in points if x is not None and (x > 0 or not log_x)]
    others = [(s, x) for s, x in points if s.label not in front]
    best = sorted(((s, x) for s, x in points if s.label in front), key=lambda p: p[1])
    if others:
        ax.scatter([x for _, x in others], [s.value for s, _ in others], s=50, color=OTHER_COLOR, label="run")
    if best:
        ax.plot([x for _, x in best], [s.value for s, _ in best], "--", color=FRONT_COLOR, alpha=0.6, zorder=2)
        ax.scatter([x for _, x in best], [s.value for s, _ in best], s=220, marker="*", color=FRONT_COLOR,
                   label="Pareto front", zorder=3)
    for s, x in points:
        ax.annotate(s.label, (x, s.value), textcoords="offset points", xytext=(6, 5), fontsize=8)
    if not points:
        ax.text(0.5, 0.5, "no run recorded this cost", ha="center", va="center", transform=ax.transAxes)
    if log_x and points:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_metric_label(summaries))
    ax.grid(True, which="major", alpha=0.3)
    if points:
        ax.legend(loc="best", fontsize=8)
    fig.savefig(path, format="png")


def plot_peak_memory(summaries: Sequence[RunSummary], front: set[str], path: Path) -> None:
    """Bars of peak memory per run, lowest first; the memory Pareto front in the accent colour."""
    from matplotlib.patches import Patch

    fig = _figure()
    ax = fig.add_subplot()
    runs = sorted((s for s in scored_runs(summaries) if s.peak_memory_mb is not None), key=lambda s: s.peak_memory_mb)
    if runs:
        bars = ax.bar([s.label for s in runs], [s.peak_memory_mb for s in runs],
                      color=[FRONT_COLOR if s.label in front else OTHER_COLOR for s in runs])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.legend(handles=[Patch(color=FRONT_COLOR, label=f"Pareto front ({STAR}, memory)"),
                           Patch(color=OTHER_COLOR, label="other runs")], loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run recorded its peak memory", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("peak memory (MB)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, format="png")


def plot_intervals(summaries: Sequence[RunSummary], path: Path, level: str) -> None:
    """Each method's metric with its interval (seeds or bootstrap), best at the top."""
    fig = _figure()
    ax = fig.add_subplot()
    runs = [s for s in scored_runs(summaries) if s.interval]
    runs.sort(key=lambda s: s.value if s.greater_is_better else -s.value)
    for i, s in enumerate(runs):
        iv = s.interval
        color = FRONT_COLOR if i == len(runs) - 1 else OTHER_COLOR
        ax.errorbar([iv["mean"]], [i], xerr=[[iv["mean"] - iv["low"]], [iv["high"] - iv["mean"]]], fmt="o",
                    color=color, capsize=4)
    ax.set_yticks(range(len(runs)), [s.label for s in runs], fontsize=8)
    ax.set_xlabel(f"{_metric_label(summaries)}, {level} interval")
    ax.grid(True, axis="x", alpha=0.3)
    if not runs:
        ax.text(0.5, 0.5, "no interval", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, format="png")


def plot_learning_curves(curves: dict[str, list[tuple[int, float, float, float]]], metric_label: str,
                         path: Path, level: str) -> None:
    """Metric against training rows (log x) per method: ``label -> [(rows, mean, low, high), ...]``."""
    fig = _figure()
    ax = fig.add_subplot()
    markers = "os^vD<>pPX*h"
    for i, (label, points) in enumerate(curves.items()):
        points = sorted(points)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        ax.errorbar(xs, ys, yerr=err, marker=markers[i % len(markers)], capsize=3, label=label, alpha=0.85)
    ax.set_xscale("log")
    ax.set_xlabel("training rows (log scale)")
    ax.set_ylabel(f"{metric_label}, {level} interval")
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(loc="best", fontsize=7, ncol=2)
    fig.savefig(path, format="png")

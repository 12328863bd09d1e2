"""The report half of ``tunelab compare``: run summaries, the Pareto front, a recommendation, report files.

Reading: :func:`summarize_run` turns one run directory (``results.json`` and the size of
``model/weights.safetensors``) into a :class:`RunSummary`. A missing, unfinished or unreadable run becomes
``status="failed"`` with its error, so the comparison goes on with the rest. :func:`check_comparable` raises
a one-line :class:`~tunelab.errors.UserError` when the successful runs solve different tasks, are scored on
different metrics or do not all report the chosen one.

Costs (the ``budget``): ``params`` (trainable parameters), ``memory`` (peak memory, MB) and ``time``
(training seconds). :func:`pareto_front` keeps the runs that no other run beats: another run dominates one
when its metric is better or equal and its cost lower or equal, strictly better in at least one of the two
(``greater_is_better`` decides what "better" means).

Recommendation rule (:func:`choose`): among the runs on the Pareto front for the budget's cost, the cheapest
one whose metric is within ``tolerance`` of the best run's, relative to the best value and in the metric's
own direction (default 1%: accuracy >= 0.99 x best, or loss <= 1.01 x best). The cheapest of the best-metric
runs is always on the front, so there is a choice whenever a run reports the cost. :func:`recommend` states
the trade-off in numbers against the best-metric run and against ``full`` fine-tuning when it was run.

Writing: :func:`write_reports` writes ``comparison.md``, ``comparison.csv``, ``comparison.json``, three plots
under ``plots/`` and ``report.html`` (plots embedded as data URIs, inline CSS, no external resource; its one
tiny script only records how many images loaded). :func:`rich_table` is the terminal table. Plots draw on a
matplotlib ``Figure`` directly (Agg rendering, no pyplot or global backend state).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import UserError, unknown

if TYPE_CHECKING:
    from rich.table import Table

COSTS: dict[str, tuple[str, str]] = {  # budget -> (RunSummary field, words)
    "params": ("trainable", "trainable parameters"),
    "memory": ("peak_memory_mb", "peak memory"),
    "time": ("train_seconds", "training time"),
}
CHEAPEST = {"params": "fewest trainable parameters", "memory": "lowest peak memory", "time": "shortest training time"}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "rmse"}
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "mae", "mse", "rmse"})
DEFAULT_TOLERANCE = 0.01
STAR = "★"
PLOTS = ("metric_vs_trainable", "metric_vs_time", "peak_memory")


@dataclass
class RunSummary:
    """What one run achieved and what it cost (``status="failed"`` runs carry only their error)."""

    label: str
    run_dir: Path
    status: str = "ok"
    error: str | None = None
    task: str | None = None
    method: list[str] = field(default_factory=list)
    metric: str | None = None
    value: float | None = None
    greater_is_better: bool = True
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: int | None = None
    trainable_percent: float | None = None
    total_params: int | None = None
    peak_memory_mb: float | None = None
    train_seconds: float | None = None
    wall_seconds: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    artifact_bytes: int | None = None

    @classmethod
    def failed(cls, label: str, run_dir: str | Path, error: str) -> RunSummary:
        """A run that produced no result; ``error`` is kept on one line."""
        return cls(label=label, run_dir=Path(run_dir), status="failed", error=" ".join(str(error).split()))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def cost(self, budget: str) -> float | None:
        """The run's cost under ``budget`` (``params``, ``memory`` or ``time``), ``None`` if not recorded."""
        return getattr(self, COSTS[check_budget(budget)][0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (non-finite numbers become ``None``)."""
        return _finite({**asdict(self), "run_dir": str(self.run_dir)})


# ---------------------------------------------------------------------------- reading runs

def default_metric(task: str | None, test: dict[str, float], fallback: str | None = None) -> str | None:
    """classification: accuracy; regression: rmse; sft: rouge_l when generations were scored, else loss."""
    if task == "sft":
        return "rouge_l" if "rouge_l" in test else "loss"
    return DEFAULT_METRIC.get(task or "", fallback)


def greater_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def summarize_run(label: str, run_dir: str | Path, metric: str | None = None) -> RunSummary:
    """Read ``run_dir/results.json``; a missing, unfinished or unreadable run comes back failed."""
    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    if not run_dir.is_dir():
        return RunSummary.failed(label, run_dir, f"run directory {run_dir} does not exist")
    if not results_path.is_file():
        return RunSummary.failed(label, run_dir, f"run {run_dir} did not finish: it has no results.json "
                                                 "(training failed or is still running)")
    try:
        results = json.loads(results_path.read_text())
        if not isinstance(results, dict):
            raise ValueError("not a JSON object")
        return _summary(label, run_dir, results, metric)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return RunSummary.failed(label, run_dir, f"cannot read {results_path}: {exc}")


def _summary(label: str, run_dir: Path, results: dict[str, Any], metric: str | None) -> RunSummary:
    test = {k: float(v) for k, v in (results.get("test") or {}).items() if _number(v) is not None}
    task = results.get("task")
    name = metric or default_metric(task, test, (results.get("best_validation") or {}).get("metric"))
    params = results.get("params") or {}
    weights = run_dir / "model" / "weights.safetensors"
    tokens = _number(results.get("tokens_per_second"))
    return RunSummary(
        label=label, run_dir=run_dir, task=task, method=[str(m) for m in results.get("method") or []],
        metric=name, value=test.get(name) if name else None,
        greater_is_better=greater_is_better(name) if name else True, metrics=test,
        trainable=_integer(params.get("trainable")), trainable_percent=_number(params.get("trainable_percent")),
        total_params=_integer(params.get("total")), peak_memory_mb=_number(results.get("peak_memory_mb")),
        train_seconds=_number(results.get("train_seconds")), wall_seconds=_number(results.get("wall_seconds")),
        samples_per_second=_number(results.get("samples_per_second")),
        tokens_per_second=tokens if tokens else None,
        artifact_bytes=weights.stat().st_size if weights.is_file() else None,
    )


def check_comparable(summaries: Sequence[RunSummary]) -> None:
    """Raise a one-line :class:`UserError` unless the successful runs can be ranked on one metric."""
    if not summaries:
        raise UserError("nothing to compare: no runs given")
    labels = [s.label for s in summaries]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise UserError(f"run labels must be unique; given more than once: {', '.join(twice)}")
    ok = [s for s in summaries if s.ok]
    if not ok:
        raise UserError("nothing to compare: every run failed ("
                        + "; ".join(f"{s.label}: {s.error}" for s in summaries) + ")")
    tasks = _groups(ok, lambda s: s.task)
    if len(tasks) > 1:
        raise UserError(f"runs cannot be compared: they solve different tasks ({_describe(tasks)})")
    metrics = _groups(ok, lambda s: s.metric)
    if len(metrics) > 1:
        raise UserError(f"runs cannot be compared: they are scored on different metrics ({_describe(metrics)}); "
                        "choose one metric for all runs")
    missing = [s.label for s in ok if s.value is None]
    if missing:
        common = sorted(set.intersection(*(set(s.metrics) for s in ok)))
        raise UserError(f"metric '{ok[0].metric}' is missing from the test results of {', '.join(missing)}; "
                        f"every run reports: {', '.join(common) or 'no metric in common'}")


def _groups(runs: Sequence[RunSummary], key: Callable[[RunSummary], Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in runs:
        out.setdefault(str(key(s)), []).append(s.label)
    return out


def _describe(groups: dict[str, list[str]]) -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())


# ---------------------------------------------------------------------------- ranking

def check_budget(budget: str) -> str:
    if budget not in COSTS:
        raise unknown("budget", budget, COSTS)
    return budget


def _scored(summaries: Sequence[RunSummary]) -> list[RunSummary]:
    return [s for s in summaries if s.ok and s.value is not None]


def _goodness(s: RunSummary) -> float:
    """The metric signed so that larger is better."""
    return s.value if s.greater_is_better else -s.value


def pareto_front(summaries: Sequence[RunSummary], cost: str) -> set[str]:
    """Labels of the successful runs that no other run dominates on (metric, ``cost``)."""
    check_budget(cost)
    points = [(s, s.cost(cost)) for s in _scored(summaries) if s.cost(cost) is not None]

    def dominated(s: RunSummary, c: float) -> bool:
        return any(_goodness(o) >= _goodness(s) and oc <= c and (_goodness(o) > _goodness(s) or oc < c)
                   for o, oc in points)

    return {s.label for s, c in points if not dominated(s, c)}


def best_run(summaries: Sequence[RunSummary]) -> RunSummary | None:
    """The successful run with the best metric (the first one given on a tie)."""
    scored = _scored(summaries)
    return max(scored, key=_goodness) if scored else None


def ranked(summaries: Sequence[RunSummary], budget: str) -> list[RunSummary]:
    """Successful runs by cost, cheapest first (better metric first on a tie, unrecorded costs last)."""
    check_budget(budget)
    return sorted(_scored(summaries),
                  key=lambda s: (s.cost(budget) is None, s.cost(budget) or 0.0, -_goodness(s)))


def within(run: RunSummary, best: RunSummary, tolerance: float) -> bool:
    """Whether ``run``'s metric is at most ``tolerance`` (relative to the best value) worse than ``best``'s."""
    return _goodness(best) - _goodness(run) <= tolerance * abs(best.value) + 1e-12


def choose(summaries: Sequence[RunSummary], budget: str, tolerance: float = DEFAULT_TOLERANCE
           ) -> RunSummary | None:
    """The cheapest run on the budget's Pareto front within ``tolerance`` of the best metric."""
    best = best_run(summaries)
    if best is None:
        return None
    front = pareto_front(summaries, budget)
    near = [s for s in ranked(summaries, budget) if s.label in front and within(s, best, tolerance)]
    return near[0] if near else best


def full_run(summaries: Sequence[RunSummary]) -> RunSummary | None:
    """The successful full fine-tuning run, if any: the run of one method that trains everything
    (:attr:`~tunelab.methods.base.MethodSpec.trains_everything`, i.e. ``full``), else the run
    labelled with such a method's name."""
    from tunelab.methods import METHODS  # here: reading and writing reports needs no torch otherwise

    everything = {name for name, spec in METHODS.items() if spec.trains_everything}
    scored = _scored(summaries)
    return next((s for s in scored if len(s.method) == 1 and s.method[0] in everything), None) or next(
        (s for s in scored if s.label in everything), None)


def trade_off(run: RunSummary, ref: RunSummary) -> str:
    """One sentence: ``run``'s metric and costs relative to ``ref``'s."""
    values = f"{_fmt_value(run.value)} vs {_fmt_value(ref.value)}"
    if run.greater_is_better and ref.value > 0:
        head = f"{run.label} reaches {_fmt_pct(100 * run.value / ref.value)}% of {ref.label}'s {run.metric} ({values})"
    elif not run.greater_is_better and ref.value > 0 and run.value != ref.value:
        change = 100 * (run.value - ref.value) / ref.value
        head = (f"{run.label}'s {run.metric} is {_fmt_pct(abs(change))}% {'higher' if change > 0 else 'lower'} "
                f"than {ref.label}'s ({values}; lower is better)")
    else:
        diff = run.value - ref.value
        head = (f"{run.label}'s {run.metric} is {_fmt_value(abs(diff))} {'above' if diff >= 0 else 'below'} "
                f"{ref.label}'s ({values}; {'higher' if run.greater_is_better else 'lower'} is better)")
    costs = []
    if _ratio(run.trainable, ref.trainable) is not None:
        costs.append(f"{_fmt_pct(100 * _ratio(run.trainable, ref.trainable))}% of the trainable parameters")
    if _ratio(run.peak_memory_mb, ref.peak_memory_mb) is not None:
        costs.append(f"{_fmt_ratio(_ratio(run.peak_memory_mb, ref.peak_memory_mb))}× the peak memory")
    if _ratio(run.train_seconds, ref.train_seconds) is not None:
        costs.append(f"{_fmt_ratio(_ratio(run.train_seconds, ref.train_seconds))}× the training time")
    return head + (f" with {_join(costs)}" if costs else "") + "."


def recommend(summaries: Sequence[RunSummary], budget: str, tolerance: float = DEFAULT_TOLERANCE) -> str:
    """Lines of text: best run, Pareto front, the pick under ``budget`` with its trade-off, the ranking."""
    check_budget(budget)
    check_comparable(summaries)
    words = COSTS[budget][1]
    best, pick, full = best_run(summaries), choose(summaries, budget, tolerance), full_run(summaries)
    order = ranked(summaries, budget)
    front = pareto_front(summaries, budget)
    metric = best.metric
    lines = [f"Best {metric}: {best.label} ({_fmt_value(best.value)}).",
             f"Pareto front for {words} ({STAR}): {', '.join(s.label for s in order if s.label in front) or 'none'}."]
    if not front:
        lines.append(f"No run recorded its {words}; pick by {metric} alone: {best.label}.")
    else:
        lines.append(f"For the {words} budget, pick {pick.label}: of the Pareto-front runs within {tolerance * 100:g}% "
                     f"of the best {metric}, it has the {CHEAPEST[budget]}"
                     + (f" (and the best {metric})." if pick is best else "."))
    if pick is not best:
        lines.append(trade_off(pick, best))
    if full is not None and full is not pick and full is not best:
        lines.append(trade_off(pick, full))
    ref = full or best
    others = [s for s in order if s.label in front and s is not pick and s is not ref]
    if others:
        lines.append("Other Pareto-front trade-offs: " + " ".join(trade_off(s, ref) for s in others))
    listed = [f"{i}. {s.label}: {_fmt_cost(s, budget)}, {metric} {_fmt_value(s.value)}"
              for i, s in enumerate(order, 1)]
    lines.append(f"Ranked by {words}, cheapest first: " + "; ".join(listed) + ".")
    failed = [s for s in summaries if not s.ok]
    if failed:
        lines.append("Left out because they failed: " + "; ".join(f"{s.label}: {s.error}" for s in failed))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- tables

def _ordered(summaries: Sequence[RunSummary]) -> list[RunSummary]:
    """Scored runs best first, then unscored successful runs (failed runs are listed apart)."""
    scored = sorted(_scored(summaries), key=_goodness, reverse=True)
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
    rows = [[STAR if s.label in front else "", s.label, "+".join(s.method) or "—", _fmt_value(s.value),
             _fmt_int(s.trainable), _fmt_percent_cell(s.trainable_percent), _fmt_mb(s.peak_memory_mb),
             _fmt_seconds(s.train_seconds), _fmt_seconds(s.wall_seconds), _fmt_throughput(s),
             _fmt_bytes(s.artifact_bytes)] for s in _ordered(summaries)]
    return headers, rows


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


def _heading(summaries: Sequence[RunSummary], budget: str) -> str:
    first = next(s for s in summaries if s.ok)
    direction = "higher" if first.greater_is_better else "lower"
    return (f"Task: {first.task}; metric: test {first.metric} ({direction} is better); budget: {COSTS[budget][1]}; "
            f"{STAR} = Pareto front (best {first.metric} for the {COSTS[budget][1]}).")


def render_markdown(summaries: Sequence[RunSummary], budget: str, recommendation: str) -> str:
    parts = ["# tunelab comparison", "", _heading(summaries, budget), "", markdown_table(summaries, budget), "",
             "## Recommendation", "", *[f"- {line}" for line in recommendation.splitlines()]]
    failed = [s for s in summaries if not s.ok]
    if failed:
        parts += ["", "## Failed runs", "", *[f"- **{s.label}** (`{s.run_dir}`): {s.error}" for s in failed]]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- CSV / JSON

CSV_FIELDS = ["label", "status", "error", "task", "method", "metric", "value", "greater_is_better", "trainable",
              "trainable_percent", "total_params", "peak_memory_mb", "train_seconds", "wall_seconds",
              "samples_per_second", "tokens_per_second", "artifact_bytes", "pareto_params", "pareto_memory",
              "pareto_time", "run_dir"]


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
            row.update({f"pareto_{c}": s.label in fronts[c] for c in COSTS})
            row.update({f"test_{k}": v for k, v in s.metrics.items()})
            writer.writerow(row)


def comparison_record(summaries: Sequence[RunSummary], budget: str, tolerance: float,
                      recommendation: str) -> dict[str, Any]:
    """What ``comparison.json`` holds."""
    first = next(s for s in summaries if s.ok)
    fronts = {c: pareto_front(summaries, c) for c in COSTS}
    best, pick = best_run(summaries), choose(summaries, budget, tolerance)
    return _finite({
        "task": first.task, "metric": first.metric, "greater_is_better": first.greater_is_better,
        "budget": budget, "tolerance": tolerance, "best": best.label if best else None,
        "recommended": pick.label if pick else None, "recommendation": recommendation,
        "pareto": {c: [s.label for s in ranked(summaries, c) if s.label in fronts[c]] for c in COSTS},
        "runs": [{**s.to_dict(), "pareto": {c: s.label in fronts[c] for c in COSTS}} for s in summaries],
    })


# ---------------------------------------------------------------------------- plots

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
    points = [(s, getattr(s, x_field)) for s in _scored(summaries)]
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
    runs = sorted((s for s in _scored(summaries) if s.peak_memory_mb is not None), key=lambda s: s.peak_memory_mb)
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


# ---------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #212529; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #495057; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.35rem 0.6rem; border-bottom: 1px solid #dee2e6; text-align: right; white-space: nowrap; }
th:nth-child(-n+3), td:nth-child(-n+3) { text-align: left; }
tr.pareto td { background: #fff4e6; } td.star { color: #d9480f; font-weight: bold; }
.recommendation p { margin: 0.4rem 0; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #dee2e6; }
figcaption { color: #495057; font-size: 0.85rem; }
.failed li { color: #c92a2a; }
"""

# Records how many images decoded (complete and with a width) so a headless browser can check them.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.dataset.images = loaded + "/" + images.length;
});
"""


def html_table(summaries: Sequence[RunSummary], budget: str) -> str:
    headers, rows = table_rows(summaries, budget)
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        ('<tr class="pareto">' if row[0] else "<tr>") + f'<td class="star">{e(row[0])}</td>'
        + "".join(f"<td>{e(x)}</td>" for x in row[1:]) + "</tr>" for row in rows)
    return f'<table id="comparison"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(summaries: Sequence[RunSummary], budget: str, recommendation: str, plots: dict[str, Path]) -> str:
    """One self-contained page: table, recommendation, plots as data URIs, failed runs."""
    e = html.escape
    captions = {"metric_vs_trainable": "Metric against trainable parameters (%, log scale).",
                "metric_vs_time": "Metric against training time.", "peak_memory": "Peak memory per run."}
    figures = "".join(
        f'<figure><img alt="{e(captions[name])}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}"><figcaption>{e(captions[name])}</figcaption></figure>'
        for name, path in plots.items())
    failed = [s for s in summaries if not s.ok]
    failed_html = ("<h2>Failed runs</h2><ul class=\"failed\">" + "".join(
        f"<li><strong>{e(s.label)}</strong> (<code>{e(str(s.run_dir))}</code>): {e(s.error or '')}</li>"
        for s in failed) + "</ul>") if failed else ""
    advice = "".join(f"<p>{e(line)}</p>" for line in recommendation.splitlines())
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>tunelab comparison</title><style>{CSS}</style></head>\n<body>"
            f'<h1>tunelab comparison</h1><p class="meta">{e(_heading(summaries, budget))}</p>'
            f"{html_table(summaries, budget)}"
            f'<h2>Recommendation</h2><div class="recommendation">{advice}</div>'
            f"<h2>Plots</h2>{figures}{failed_html}"
            f"<script>{IMAGE_CHECK}</script></body></html>\n")


# ---------------------------------------------------------------------------- all files

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


# ---------------------------------------------------------------------------- formatting

def _number(x: Any) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def _integer(x: Any) -> int | None:
    n = _number(x)
    return int(n) if n is not None else None


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _sig2(x: float) -> str:
    """Two significant digits for small numbers (0.0034, 0.82, 1.3), whole numbers from 10 up."""
    if x == 0:
        return "0"
    return f"{x:.{max(0, 1 - math.floor(math.log10(abs(x))))}f}"


def _fmt_pct(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 1 else _sig2(x)


def _fmt_ratio(x: float) -> str:
    return _sig2(x)


def _fmt_value(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.4f}" if abs(x) < 1000 else f"{x:,.1f}"


def _fmt_int(x: int | None) -> str:
    return "—" if x is None else f"{x:,}"


def _fmt_percent_cell(x: float | None) -> str:
    return "—" if x is None else f"{_fmt_pct(x)}%"


def _fmt_mb(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} MB"


def _fmt_seconds(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} s" if x >= 10 else f"{x:.1f} s"


def _fmt_throughput(s: RunSummary) -> str:
    parts = [f"{s.samples_per_second:,.1f} samples/s"] if s.samples_per_second is not None else []
    parts += [f"{s.tokens_per_second:,.0f} tokens/s"] if s.tokens_per_second is not None else []
    return ", ".join(parts) or "—"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _fmt_cost(s: RunSummary, budget: str) -> str:
    c = s.cost(budget)
    if c is None:
        return f"(no {COSTS[budget][1]} recorded)"
    if budget == "params":
        return f"{int(c):,}" + (f" ({_fmt_pct(s.trainable_percent)}%)" if s.trainable_percent is not None else "")
    return _fmt_mb(c) if budget == "memory" else _fmt_seconds(c)

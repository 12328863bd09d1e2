"""Reading runs for ``tunelab compare``: one :class:`RunSummary` per run directory, and the checks
that they can be compared.

:func:`summarize_run` turns one run directory (``results.json`` and the size of
``model/weights.safetensors``) into a :class:`RunSummary`. A missing, unfinished or unreadable run becomes
``status="failed"`` with its error, so the comparison goes on with the rest. :func:`check_comparable` raises
a one-line :class:`~tunelab.errors.UserError` when the successful runs solve different tasks, are scored on
different metrics or do not all report the chosen one.

Costs (the ``budget``, :data:`COSTS`): ``params`` (trainable parameters), ``memory`` (peak memory, MB) and
``time`` (training seconds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import UserError, unknown

COSTS: dict[str, tuple[str, str]] = {  # budget -> (RunSummary field, words)
    "params": ("trainable", "trainable parameters"),
    "memory": ("peak_memory_mb", "peak memory"),
    "time": ("train_seconds", "training time"),
    "artifact": ("artifact_bytes", "artifact size"),
    "latency": ("latency_ms_per_row", "inference latency"),
}
CLASSIC_COSTS = ("params", "memory", "time")
"""Costs every report states a Pareto front for (plus the budget's own)."""


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
    latency_ms_per_row: float | None = None
    """Test-split evaluation time per test row (inference latency, batched as evaluation batches)."""
    time_budget_reached: bool = False
    group: str | None = None
    """The method variant (``runs`` entry) this run belongs to; its seeds and data sizes share it."""
    seed: int | None = None
    size: int | str | None = None
    train_rows: int | None = None
    violations: list[str] = field(default_factory=list)
    """Hard limits (``max_memory_mb``, ``max_params``) the run breaks: it is never recommended."""
    interval: dict[str, Any] | None = None
    """The metric's interval (:class:`tunelab.compare.stats.Interval` as a dict)."""
    seed_values: list[float] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    """Labels of the runs (seeds) a method's summary averages (empty for a single run)."""

    def __post_init__(self) -> None:
        self.group = self.group or self.label
        self._rows: dict[str, Any] | None = None
        self.member_runs: list[RunSummary] = []

    def row_scores(self) -> dict[str, Any]:
        """The run's per-row test scores (``test_rows.json``; {} when it saved none)."""
        if self._rows is None:
            from tunelab.row_scores import FILE, read_row_scores

            self._rows = read_row_scores(self.run_dir / FILE)
        return self._rows

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
        return finite({**asdict(self), "run_dir": str(self.run_dir)})



# ---------------------------------------------------------------------------- reading runs

def default_metric(task: str | None, test: dict[str, float], fallback: str | None = None) -> str | None:
    """The task's headline metric (from its registry entry) given the test metrics it reported."""
    from tunelab.tasks import headline_metric

    return headline_metric(task, test, fallback)


def greater_is_better(metric: str, task: str | None = None) -> bool:
    """The metric's direction, from the task's registry entry."""
    from tunelab.tasks import greater_is_better as direction

    return direction(metric, task)


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
    test = {k: float(v) for k, v in (results.get("test") or {}).items() if number(v) is not None}
    task = results.get("task")
    name = metric or default_metric(task, test, (results.get("best_validation") or {}).get("metric"))
    params = results.get("params") or {}
    weights = run_dir / "model" / "weights.safetensors"
    tokens = number(results.get("tokens_per_second"))
    return RunSummary(
        label=label, run_dir=run_dir, task=task, method=[str(m) for m in results.get("method") or []],
        metric=name, value=test.get(name) if name else None,
        greater_is_better=greater_is_better(name, task) if name else True, metrics=test,
        trainable=integer(params.get("trainable")), trainable_percent=number(params.get("trainable_percent")),
        total_params=integer(params.get("total")), peak_memory_mb=number(results.get("peak_memory_mb")),
        train_seconds=number(results.get("train_seconds")), wall_seconds=number(results.get("wall_seconds")),
        samples_per_second=number(results.get("samples_per_second")),
        tokens_per_second=tokens if tokens else None,
        artifact_bytes=weights.stat().st_size if weights.is_file() else None,
        latency_ms_per_row=number(results.get("latency_ms_per_row")),
        time_budget_reached=bool(results.get("time_budget_reached", False)),
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


def check_budget(budget: str) -> str:
    if budget not in COSTS:
        raise unknown("budget", budget, COSTS)
    return budget


# ---------------------------------------------------------------------------- numbers from JSON

def number(x: Any) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def integer(x: Any) -> int | None:
    n = number(x)
    return int(n) if n is not None else None


def finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x

"""``tunelab plot RUN``: a run's training curves from its ``metrics.jsonl``, as one PNG.

Three panels that share the step axis: the training loss (each logged step, and a moving average
when there are many), the learning rate, and the validation metrics (each numeric metric the task
reported at its evaluations; the test score, when there is one, as a marker at the last step).
Drawn on a matplotlib ``Figure`` directly (Agg, no pyplot state), so it works without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import UserError
from tunelab.run import RunDir

SKIP = ("event", "split", "step", "epoch", "tokens", "count")
"""Event fields that are not curves."""


def curves(events: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{"train": {"loss": [(step, value), ...], "lr": ...}, "validation": {...}, "test": {...}}``."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for e in events:
        if e.get("event") not in ("train", "eval") or not isinstance(e.get("step"), (int, float)):
            continue
        group = "train" if e["event"] == "train" else str(e.get("split", "validation"))
        for key, value in e.items():
            if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if np.isfinite(value):
                out.setdefault(group, {}).setdefault(key, []).append((int(e["step"]), float(value)))
    return out


def moving_average(values: list[float], window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_run(run_path: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves; return the PNG's path (default ``<run>/plots/curves.png``)."""
    from matplotlib.figure import Figure

    run = RunDir.open(run_path)
    found = curves(run.events())
    train = found.get("train", {})
    if "loss" not in train:
        raise UserError(f"{run.path} has no training steps in {run.metrics.name} to plot (has it started?)")
    path = Path(out) if out else run.path / "plots" / "curves.png"
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path}: the plot is a PNG; give a file name ending in .png")
    fig = Figure(figsize=(8.0, 9.0), dpi=100, layout="constrained")
    loss_ax, lr_ax, metric_ax = fig.subplots(3, 1, sharex=True)
    steps, loss = zip(*train["loss"])
    loss_ax.plot(steps, loss, color="#adb5bd", lw=1, label="loss")
    if len(loss) >= 20:
        w = max(5, len(loss) // 20)
        loss_ax.plot(steps[w - 1:], moving_average(list(loss), w), color="#d9480f", lw=2, label=f"mean of {w}")
    loss_ax.set_ylabel("training loss")
    loss_ax.legend(fontsize=8)
    if "lr" in train:
        lr_ax.plot(*zip(*train["lr"]), color="#1c7ed6")
    lr_ax.set_ylabel("learning rate")
    _metrics_panel(metric_ax, found)
    metric_ax.set_xlabel("optimizer step")
    for ax in (loss_ax, lr_ax, metric_ax):
        ax.grid(True, alpha=0.3)
    fig.suptitle(run.path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _metrics_panel(ax: Any, found: dict[str, dict[str, list[tuple[int, float]]]]) -> None:
    """Validation metrics as lines, test metrics as markers in the same colour."""
    validation, test = found.get("validation", {}), found.get("test", {})
    colors = iter(f"C{i}" for i in range(100))
    drawn = False
    for name, points in validation.items():
        color = next(colors)
        ax.plot(*zip(*points), marker="o", ms=3, color=color, label=f"validation {name}")
        if name in test:
            ax.plot(*zip(*test[name]), marker="*", ms=12, ls="", color=color, label=f"test {name}")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no validation metrics logged", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, ncol=2)
    ax.set_ylabel("metric")

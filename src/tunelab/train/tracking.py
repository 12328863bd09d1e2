"""Experiment tracking through accelerate's trackers (``train.report_to``).

Every event a run writes to ``metrics.jsonl`` (train loss/LR/throughput, validation and test
metrics) is mirrored to the configured trackers as scalars named ``<split or event>/<metric>``
(``train/loss``, ``validation/accuracy``, ``test/accuracy``) at the event's step, and the resolved
run config goes in as hyper-parameters (flattened: ``train.lr``). The trackers are accelerate's own
(:mod:`accelerate.tracking`: TensorBoard, MLflow, Weights & Biases, Aim, ClearML, Comet, DVCLive,
...), not hand-written writers, and they write under the run directory (``<run>/tracking/``) unless
the user points them elsewhere with the tracker's own environment variable:

* TensorBoard: event files in ``<run>/tracking/<run name>/``.
* MLflow: a local file store ``<run>/tracking/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set (MLflow 3
  keeps file stores in maintenance mode; ``MLFLOW_ALLOW_FILE_STORE=true`` is set for it).
* Weights & Biases: offline mode (``WANDB_MODE=offline``) and ``WANDB_DIR=<run>/tracking`` unless set,
  so nothing leaves the machine until the user runs ``wandb sync``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import UserError

TRACKERS = ("tensorboard", "mlflow", "wandb", "aim", "clearml", "comet_ml", "dvclive", "swanlab", "trackio")
"""``train.report_to`` names: accelerate's logger types."""
TRACKING_DIR = "tracking"

_AVAILABLE = {  # tracker -> (accelerate's availability check, what to install)
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "mlflow": ("is_mlflow_available", "mlflow (or mlflow-skinny)"),
    "wandb": ("is_wandb_available", "wandb"),
    "aim": ("is_aim_available", "aim"),
    "clearml": ("is_clearml_available", "clearml"),
    "comet_ml": ("is_comet_ml_available", "comet_ml"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "trackio": ("is_trackio_available", "trackio"),
}


def check_trackers(names: list[str]) -> None:
    """Every tracker in ``train.report_to`` must be installed (one line naming what to install)."""
    import accelerate.utils as au

    for name in names:
        check, package = _AVAILABLE[name]
        available = getattr(au, check, None)
        if available is None or not available():
            raise UserError(f"config key 'train.report_to': '{name}' needs the {package} package, which is not "
                            f"installed; pip install {package.split()[0]}, or drop it from train.report_to")


def offline_defaults(names: list[str], run_dir: Path) -> None:
    """Keep trackers local unless the user configured them (environment variables already set win)."""
    folder = run_dir / TRACKING_DIR
    defaults = {}
    if "mlflow" in names:
        defaults["MLFLOW_TRACKING_URI"] = (folder / "mlruns").resolve().as_uri()
        defaults["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 wants a database; a local folder needs no server
    if "wandb" in names:
        defaults.update(WANDB_MODE="offline", WANDB_DIR=str(folder))
    for key, value in defaults.items():
        if not os.environ.get(key):  # unset or empty
            os.environ[key] = value


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """The run config flattened to scalar hyper-parameters (lists and None as text)."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hyperparameters(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def scalars(event: dict[str, Any]) -> tuple[dict[str, float], int | None]:
    """A ``metrics.jsonl`` event as tracker scalars (``train/loss``, ``validation/accuracy``) and its step."""
    group = event.get("split") or event.get("event", "event")
    values = {f"{group}/{k}": float(v) for k, v in event.items()
              if k not in ("event", "split", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v)}
    step = event.get("step")
    return values, int(step) if isinstance(step, (int, float)) else None


def start(accelerator: Any, names: list[str], run_dir: Path, run_name: str, config: dict[str, Any]
          ) -> Callable[[dict[str, Any]], None]:
    """Start the trackers (main process) and return ``mirror(event)``, which logs one event to them."""
    if not names:
        return lambda event: None
    folder = str(run_dir / TRACKING_DIR)
    # set both: set_directories keeps a logging_dir given at construction
    accelerator.project_configuration.project_dir = accelerator.project_configuration.logging_dir = folder
    accelerator.init_trackers(run_name, config=hyperparameters(config))

    def mirror(event: dict[str, Any]) -> None:
        values, step = scalars(event)
        if values:
            accelerator.log(values, step=step)

    return mirror

"""Experiment tracking (``train.report_to``, accelerate's trackers) read back with the trackers' own
readers, and ``tunelab plot``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.conftest import one_error_line, run_cli, tiny_overrides
from tunelab.config import validate_config
from tunelab.train.tracking import hyperparameters, scalars


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tracked_run(tiny_bert_dir, reviews_jsonl, tmp_path_factory) -> Path:
    """A tiny run mirrored to TensorBoard and MLflow (a local file store under the run)."""
    out = tmp_path_factory.mktemp("tracked")
    env = {"MLFLOW_TRACKING_URI": ""}  # empty: tunelab's default (the run's own file store) applies
    proc = run_cli("train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, out, **{
        "train.report_to": "[tensorboard,mlflow]", "data.max_train_samples": 64, "train.epochs": 2}), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "run"


def test_tensorboard_event_files_hold_the_loss_curve(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((tracked_run / "tracking").rglob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file"
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    logged = [(e["step"], e["loss"]) for e in _events(tracked_run) if e["event"] == "train"]
    curve = [(s.step, s.value) for s in acc.Scalars("train/loss")]
    assert len(curve) == len(logged) >= 4
    assert [s for s, _ in curve] == [s for s, _ in logged]
    assert [v for _, v in curve] == pytest.approx([v for _, v in logged], rel=1e-6)
    assert "validation/accuracy" in acc.Tags()["scalars"] and "test/accuracy" in acc.Tags()["scalars"]


def test_mlflow_file_store_has_metrics_and_params(tracked_run):
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tracked_run / "tracking" / "mlruns").resolve().as_uri())
    experiments = client.search_experiments()
    runs = [r for e in experiments for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.lr"] == "0.005" and run.data.params["method.name"] == "lora"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    logged = [(e["step"], e["loss"]) for e in _events(tracked_run) if e["event"] == "train"]
    got = sorted((m.step, m.value) for m in history)
    assert [s for s, _ in got] == [s for s, _ in sorted(logged)]
    assert [v for _, v in got] == pytest.approx([v for _, v in sorted(logged)], rel=1e-6)
    test_acc = json.loads((tracked_run / "results.json").read_text())["test"]["accuracy"]
    assert client.get_metric_history(run.info.run_id, "test/accuracy")[-1].value == pytest.approx(test_acc)


def test_scalars_and_hyperparameters():
    values, step = scalars({"event": "eval", "split": "validation", "step": 7, "accuracy": 0.5, "loss": float("nan"),
                            "confusion_matrix": [[1]], "stopped": True})
    assert values == {"validation/accuracy": 0.5} and step == 7
    flat = hyperparameters({"train": {"lr": 0.1, "report_to": ["tensorboard"]}, "name": None})
    assert flat == {"train.lr": 0.1, "train.report_to": "['tensorboard']", "name": "None"}


def test_report_to_accepts_one_name_and_refuses_unknown_ones():
    assert validate_config({"train": {"report_to": "tensorboard"}}).train.report_to == ["tensorboard"]
    assert validate_config({"train": {"report_to": "none"}}).train.report_to == []


def test_unknown_or_missing_tracker_is_one_line(tiny_bert_dir, reviews_jsonl, tmp_path):
    bad = {"train.report_to": "tensorbord"}
    proc = run_cli("train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **bad))
    assert proc.returncode == 2
    one_error_line(proc.stderr, "train.report_to")
    proc = run_cli("train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{"train.report_to": "aim"}))
    assert proc.returncode == 2
    one_error_line(proc.stderr, "'aim' needs the aim package, which is not installed")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- tunelab plot

def test_plot_draws_the_run(tracked_run, tmp_path):
    proc = run_cli("plot", str(tracked_run))
    assert proc.returncode == 0, proc.stderr
    png = Path(proc.stdout.strip().splitlines()[-1])
    assert png == tracked_run / "plots" / "curves.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 900)
    out = tmp_path / "c.png"
    assert run_cli("plot", str(tracked_run), "--out", str(out)).returncode == 0 and out.is_file()


def test_plot_bad_input(tracked_run, tmp_path):
    proc = run_cli("plot", str(tmp_path))
    assert proc.returncode == 2
    one_error_line(proc.stderr, "is not a tunelab run directory")
    proc = run_cli("plot", str(tracked_run), "--out", str(tmp_path / "c.jpg"))
    assert proc.returncode == 2
    one_error_line(proc.stderr, "the plot is a PNG")
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text("name: started\n")
    proc = run_cli("plot", str(started))
    assert proc.returncode == 2
    one_error_line(proc.stderr, "has no training steps")

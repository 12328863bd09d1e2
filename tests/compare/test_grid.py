"""``tunelab compare`` over a grid of seeds and data sizes with tiny real runs: labels and configs of
every cell, per-row test scores, the statistics in every report, ``--jobs 2``, resuming after
``kill -9`` without redoing a finished run, a wall-clock budget, and the grid's bad inputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.compare.test_runner import QUIET, tiny_base, write_compare
from tests.conftest import REPO, one_error_line, run_cli
from tunelab.compare.config import load_compare, plan_runs
from tunelab.row_scores import FILE, read_row_scores

LABELS = [f"{m}-seed{s}-n{n}" for m in ("lora", "bitfit") for n in (16, 64) for s in (1, 2)]


def grid_base(model: Path, data: Path) -> dict:
    base = tiny_base(model, data)
    del base["data"]["max_train_samples"]  # data_sizes sets it
    return base


@pytest.fixture(scope="module")
def grid(tiny_bert_dir, reviews_jsonl, tmp_path_factory):
    """lora and bitfit x seeds 1, 2 x 16 and 64 training rows, two jobs at once."""
    tmp = tmp_path_factory.mktemp("grid")
    path = write_compare(tmp / "grid.yaml", tmp / "out", grid_base(tiny_bert_dir, reviews_jsonl), ["lora", "bitfit"],
                         seeds=[1, 2], data_sizes=[64, 16])
    return path, tmp / "out" / "tiny", run_cli("compare", str(path), "--jobs", "2", env=QUIET, timeout=900)


def test_every_cell_trains_with_its_seed_and_size(grid):
    path, root, proc = grid
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "2 jobs at once, sharing this machine's CPU" in proc.stdout
    for label in LABELS:
        saved = yaml.safe_load((root / "runs" / label / "config.yaml").read_text())
        method, seed, size = label.split("-")
        assert saved["seed"] == int(seed[4:]) and saved["data"]["max_train_samples"] == int(size[1:])
        assert saved["method"]["name"] == method
        results = json.loads((root / "runs" / label / "results.json").read_text())
        scores = read_row_scores(root / "runs" / label / FILE)
        assert scores["accuracy"].binary and len(scores["accuracy"]) == results["test_rows"]
        assert scores["accuracy"].value() == pytest.approx(results["test"]["accuracy"], abs=1e-12)
        assert results["latency_ms_per_row"] > 0
    # nested subsets: the 16 rows are the first 16 of the 64 (same split, data.split_seed)
    assert all(f"[{i}/8] " in proc.stdout for i in range(1, 9))


def test_grid_reports_carry_the_statistics(grid):
    _, root, proc = grid
    record = json.loads((root / "comparison.json").read_text())
    assert {r["label"] for r in record["runs"]} == {"lora", "bitfit"}  # one row per method at 64 rows
    assert {r["label"] for r in record["all_runs"]} == set(LABELS)
    lora = next(r for r in record["runs"] if r["label"] == "lora")
    assert lora["members"] == ["lora-seed1-n64", "lora-seed2-n64"] and lora["interval"]["kind"] == "seeds"
    assert lora["value"] == pytest.approx(sum(lora["seed_values"]) / 2)
    assert [a["train_rows"] for a in record["by_size"]] == [16, 64]
    other = next(label for label in ("lora", "bitfit") if label != record["best"])
    assert record["tests_against_best"][other]["decisive"]["method"] == "McNemar"
    assert any(line.startswith("At 16 training rows: pick ") for line in record["data_sizes"])
    assert (root / "plots" / "learning_curves.png").is_file() and (root / "plots" / "intervals.png").is_file()
    rows = list(csv.DictReader((root / "runs.csv").open()))
    assert sorted(r["label"] for r in rows) == sorted(LABELS)
    assert "Why this recommendation" in (root / "report.html").read_text()
    assert "At 64 training rows: Best accuracy:" in proc.stdout and "By data size:" in proc.stdout


def test_rerun_redoes_nothing(grid):
    path, root, _ = grid
    before = {label: (root / "runs" / label / "results.json").stat().st_mtime_ns for label in LABELS}
    again = run_cli("compare", str(path), env=QUIET)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier, skipped") == 8
    assert before == {label: (root / "runs" / label / "results.json").stat().st_mtime_ns for label in LABELS}


def _train_processes(root: Path) -> list[int]:
    """Live ``tunelab train`` processes working under ``root``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if " train " in cmd and str(root) in cmd:
                found.append(int(pid))
    return found


def test_kill_9_then_resume_never_redoes_a_finished_run(tiny_bert_dir, reviews_jsonl, tmp_path):
    path = write_compare(tmp_path / "k.yaml", tmp_path / "out", grid_base(tiny_bert_dir, reviews_jsonl),
                         ["lora", "bitfit"], seeds=[1, 2], data_sizes=[16])
    root = tmp_path / "out" / "tiny"
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "compare", str(path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **QUIET})
    first = root / "runs" / "lora-seed1-n16" / "results.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (first.is_file() and (root / "runs" / "lora-seed2-n16").is_dir()):
        time.sleep(0.05)
    assert first.is_file(), "the first run did not finish in time"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # a child killed with its parent goes at once; one started just before the kill exits as soon as it
    # reaches its parent check (within seconds on a loaded machine), before it writes anything
    deadline = time.time() + 30
    while _train_processes(root) and time.time() < deadline:
        time.sleep(0.2)
    assert _train_processes(root) == [], "a training process outlived the killed comparison"
    done = first.stat().st_mtime_ns
    again = run_cli("compare", str(path), env=QUIET)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[1/4] lora-seed1-n16: finished earlier, skipped" in again.stdout
    assert first.stat().st_mtime_ns == done
    assert all((root / "runs" / f"{m}-seed{s}-n16" / "results.json").is_file() for m in ("lora", "bitfit")
               for s in (1, 2))


def test_budget_seconds_stops_every_run_on_time(tiny_bert_dir, reviews_jsonl, tmp_path):
    base = tiny_base(tiny_bert_dir, reviews_jsonl)
    base["train"]["epochs"] = 50  # far more than the budget allows
    path = write_compare(tmp_path / "t.yaml", tmp_path / "out", base, ["bitfit"], budget_seconds=0.001)
    proc = run_cli("compare", str(path), env=QUIET)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "tiny" / "runs" / "bitfit" / "results.json").read_text())
    assert results["time_budget_reached"] is True and results["global_step"] == 1
    saved = yaml.safe_load((tmp_path / "out" / "tiny" / "runs" / "bitfit" / "config.yaml").read_text())
    assert saved["train"]["max_seconds"] == 0.001


# ---------------------------------------------------------------------------- bad grids

BAD = {
    "size-too-large": ({"data_sizes": [16, 5000]}, "5000 training rows asked, but the data has 192 training rows"),
    "repeated-seed": ({"seeds": [1, 2, 1]}, "seed 1 is listed more than once"),
    "repeated-size": ({"data_sizes": [16, "all", 16]}, "data size 16 is listed more than once"),
    "zero-size": ({"data_sizes": [0]}, "a data size is a number of training rows"),
    "seed-twice": ({"seeds": [1], "base_seed": 3}, "'seeds' sets each run's seed; remove seed from base"),
    "latency-without-test": ({"budget": "latency", "base_test_ratio": 0.0},
                             "'latency' is measured on the test split, and these runs have none"),
    "unknown-budget": ({"budget": "flops"}, "compare config key 'budget'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_grid_is_one_line_and_touches_nothing(case, tiny_bert_dir, reviews_jsonl, tmp_path):
    extra, fragment = BAD[case]
    base = grid_base(tiny_bert_dir, reviews_jsonl)
    extra = dict(extra)
    if "base_seed" in extra:
        base["seed"] = extra.pop("base_seed")
    if "base_test_ratio" in extra:
        base["data"]["test_ratio"] = extra.pop("base_test_ratio")
    path = write_compare(tmp_path / "bad.yaml", tmp_path / "out", base, ["lora"], **extra)
    proc = run_cli("compare", str(path), env=QUIET)
    assert proc.returncode == 2, proc.stderr[-2000:]
    one_error_line(proc.stderr, fragment)
    assert not (tmp_path / "out").exists()


def test_latency_flag_is_checked_like_the_file(tiny_bert_dir, reviews_jsonl, tmp_path):
    base = grid_base(tiny_bert_dir, reviews_jsonl)
    base["data"]["test_ratio"] = 0.0
    path = write_compare(tmp_path / "bad.yaml", tmp_path / "out", base, ["lora"])
    proc = run_cli("compare", str(path), "--budget", "latency", env=QUIET)
    assert proc.returncode == 2
    one_error_line(proc.stderr, "'latency' is measured on the test split")


def test_planned_grid_labels(tiny_bert_dir, reviews_jsonl, tmp_path):
    path = write_compare(tmp_path / "p.yaml", tmp_path / "out", grid_base(tiny_bert_dir, reviews_jsonl),
                         ["lora"], seeds=[3, 4], data_sizes=["all", 32])
    plan = plan_runs(load_compare(path), tmp_path / "out" / "p")
    assert [r.label for r in plan] == ["lora-seed3-n32", "lora-seed4-n32", "lora-seed3-nall", "lora-seed4-nall"]
    assert [r.train_rows for r in plan] == [32, 32, 192, 192]
    assert [r.config.data.max_train_samples for r in plan] == [32, 32, None, None]
    assert {r.group for r in plan} == {"lora"}


def test_the_study_file_plans_11_methods_x_3_seeds_x_3_sizes(tmp_path):
    cfg = load_compare(REPO / "examples" / "compare-study.yaml")
    plan = plan_runs(cfg, tmp_path / "study")
    assert len(plan) == 99 and len({r.group for r in plan}) == 11
    assert {r.config.train.max_steps for r in plan} == {122}  # the equal step budget
    assert sorted({r.train_rows for r in plan}) == [200, 800, 3892]
    assert [r.label for r in plan[:2]] == ["full-seed1-n200", "freeze-seed1-n200"]  # every method, then the next seed

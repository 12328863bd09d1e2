#!/usr/bin/env python
"""CNN transfer learning on this CPU: MobileNetV2 (ImageNet) on 2,000 Fashion-MNIST images.

Runs (or, with ``--from``, reads) ``tunelab compare examples/compare-fashion-mnist.yaml``: a linear
probe with and without the frozen-trunk cache, top-3-block fine-tuning, LoRA on the convolutions and
full fine-tuning, each also with augmentation, 6 epochs each, scored on 2,000 test images. It writes
``benchmarks/results/image_transfer.json`` with every run's numbers and the issue's targets:

- linear probe >= 0.84 and full fine-tuning >= 0.87 test accuracy;
- the whole comparison under 40 minutes here;
- the trunk-cached probe >= 4x the training samples/s of the same probe without the cache
  (both in the same comparison, one after the other; the cache's build time counts as training time).

It also copies the report (comparison.md/.csv/.json, plots, report.html) to docs/compare-fashion-mnist/.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/image_transfer.py
    .venv/bin/python benchmarks/image_transfer.py --from runs/compare-fashion-mnist --wall-seconds 1500
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc

CONFIG = bc.REPO / "examples" / "compare-fashion-mnist.yaml"
DEFAULT_FOLDER = bc.REPO / "runs" / "compare-fashion-mnist"
OUT = bc.RESULTS_DIR / "image_transfer.json"
DOCS = bc.REPO / "docs" / "compare-fashion-mnist"
REPORT_FILES = ("comparison.md", "comparison.csv", "comparison.json", "report.html", "plots")


def run_compare() -> float:
    """Run the comparison in a child process; return its wall time in seconds."""
    start = time.perf_counter()
    info = bc.run_measured([*bc.tunelab_command(), "compare", str(CONFIG)], bc.REPO / "runs" / "image_transfer.log",
                           env=bc.child_env())
    if info["returncode"] != 0:
        raise SystemExit(f"the comparison failed:\n{info.get('log_tail', '')}")
    return time.perf_counter() - start


def run_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """label -> the numbers of each finished run of the comparison."""
    rows = {}
    for results in sorted((folder / "runs").glob("*/results.json")):
        r = json.loads(results.read_text())
        rows[results.parent.name] = {
            "method": r["method"], "accuracy": r["test"]["accuracy"], "top5_accuracy": r["test"].get("top5_accuracy"),
            "f1_macro": r["test"]["f1_macro"], "trainable": r["params"]["trainable"],
            "trainable_percent": r["params"]["trainable_percent"], "train_seconds": r["train_seconds"],
            "wall_seconds": r["wall_seconds"], "samples_per_second": r["samples_per_second"],
            "peak_memory_mb": r["peak_memory_mb"], "epochs": r["epochs"], "best_validation": r["best_validation"],
        }
    return rows


def targets(rows: dict[str, dict[str, Any]], wall: float | None) -> dict[str, Any]:
    probe, full = rows["probe-cached"]["accuracy"], rows["full"]["accuracy"]
    speedup = rows["probe-cached"]["samples_per_second"] / rows["probe-uncached"]["samples_per_second"]
    out = {
        "linear_probe_accuracy": {"value": probe, "target": ">= 0.84", "met": probe >= 0.84},
        "full_accuracy": {"value": full, "target": ">= 0.87", "met": full >= 0.87},
        "cache_speedup_samples_per_second": {"value": round(speedup, 2), "target": ">= 4", "met": speedup >= 4},
    }
    if wall is not None:
        out["compare_minutes"] = {"value": round(wall / 60, 1), "target": "< 40", "met": wall < 2400}
    return out


def copy_report(folder: Path) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        src = folder / name
        if src.is_dir():
            shutil.copytree(src, DOCS / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, DOCS / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="folder", type=Path, help="read a finished comparison instead of running it")
    parser.add_argument("--wall-seconds", type=float, help="with --from: the comparison's measured wall time")
    args = parser.parse_args()
    wall = args.wall_seconds if args.folder else run_compare()
    folder = args.folder or DEFAULT_FOLDER
    rows = run_rows(folder)
    checks = targets(rows, wall)
    copy_report(folder)
    recommendation = json.loads((folder / "comparison.json").read_text()).get("recommendation")
    bc.write_json(OUT, {"benchmark": "image_transfer", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "machine": bc.machine_info(), "config": str(CONFIG.relative_to(bc.REPO)),
                        "compare_wall_seconds": wall, "runs": rows, "targets": checks,
                        "recommendation": recommendation})
    for label, r in rows.items():
        print(f"{label:15s} accuracy {r['accuracy']:.4f}  {r['samples_per_second']:7.1f} samples/s  "
              f"train {r['train_seconds']:6.1f} s  trainable {r['trainable_percent']:.2f}%")
    for name, check in checks.items():
        print(f"{name}: {check['value']} (target {check['target']}): {'met' if check['met'] else 'NOT met'}")
    print(f"wrote {OUT} and {DOCS}")


if __name__ == "__main__":
    main()

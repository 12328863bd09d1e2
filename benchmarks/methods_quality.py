#!/usr/bin/env python
"""Every method on real data: test accuracy, trainable %, time and peak memory, and whether the
ranking has the shape the literature leads one to expect.

Each method runs its own example config (``examples/<name>-minilm-sentiment.yaml``: the sensible
defaults we ship, learning rate and epochs chosen per method) on ``minilm`` + ``rotten_tomatoes``
with one shared data recipe (80/10/10 split, ``data.split_seed=42``, seed 42), each in a fresh
``tunelab train`` process measured from outside (``/usr/bin/time -v``). A frozen-encoder linear
probe (``freeze`` with ``top_layers: 0``) is the floor.

Expected shape (He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning";
Hu et al., 2021, LoRA; Ben Zaken et al., 2022, BitFit; Lester et al., 2021, prompt tuning at small
scale): full ~ LoRA (within ~1.5 points) >= adapters >= BitFit, prompt tuning lowest on a model
this small, all above the linear probe. The checks are written to the JSON with their margins; the
test split has 487 rows, so one standard error of an accuracy near 0.8 is ~1.8 points and
differences below ~2 points are noise.

Results merge into ``benchmarks/results/methods_quality.json`` method by method, so a long run can
be done in parts (``--only lora full``); ``--redo`` measures methods already there again.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/methods_quality.py
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc

EXAMPLES = bc.REPO / "examples"
OUT = bc.RESULTS_DIR / "methods_quality.json"

# label -> example file stem (examples/<stem>-minilm-sentiment.yaml)
METHODS: dict[str, str] = {
    "linear_probe": "linear-probe",
    "full": "full",
    "freeze_top2": "freeze",
    "bitfit": "bitfit",
    "lora": "lora",
    "dora": "dora",
    "qlora": "qlora",
    "ia3": "ia3",
    "adapter": "adapter-serial",
    "parallel_adapter": "adapter-parallel",
    "prefix_tuning": "prefix-tuning",
    "ptuning_v2": "ptuning-v2",
    "prompt_tuning": "prompt-tuning",
}

SHARED = [("seed", 42), ("data.split_seed", 42), ("data.validation_ratio", 0.1), ("data.test_ratio", 0.1)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="every method on minilm + rotten_tomatoes")
    p.add_argument("--only", nargs="*", choices=list(METHODS), help="measure only these methods")
    p.add_argument("--redo", action="store_true", help="measure methods already in the results again")
    p.add_argument("--max-train-samples", type=int, default=None, help="quick check on fewer rows")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--keep-runs", type=Path, default=None, help="keep run folders and logs here")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    return p.parse_args(argv)


def example_config(label: str) -> Path:
    return EXAMPLES / f"{METHODS[label]}-minilm-sentiment.yaml"


def run_one(label: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train one method from its example config in a fresh measured process."""
    pairs = list(SHARED)
    if a.max_train_samples:
        pairs.append(("data.max_train_samples", a.max_train_samples))
    config = example_config(label)
    cmd = [*bc.tunelab_command(), "train", str(config), *bc.overrides(pairs),
           f"name={label}", f"output_dir={work / 'runs'}", "--overwrite"]
    info = bc.run_measured(cmd, work / "logs" / f"{label}.log", env=bc.child_env(), timeout=a.timeout)
    entry: dict[str, Any] = {"example": str(config.relative_to(bc.REPO)), "returncode": info["returncode"],
                             "busy_cpus_before": info.get("busy_cpus_before"),
                             "peak_rss_mb": info.get("peak_rss_mb"), "wall_seconds": info["wall_seconds"]}
    results_path = work / "runs" / label / "results.json"
    if info["returncode"] != 0 or not results_path.is_file():
        entry["error"] = info.get("log_tail", "")[-800:]
        return entry
    r = json.loads(results_path.read_text())
    cfg = (work / "runs" / label / "config.yaml").read_text()
    entry.update({
        "test_accuracy": r["test"]["accuracy"],
        "test_f1_macro": r["test"].get("f1_macro"),
        "trainable": r["params"]["trainable"],
        "trainable_percent": r["params"]["trainable_percent"],
        "train_seconds": r["train_seconds"],
        "samples_per_second": r["samples_per_second"],
        "epochs_run": r["epochs"],
        "stopped_early": r.get("stopped_early"),
        "adapter_bytes": (work / "runs" / label / "model" / "weights.safetensors").stat().st_size,
        "best_validation": r.get("best_validation"),
        "config_method": r["method"],
        "config_yaml": cfg,
    })
    return entry


def accuracy(results: dict[str, Any], label: str) -> float | None:
    entry = results.get(label) or {}
    return entry.get("test_accuracy")


def shape_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The expected ordering, one check per relation, with the margin in accuracy points."""
    def pts(x: float | None) -> float | None:
        return None if x is None else round(100 * x, 2)

    acc = {k: pts(accuracy(results, k)) for k in METHODS}
    checks: list[dict[str, Any]] = []

    def add(name: str, left: str, right: str, ok) -> None:
        a, b = acc.get(left), acc.get(right)
        if a is None or b is None:
            checks.append({"check": name, "status": "not measured"})
            return
        checks.append({"check": name, "left": a, "right": b, "margin_points": round(a - b, 2),
                       "status": "holds" if ok(a, b) else "does not hold"})

    add("full ~ lora (within 1.5 points)", "full", "lora", lambda a, b: abs(a - b) <= 1.5)
    for adapter in ("adapter", "parallel_adapter"):
        add(f"lora >= {adapter}", "lora", adapter, lambda a, b: a >= b)
        add(f"{adapter} >= bitfit", adapter, "bitfit", lambda a, b: a >= b)
    measured = [k for k, v in acc.items() if v is not None and k != "linear_probe"]
    if "prompt_tuning" in measured:
        lowest = min(measured, key=lambda k: acc[k])
        checks.append({"check": "prompt_tuning lowest", "lowest": lowest, "prompt_tuning": acc["prompt_tuning"],
                       "lowest_accuracy": acc[lowest],
                       "status": "holds" if lowest == "prompt_tuning" else "does not hold"})
    for k in measured:
        add(f"{k} > linear_probe", k, "linear_probe", lambda a, b: a > b)
    return checks


def table(results: dict[str, Any]) -> str:
    rows = ["| method | test acc | trainable % | train s | samples/s | peak RSS MB | saved KB |",
            "|---|---|---|---|---|---|---|"]
    for label in METHODS:
        e = results.get(label)
        if not e:
            continue
        if "error" in e:
            rows.append(f"| {label} | failed (exit {e['returncode']}) | | | | | |")
            continue
        rows.append(f"| {label} | {e['test_accuracy']:.4f} | {e['trainable_percent']:.3f} | {e['train_seconds']:.0f} "
                    f"| {e['samples_per_second']:.1f} | {e.get('peak_rss_mb') or 0:.0f} | {e['adapter_bytes'] / 1024:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    previous = json.loads(a.out.read_text()) if a.out.is_file() else {}
    results: dict[str, Any] = previous.get("methods", {})
    wanted = a.only or list(METHODS)
    todo = [k for k in wanted if a.redo or k not in results or "error" in results[k]]
    missing = [k for k in todo if not example_config(k).is_file()]
    if missing:
        print(f"skipping (no example config yet): {', '.join(missing)}")
    todo = [k for k in todo if k not in missing]
    work_ctx = tempfile.TemporaryDirectory(prefix="tunelab-quality-") if a.keep_runs is None else None
    work = Path(work_ctx.name) if work_ctx else a.keep_runs
    try:
        for label in todo:
            print(f"== {label}: {example_config(label).name}", flush=True)
            entry = run_one(label, a, work)
            entry["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            results[label] = entry
            summary = entry.get("test_accuracy", entry.get("error", "")[-200:])
            print(f"   -> {summary} ({entry['wall_seconds']:.0f} s, busy CPUs before {entry['busy_cpus_before']})",
                  flush=True)
            data = {
                "benchmark": "methods_quality",
                "recipe": {"model": "minilm", "data": "rotten_tomatoes", "shared_overrides": dict(SHARED),
                           "max_train_samples": a.max_train_samples,
                           "per_method": "each method's examples/<name>-minilm-sentiment.yaml"},
                "test_rows_standard_error_points": round(100 * math.sqrt(0.8 * 0.2 / 487), 2),
                "machine": bc.machine_info(),
                "methods": results,
                "shape_checks": shape_checks(results),
            }
            bc.write_json(a.out, data)
    finally:
        if work_ctx:
            work_ctx.cleanup()
    print(table(results))
    for check in shape_checks(results):
        print(f"  {check['status']:>14}: {check['check']}" + (f" ({check['margin_points']:+.2f} pts)"
                                                              if "margin_points" in check else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""LoRA on MiniLM + rotten_tomatoes: tunelab against HF Trainer + peft (``peer_hf_peft.py``).

Both tools train the same rows (tunelab's own split) with the same hyperparameters; each run is
a fresh process, tunelab and the peer alternate (ABBA order: T P, P T, T P, ...), and every child
is measured from outside (wall time, and peak RSS from GNU ``/usr/bin/time -v``, else psutil).

Reported per tool: median training samples/s (each tool's own training-loop timing, evaluation
excluded), median peak RSS (outside measurement), test accuracy; then tunelab/peer ratios of the
medians and the accuracy difference in points, checked against the targets:

    samples/s ratio >= 1.5,   peak RSS ratio <= 0.9,   |accuracy difference| <= 1 point

Writes benchmarks/results/lora_vs_peer.json (``--quick``: lora_vs_peer.quick.json).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/lora_vs_peer.py
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/lora_vs_peer.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc

TARGETS = {"samples_per_second_ratio_min": 1.5, "peak_rss_ratio_max": 0.9, "accuracy_diff_points_max": 1.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tunelab LoRA vs HF Trainer + peft LoRA (speed, memory, accuracy)")
    p.add_argument("--repeats", type=int, default=None, help="runs per tool (default 2; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny verification: 64 training rows, 1 epoch; writes lora_vs_peer.quick.json")
    p.add_argument("--epochs", type=int, default=None, help="default 3 (--quick: 1)")
    p.add_argument("--max-train-samples", type=int, default=None, help="default all (--quick: 64)")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (tunelab's default 0.0)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None,
                   help="set OMP/MKL_NUM_THREADS for both children (default: leave torch's default)")
    p.add_argument("--tunelab-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more tunelab overrides, e.g. data.group_by_length=false")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    p.add_argument("--keep-runs", type=Path, default=None,
                   help="keep run folders and logs here (default: a temporary folder, deleted)")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per child run")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.epochs is None:
        args.epochs = 1 if args.quick else 3
    if args.max_train_samples is None and args.quick:
        args.max_train_samples = 64
    if args.out is None:
        args.out = bc.RESULTS_DIR / ("lora_vs_peer.quick.json" if args.quick else "lora_vs_peer.json")
    return args


def tunelab_overrides(a: argparse.Namespace) -> list[tuple[str, Any]]:
    return bc.recipe_pairs(a) + [
        ("method.name", "lora"),  # first: switching the method name resets the method section
        ("method.r", a.r),
        ("method.alpha", a.alpha),
        ("method.dropout", a.dropout),
        ("method.target_modules", ["query", "value"]),
        ("train.epochs", a.epochs),
        ("train.lr", a.lr),
    ]


def peer_command(a: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, str(bc.BENCH_DIR / "peer_hf_peft.py"),
           "--r", str(a.r), "--alpha", repr(a.alpha), "--dropout", repr(a.dropout),
           "--target-modules", "query,value",
           "--lr", repr(a.lr), "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
           "--max-length", str(a.max_length), "--warmup-ratio", repr(a.warmup_ratio),
           "--weight-decay", repr(a.weight_decay), "--seed", str(a.seed),
           "--model", "minilm", "--data", "rotten_tomatoes", "--split-seed", str(a.split_seed),
           "--validation-ratio", "0.1", "--test-ratio", "0.1", "--out", str(out)]
    if a.max_train_samples:
        cmd += ["--max-train-samples", str(a.max_train_samples)]
    return cmd


def run_peer(a, i: int, work: Path, env) -> dict[str, Any]:
    out = work / f"peer-{i}.json"
    info = bc.run_measured(peer_command(a, out), work / "logs" / f"peer-{i}.log", env=env, timeout=a.timeout)
    row = {"tool": "peer", "repeat": i, **info}
    if info["returncode"] == 0 and out.is_file():

        res = json.loads(out.read_text())
        row.update(samples_per_second=res["samples_per_second"], train_seconds=res["train_seconds"],
                   train_samples=res["train_samples"], test_accuracy=res["test_accuracy"],
                   self_peak_memory_mb=res["peak_memory_mb"], params=res["params"],
                   global_step=res["global_step"], optimizer=res.get("optimizer"),
                   warmup_steps=res.get("warmup_steps"))
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for tool in ("tunelab", "peer"):
        ok = [r for r in rows if r["tool"] == tool and r.get("returncode") == 0 and "samples_per_second" in r]
        per[tool] = {
            "ok_runs": len(ok),
            "failed_runs": len([r for r in rows if r["tool"] == tool]) - len(ok),
            "median_samples_per_second": bc.median([r["samples_per_second"] for r in ok]),
            "median_train_seconds": bc.median([r["train_seconds"] for r in ok]),
            "median_peak_rss_mb": bc.median([r.get("peak_rss_mb") for r in ok]),
            "median_self_peak_memory_mb": bc.median([r.get("self_peak_memory_mb") for r in ok]),
            "median_wall_seconds": bc.median([r["wall_seconds"] for r in ok]),
            "median_test_accuracy": bc.median([r["test_accuracy"] for r in ok]),
            "test_accuracies": [r["test_accuracy"] for r in ok],
            "trainable_params": ok[0]["params"]["trainable"] if ok else None,
        }
    t, p = per["tunelab"], per["peer"]

    def ratio(key: str) -> float | None:
        return round(t[key] / p[key], 3) if t[key] and p[key] else None

    sps, rss = ratio("median_samples_per_second"), ratio("median_peak_rss_mb")
    acc = (round(100 * (t["median_test_accuracy"] - p["median_test_accuracy"]), 2)
           if t["median_test_accuracy"] is not None and p["median_test_accuracy"] is not None else None)
    # per-pair ratios (repeat i of each tool) show how stable the median ratio is
    pairs = []
    for i in sorted({r["repeat"] for r in rows}):
        ti = next((r for r in rows if r["tool"] == "tunelab" and r["repeat"] == i and "samples_per_second" in r), None)
        pi = next((r for r in rows if r["tool"] == "peer" and r["repeat"] == i and "samples_per_second" in r), None)
        if ti and pi:
            pairs.append({"repeat": i,
                          "samples_per_second_ratio": round(ti["samples_per_second"] / pi["samples_per_second"], 3),
                          "peak_rss_ratio": (round(ti["peak_rss_mb"] / pi["peak_rss_mb"], 3)
                                             if ti.get("peak_rss_mb") and pi.get("peak_rss_mb") else None)})
    checks = {
        "samples_per_second": {"ratio": sps, "target": f">= {TARGETS['samples_per_second_ratio_min']}",
                               "pass": None if sps is None else sps >= TARGETS["samples_per_second_ratio_min"]},
        "peak_rss": {"ratio": rss, "target": f"<= {TARGETS['peak_rss_ratio_max']}",
                     "pass": None if rss is None else rss <= TARGETS["peak_rss_ratio_max"]},
        "accuracy": {"diff_points": acc, "target": f"|diff| <= {TARGETS['accuracy_diff_points_max']}",
                     "pass": None if acc is None else abs(acc) <= TARGETS["accuracy_diff_points_max"]},
    }
    return {"per_tool": per, "ratios_tunelab_over_peer": {
        "samples_per_second": sps, "peak_rss": rss,
        "self_reported_peak_memory": ratio("median_self_peak_memory_mb"),
        "accuracy_diff_points": acc, "per_pair": pairs}, "checks": checks,
        "all_pass": all(c["pass"] for c in checks.values()) if all(c["pass"] is not None for c in checks.values()) else None}


def print_table(summary: dict[str, Any], warning: str | None) -> None:
    t, p = summary["per_tool"]["tunelab"], summary["per_tool"]["peer"]

    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    print()
    print(f"{'':22s} {'tunelab':>10s} {'peer':>10s} {'ratio/diff':>11s}  target    result")
    c = summary["checks"]

    def res(check):
        return {True: "PASS", False: "FAIL", None: "n/a"}[check["pass"]]

    print(f"{'samples/s (median)':22s} {f(t['median_samples_per_second']):>10s} {f(p['median_samples_per_second']):>10s} "
          f"{f(c['samples_per_second']['ratio'], '.2f') + 'x':>11s}  >= 1.5x   {res(c['samples_per_second'])}")
    print(f"{'peak RSS MB (median)':22s} {f(t['median_peak_rss_mb'], '.0f'):>10s} {f(p['median_peak_rss_mb'], '.0f'):>10s} "
          f"{f(c['peak_rss']['ratio'], '.2f') + 'x':>11s}  <= 0.9x   {res(c['peak_rss'])}")
    print(f"{'test accuracy (median)':22s} {f(t['median_test_accuracy'], '.4f'):>10s} {f(p['median_test_accuracy'], '.4f'):>10s} "
          f"{f(c['accuracy']['diff_points'], '+.2f') + ' pt':>11s}  |d|<=1pt  {res(c['accuracy'])}")
    print(f"{'train seconds (median)':22s} {f(t['median_train_seconds']):>10s} {f(p['median_train_seconds']):>10s}")
    print(f"{'process wall s (median)':22s} {f(t['median_wall_seconds']):>10s} {f(p['median_wall_seconds']):>10s}")
    print(f"{'ok / failed runs':22s} {str(t['ok_runs']) + ' / ' + str(t['failed_runs']):>10s} "
          f"{str(p['ok_runs']) + ' / ' + str(p['failed_runs']):>10s}")
    if warning:
        print(f"WARNING: {warning}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    env = bc.child_env(a.threads)
    machine = bc.machine_info()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    work = a.keep_runs or Path(tempfile.mkdtemp(prefix="lora_vs_peer_"))
    work.mkdir(parents=True, exist_ok=True)
    tl_extra = list(a.tunelab_extra)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for i in range(a.repeats):
            order = ("tunelab", "peer") if i % 2 == 0 else ("peer", "tunelab")
            for tool in order:
                print(f"[{time.perf_counter() - t0:7.0f}s] repeat {i + 1}/{a.repeats}: {tool} ...", flush=True)
                if tool == "tunelab":
                    row = run_tunelab_with_extra(a, i, work, env, tl_extra)
                else:
                    row = run_peer(a, i, work, env)
                rows.append(row)
                status = "ok" if row.get("returncode") == 0 else f"FAILED rc={row.get('returncode')}"
                print(f"          {status}: samples/s={row.get('samples_per_second')} "
                      f"train_s={row.get('train_seconds')} peak_rss_mb={row.get('peak_rss_mb')} "
                      f"acc={row.get('test_accuracy')} wall_s={row.get('wall_seconds')}", flush=True)
                if row.get("returncode") != 0:
                    print(row.get("log_tail", "")[-1500:], file=sys.stderr)
    finally:
        if a.keep_runs is None:
            bc.remove_tree(work)
    summary = summarise(rows)
    warning = bc.noise_warning(rows)
    out = {
        "benchmark": "lora_vs_peer",
        "quick": a.quick,
        "started_utc": started,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "recipe": {"model": "minilm", "data": "rotten_tomatoes", "validation_ratio": 0.1, "test_ratio": 0.1,
                   "split_seed": a.split_seed, "max_length": a.max_length, "batch_size": a.batch_size,
                   "epochs": a.epochs, "lr": a.lr, "warmup_ratio": a.warmup_ratio, "weight_decay": a.weight_decay,
                   "lora": {"r": a.r, "alpha": a.alpha, "dropout": a.dropout, "target_modules": ["query", "value"]},
                   "max_train_samples": a.max_train_samples, "seed": a.seed, "repeats": a.repeats,
                   "threads_env": a.threads, "tunelab_extra_overrides": tl_extra},
        "tunelab_overrides": bc.overrides(tunelab_overrides(a)) + tl_extra,
        "differences_left_as_each_tool_defaults": [
            "batch order: tunelab data.group_by_length=true (its default, less padding) unless overridden; "
            "peer: random sampler (Trainer default)",
            "optimizer: tunelab torch AdamW(foreach=True); peer: the Trainer default optim (see runs[].optimizer)",
            "timing: tunelab train_seconds sums its step loop (logging and per-epoch checkpoint excluded); "
            "peer: Trainer train_runtime (the whole train() loop)",
            "tunelab writes a resume checkpoint at each epoch end (eval_strategy=no, save_steps unset); "
            "the peer saves nothing",
        ],
        "targets": TARGETS,
        "summary": summary,
        "noise_warning": warning,
        "machine": machine,
        "runs": rows,
    }
    bc.write_json(a.out, out)
    print_table(summary, warning)
    print(f"\nwrote {a.out}")
    ok = all(r.get("returncode") == 0 for r in rows)
    return 0 if ok else 1


def run_tunelab_with_extra(a, i: int, work: Path, env, extra: list[str]) -> dict[str, Any]:
    """tunelab run ``i``; ``extra`` overrides (raw ``key=value`` strings) come last."""
    cmd_pairs = tunelab_overrides(a)
    name = f"tunelab-{i}"
    runs, logs = work / "runs", work / "logs"
    cmd = [*bc.tunelab_command(), "train", *bc.overrides(cmd_pairs), *extra, f"name={name}",
           f"output_dir={runs}", "--overwrite"]
    info = bc.run_measured(cmd, logs / f"{name}.log", env=env, timeout=a.timeout)
    row: dict[str, Any] = {"tool": "tunelab", "repeat": i, **info}
    results = runs / name / "results.json"
    if info["returncode"] == 0 and results.is_file():

        res = json.loads(results.read_text())
        row.update(samples_per_second=res["samples_per_second"], train_seconds=res["train_seconds"],
                   train_samples=res["train_samples"], test_accuracy=res["test"].get("accuracy"),
                   self_peak_memory_mb=res["peak_memory_mb"], params=res["params"],
                   global_step=res["global_step"])
    return row


if __name__ == "__main__":
    os.chdir(bc.REPO)
    sys.exit(main())

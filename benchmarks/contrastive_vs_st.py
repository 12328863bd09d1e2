#!/usr/bin/env python
"""Contrastive fine-tuning of MiniLM on wordnet_pairs: tunelab against sentence-transformers
(``peer_st.py``), plus tunelab full fine-tuning against tunelab LoRA.

(1) tunelab vs sentence-transformers. Both tools fully fine-tune the built-in ``minilm``
(sentence-transformers/all-MiniLM-L6-v2: mean pooling + normalisation) on the same (anchor,
positive) rows -- the first ``--max-train-samples`` rows of wordnet_pairs' train split, which is
what tunelab's ``data.max_train_samples`` takes -- with multiple-negatives ranking loss (scale 20,
cosine, in-batch negatives), batches without duplicate texts, and the same lr, epochs, batch size,
warmup, weight decay, grad-norm clip, seed and linear schedule, no evaluation during training.
Each run is a fresh process; the tools alternate ABBA (T P, P T, ...); every child is measured
from outside (peak RSS from GNU ``/usr/bin/time -v``, else psutil). Both are scored on the same
test rows by the same function (``tunelab.tasks.retrieval.retrieval_metrics``: each anchor
retrieves its positive among all unique test positives); the peer also reports
sentence-transformers' own ``InformationRetrievalEvaluator`` on the same queries/corpus as a
cross-check. Targets (tunelab / peer, medians):

    samples/s ratio >= 1.3,   peak RSS ratio <= 0.9,   |recall@1 difference| <= 1 point

(2) full vs LoRA: one extra tunelab run with ``method.name=lora`` (its default targets, lr 1e-3,
everything else equal) beside full fine-tuning (``--skip-lora`` omits it).

Writes benchmarks/results/contrastive_vs_st.json (``--quick``: contrastive_vs_st.quick.json).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/contrastive_vs_st.py
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/contrastive_vs_st.py --quick
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

TARGETS = {"samples_per_second_ratio_min": 1.3, "peak_rss_ratio_max": 0.9, "recall_at_1_diff_points_max": 1.0}
METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "mrr", "ndcg_at_10")
DATASET = "wordnet_pairs"
MODEL = "minilm"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tunelab contrastive vs sentence-transformers (speed, memory, "
                                            "retrieval quality), and tunelab full vs LoRA")
    p.add_argument("--repeats", type=int, default=None, help="runs per tool (default 2; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny verification: 64 training rows, 1 repeat; writes contrastive_vs_st.quick.json")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-train-samples", type=int, default=None, help="first N train rows (default 2000; --quick: 64)")
    p.add_argument("--max-test", type=int, default=None,
                   help="score on the first N test rows only (default: all 1,000); tunelab then gets them "
                        "as data.test_file, the peer the same file")
    p.add_argument("--lr", type=float, default=2e-5, help="full fine-tuning lr (both tools)")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="lr of the tunelab LoRA run")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-lora", action="store_true", help="omit the full-vs-LoRA section")
    p.add_argument("--threads", type=int, default=None,
                   help="set OMP/MKL_NUM_THREADS for every child (default: leave torch's default)")
    p.add_argument("--tunelab-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more tunelab overrides (all tunelab runs)")
    p.add_argument("--peer-extra", nargs="*", default=[], metavar="ARG",
                   help="more peer_st.py arguments, e.g. --optim adamw_torch")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    p.add_argument("--keep-runs", type=Path, default=None,
                   help="keep run folders, data files and logs here (default: a temporary folder, deleted)")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per child run")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.max_train_samples is None:
        args.max_train_samples = 64 if args.quick else 2000
    if args.out is None:
        args.out = bc.RESULTS_DIR / ("contrastive_vs_st.quick.json" if args.quick else "contrastive_vs_st.json")
    return args


# ---------------------------------------------------------------------------- data

def write_data(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The rows both tools use, as jsonl (anchor, positive): tunelab's train rows (the first N of the
    built-in train split) and the test rows (all, or the first ``--max-test``)."""
    from tunelab.data.builtin import get_builtin_dataset

    splits = get_builtin_dataset(DATASET).load()
    train, test = splits["train"], splits["test"]
    n_train = min(a.max_train_samples, len(train)) if a.max_train_samples else len(train)
    n_test = min(a.max_test, len(test)) if a.max_test else len(test)
    files = {"train": work / "data" / "train.jsonl", "test": work / "data" / "test.jsonl"}
    files["train"].parent.mkdir(parents=True, exist_ok=True)
    for name, ds, n in (("train", train, n_train), ("test", test, n_test)):
        with open(files[name], "w") as f:
            for row in ds.select(range(n)):
                f.write(json.dumps({"anchor": row["anchor"], "positive": row["positive"]}, ensure_ascii=False) + "\n")
    return {"files": files, "rows": {"train": n_train, "test": n_test},
            "builtin_sizes": {k: len(v) for k, v in splits.items()}}


def check_same_rows(a: argparse.Namespace, files: dict[str, Path]) -> dict[str, Any]:
    """Run tunelab's own data path (build_config + the contrastive task's prepare) with the recipe's
    data settings and compare its train/test texts with the jsonl files the peer reads."""
    try:
        from tunelab.config import build_config
        from tunelab.tasks import get_task

        pairs = [p for p in tunelab_pairs(a, "full", a.lr, files["test"]) if p[0].startswith(("task.", "data.", "model."))]
        cfg = build_config(None, bc.overrides(pairs))
        task = get_task(cfg.task)
        tokenizer = task.load_processor(task.resolve_model(cfg.model.name_or_path))
        data = task.prepare(cfg, tokenizer)
        out: dict[str, Any] = {}
        for split in ("train", "test"):
            ours = [json.loads(line) for line in files[split].read_text().splitlines()]
            theirs = [row["keys"][:2] for row in data.rows[split]]
            mine = [(r["anchor"].strip(), r["positive"].strip()) for r in ours]
            out[split] = {"tunelab_rows": len(theirs), "peer_rows": len(mine), "identical": theirs == mine}
        out["all_identical"] = all(v["identical"] for v in out.values())
        return out
    except Exception as e:  # noqa: BLE001 - recorded, the benchmark still runs
        return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------- commands

def tunelab_pairs(a: argparse.Namespace, method: str, lr: float, test_file: Path | None = None
                  ) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("task.name", "contrastive"),  # first: switching a section's name resets that section
        ("method.name", method),
        ("seed", a.seed),
        ("model.name_or_path", MODEL),
        ("data.source", DATASET),
        ("data.max_length", a.max_length),
        ("train.epochs", a.epochs),
        ("train.batch_size", a.batch_size),
        ("train.lr", lr),
        ("train.warmup_ratio", a.warmup_ratio),
        ("train.weight_decay", a.weight_decay),
        ("train.max_grad_norm", a.max_grad_norm),
        ("train.scheduler", "linear"),
        ("train.eval_strategy", "no"),
        ("train.keep_best", False),
    ]
    if a.max_train_samples:
        pairs.append(("data.max_train_samples", a.max_train_samples))
    if a.max_test:
        pairs.append(("data.test_file", str(test_file or "")))
    return pairs


def peer_command(a: argparse.Namespace, files: dict[str, Path], out: Path) -> list[str]:
    return [sys.executable, str(bc.BENCH_DIR / "peer_st.py"),
            "--train-file", str(files["train"]), "--test-file", str(files["test"]), "--model", MODEL,
            "--lr", repr(a.lr), "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
            "--max-length", str(a.max_length), "--warmup-ratio", repr(a.warmup_ratio),
            "--weight-decay", repr(a.weight_decay), "--max-grad-norm", repr(a.max_grad_norm),
            "--seed", str(a.seed), "--eval-batch-size", "128", "--out", str(out), *a.peer_extra]


def run_tunelab(a, name: str, method: str, lr: float, work: Path, env, files) -> dict[str, Any]:
    runs, logs = work / "runs", work / "logs"
    cmd = [*bc.tunelab_command(), "train", *bc.overrides(tunelab_pairs(a, method, lr, files["test"])),
           *a.tunelab_extra, f"name={name}", f"output_dir={runs}", "--overwrite"]
    info = bc.run_measured(cmd, logs / f"{name}.log", env=env, timeout=a.timeout)
    row: dict[str, Any] = {"tool": "tunelab", "method": method, **info}
    results = runs / name / "results.json"
    if info["returncode"] == 0 and results.is_file():
        res = json.loads(results.read_text())
        test = res.get("test") or {}
        row.update(samples_per_second=res["samples_per_second"], train_seconds=res["train_seconds"],
                   train_samples=res["train_samples"], test={k: test.get(k) for k in (*METRICS, "queries", "corpus")},
                   baseline={k: (res.get("baseline") or {}).get(k) for k in METRICS},
                   self_peak_memory_mb=res["peak_memory_mb"], params=res["params"],
                   global_step=res["global_step"], tokens_per_second=res.get("tokens_per_second"),
                   allocator=res.get("allocator"))
        row.update({k: row["test"].get(k) for k in METRICS})
        metrics = runs / name / "metrics.jsonl"
        if metrics.is_file():
            row["train_losses"] = [(e["step"], e["loss"]) for e in map(json.loads, metrics.read_text().splitlines())
                                   if e.get("event") == "train" and "loss" in e]
    return row


def run_peer(a, i: int, work: Path, env, files) -> dict[str, Any]:
    out = work / f"peer-{i}.json"
    info = bc.run_measured(peer_command(a, files, out), work / "logs" / f"peer-{i}.log", env=env, timeout=a.timeout)
    row: dict[str, Any] = {"tool": "peer", "method": "full", **info}
    if info["returncode"] == 0 and out.is_file():
        res = json.loads(out.read_text())
        row.update(samples_per_second=res["samples_per_second"], train_seconds=res["train_seconds"],
                   train_samples=res["train_samples"], test=res["test"], st_evaluator=res["st_evaluator"],
                   metric_code_abs_diff=res["metric_code_abs_diff"], self_peak_memory_mb=res["peak_memory_mb"],
                   params=res["params"], global_step=res["global_step"], warmup_steps=res["warmup_steps"],
                   loop_seconds=res["loop_seconds"], loop_samples_per_second=res["loop_samples_per_second"],
                   optimizer=res["optimizer"], training_loss=res["training_loss"],
                   trainer_metrics=res["trainer_metrics"], embedding_norms=res["embedding_norms"])
        row.update({k: row["test"].get(k) for k in METRICS})
    return row


# ---------------------------------------------------------------------------- summary

def _ok(rows: list[dict[str, Any]], tool: str, method: str = "full") -> list[dict[str, Any]]:
    return [r for r in rows if r["tool"] == tool and r["method"] == method and r.get("returncode") == 0
            and "samples_per_second" in r]


def tool_summary(rows: list[dict[str, Any]], tool: str, method: str = "full") -> dict[str, Any]:
    ok = _ok(rows, tool, method)
    out: dict[str, Any] = {
        "ok_runs": len(ok),
        "failed_runs": len([r for r in rows if r["tool"] == tool and r["method"] == method]) - len(ok),
        "median_samples_per_second": bc.median([r["samples_per_second"] for r in ok]),
        "median_train_seconds": bc.median([r["train_seconds"] for r in ok]),
        "median_peak_rss_mb": bc.median([r.get("peak_rss_mb") for r in ok]),
        "median_self_peak_memory_mb": bc.median([r.get("self_peak_memory_mb") for r in ok]),
        "median_wall_seconds": bc.median([r["wall_seconds"] for r in ok]),
        "trainable_params": ok[0]["params"]["trainable"] if ok else None,
        "total_params": ok[0]["params"]["total"] if ok else None,
    }
    for k in METRICS:
        out[f"median_{k}"] = bc.median([r.get(k) for r in ok])
        out[f"{k}_per_run"] = [r.get(k) for r in ok]
    if tool == "peer":
        out["median_loop_samples_per_second"] = bc.median([r.get("loop_samples_per_second") for r in ok])
        out["st_evaluator_recall_at_1_per_run"] = [r["st_evaluator"].get("recall_at_1") for r in ok]
        out["st_evaluator_mrr_at_10_per_run"] = [r["st_evaluator"].get("mrr_at_10") for r in ok]
        out["max_metric_code_abs_diff"] = max(
            (v for r in ok for v in r["metric_code_abs_diff"].values() if v is not None), default=None)
    if tool == "tunelab":
        out["baseline"] = {k: bc.median([r["baseline"].get(k) for r in ok]) for k in METRICS} if ok else None
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per = {"tunelab": tool_summary(rows, "tunelab"), "peer": tool_summary(rows, "peer")}
    t, p = per["tunelab"], per["peer"]

    def ratio(key: str) -> float | None:
        return round(t[key] / p[key], 3) if t[key] and p[key] else None

    sps, rss = ratio("median_samples_per_second"), ratio("median_peak_rss_mb")
    diffs = {k: (round(100 * (t[f"median_{k}"] - p[f"median_{k}"]), 2)
                 if t[f"median_{k}"] is not None and p[f"median_{k}"] is not None else None) for k in METRICS}
    r1 = diffs["recall_at_1"]
    pairs = []
    tl, pe = _ok(rows, "tunelab"), _ok(rows, "peer")
    for ti, pi in zip(tl, pe):  # run i of each tool (same repeat)
        pairs.append({"repeat": ti["repeat"],
                      "samples_per_second_ratio": round(ti["samples_per_second"] / pi["samples_per_second"], 3),
                      "peak_rss_ratio": (round(ti["peak_rss_mb"] / pi["peak_rss_mb"], 3)
                                         if ti.get("peak_rss_mb") and pi.get("peak_rss_mb") else None),
                      "recall_at_1_diff_points": round(100 * (ti["recall_at_1"] - pi["recall_at_1"]), 2)})
    checks = {
        "samples_per_second": {"ratio": sps, "target": f">= {TARGETS['samples_per_second_ratio_min']}",
                               "pass": None if sps is None else sps >= TARGETS["samples_per_second_ratio_min"]},
        "peak_rss": {"ratio": rss, "target": f"<= {TARGETS['peak_rss_ratio_max']}",
                     "pass": None if rss is None else rss <= TARGETS["peak_rss_ratio_max"]},
        "recall_at_1": {"diff_points": r1, "target": f"|diff| <= {TARGETS['recall_at_1_diff_points_max']}",
                        "pass": None if r1 is None else abs(r1) <= TARGETS["recall_at_1_diff_points_max"]},
    }
    passes = [c["pass"] for c in checks.values()]
    return {
        "per_tool": per,
        "baseline_before_training": t.get("baseline"),
        "ratios_tunelab_over_peer": {
            "samples_per_second": sps, "peak_rss": rss,
            "self_reported_peak_memory": ratio("median_self_peak_memory_mb"),
            "train_seconds": ratio("median_train_seconds"),
            "samples_per_second_vs_peer_loop_timer": (
                round(t["median_samples_per_second"] / p["median_loop_samples_per_second"], 3)
                if t["median_samples_per_second"] and p.get("median_loop_samples_per_second") else None),
            "metric_diff_points": diffs, "per_pair": pairs},
        "checks": checks,
        "all_pass": all(passes) if all(x is not None for x in passes) else None,
    }


def lora_section(rows: list[dict[str, Any]], a: argparse.Namespace) -> dict[str, Any]:
    full = tool_summary(rows, "tunelab", "full")
    lora_rows = _ok(rows, "tunelab", "lora")
    failed = [r for r in rows if r["tool"] == "tunelab" and r["method"] == "lora" and r.get("returncode") != 0]

    def side(s: dict[str, Any] | None, r: dict[str, Any] | None) -> dict[str, Any]:
        if r is not None:
            return {"recall_at_1": r["recall_at_1"], "recall_at_10": r["recall_at_10"], "mrr": r["mrr"],
                    "ndcg_at_10": r["ndcg_at_10"], "trainable_params": r["params"]["trainable"],
                    "trainable_percent": r["params"]["trainable_percent"],
                    "samples_per_second": r["samples_per_second"], "peak_rss_mb": r.get("peak_rss_mb"),
                    "train_seconds": r["train_seconds"], "lr": a.lora_lr}
        return {"recall_at_1": s["median_recall_at_1"], "recall_at_10": s["median_recall_at_10"],
                "mrr": s["median_mrr"], "ndcg_at_10": s["median_ndcg_at_10"],
                "trainable_params": s["trainable_params"],
                "trainable_percent": (100.0 * s["trainable_params"] / s["total_params"]
                                      if s["trainable_params"] and s["total_params"] else None),
                "samples_per_second": s["median_samples_per_second"], "peak_rss_mb": s["median_peak_rss_mb"],
                "train_seconds": s["median_train_seconds"], "lr": a.lr}

    out: dict[str, Any] = {
        "note": (f"one LoRA run (method.name=lora, its default targets, lr {a.lora_lr}); full = the median of the "
                 f"{full['ok_runs']} tunelab full fine-tuning run(s) above; a single run, so differences below "
                 "~1-2 recall points are within run-to-run noise"),
        "full": side(full, None) if full["ok_runs"] else None,
        "lora": side(None, lora_rows[0]) if lora_rows else None,
        "lora_failed": bool(failed),
    }
    f, lo = out["full"], out["lora"]
    if f and lo:
        out["lora_minus_full_points"] = {k: round(100 * (lo[k] - f[k]), 2) for k in ("recall_at_1", "recall_at_10",
                                                                                      "mrr", "ndcg_at_10")}
        out["lora_over_full"] = {
            "samples_per_second": round(lo["samples_per_second"] / f["samples_per_second"], 3),
            "peak_rss": (round(lo["peak_rss_mb"] / f["peak_rss_mb"], 3)
                         if lo["peak_rss_mb"] and f["peak_rss_mb"] else None),
            "trainable_params": round(lo["trainable_params"] / f["trainable_params"], 5)}
    return out


def print_table(summary: dict[str, Any], lora: dict[str, Any] | None, warning: str | None) -> None:
    t, p = summary["per_tool"]["tunelab"], summary["per_tool"]["peer"]
    c = summary["checks"]

    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    def res(check):
        return {True: "PASS", False: "FAIL", None: "n/a"}[check["pass"]]

    print()
    print(f"{'':24s} {'tunelab':>10s} {'st peer':>10s} {'ratio/diff':>11s}  target    result")
    print(f"{'samples/s (median)':24s} {f(t['median_samples_per_second']):>10s} {f(p['median_samples_per_second']):>10s} "
          f"{f(c['samples_per_second']['ratio'], '.2f') + 'x':>11s}  >= 1.3x   {res(c['samples_per_second'])}")
    print(f"{'peak RSS MB (median)':24s} {f(t['median_peak_rss_mb'], '.0f'):>10s} {f(p['median_peak_rss_mb'], '.0f'):>10s} "
          f"{f(c['peak_rss']['ratio'], '.2f') + 'x':>11s}  <= 0.9x   {res(c['peak_rss'])}")
    print(f"{'test recall@1 (median)':24s} {f(t['median_recall_at_1'], '.4f'):>10s} {f(p['median_recall_at_1'], '.4f'):>10s} "
          f"{f(c['recall_at_1']['diff_points'], '+.2f') + ' pt':>11s}  |d|<=1pt  {res(c['recall_at_1'])}")
    for k, label in (("recall_at_10", "test recall@10"), ("mrr", "test MRR"), ("ndcg_at_10", "test nDCG@10")):
        d = summary["ratios_tunelab_over_peer"]["metric_diff_points"][k]
        print(f"{label + ' (median)':24s} {f(t['median_' + k], '.4f'):>10s} {f(p['median_' + k], '.4f'):>10s} "
              f"{f(d, '+.2f') + ' pt':>11s}")
    base = summary.get("baseline_before_training") or {}
    print(f"{'recall@1 before training':24s} {f(base.get('recall_at_1'), '.4f'):>10s}")
    st_r1 = p.get("st_evaluator_recall_at_1_per_run") or []
    print(f"{'peer recall@1 (ST eval.)':24s} {'':>10s} {', '.join(f(v, '.4f') for v in st_r1) or '-':>10s}")
    print(f"{'train seconds (median)':24s} {f(t['median_train_seconds']):>10s} {f(p['median_train_seconds']):>10s}")
    print(f"{'process wall s (median)':24s} {f(t['median_wall_seconds']):>10s} {f(p['median_wall_seconds']):>10s}")
    print(f"{'ok / failed runs':24s} {str(t['ok_runs']) + ' / ' + str(t['failed_runs']):>10s} "
          f"{str(p['ok_runs']) + ' / ' + str(p['failed_runs']):>10s}")
    if lora is not None:
        fu, lo = lora.get("full"), lora.get("lora")
        print()
        print(f"{'full vs LoRA (tunelab)':24s} {'full':>10s} {'lora':>10s}")
        for k, label, spec in (("recall_at_1", "test recall@1", ".4f"), ("mrr", "test MRR", ".4f"),
                               ("ndcg_at_10", "test nDCG@10", ".4f"), ("trainable_params", "trainable params", ",d"),
                               ("samples_per_second", "samples/s", ".1f"), ("peak_rss_mb", "peak RSS MB", ".0f"),
                               ("lr", "lr", "g")):
            print(f"{label:24s} {f(fu and fu.get(k), spec):>10s} {f(lo and lo.get(k), spec):>10s}")
        if lora.get("lora_failed"):
            print("LoRA run FAILED (see runs[] in the JSON)")
    if warning:
        print(f"WARNING: {warning}")


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    env = bc.child_env(a.threads)
    machine = bc.machine_info()
    try:
        import sentence_transformers

        machine["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        machine["sentence_transformers"] = None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    work = a.keep_runs or Path(tempfile.mkdtemp(prefix="contrastive_vs_st_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    data: dict[str, Any] = {}
    data_check: dict[str, Any] | None = None
    try:
        data = write_data(a, work)
        files = data["files"]
        data_check = check_same_rows(a, files)
        print(f"rows: train {data['rows']['train']}, test {data['rows']['test']}; same rows as tunelab's "
              f"prepare: {data_check.get('all_identical', data_check.get('error'))}", flush=True)
        plan: list[tuple[str, int]] = []
        for i in range(a.repeats):
            plan += [(tool, i) for tool in (("tunelab", "peer") if i % 2 == 0 else ("peer", "tunelab"))]
        if not a.skip_lora:
            plan.append(("lora", 0))
        for n, (tool, i) in enumerate(plan, 1):
            print(f"[{time.perf_counter() - t0:7.0f}s] run {n}/{len(plan)}: {tool} (repeat {i + 1}) ...", flush=True)
            if tool == "tunelab":
                row = run_tunelab(a, f"tunelab-full-{i}", "full", a.lr, work, env, files)
            elif tool == "lora":
                row = run_tunelab(a, "tunelab-lora-0", "lora", a.lora_lr, work, env, files)
            else:
                row = run_peer(a, i, work, env, files)
            row["repeat"] = i
            rows.append(row)
            status = "ok" if row.get("returncode") == 0 else f"FAILED rc={row.get('returncode')}"
            print(f"          {status}: samples/s={row.get('samples_per_second')} train_s={row.get('train_seconds')} "
                  f"peak_rss_mb={row.get('peak_rss_mb')} recall@1={row.get('recall_at_1')} "
                  f"wall_s={row.get('wall_seconds')}", flush=True)
            if row.get("returncode") != 0:
                print(row.get("log_tail", "")[-1500:], file=sys.stderr)
    finally:
        if a.keep_runs is None:
            bc.remove_tree(work)
    summary = summarise(rows)
    lora = None if a.skip_lora else lora_section(rows, a)
    warning = bc.noise_warning(rows)
    test_file = data.get("files", {}).get("test")
    out = {
        "benchmark": "contrastive_vs_st",
        "quick": a.quick,
        "started_utc": started,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "recipe": {"model": MODEL, "data": DATASET, "method": "full", "loss": "multiple-negatives ranking, scale 20, "
                   "cosine, in-batch negatives", "batches": "no duplicate texts in a batch",
                   "train_rows": data.get("rows", {}).get("train"),
                   "train_rows_are": f"the first {a.max_train_samples} rows of {DATASET}'s train split "
                                     "(tunelab data.max_train_samples)",
                   "test_rows": data.get("rows", {}).get("test"),
                   "test_rows_are": (f"the first {a.max_test} rows of the test split (tunelab: data.test_file)"
                                     if a.max_test else "the whole built-in test split"),
                   "builtin_split_sizes": data.get("builtin_sizes"),
                   "max_length": a.max_length, "batch_size": a.batch_size, "epochs": a.epochs, "lr": a.lr,
                   "lora_lr": a.lora_lr, "warmup_ratio": a.warmup_ratio, "weight_decay": a.weight_decay,
                   "max_grad_norm": a.max_grad_norm, "scheduler": "linear", "seed": a.seed, "repeats": a.repeats,
                   "order": "ABBA (tunelab, peer / peer, tunelab / ...), then the LoRA run",
                   "threads_env": a.threads, "tunelab_extra_overrides": a.tunelab_extra, "peer_extra": a.peer_extra},
        "same_rows_check": data_check,
        "tunelab_overrides": bc.overrides(tunelab_pairs(a, "full", a.lr, test_file)) + a.tunelab_extra,
        "tunelab_lora_overrides": (None if a.skip_lora else
                                   bc.overrides(tunelab_pairs(a, "lora", a.lora_lr, test_file)) + a.tunelab_extra),
        "scoring": "both tools: tunelab.tasks.retrieval.retrieval_metrics -- each test anchor retrieves its positive "
                   "among all unique test positives (cosine; recall@1/5/10, MRR over the full ranking, nDCG@10); "
                   "the peer also runs sentence-transformers' InformationRetrievalEvaluator on the same "
                   "queries/corpus (runs[].st_evaluator; it reports MRR@10, not full MRR)",
        "differences_left_as_each_tool_defaults": [
            "timing: tunelab samples_per_second = train rows / train_seconds (the sum of its step loop; logging, "
            "the per-epoch resume checkpoint and the before/after test evaluations excluded); peer: the Trainer's "
            "train_samples_per_second = rows x epochs / train_runtime (its whole train() loop). The peer also "
            "reports a callback-timed step loop (runs[].loop_samples_per_second) for comparison",
            "tokenisation: tunelab tokenises every row once before training (outside train_seconds); "
            "sentence-transformers tokenises each batch in its collator (inside train_runtime)",
            "optimizer: tunelab torch AdamW(foreach=True), no decay on biases/LayerNorm; peer: the Trainer default "
            "(runs[].optimizer), no decay on biases/LayerNorm",
            "duplicate-free batches: tunelab DistinctTextBatches (texts compared stripped and lower-cased); peer "
            "BatchSamplers.NO_DUPLICATES (exact strings); wordnet_pairs' texts are all unique, so neither "
            "constrains the batches here beyond the shuffle",
            "BERT pooler: tunelab drops the unused [CLS] pooler (22,565,376 params); sentence-transformers keeps "
            "it in the model without gradients (22,713,216 params, 147,840 more, never updated)",
            "tunelab also evaluates the pretrained model on the test split before training (the baseline) and "
            "writes a resume checkpoint and the model; the peer saves nothing. Both count in wall time and "
            "peak RSS, not in samples/s",
        ],
        "targets": TARGETS,
        "summary": summary,
        "full_vs_lora": lora,
        "noise_warning": warning,
        "machine": machine,
        "runs": rows,
    }
    bc.write_json(a.out, out)
    print_table(summary, lora, warning)
    print(f"\nwrote {a.out}  ({out['total_seconds']:.0f} s)")
    return 0 if rows and all(r.get("returncode") == 0 for r in rows) else 1


if __name__ == "__main__":
    os.chdir(bc.REPO)
    sys.exit(main())

#!/usr/bin/env python
"""QLoRA against fp32 LoRA on MiniLM + rotten_tomatoes: weight storage, peak memory, speed, accuracy.

(1) storage, in this process: MiniLM (``minilm``) with ``method.name=qlora`` defaults (NF4, double
    quantisation, block size 64, every linear layer outside the head): bytes of the 4-bit linear
    weights (packed codes + every tensor of their quantisation state) against the fp32 bytes of the
    same weights (target <= 0.2x), and the whole model's weight bytes before and after.
(2) training, each run a fresh ``tunelab train`` process measured from outside (peak RSS from GNU
    ``/usr/bin/time -v``, else psutil): LoRA and QLoRA with the same recipe (r=8, alpha=16, every
    linear layer, 600 training rows, 2 epochs at lr 5e-3, batch 32, max length 64: short, yet
    long enough to move test accuracy well off the majority class), alternating L Q, Q L, ... for
    ``--repeats`` rounds (default 1, to stay within a few minutes). Reported per method: median
    training samples/s (tunelab's own loop timing), median peak RSS, test accuracy (the same 10%
    test split).

Writes benchmarks/results/qlora_memory.json and prints a short table.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/qlora_memory.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc

STORAGE_TARGET = 0.2
METHODS = ("lora", "qlora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="QLoRA vs LoRA on MiniLM: 4-bit storage, peak RSS, samples/s, accuracy")
    p.add_argument("--repeats", type=int, default=1, help="training runs per method (alternating)")
    p.add_argument("--max-train-samples", type=int, default=600)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "qlora_memory.json")
    p.add_argument("--keep-runs", type=Path, default=None, help="keep run folders and logs here")
    p.add_argument("--timeout", type=float, default=900, help="seconds per child run")
    return p.parse_args(argv)


def storage() -> dict[str, Any]:
    """Bytes of MiniLM's linear weights in fp32 and in 4 bits, and of the whole model's weights."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    from tunelab.assets import builtin_model_path
    from tunelab.methods import apply_methods
    from tunelab.methods.qlora import QLoRAConfig, quantized_bytes, quantized_linears

    transformers.logging.set_verbosity_error()  # the load report would list the fresh head
    model = AutoModelForSequenceClassification.from_pretrained(builtin_model_path("minilm"), num_labels=2)
    before = sum(p.numel() * p.element_size() for p in model.parameters())
    total_params = sum(p.numel() for p in model.parameters())
    cfg = QLoRAConfig()
    apply_methods(model, [cfg])
    layers = quantized_linears(model)
    linear_params = sum(layer.in_features * layer.out_features for layer in layers.values())
    packed = sum(quantized_bytes(layer) for layer in layers.values())
    # Everything else the model holds (embeddings, norms, biases, head, LoRA factors) at its own dtype.
    others = sum(p.numel() * p.element_size() for p in model.parameters() if p.dtype != torch.uint8)
    embeddings = model.get_input_embeddings().weight
    return {
        "quantised_layers": len(layers), "quantised_params": linear_params, "model_params": total_params,
        "embedding_params": embeddings.numel(),
        "quant": {"quant_type": cfg.quant_type, "double_quant": cfg.double_quant, "blocksize": cfg.blocksize},
        "linear_fp32_bytes": 4 * linear_params, "linear_4bit_bytes": packed,
        "linear_ratio": round(packed / (4 * linear_params), 4),
        "bits_per_quantised_param": round(8 * packed / linear_params, 3),
        "model_fp32_weight_bytes": before, "model_qlora_weight_bytes": packed + others,
        "model_ratio": round((packed + others) / before, 4),
        "bitsandbytes_import_rss_mb": bitsandbytes_import_mb(),
        "target": f"linear_ratio <= {STORAGE_TARGET}", "pass": packed / (4 * linear_params) <= STORAGE_TARGET,
    }


IMPORT_PROBE = """
import psutil, torch, transformers
before = psutil.Process().memory_info().rss
import bitsandbytes
print((psutil.Process().memory_info().rss - before) / 2**20)
"""


def bitsandbytes_import_mb() -> float | None:
    """RSS that importing bitsandbytes adds to a fresh process that already has torch + transformers."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                          env=bc.child_env(), timeout=300)
    return round(float(proc.stdout.strip().splitlines()[-1]), 1) if proc.returncode == 0 else None


def train_pairs(a: argparse.Namespace, method: str) -> list[tuple[str, Any]]:
    return bc.recipe_pairs(a) + [
        ("method.name", method),  # first: switching the method name resets the method section
        ("method.r", a.r),
        ("method.alpha", a.alpha),
        ("method.target_modules", "all-linear"),
        ("train.epochs", a.epochs),
        ("train.lr", a.lr),
    ]


def training_runs(a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    env = bc.child_env()
    rows = []
    for i in range(a.repeats):
        for method in METHODS if i % 2 == 0 else METHODS[::-1]:
            print(f"  {method} run {i + 1}/{a.repeats} ...", flush=True)
            info = bc.run_tunelab(train_pairs(a, method), f"{method}-{i}", work / "runs", work / "logs",
                                  env=env, timeout=a.timeout)
            info.pop("train_losses", None)
            res = info.pop("results", None)
            row = {"method": method, "repeat": i, **info}
            if res:
                row.update(samples_per_second=res["samples_per_second"], train_seconds=res["train_seconds"],
                           test_accuracy=res["test"]["accuracy"], self_peak_memory_mb=res["peak_memory_mb"],
                           trainable_params=res["params"]["trainable"], global_step=res["global_step"])
            rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for method in METHODS:
        ok = [r for r in rows if r["method"] == method and "samples_per_second" in r]
        per[method] = {
            "ok_runs": len(ok), "failed_runs": len([r for r in rows if r["method"] == method]) - len(ok),
            "median_samples_per_second": bc.median([r["samples_per_second"] for r in ok]),
            "median_peak_rss_mb": bc.median([r.get("peak_rss_mb") for r in ok]),
            "median_self_peak_memory_mb": bc.median([r["self_peak_memory_mb"] for r in ok]),
            "median_train_seconds": bc.median([r["train_seconds"] for r in ok]),
            "test_accuracies": [r["test_accuracy"] for r in ok],
            "median_test_accuracy": bc.median([r["test_accuracy"] for r in ok]),
            "trainable_params": ok[0]["trainable_params"] if ok else None,
        }
    lo, q = per["lora"], per["qlora"]

    def ratio(key: str) -> float | None:
        return round(q[key] / lo[key], 3) if q[key] and lo[key] else None

    acc = lo["median_test_accuracy"], q["median_test_accuracy"]
    return {"per_method": per, "qlora_over_lora": {
        "samples_per_second": ratio("median_samples_per_second"), "peak_rss": ratio("median_peak_rss_mb"),
        "accuracy_diff_points": round(100 * (acc[1] - acc[0]), 2) if None not in acc else None}}


def notes(store: dict[str, Any], summary: dict[str, Any], a: argparse.Namespace, noisy: bool) -> str:
    """What the numbers mean, with this run's values filled in."""
    lo, q = summary["per_method"]["lora"], summary["per_method"]["qlora"]
    ratios = summary["qlora_over_lora"]
    saved_mb = (store["model_fp32_weight_bytes"] - store["model_qlora_weight_bytes"]) / 2**20
    measured = (f"peak RSS {lo['median_peak_rss_mb']:.0f} MB (LoRA) vs {q['median_peak_rss_mb']:.0f} MB (QLoRA), "
                f"samples/s ratio QLoRA/LoRA {ratios['samples_per_second']}"
                if lo["median_peak_rss_mb"] and q["median_peak_rss_mb"] else "training runs failed")
    noise = (" The CPUs were busy with other work during these runs, so the speed ratio is noise; "
             "re-run on a quiet machine." if noisy else "")
    return (
        f"The 4-bit linear weights take {store['linear_ratio']:.3f}x their fp32 bytes "
        f"({store['bits_per_quantised_param']} bits per weight: 4-bit codes, 8-bit absmax per block of "
        f"{store['quant']['blocksize']}, second-level constants and the two code tables). But MiniLM is small and "
        f"embedding-heavy: only {store['quantised_params']:,} of its {store['model_params']:,} parameters sit in "
        f"linear layers; the word-embedding table ({store['embedding_params']:,} parameters), norms, biases and "
        f"head stay fp32, so the model's weights shrink only to {store['model_ratio']:.2f}x (about {saved_mb:.0f} MB "
        "saved). A training process's peak RSS is dominated by the Python/torch/transformers runtime, "
        f"bitsandbytes' own import (+{store['bitsandbytes_import_rss_mb']} MB in a fresh torch + transformers "
        "process), tokenised data and activations, not by these weights; measured: "
        f"{measured}.{noise} On a CPU, QLoRA dequantises every 4-bit weight in each forward and backward matmul "
        "(no fused 4-bit training kernel), extra work that fp32 LoRA does not do; QLoRA pays off on large models, "
        f"where the linear weights dominate memory, and on GPUs. Test accuracy after this short run ({a.epochs} "
        f"epochs of {a.max_train_samples} rows) only checks that QLoRA learns about as well as LoRA; it is not a "
        "converged result."
    )


def print_table(store: dict[str, Any], summary: dict[str, Any], warning: str | None) -> None:
    lo, q = summary["per_method"]["lora"], summary["per_method"]["qlora"]
    ratios = summary["qlora_over_lora"]

    def f(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    verdict = "PASS" if store["pass"] else "FAIL"
    print()
    print(f"4-bit linear weights: {store['linear_4bit_bytes'] / 2**20:.2f} MB vs fp32 "
          f"{store['linear_fp32_bytes'] / 2**20:.2f} MB = {store['linear_ratio']:.3f}x "
          f"(target <= {STORAGE_TARGET}x: {verdict}), {store['bits_per_quantised_param']} bits/weight")
    print(f"whole model weights:  {store['model_qlora_weight_bytes'] / 2**20:.1f} MB vs fp32 "
          f"{store['model_fp32_weight_bytes'] / 2**20:.1f} MB = {store['model_ratio']:.3f}x")
    print()
    print(f"{'':24s} {'LoRA':>9s} {'QLoRA':>9s} {'QLoRA/LoRA':>11s}")
    print(f"{'samples/s (median)':24s} {f(lo['median_samples_per_second']):>9s} "
          f"{f(q['median_samples_per_second']):>9s} {f(ratios['samples_per_second'], '.2f') + 'x':>11s}")
    print(f"{'peak RSS MB (median)':24s} {f(lo['median_peak_rss_mb'], '.0f'):>9s} "
          f"{f(q['median_peak_rss_mb'], '.0f'):>9s} {f(ratios['peak_rss'], '.2f') + 'x':>11s}")
    print(f"{'test accuracy (median)':24s} {f(lo['median_test_accuracy'], '.4f'):>9s} "
          f"{f(q['median_test_accuracy'], '.4f'):>9s} {f(ratios['accuracy_diff_points'], '+.2f') + ' pt':>11s}")
    print(f"{'trainable params':24s} {f(lo['trainable_params'], ',d'):>9s} {f(q['trainable_params'], ',d'):>9s}")
    print(f"{'ok / failed runs':24s} {lo['ok_runs']:>5d} / {lo['failed_runs']} {q['ok_runs']:>5d} / {q['failed_runs']}")
    if warning:
        print(f"WARNING: {warning}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    machine = bc.machine_info()
    work = a.keep_runs or Path(tempfile.mkdtemp(prefix="qlora_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print("(1) 4-bit storage of MiniLM's linear weights ...", flush=True)
        store = storage()
        print("(2) training runs ...", flush=True)
        rows = training_runs(a, work)
    finally:
        if a.keep_runs is None:
            bc.remove_tree(work)
    summary = summarise(rows)
    warning = bc.noise_warning(rows)
    result = {
        "benchmark": "qlora_memory", "started_utc": started,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "storage": store, **summary, "runs": rows, "noise_warning": warning,
        "notes": notes(store, summary, a, warning is not None),
        "total_seconds": round(time.perf_counter() - t0, 1), "machine": machine,
    }
    bc.write_json(a.out, result)
    print_table(store, summary, warning)
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""How much of this CPU's matmul peak does tunelab's training reach, and does caching the frozen
trunk pay off?

(a) peak: median GFLOP/s of fp32 ``torch.mm`` on 2048x2048 (and 1024x1024) matrices, in this
    process, with torch's default thread count (2 n^3 FLOPs per product).
(b) full fine-tuning (``method.name=full``) of MiniLM on rotten_tomatoes with the LoRA benchmark's
    recipe (max_length 64, batch 32), run by ``tunelab train`` in a child process. Achieved training
    FLOP/s ~= 6 x N x T / train_seconds, N = non-embedding parameters (all parameters but the word,
    position and token-type embedding tables), T = training tokens: the non-padding tokens of the
    tokenised train split (truncated at max_length) times the epochs trained. Also reported with
    the padded tokens the model actually processed (tunelab's exact batches are rebuilt from its
    sampler), and with the attention-score term (12 x layers x hidden x padded_len per token).
    Utilisation = achieved / peak (2048).
(c) ``method.name=freeze method.top_layers=1`` trained 3 epochs with ``train.cache_frozen_trunk``
    false and true: samples/s, train_seconds and the speedup (true over false). A config error is
    reported as such; the script also says when the flag changed nothing (identical losses and
    accuracy) and whether any tunelab module besides config.py reads the option.

Writes benchmarks/results/flops_and_cache.json (``--quick``: flops_and_cache.quick.json).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/flops_and_cache.py
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/flops_and_cache.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc

EMBEDDING_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="matmul peak, full fine-tuning FLOP/s, frozen-trunk cache speedup")
    p.add_argument("--quick", action="store_true",
                   help="tiny verification: 64 training rows, 1 epoch, few matmul repeats; "
                        "writes flops_and_cache.quick.json")
    p.add_argument("--full-epochs", type=int, default=1, help="epochs of the full fine-tuning run")
    p.add_argument("--cache-epochs", type=int, default=None, help="epochs of each freeze run (default 3; --quick 1)")
    p.add_argument("--cache-repeats", type=int, default=1, help="runs per cache setting (alternating)")
    p.add_argument("--max-train-samples", type=int, default=None, help="default all (--quick: 64)")
    p.add_argument("--matmul-repeats", type=int, default=None, help="timed products per size (default 20; --quick 3)")
    p.add_argument("--full-lr", type=float, default=5e-5, help="learning rate of the full fine-tuning run")
    p.add_argument("--freeze-lr", type=float, default=1e-4, help="learning rate of the freeze runs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--skip", nargs="*", default=[], choices=["peak", "full", "cache"], help="parts to skip")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--keep-runs", type=Path, default=None, help="keep run folders and logs here")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per child run")
    a = p.parse_args(argv)
    if a.cache_epochs is None:
        a.cache_epochs = 1 if a.quick else 3
    if a.quick:
        a.full_epochs = 1
        if a.max_train_samples is None:
            a.max_train_samples = 64
    if a.matmul_repeats is None:
        a.matmul_repeats = 3 if a.quick else 20
    if a.out is None:
        a.out = bc.RESULTS_DIR / ("flops_and_cache.quick.json" if a.quick else "flops_and_cache.json")
    return a


# ---------------------------------------------------------------------------- (a) matmul peak

def matmul_peak(sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"dtype": "float32", "threads": torch.get_num_threads(), "repeats": repeats}
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen)
        b = torch.randn(n, n, generator=gen)
        c = torch.empty(n, n)
        for _ in range(3):  # warm-up: thread pool, caches, oneDNN/BLAS kernel selection
            torch.mm(a, b, out=c)
        rates, secs = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            dt = time.perf_counter() - t0
            secs.append(dt)
            rates.append(2 * n**3 / dt / 1e9)
        out[str(n)] = {"median_gflops": round(statistics.median(rates), 2), "max_gflops": round(max(rates), 2),
                       "min_gflops": round(min(rates), 2), "median_seconds": round(statistics.median(secs), 5)}
    return out


# ---------------------------------------------------------------------------- recipe

def base_pairs(a: argparse.Namespace) -> list[tuple[str, Any]]:
    return bc.recipe_pairs(a)


def token_stats(a: argparse.Namespace) -> dict[str, Any]:
    """Non-padding tokens of tunelab's train split and the padded tokens of its batches per epoch,
    plus the parameter counts of the classification model."""
    from tunelab.config import build_config
    from tunelab.data.batching import EpochShuffleSampler, LengthGroupedSampler
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.tasks.classification import prepare_data
    from tunelab.tasks import get_task
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    pairs = [*base_pairs(a), ("method.name", "full")]
    cfg = build_config(None, bc.overrides(pairs))
    task = get_task("classification")
    prep = prepare_data(cfg, task)
    resolved = resolve_model(cfg.model.name_or_path)
    tokenizer = load_tokenizer(resolved)
    texts = [str(t) for t in prep.splits["train"][prep.columns.text]]
    enc = tokenizer(texts, truncation=True, max_length=cfg.data.max_length)
    lengths = [len(ids) for ids in enc["input_ids"]]

    def epoch_batches(epoch: int) -> list[list[int]]:
        bs = cfg.train.batch_size
        if cfg.data.group_by_length:
            sampler = LengthGroupedSampler(lengths, bs, cfg.seed)
            sampler.set_epoch(epoch)
            return sampler.batches()
        sampler = EpochShuffleSampler(len(lengths), cfg.seed)
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        return [order[i:i + bs] for i in range(0, len(order), bs)]

    model = task.build_model(resolved, prep.labels)
    named = list(model.named_parameters())
    total = sum(p.numel() for _, p in named)
    embed = sum(p.numel() for n, p in named if any(t in n for t in EMBEDDING_TABLES))
    cfgm = model.config
    del model
    return {
        "train_rows": len(lengths),
        "group_by_length": cfg.data.group_by_length,
        "tokens_per_epoch": sum(lengths),
        "mean_tokens_per_row": round(sum(lengths) / max(len(lengths), 1), 2),
        "truncated_rows": sum(1 for n in lengths if n >= cfg.data.max_length),
        "_epoch_batches": epoch_batches,
        "_lengths": lengths,
        "params_total": total,
        "params_embedding_tables": embed,
        "params_non_embedding": total - embed,
        "num_layers": getattr(cfgm, "num_hidden_layers", None),
        "hidden_size": getattr(cfgm, "hidden_size", None),
    }


def padded_work(stats: dict[str, Any], epochs: int) -> dict[str, int]:
    """Padded tokens and sum(batch_rows x padded_len^2) over the epochs tunelab trained."""
    lengths = stats["_lengths"]
    padded = attn = 0
    for e in range(epochs):
        for batch in stats["_epoch_batches"](e):
            s = max(lengths[i] for i in batch)
            padded += len(batch) * s
            attn += len(batch) * s * s
    return {"padded_tokens": padded, "rows_x_len2": attn}


# ---------------------------------------------------------------------------- (b) full fine-tuning

def full_finetune(a: argparse.Namespace, work: Path, env: dict[str, str], peak_gflops: float | None
                  ) -> dict[str, Any]:
    pairs = [*base_pairs(a), ("method.name", "full"), ("train.epochs", a.full_epochs), ("train.lr", a.full_lr)]
    info = bc.run_tunelab(pairs, "full", work / "runs", work / "logs", env=env, timeout=a.timeout)
    res = info.pop("results", None)
    info.pop("train_losses", None)
    out: dict[str, Any] = {"run": info, "overrides": bc.overrides(pairs)}
    if res is None:
        out["error"] = "tunelab full fine-tuning run failed; see run.log_tail"
        return out
    stats = token_stats(a)
    n = stats["params_non_embedding"]
    rows = stats["train_rows"]
    epochs_trained = res["train_samples"] / rows if rows else 0.0
    whole_epochs = round(epochs_trained)
    tokens = stats["tokens_per_epoch"] * epochs_trained
    secs = res["train_seconds"]
    pw = padded_work(stats, whole_epochs) if abs(epochs_trained - whole_epochs) < 1e-9 else None
    L, d = stats["num_layers"], stats["hidden_size"]

    def rate(flops: float) -> dict[str, Any]:
        gflops = flops / secs / 1e9 if secs else None
        return {"flops": flops, "achieved_gflops": round(gflops, 2) if gflops else None,
                "utilisation": round(gflops / peak_gflops, 4) if gflops and peak_gflops else None}

    out.update({
        "train_seconds": secs, "samples_per_second": res["samples_per_second"],
        "train_samples": res["train_samples"], "global_step": res["global_step"],
        "epochs_trained": epochs_trained, "test_accuracy": res["test"].get("accuracy"),
        "peak_memory_mb": res["peak_memory_mb"], "tunelab_params": res["params"],
        "params_total": stats["params_total"], "params_embedding_tables": stats["params_embedding_tables"],
        "params_non_embedding": n, "train_rows": rows, "group_by_length": stats["group_by_length"],
        "tokens_per_epoch_non_padding": stats["tokens_per_epoch"], "mean_tokens_per_row": stats["mean_tokens_per_row"],
        "training_tokens_non_padding": tokens,
        "peak_gflops_used": peak_gflops,
        "non_padding_6NT": rate(6 * n * tokens),
    })
    if pw:
        out["training_tokens_padded"] = pw["padded_tokens"]
        out["padding_overhead"] = round(pw["padded_tokens"] / tokens - 1, 4) if tokens else None
        out["padded_6NT"] = rate(6 * n * pw["padded_tokens"])
        if L and d:
            out["padded_6NT_plus_attention"] = rate(6 * n * pw["padded_tokens"] + 12 * L * d * pw["rows_x_len2"])
    return out


# ---------------------------------------------------------------------------- (c) frozen-trunk cache

def option_read_outside_config() -> dict[str, Any]:
    """Which tunelab source files (besides config.py) mention ``cache_frozen_trunk``."""
    import tunelab

    root = Path(tunelab.__file__).parent
    hits = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                  if p.name != "config.py" and "cache_frozen_trunk" in p.read_text(errors="replace"))
    return {"files": hits, "read_outside_config": bool(hits)}


def cache_runs(a: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for i in range(a.cache_repeats):
        order = (False, True) if i % 2 == 0 else (True, False)
        for cache in order:
            pairs = [*base_pairs(a), ("method.name", "freeze"), ("method.top_layers", 1),
                     ("train.epochs", a.cache_epochs), ("train.lr", a.freeze_lr),
                     ("train.cache_frozen_trunk", cache)]
            name = f"freeze-cache-{str(cache).lower()}-{i}"
            print(f"  (c) {name} ...", flush=True)
            info = bc.run_tunelab(pairs, name, work / "runs", work / "logs", env=env, timeout=a.timeout)
            res = info.pop("results", None)
            row = {"cache_frozen_trunk": cache, "repeat": i, "overrides": bc.overrides(pairs), **info}
            if res:
                row.update(samples_per_second=res["samples_per_second"], train_seconds=res["train_seconds"],
                           train_samples=res["train_samples"], test_accuracy=res["test"].get("accuracy"),
                           peak_memory_mb=res["peak_memory_mb"], params=res["params"])
            elif bc.is_config_error(info):
                row["config_error"] = info.get("log_tail", "").strip().splitlines()[-1:]
            rows.append(row)
            print(f"      rc={row['returncode']} samples/s={row.get('samples_per_second')} "
                  f"train_s={row.get('train_seconds')} acc={row.get('test_accuracy')}", flush=True)

    out: dict[str, Any] = {"runs": rows, "source_check": option_read_outside_config()}
    by = {c: [r for r in rows if r["cache_frozen_trunk"] is c] for c in (False, True)}
    errors = [r for r in rows if "config_error" in r]
    failed = [r for r in rows if r["returncode"] != 0]
    if errors:
        out["status"] = "config_error"
        out["message"] = ("train.cache_frozen_trunk was rejected by tunelab's config: "
                          + " | ".join(" ".join(r["config_error"]) for r in errors))
        return out
    if failed:
        out["status"] = "run_failed"
        out["message"] = "a freeze run failed; see runs[].log_tail"
        return out
    for c in (False, True):
        key = "cache_true" if c else "cache_false"
        out[key] = {"median_samples_per_second": bc.median([r["samples_per_second"] for r in by[c]]),
                    "median_train_seconds": bc.median([r["train_seconds"] for r in by[c]]),
                    "test_accuracies": [r["test_accuracy"] for r in by[c]],
                    "median_peak_memory_mb": bc.median([r["peak_memory_mb"] for r in by[c]])}
    f, t = out["cache_false"], out["cache_true"]
    out["speedup_samples_per_second"] = (round(t["median_samples_per_second"] / f["median_samples_per_second"], 3)
                                         if f["median_samples_per_second"] else None)
    out["speedup_train_seconds"] = (round(f["median_train_seconds"] / t["median_train_seconds"], 3)
                                    if t["median_train_seconds"] else None)
    same = (by[False][0].get("train_losses") == by[True][0].get("train_losses")
            and by[False][0].get("test_accuracy") == by[True][0].get("test_accuracy"))
    out["identical_losses_and_accuracy"] = same
    out["status"] = "ok"
    notes = []
    if same:
        notes.append("cache_frozen_trunk=true and false produced identical training losses and test "
                     "accuracy: the option changed nothing in training (caching the frozen layers' outputs "
                     "would fix their dropout masks and so change the losses), so it looks unimplemented")
    if not out["source_check"]["read_outside_config"]:
        notes.append("no tunelab module besides config.py mentions cache_frozen_trunk: the option is "
                     "accepted and stored but nothing reads it")
    if notes:
        out["status"] = "option_has_no_effect"
        out["notes"] = notes
    return out


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    env = bc.child_env()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    machine = bc.machine_info()
    work = a.keep_runs or Path(tempfile.mkdtemp(prefix="flops_and_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "flops_and_cache", "quick": a.quick, "started_utc": started,
                              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}
    try:
        peak = None
        if "peak" not in a.skip:
            print("(a) fp32 matmul peak ...", flush=True)
            result["busy_cpus_before_peak"] = bc.busy_cpus_now()
            result["matmul_peak"] = matmul_peak((1024, 2048), a.matmul_repeats)
            peak = result["matmul_peak"]["2048"]["median_gflops"]
            print(f"    2048: {peak} GFLOP/s (median), 1024: {result['matmul_peak']['1024']['median_gflops']}",
                  flush=True)
        if "full" not in a.skip:
            print("(b) tunelab full fine-tuning ...", flush=True)
            result["full_finetune"] = full_finetune(a, work, env, peak)
            fb = result["full_finetune"]
            print(f"    train_s={fb.get('train_seconds')} "
                  f"achieved={fb.get('non_padding_6NT', {}).get('achieved_gflops')} GFLOP/s "
                  f"util={fb.get('non_padding_6NT', {}).get('utilisation')}", flush=True)
        if "cache" not in a.skip:
            print("(c) freeze top_layers=1, cache_frozen_trunk false/true ...", flush=True)
            result["frozen_trunk_cache"] = cache_runs(a, work, env)
    finally:
        if a.keep_runs is None:
            bc.remove_tree(work)
    child_runs = []
    if "full_finetune" in result:
        child_runs.append(result["full_finetune"]["run"])
    child_runs += result.get("frozen_trunk_cache", {}).get("runs", [])
    result["noise_warning"] = bc.noise_warning(child_runs + [{"busy_cpus_before": result.get("busy_cpus_before_peak")}])
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine
    bc.write_json(a.out, result)
    print_summary(result)
    print(f"\nwrote {a.out}")
    return 0


def print_summary(r: dict[str, Any]) -> None:
    print()
    if "matmul_peak" in r:
        m = r["matmul_peak"]
        print(f"fp32 mm peak      2048: {m['2048']['median_gflops']:8.1f} GFLOP/s (median; max {m['2048']['max_gflops']:.1f})"
              f"   1024: {m['1024']['median_gflops']:.1f}   threads={m['threads']}")
    fb = r.get("full_finetune")
    if fb and "error" not in fb:
        npd = fb["non_padding_6NT"]
        print(f"full fine-tuning  {fb['train_seconds']:.1f} s, {fb['samples_per_second']:.1f} samples/s, "
              f"N_non_emb={fb['params_non_embedding']:,}, tokens={fb['training_tokens_non_padding']:,.0f}")
        print(f"  6NT non-padding: {npd['achieved_gflops']} GFLOP/s, utilisation {npd['utilisation']}")
        if "padded_6NT" in fb:
            pd = fb["padded_6NT"]
            print(f"  6NT padded     : {pd['achieved_gflops']} GFLOP/s, utilisation {pd['utilisation']} "
                  f"(padding overhead {fb['padding_overhead']:.1%})")
        if "padded_6NT_plus_attention" in fb:
            pa = fb["padded_6NT_plus_attention"]
            print(f"  + attention    : {pa['achieved_gflops']} GFLOP/s, utilisation {pa['utilisation']}")
    elif fb:
        print(f"full fine-tuning  FAILED: {fb['error']}")
    c = r.get("frozen_trunk_cache")
    if c:
        print(f"frozen-trunk cache: status={c['status']}")
        if "cache_false" in c:
            print(f"  cache=false {c['cache_false']['median_samples_per_second']} samples/s "
                  f"({c['cache_false']['median_train_seconds']} s); cache=true "
                  f"{c['cache_true']['median_samples_per_second']} samples/s ({c['cache_true']['median_train_seconds']} s); "
                  f"speedup {c['speedup_samples_per_second']}x")
        for note in c.get("notes", []) + ([c["message"]] if c.get("message") else []):
            print(f"  NOTE: {note}")
    if r.get("noise_warning"):
        print(f"WARNING: {r['noise_warning']}")


if __name__ == "__main__":
    os.chdir(bc.REPO)
    sys.exit(main())

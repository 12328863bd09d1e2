#!/usr/bin/env python
"""SFT with LoRA on smollm2-135m + wordnet_instruct: tunelab against TRL ``SFTTrainer`` + peft
(``peer_trl_sft.py``), unpacked and packed; and tunelab QLoRA against fp32 LoRA.

Five configurations, each run a fresh process measured from outside (wall time, and peak RSS from
GNU ``/usr/bin/time -v``, else psutil):

    tunelab_lora_unpacked   trl_lora_unpacked   tunelab_lora_packed   trl_lora_packed   tunelab_qlora_unpacked

Both tools train the same conversations (tunelab's own data path), with the same chat template,
the same response-only loss mask (checked token for token by the peer), the same hyperparameters.
Each repeat runs Q, T, P, P, T (QLoRA, tunelab unpacked, TRL unpacked, TRL packed, tunelab packed)
and the next repeat the reverse, so every pair is measured in both orders (ABBA).

Reported per configuration: median tokens/s (non-padding input tokens of the optimizer steps'
batches / training-loop seconds, logging excluded, for both tools), median peak RSS, train
seconds, final training loss; then the ratios of the medians: tunelab/TRL tokens/s and peak RSS,
unpacked and packed; QLoRA/LoRA peak RSS (the tunelab unpacked LoRA runs are the fp32 side) and
tokens/s; packed/unpacked tokens/s per tool.

Writes benchmarks/results/sft_vs_trl.json (``--quick``: sft_vs_trl.quick.json).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/sft_vs_trl.py
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/sft_vs_trl.py --quick
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

MODEL, DATA = "smollm2-135m", "wordnet_instruct"
# (name, tool, method, packed) in the order of an even repeat; odd repeats run it reversed
CONFIGS = (
    ("tunelab_qlora_unpacked", "tunelab", "qlora", False),
    ("tunelab_lora_unpacked", "tunelab", "lora", False),
    ("trl_lora_unpacked", "trl", "lora", False),
    ("trl_lora_packed", "trl", "lora", True),
    ("tunelab_lora_packed", "tunelab", "lora", True),
)
PAIRS = {"unpacked": ("tunelab_lora_unpacked", "trl_lora_unpacked"),
         "packed": ("tunelab_lora_packed", "trl_lora_packed")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="tunelab SFT+LoRA vs TRL SFTTrainer+peft (tokens/s, peak RSS), "
                                            "packed and unpacked; tunelab QLoRA vs LoRA peak RSS")
    p.add_argument("--repeats", type=int, default=None, help="runs per configuration (default 2; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny verification: 16 training rows, 2 steps, 1 repeat; writes sft_vs_trl.quick.json")
    p.add_argument("--max-train-samples", type=int, default=None, help="training rows (default 256; --quick: 16)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps cap (default none; --quick: 2)")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (tunelab's and peft's default 0.0)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--test-rows", type=int, default=8,
                   help="tunelab always computes a test loss after training; give it only the first N rows of "
                        "the built-in test split (a small data.test_file) to keep that out of the way "
                        "(0: the whole 200-row test split)")
    p.add_argument("--format", choices=("prompt_completion", "messages"), default="prompt_completion",
                   help="how the peer hands conversations to TRL (see peer_trl_sft.py)")
    p.add_argument("--skip-qlora", action="store_true", help="leave out the tunelab QLoRA runs")
    p.add_argument("--threads", type=int, default=None,
                   help="set OMP/MKL_NUM_THREADS for every child (default: leave torch's default)")
    p.add_argument("--tunelab-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more tunelab overrides, e.g. data.group_by_length=false")
    p.add_argument("--trl-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more SFTConfig fields, e.g. train_sampling_strategy=group_by_length")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    p.add_argument("--keep-runs", type=Path, default=None,
                   help="keep run folders, peer JSONs and logs here (default: a temporary folder, deleted)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.max_train_samples is None:
        args.max_train_samples = 16 if args.quick else 256
    if args.max_steps is None and args.quick:
        args.max_steps = 2
    if args.out is None:
        args.out = bc.RESULTS_DIR / ("sft_vs_trl.quick.json" if args.quick else "sft_vs_trl.json")
    return args


# ---------------------------------------------------------------------------- commands

def write_test_file(a: argparse.Namespace, work: Path) -> None:
    """A small test file (the first ``--test-rows`` rows of the built-in test split), or none."""
    a.test_file = None
    if a.test_rows:
        from tunelab.data.builtin import get_builtin_dataset

        test = get_builtin_dataset(DATA).load()["test"]
        path = work / "test_rows.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in test.select(range(min(a.test_rows, len(test)))):
                handle.write(json.dumps({k: row[k] for k in ("instruction", "input", "output")}) + "\n")
        a.test_file = str(path)


def tunelab_pairs(a: argparse.Namespace, method: str, packed: bool) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("seed", a.seed),
        ("model.name_or_path", MODEL),
        ("data.source", DATA),
        ("data.validation_ratio", 0.0),  # no validation rows: nothing is evaluated during training
        ("data.test_ratio", 0.1),  # unused: wordnet_instruct has its own test split
        ("data.split_seed", a.split_seed),
        ("data.max_length", a.max_length),
        ("data.max_train_samples", a.max_train_samples),
        ("task.name", "sft"),  # first: switching the task name resets the task section
        ("task.packing", packed),
        ("task.eval_generate", 0),
        ("task.eval_baseline", False),
        ("method.name", method),  # first: switching the method name resets the method section
        ("method.r", a.r),
        ("method.alpha", a.alpha),
        ("method.dropout", a.dropout),
        ("method.target_modules", "all-linear"),
        ("train.batch_size", a.batch_size),
        ("train.eval_batch_size", a.batch_size),  # the one test-loss pass after training stays small
        ("train.epochs", a.epochs),
        ("train.lr", a.lr),
        ("train.warmup_ratio", a.warmup_ratio),
        ("train.weight_decay", a.weight_decay),
        ("train.max_grad_norm", 1.0),
        ("train.eval_strategy", "no"),
        ("train.keep_best", False),
        ("train.log_steps", 1),
    ]
    if a.max_steps:
        pairs.append(("train.max_steps", a.max_steps))
    if getattr(a, "test_file", None):
        pairs.append(("data.test_file", a.test_file))
    return pairs


def peer_command(a: argparse.Namespace, packed: bool, out: Path) -> list[str]:
    cmd = [sys.executable, str(bc.BENCH_DIR / "peer_trl_sft.py"),
           "--r", str(a.r), "--alpha", repr(a.alpha), "--dropout", repr(a.dropout),
           "--target-modules", "all-linear",
           "--lr", repr(a.lr), "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
           "--max-length", str(a.max_length), "--warmup-ratio", repr(a.warmup_ratio),
           "--weight-decay", repr(a.weight_decay), "--max-grad-norm", "1.0", "--seed", str(a.seed),
           "--log-steps", "1", "--model", MODEL, "--data", DATA, "--split-seed", str(a.split_seed),
           "--validation-ratio", "0.0", "--test-ratio", "0.1",
           "--max-train-samples", str(a.max_train_samples), "--format", a.format, "--out", str(out)]
    if a.max_steps:
        cmd += ["--max-steps", str(a.max_steps)]
    if getattr(a, "test_file", None):
        cmd += ["--test-file", a.test_file]
    if packed:
        cmd.append("--packing")
    if a.trl_extra:
        cmd += ["--trl-extra", *a.trl_extra]
    return cmd


# ---------------------------------------------------------------------------- runs

def run_tunelab(a, name: str, method: str, packed: bool, i: int, work: Path, env) -> dict[str, Any]:
    run_name = f"{name}-{i}"
    runs, logs = work / "runs", work / "logs"
    cmd = [*bc.tunelab_command(), "train", *bc.overrides(tunelab_pairs(a, method, packed)), *a.tunelab_extra,
           f"name={run_name}", f"output_dir={runs}", "--overwrite"]
    info = bc.run_measured(cmd, logs / f"{run_name}.log", env=env, timeout=a.timeout)
    row: dict[str, Any] = {"config": name, "tool": "tunelab", "method": method, "packed": packed, "repeat": i,
                           **info}
    results = runs / run_name / "results.json"
    if info["returncode"] == 0 and results.is_file():
        res = json.loads(results.read_text())
        losses = []
        metrics = runs / run_name / "metrics.jsonl"
        if metrics.is_file():
            losses = [(e["step"], e["loss"]) for e in map(json.loads, metrics.read_text().splitlines())
                      if e.get("event") == "train"]
        row.update(tokens_per_second=res["tokens_per_second"], train_seconds=res["train_seconds"],
                   train_tokens=res["train_tokens"], samples_per_second=res["samples_per_second"],
                   train_samples=res["train_samples"], self_peak_memory_mb=res["peak_memory_mb"],
                   params=res["params"], global_step=res["global_step"],
                   final_train_loss=losses[-1][1] if losses else None, train_losses=losses,
                   test_loss=(res.get("test") or {}).get("loss"), memory_mb=res.get("memory_mb"))
    if a.keep_runs is None:
        bc.remove_tree(runs / run_name)
    return row


def run_trl(a, name: str, packed: bool, i: int, work: Path, env) -> dict[str, Any]:
    out = work / f"{name}-{i}.json"
    info = bc.run_measured(peer_command(a, packed, out), work / "logs" / f"{name}-{i}.log", env=env,
                           timeout=a.timeout)
    row: dict[str, Any] = {"config": name, "tool": "trl", "method": "lora", "packed": packed, "repeat": i, **info}
    if info["returncode"] == 0 and out.is_file():
        res = json.loads(out.read_text())
        row.update(tokens_per_second=res["tokens_per_second"], train_seconds=res["train_seconds"],
                   train_tokens=res["train_tokens"], trl_reported_num_tokens=res["trl_reported_num_tokens"],
                   padded_tokens=res["padded_tokens"], samples_per_second=res["samples_per_second"],
                   train_samples=res["train_samples"], self_peak_memory_mb=res["peak_memory_mb"],
                   params=res["params"], global_step=res["global_step"],
                   final_train_loss=res["final_train_loss"], train_losses=res["train_losses"],
                   trainer_train_runtime=res["trainer_train_runtime"], optimizer=res["optimizer"],
                   sampler=res.get("sampler"), warmup_steps=res["warmup_steps"],
                   labels_identical_to_tunelab=res["masking"]["identical_input_ids_and_labels"],
                   cross_contamination_free=res["packing"].get("cross_contamination_free"),
                   peer=res)
    return row


# ---------------------------------------------------------------------------- summary

def summarise(rows: list[dict[str, Any]], configs: list[str]) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for name in configs:
        all_rows = [r for r in rows if r["config"] == name]
        ok = [r for r in all_rows if r.get("returncode") == 0 and r.get("tokens_per_second")]
        per[name] = {
            "ok_runs": len(ok), "failed_runs": len(all_rows) - len(ok),
            "median_tokens_per_second": bc.median([r["tokens_per_second"] for r in ok]),
            "median_train_seconds": bc.median([r["train_seconds"] for r in ok]),
            "train_tokens": sorted({r["train_tokens"] for r in ok}),
            "global_steps": sorted({r["global_step"] for r in ok}),
            "median_peak_rss_mb": bc.median([r.get("peak_rss_mb") for r in ok]),
            "median_self_peak_memory_mb": bc.median([r.get("self_peak_memory_mb") for r in ok]),
            "median_wall_seconds": bc.median([r["wall_seconds"] for r in ok]),
            "median_final_train_loss": bc.median([r.get("final_train_loss") for r in ok]),
            "trainable_params": ok[0]["params"]["trainable"] if ok else None,
        }

    def ratio(num: str, den: str, key: str) -> float | None:
        a, b = per.get(num, {}).get(key), per.get(den, {}).get(key)
        return round(a / b, 3) if a and b else None

    def per_pair(num: str, den: str) -> list[dict[str, Any]]:
        out = []
        for i in sorted({r["repeat"] for r in rows}):
            x, y = (next((r for r in rows if r["config"] == name and r["repeat"] == i
                          and r.get("tokens_per_second")), None) for name in (num, den))
            if x and y:
                out.append({"repeat": i,
                            "tokens_per_second_ratio": round(x["tokens_per_second"] / y["tokens_per_second"], 3),
                            "peak_rss_ratio": (round(x["peak_rss_mb"] / y["peak_rss_mb"], 3)
                                               if x.get("peak_rss_mb") and y.get("peak_rss_mb") else None)})
        return out

    tunelab_over_trl = {}
    for mode, (tl, trl) in PAIRS.items():
        tl_tokens, trl_tokens = per[tl]["train_tokens"], per[trl]["train_tokens"]
        tunelab_over_trl[mode] = {
            "tokens_per_second": ratio(tl, trl, "median_tokens_per_second"),
            "peak_rss": ratio(tl, trl, "median_peak_rss_mb"),
            "self_reported_peak_memory": ratio(tl, trl, "median_self_peak_memory_mb"),
            "train_seconds": ratio(tl, trl, "median_train_seconds"),
            "same_train_tokens": (tl_tokens == trl_tokens) if tl_tokens and trl_tokens else None,
            "per_pair": per_pair(tl, trl),
        }
    out: dict[str, Any] = {"per_config": per, "tunelab_over_trl": tunelab_over_trl}
    if "tunelab_qlora_unpacked" in per:
        out["qlora_over_lora"] = {
            "peak_rss": ratio("tunelab_qlora_unpacked", "tunelab_lora_unpacked", "median_peak_rss_mb"),
            "self_reported_peak_memory": ratio("tunelab_qlora_unpacked", "tunelab_lora_unpacked",
                                               "median_self_peak_memory_mb"),
            "tokens_per_second": ratio("tunelab_qlora_unpacked", "tunelab_lora_unpacked",
                                       "median_tokens_per_second"),
            "per_pair": per_pair("tunelab_qlora_unpacked", "tunelab_lora_unpacked"),
        }
        out["qlora_over_lora"]["breakdown_mb"] = {
            name: memory_breakdown([r for r in rows if r["config"] == name and r.get("memory_mb")])
            for name in ("tunelab_lora_unpacked", "tunelab_qlora_unpacked")}
    out["targets"] = targets(out)
    out["packed_over_unpacked_tokens_per_second"] = {
        "tunelab": ratio("tunelab_lora_packed", "tunelab_lora_unpacked", "median_tokens_per_second"),
        "trl": ratio("trl_lora_packed", "trl_lora_unpacked", "median_tokens_per_second"),
    }
    trl_rows = [r for r in rows if r["tool"] == "trl" and r.get("returncode") == 0 and "peer" in r]
    out["validity"] = {
        "trl_labels_identical_to_tunelab": (all(r["labels_identical_to_tunelab"] for r in trl_rows)
                                            if trl_rows else None),
        "trl_packed_cross_contamination_free": next(
            (r["cross_contamination_free"] for r in trl_rows if r["packed"]), None),
        "same_trainable_params": (len({per[n]["trainable_params"] for n in per if per[n]["trainable_params"]}) == 1
                                  if any(per[n]["trainable_params"] for n in per) else None),
    }
    return out


def memory_breakdown(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of where tunelab's peak comes from (results.json ``memory_mb`` stages): the
    process and its imports, data, the model's weights (as loaded and adapted: fp32, or 4-bit codes
    plus the fp32 embeddings), and what training adds on top (activations, the labelled positions'
    logits, gradients and optimizer state of the trainable parameters; the last two are computed)."""
    if not rows:
        return {}
    stages = [r["memory_mb"] for r in rows]
    trainable = rows[0]["params"]["trainable"]

    def med(f) -> float:
        return round(bc.median([f(m) for m in stages]), 1)

    return {
        "process_and_imports": med(lambda m: m["start"]),
        "data_and_tokenizer": med(lambda m: m["data"] - m["start"]),
        "weights": med(lambda m: m["model"] - m["data"]),
        "loading_peak_over_weights": med(lambda m: m["peak_before_training"] - m["model"]),
        "training_over_weights": med(lambda m: m["peak_training"] - m["model"]),
        "of_which_grads_and_adam_state": round(3 * 4 * trainable / 2**20, 1),
        "of_which_logits_chunk_at_most": round(4 * (1 << 23) / 2**20, 1),
        "peak_training": med(lambda m: m["peak_training"]),
        "peak": med(lambda m: m["peak"]),
    }


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against this run's ratios (unpacked: the same rows and steps in both tools)."""
    unpacked = summary["tunelab_over_trl"].get("unpacked", {})
    q = summary.get("qlora_over_lora", {})

    def check(value, limit, below: bool):
        return {"value": value, "target": f"{'<=' if below else '>='} {limit}",
                "pass": None if value is None else (value <= limit if below else value >= limit)}

    return {"sft_peak_rss_over_trl": check(unpacked.get("peak_rss"), 0.5, True),
            "sft_tokens_per_second_over_trl": check(unpacked.get("tokens_per_second"), 2.0, False),
            "qlora_peak_rss_over_lora": check(q.get("peak_rss"), 0.7, True)}


def trl_facts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the peer found out about TRL on this model (from its first unpacked and packed runs)."""
    facts: dict[str, Any] = {}
    for r in rows:
        peer = r.get("peer")
        if not peer:
            continue
        if "masking" not in facts:
            facts.update(versions=peer["versions"], masking=peer["masking"], optimizer=peer["optimizer"],
                         sampler=peer.get("sampler"), attn_implementation=peer["attn_implementation"],
                         model_dtype=peer["model_dtype"], fused_lm_head=peer["fused_lm_head"],
                         sft_config=peer["sft_config"], trl_extra=peer["trl_extra"])
        if r["packed"] and "packing" not in facts:
            facts["packing"] = peer["packing"]
    return facts


def print_table(summary: dict[str, Any], warning: str | None) -> None:
    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    print()
    print(f"{'configuration':24s} {'tokens/s':>9s} {'train s':>8s} {'tokens':>8s} {'steps':>6s} "
          f"{'peak RSS MB':>12s} {'final loss':>10s} {'ok/failed':>9s}")
    for name, s in summary["per_config"].items():
        tokens = "/".join(str(t) for t in s["train_tokens"]) or "-"
        steps = "/".join(str(t) for t in s["global_steps"]) or "-"
        print(f"{name:24s} {f(s['median_tokens_per_second']):>9s} {f(s['median_train_seconds']):>8s} "
              f"{tokens:>8s} {steps:>6s} {f(s['median_peak_rss_mb'], '.0f'):>12s} "
              f"{f(s['median_final_train_loss'], '.3f'):>10s} {str(s['ok_runs']) + '/' + str(s['failed_runs']):>9s}")
    print()
    for mode, r in summary["tunelab_over_trl"].items():
        print(f"tunelab / TRL, {mode:8s}: tokens/s {f(r['tokens_per_second'], '.2f')}x, "
              f"peak RSS {f(r['peak_rss'], '.2f')}x, same train tokens: {r['same_train_tokens']}")
    q = summary.get("qlora_over_lora")
    if q:
        print(f"QLoRA / LoRA (tunelab, unpacked): peak RSS {f(q['peak_rss'], '.2f')}x, "
              f"tokens/s {f(q['tokens_per_second'], '.2f')}x")
        for name, b in q.get("breakdown_mb", {}).items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in b.items()) + " (MB)")
    for name, t in summary["targets"].items():
        print(f"target {name}: {t['value']} (target {t['target']}): {'PASS' if t['pass'] else 'MISS'}")
    p = summary["packed_over_unpacked_tokens_per_second"]
    print(f"packed / unpacked tokens/s: tunelab {f(p['tunelab'], '.2f')}x, TRL {f(p['trl'], '.2f')}x")
    v = summary["validity"]
    print(f"TRL labels identical to tunelab's: {v['trl_labels_identical_to_tunelab']}; TRL packed batches "
          f"cross-contamination-free: {v['trl_packed_cross_contamination_free']}; "
          f"same trainable params: {v['same_trainable_params']}")
    if warning:
        print(f"WARNING: {warning}")


MATCHED = [
    "model: smollm2-135m (Llama, 134.5M parameters), fp32, CPU; sdpa attention in both",
    ("rows: the same training conversations (tunelab's data path: wordnet_instruct, first max_train_samples "
     "training rows, no validation split), rendered with the tokenizer's own chat template (SmolLM2's default "
     "system prompt inserted by the template in both)"),
    ("loss mask: the response tokens only (content + '<|im_end|>\\n'); the peer checks that TRL's token ids and "
     "labels equal tunelab's, example for example (summary.validity)"),
    ("max length (right truncation), batch size, epochs / max steps, lr, linear schedule with warmup = "
     "round(ratio x steps) optimizer steps, weight decay, grad-norm clip 1.0, seed, no gradient accumulation"),
    ("LoRA r, alpha, dropout, targets all-linear (q, k, v, o, gate, up, down of every layer; lm_head excluded); "
     "same trainable parameter count"),
    ("no gradient checkpointing (TRL's default is on: turned off), no mixed precision (TRL's default bf16: "
     "turned off), no evaluation during training, no checkpoints"),
    ("tokens/s: non-padding input tokens of the optimizer steps' batches / training-loop seconds, logging "
     "excluded; packed: the tokens of the packed examples (no padding counted)"),
]

DIFFERENCES = [
    ("loss computation: both tools project only the positions with a label (the response, ~25% of tokens here) "
     "through the LM head, never building the (batch, length, 49152) logits: TRL with its fused LM head (in "
     "tiles), tunelab with its LabelledLogitsStep (the head on the labelled hidden states, a chunked "
     "cross-entropy); each tool's own way, left on"),
    ("packing: tunelab packs greedily in data order (first fit) into rows of <= max_length tokens, pads a batch of "
     "rows to its longest and passes a 4-D block-diagonal causal mask plus restarting position_ids. TRL packs by "
     "best-fit decreasing (rows of <= max_length), then its padding-free collator concatenates the batch's rows "
     "into ONE row (<= batch x max_length tokens) with restarting position_ids and no attention mask; "
     "transformers builds the block-diagonal mask from the position_ids (sdpa on CPU: a dense masked attention "
     "over the whole flattened row). Different packers give different row and step counts"),
    ("batch order (unpacked): tunelab groups batches by length (data.group_by_length=true, its default), TRL uses "
     "the Trainer's random sampler, so padding differs (tokens/s counts only real tokens for both; TRL's padded "
     "tokens are in runs[].padded_tokens). Use --tunelab-extra data.group_by_length=false or "
     "--trl-extra train_sampling_strategy=group_by_length to compare without this difference"),
    "optimizer: tunelab torch AdamW(foreach=True); TRL the Trainer default (adamw_torch_fused, runs[].optimizer)",
    "TRL computes entropy and token accuracy of every step (its metrics); included in its loop time",
    ("after training, tunelab computes a test loss once (--test-rows rows of the test split, batch = train batch "
     "size) and saves the adapter: outside train_seconds, inside wall time; the TRL peer, in packed mode, "
     "runs one no-grad cross-contamination check on 2 packed rows, also outside its train_seconds"),
    "the TRL process also imports tunelab's data path (to read the same conversations); its RSS includes that",
    ("LoRA initialisation: Kaiming-uniform A and zero B in both, each after seeding with the run seed; per-step "
     "losses differ wherever the batches differ (batch order, packing)"),
]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    env = bc.child_env(a.threads)
    machine = bc.machine_info()
    try:
        import trl

        machine["trl"] = trl.__version__
    except ImportError:
        machine["trl"] = None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    work = a.keep_runs or Path(tempfile.mkdtemp(prefix="sft_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    write_test_file(a, work)
    configs = [c for c in CONFIGS if not (a.skip_qlora and c[2] == "qlora")]
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def write(done: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
        doc = results_document(a, done, configs, machine, started, time.perf_counter() - t0, complete)
        bc.write_json(a.out, doc)
        return doc

    try:
        for i in range(a.repeats):
            for name, tool, method, packed in (configs if i % 2 == 0 else configs[::-1]):
                print(f"[{time.perf_counter() - t0:7.0f}s] repeat {i + 1}/{a.repeats}: {name} ...", flush=True)
                if tool == "tunelab":
                    row = run_tunelab(a, name, method, packed, i, work, env)
                else:
                    row = run_trl(a, name, packed, i, work, env)
                rows.append(row)
                status = "ok" if row.get("returncode") == 0 else f"FAILED rc={row.get('returncode')}"
                print(f"          {status}: tokens/s={row.get('tokens_per_second')} "
                      f"train_s={row.get('train_seconds')} "
                      f"tokens={row.get('train_tokens')} steps={row.get('global_step')} "
                      f"peak_rss_mb={row.get('peak_rss_mb')} loss={row.get('final_train_loss')} "
                      f"wall_s={row.get('wall_seconds')} busy_cpus_before={row.get('busy_cpus_before')}", flush=True)
                if row.get("returncode") != 0:
                    print(row.get("log_tail", "")[-1500:], file=sys.stderr)
                write(rows, complete=False)  # what a kill or a timeout leaves is still on disk
    finally:
        if a.keep_runs is None:
            bc.remove_tree(work)
    out = write(rows, complete=True)
    print_table(out["summary"], out["noise_warning"])
    print(f"\nwrote {a.out} ({out['total_seconds']:.0f} s)")
    ok = all(r.get("returncode") == 0 for r in rows)
    return 0 if ok else 1


def results_document(a: argparse.Namespace, rows: list[dict[str, Any]], configs: list, machine: dict,
                     started: str, seconds: float, complete: bool) -> dict[str, Any]:
    summary = summarise(rows, [c[0] for c in configs])
    warning = bc.noise_warning(rows)
    return {
        "benchmark": "sft_vs_trl",
        "complete": complete,
        "quick": a.quick,
        "started_utc": started,
        "total_seconds": round(seconds, 1),
        "recipe": {"model": MODEL, "data": DATA, "validation_ratio": 0.0, "split_seed": a.split_seed,
                   "max_train_samples": a.max_train_samples,
                   "test_rows": a.test_rows or "the built-in test split (200 rows)", "max_length": a.max_length,
                   "batch_size": a.batch_size, "epochs": a.epochs, "max_steps": a.max_steps, "lr": a.lr,
                   "scheduler": "linear", "warmup_ratio": a.warmup_ratio, "weight_decay": a.weight_decay,
                   "max_grad_norm": 1.0, "seed": a.seed, "dtype": "float32", "device": "cpu",
                   "loss": "response tokens only", "template": "tokenizer chat template (ChatML)",
                   "lora": {"r": a.r, "alpha": a.alpha, "dropout": a.dropout, "target_modules": "all-linear"},
                   "qlora": None if a.skip_qlora else "tunelab method.name=qlora defaults (NF4, double quant, "
                                                      "block 64, fp32 compute) + the same LoRA settings",
                   "trl_format": a.format, "repeats": a.repeats, "threads_env": a.threads,
                   "order": "each repeat Q T P P T (see configs), the next one reversed",
                   "configs": [c[0] for c in configs],
                   "tunelab_extra_overrides": a.tunelab_extra, "trl_extra": a.trl_extra},
        "tunelab_overrides": {c[0]: bc.overrides(tunelab_pairs(a, c[2], c[3])) + list(a.tunelab_extra)
                              for c in configs if c[1] == "tunelab"},
        "trl_commands": {c[0]: peer_command(a, c[3], Path("OUT.json"))[1:] for c in configs if c[1] == "trl"},
        "matched": MATCHED,
        "differences_left_as_each_tool_defaults": DIFFERENCES,
        "summary": summary,
        "trl_facts": trl_facts(rows),
        "noise_warning": warning,
        "machine": machine,
        "runs": [{k: v for k, v in r.items() if k != "peer"} for r in rows],
    }


if __name__ == "__main__":
    os.chdir(bc.REPO)
    sys.exit(main())

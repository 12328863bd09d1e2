#!/usr/bin/env python
"""EDA text augmentation on a small training set: does it help at 200 rows?

Wei & Zou (2019, EDA) report the largest gains for the smallest training sets (+3 points average at
500 rows with recurrent/convolutional classifiers trained from scratch) and note that with large
pretrained models the gain shrinks. We measure it with our main job's recipe: LoRA r=8 on MiniLM,
Rotten Tomatoes, the first 200 training rows of the fixed 80/10/10 split (``data.split_seed=42``),
scored on the same 487 test rows, 3 seeds (initialisation, dropout and data order), with and
without ``data.augment`` (alpha = 0.1 for each of the four operations, 4 augmented copies per row,
the paper's suggestion for small sets). Each run is a fresh ``tunelab train`` process; the result is
reported as it comes out, mean +- sample standard deviation over the seeds.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/text_augment.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc

OUT = bc.RESULTS_DIR / "text_augment.json"
SEEDS = (1, 2, 3)
BASE = [("model.name_or_path", "minilm"), ("data.source", "rotten_tomatoes"), ("data.max_train_samples", 200),
        ("data.split_seed", 42), ("method.name", "lora"), ("train.epochs", 8), ("train.lr", 1e-3),
        ("train.batch_size", 16), ("train.eval_strategy", "epoch")]
AUGMENT = [("data.augment.synonym_replacement", 0.1), ("data.augment.random_insertion", 0.1),
           ("data.augment.random_swap", 0.1), ("data.augment.random_deletion", 0.1),
           ("data.augment.num_augmented", 4)]
METRICS = ("accuracy", "f1", "auc_roc")


def run_all(work: Path) -> list[dict[str, Any]]:
    rows = []
    for seed in SEEDS:  # alternate the two arms so machine noise hits both alike
        for arm, extra in (("plain", []), ("eda", AUGMENT)):
            name = f"{arm}-seed{seed}"
            info = bc.run_tunelab([*BASE, ("seed", seed), *extra], name, work / "runs", work / "logs",
                                  env=bc.child_env())
            if info["returncode"] != 0:
                raise SystemExit(f"{name} failed:\n{info.get('log_tail', '')}")
            test = info["results"]["test"]
            rows.append({"arm": arm, "seed": seed, **{m: test.get(m) for m in METRICS},
                         "train_samples": info["results"]["train_samples"],
                         "train_seconds": info["results"]["train_seconds"]})
            print(f"{name}: accuracy {test['accuracy']:.4f}", flush=True)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ("plain", "eda"):
        arm_rows = [r for r in rows if r["arm"] == arm]
        out[arm] = {m: {"mean": statistics.mean(r[m] for r in arm_rows), "std": statistics.stdev(r[m] for r in arm_rows)}
                    for m in METRICS}
    diffs = [e["accuracy"] - p["accuracy"] for p, e in zip([r for r in rows if r["arm"] == "plain"],
                                                             [r for r in rows if r["arm"] == "eda"])]
    out["accuracy_gain"] = {"mean": statistics.mean(diffs), "std": statistics.stdev(diffs), "per_seed": diffs}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_all(args.work or Path(tmp))
    summary = summarize(rows)
    bc.write_json(OUT, {"benchmark": "text_augment", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "machine": bc.machine_info(), "recipe": dict(BASE), "augment": dict(AUGMENT),
                        "seeds": list(SEEDS), "test_rows": 487, "runs": rows, "summary": summary})
    for arm in ("plain", "eda"):
        acc = summary[arm]["accuracy"]
        print(f"{arm:5s}: test accuracy {acc['mean']:.4f} +- {acc['std']:.4f} (3 seeds)")
    gain = summary["accuracy_gain"]
    print(f"EDA - plain: {gain['mean']:+.4f} +- {gain['std']:.4f} (paired by seed); wrote {OUT}")


if __name__ == "__main__":
    main()

"""Peak memory of DPO with LoRA on SmolLM2-135M-Instruct: the reference as the policy with its
adapters switched off (tunelab's default) vs a frozen copy of the model (``task.reference: copy``),
against LoRA SFT on the same prompts and chosen responses (issue 12: "expected well under 2x LoRA
SFT's").

Every run: the same 48 training pairs of ``rt_preferences`` (SFT: their prompt -> chosen), LoRA
r=8 on every linear layer, batch 8 (DPO: 8 pairs = 16 sequences per step, plus the reference pass),
``data.max_length`` 160, 6 optimizer steps, no evaluation during training. Peak RSS is measured from
outside (GNU time's maximum resident set size of the whole process); each configuration runs
``--repeats`` times, alternating, and the median is reported.

    python benchmarks/dpo_memory.py            # -> benchmarks/results/dpo_memory.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import RESULTS_DIR, child_env, machine_info, run_tunelab  # noqa: E402

RUNS = Path(__file__).resolve().parent / "runs" / "dpo_memory"
COMMON = [("model.name_or_path", "smollm2-135m"), ("data.max_length", 160), ("data.max_train_samples", 48),
          ("data.max_eval_samples", 8), ("method.name", "lora"), ("method.r", 8), ("method.alpha", 16),
          ("method.target_modules", "all-linear"), ("train.max_steps", 6), ("train.batch_size", 8),
          ("train.eval_batch_size", 8), ("train.lr", 5e-4), ("train.eval_strategy", "no"), ("train.log_steps", 1)]


def sft_file() -> Path:
    """The first 48 training pairs as prompt -> chosen rows (what DPO's chosen side trains on)."""
    from tunelab.data.builtin import get_builtin_dataset

    rows = get_builtin_dataset("rt_preferences").load()["train"].select(range(48))
    path = RUNS / "sft_rows.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows))
    return path


def configs() -> dict[str, list[tuple[str, Any]]]:
    dpo = [("task.name", "dpo"), ("data.source", "rt_preferences"), *COMMON]
    return {
        "sft_lora": [("task.name", "sft"), ("data.source", str(sft_file())), ("data.validation_ratio", 0.1),
                     ("data.test_ratio", 0.1), *COMMON],
        "dpo_lora_disabled_adapters": [*dpo, ("task.reference", "auto")],
        "dpo_lora_frozen_copy": [*dpo, ("task.reference", "copy")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS_DIR / "dpo_memory.json"))
    args = parser.parse_args()
    runs = configs()
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for rep in range(args.repeats):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            info = run_tunelab(runs[name], f"{name}-{rep}", RUNS, RUNS / "logs", env=child_env())
            if info["returncode"] != 0:
                raise SystemExit(f"{name} failed:\n{info.get('log_tail', '')}")
            measured[name].append({"peak_rss_mb": info.get("peak_rss_mb"), "wall_seconds": info["wall_seconds"],
                                   "in_process_peak_mb": info["results"]["peak_memory_mb"]})
            print(f"{name} #{rep}: peak RSS {info.get('peak_rss_mb')} MB, {info['wall_seconds']:.0f} s", flush=True)
    medians = {name: statistics.median(m["peak_rss_mb"] or m["in_process_peak_mb"] for m in rows)
               for name, rows in measured.items()}
    sft = medians["sft_lora"]
    report = {
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
        "recipe": dict(COMMON), "runs": measured, "median_peak_rss_mb": medians,
        "ratio_to_sft": {name: round(v / sft, 3) for name, v in medians.items()},
        "copy_minus_disabled_mb": round(medians["dpo_lora_frozen_copy"] - medians["dpo_lora_disabled_adapters"], 1),
        "target_disabled_under_2x_sft": medians["dpo_lora_disabled_adapters"] < 2 * sft,
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("median_peak_rss_mb", "ratio_to_sft", "copy_minus_disabled_mb")},
                     indent=2))


if __name__ == "__main__":
    main()

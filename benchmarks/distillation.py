#!/usr/bin/env python
"""Knowledge distillation on this CPU: students with a teacher vs the same students without one.

Three sections, each a teacher, students trained with distillation (``distill.teacher``) and the
same students trained without it, ``--seeds`` seeds each (every child a fresh ``tunelab train``
process, KD and no-KD alternating), then inference speed of teacher vs student measured side by
side in this process (alternating rounds, median):

* ``text``  -- teacher: the main job (``tunelab train`` defaults: LoRA on MiniLM, rotten_tomatoes),
  merged for timing; student: 3-layer MiniLM (``model.num_layers=3``: layers 1, 3, 5), full
  fine-tuning. Targets: the KD student keeps >= 97% of the teacher's test accuracy and runs
  inference >= 1.8x faster.
* ``image`` -- teacher: MobileNetV2 (ImageNet) fully fine-tuned on 2,000 Fashion-MNIST images;
  student: MobileNetV2 without its 10 repeated shape-keeping blocks (``model.keep_layers``).
* ``sft``   -- teacher: SmolLM2-135M-Instruct as it is (its test loss on wordnet_instruct is the
  before-training evaluation of a zero-step run); student: SmolLM2 with 10 of its 30 layers.

Writes benchmarks/results/distillation.json (``--quick``: distillation.quick.json).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/distillation.py
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/distillation.py --only text --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc

TARGETS = {"kd_student_teacher_accuracy_ratio_min": 0.97, "inference_speedup_min": 1.8}
IMAGE_STUDENT_BLOCKS = [0, 1, 2, 4, 7, 11, 14, 17, 18]
"""MobileNetV2's blocks without the repeated inverted residuals 3, 5, 6, 8, 9, 10, 12, 13, 15, 16."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="distillation: KD student vs no-KD student vs teacher")
    p.add_argument("--only", nargs="+", choices=("text", "image", "sft"), default=["text", "image", "sft"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sft-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets to check the script (distillation.quick.json)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--sft-steps", type=int, default=150, help="optimizer steps of each SFT student (default 150)")
    p.add_argument("--keep-runs", type=Path, default=None, help="keep run folders here (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- recipes

def text_recipe(q: bool) -> tuple[list, list]:
    teacher = [("seed", 42)] + ([("train.epochs", 1), ("data.max_train_samples", 200)] if q else [])
    student = [("model.name_or_path", "minilm"), ("model.num_layers", 3), ("method.name", "full"),
               ("train.lr", 1e-4), ("train.epochs", 1 if q else 4), ("train.warmup_ratio", 0.1),
               *([("data.max_train_samples", 200)] if q else [])]
    return teacher, student


def image_recipe(q: bool) -> tuple[list, list]:
    common = [("task.name", "image_classification"), ("model.name_or_path", "mobilenet-v2"),
              ("data.source", "fashion_mnist"), ("data.max_train_samples", 200 if q else 2000),
              ("data.max_eval_samples", 200 if q else 2000), ("data.validation_ratio", 0.01),
              ("data.test_ratio", 0.0), ("task.image_size", 112), ("train.epochs", 1 if q else 6),
              ("train.batch_size", 32), ("train.eval_batch_size", 128), ("train.warmup_ratio", 0.1),
              ("method.name", "full"), ("train.lr", 1e-3)]
    teacher = common + [("seed", 42)]
    student = common + [("model.keep_layers", IMAGE_STUDENT_BLOCKS)]
    return teacher, student


def sft_recipe(q: bool, steps: int = 150) -> tuple[list, list]:
    common = [("task.name", "sft"), ("model.name_or_path", "smollm2-135m"), ("data.source", "wordnet_instruct"),
              ("data.max_train_samples", 64 if q else 1200), ("data.max_length", 96), ("task.eval_generate", 0),
              ("train.batch_size", 8), ("train.eval_batch_size", 16), ("train.eval_strategy", "no"),
              ("train.warmup_ratio", 0.05), ("task.eval_baseline", True)]
    teacher = common + [("train.max_steps", 1), ("train.lr", 1e-12), ("method.name", "lora"), ("seed", 42)]
    student = common + [("model.num_layers", 10), ("method.name", "full"), ("train.lr", 2e-4),
                        ("train.max_steps", 4 if q else steps)]
    return teacher, student


RECIPES = {"text": (text_recipe, "accuracy", True), "image": (image_recipe, "accuracy", True),
           "sft": (sft_recipe, "loss", False)}


# ---------------------------------------------------------------------------- inference speed

def _forward_fn(loaded, section: str):
    import torch

    model = loaded.model.eval()
    if section == "image":
        from tunelab.tasks.image import logits_fn

        fn = logits_fn(model)
        return lambda batch: fn(model, batch)
    extra = {"use_cache": False} if section == "sft" else {}
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return lambda batch: model(**{k: v for k, v in batch.items() if k in keys and isinstance(v, torch.Tensor)},
                               **extra)


def _inputs(loaded, batch_size: int) -> list[dict]:
    """The test split as the task prepares and collates it for evaluation, prepared once."""
    cfg = loaded.cfg
    if hasattr(cfg.task, "packing"):
        cfg.task.packing = False
    data = loaded.task.prepare(cfg, loaded.processor)
    rows = data.rows["test"]
    _, collate = loaded.task.collators(cfg, loaded.processor, loaded.model)
    return [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def inference_speed(teacher_dir: Path, student_dir: Path, section: str, rounds: int = 5) -> dict[str, Any]:
    """Forward passes over the test inputs, teacher and student alternating; medians and their ratio."""
    import torch

    from tunelab.interop.merged import merge_into_base
    from tunelab.pipeline import load_run

    loaded = {}
    for who, path in (("teacher", teacher_dir), ("student", student_dir)):
        run = load_run(str(path))
        try:
            merge_into_base(run.model, run.cfg)  # adapters folded in: the teacher as it would be deployed
        except Exception:  # noqa: BLE001 -- a method that does not merge runs as trained
            pass
        loaded[who] = run
    inputs = _inputs(loaded["teacher"], {"text": 64, "image": 128, "sft": 16}[section])
    fns = {who: _forward_fn(run, section) for who, run in loaded.items()}
    times: dict[str, list[float]] = {"teacher": [], "student": []}
    with torch.inference_mode():
        for fn in fns.values():
            fn(inputs[0])  # warm-up
        for r in range(rounds):
            for who in (("teacher", "student") if r % 2 == 0 else ("student", "teacher")):
                t0 = time.perf_counter()
                for batch in inputs:
                    fns[who](batch)
                times[who].append(time.perf_counter() - t0)
    t, s = statistics.median(times["teacher"]), statistics.median(times["student"])
    params = {who: sum(p.numel() for p in run.model.parameters()) for who, run in loaded.items()}
    return {"teacher_seconds": round(t, 3), "student_seconds": round(s, 3), "speedup": round(t / s, 3),
            "rounds": rounds, "batches": len(inputs), "params": params,
            "what": "model forward over the prepared test inputs (tokenised / decoded once), torch.inference_mode, "
                    "the teacher's adapters merged"}


# ---------------------------------------------------------------------------- a section

def mean_std(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "values": values}


def run_section(name: str, args: argparse.Namespace, runs: Path, logs: Path, env: dict) -> dict[str, Any]:
    recipe, metric, larger = RECIPES[name]
    teacher_pairs, student_pairs = recipe(args.quick, args.sft_steps) if name == "sft" else recipe(args.quick)
    seeds = args.sft_seeds if name == "sft" else args.seeds
    print(f"[{name}] teacher ...", flush=True)
    teacher = bc.run_tunelab(teacher_pairs, f"{name}-teacher", runs, logs, env=env)
    if teacher["returncode"] != 0:
        return {"error": "teacher failed", "teacher": teacher}
    t_res = teacher["results"]
    t_metric = (t_res.get("baseline") if name == "sft" else t_res["test"])[metric]
    kd_pairs = [("distill.teacher", str(runs / f"{name}-teacher")), ("distill.alpha", args.alpha),
                ("distill.temperature", args.temperature)]
    if name == "sft":  # the teacher of the SFT section is the model itself, not the zero-step run
        kd_pairs[0] = ("distill.teacher", "smollm2-135m")
    students: dict[str, list[dict[str, Any]]] = {"kd": [], "no_kd": []}
    for i, seed in enumerate(seeds):
        order = ("kd", "no_kd") if i % 2 == 0 else ("no_kd", "kd")
        for kind in order:
            pairs = student_pairs + [("seed", seed)] + (kd_pairs if kind == "kd" else [])
            print(f"[{name}] student {kind} seed {seed} ...", flush=True)
            info = bc.run_tunelab(pairs, f"{name}-student-{kind}-{seed}", runs, logs, env=env)
            res = info.get("results", {})
            students[kind].append({
                "seed": seed, "returncode": info["returncode"], metric: res.get("test", {}).get(metric),
                "test": res.get("test"), "train_seconds": res.get("train_seconds"),
                "samples_per_second": res.get("samples_per_second"), "peak_rss_mb": info.get("peak_rss_mb"),
                "params": res.get("params"), "busy_cpus_before": info.get("busy_cpus_before"),
                **({"log_tail": info.get("log_tail")} if info["returncode"] else {})})
    summary = {kind: mean_std([r[metric] for r in rows if r[metric] is not None]) for kind, rows in students.items()}
    first_kd = next((runs / f"{name}-student-kd-{r['seed']}" for r in students["kd"] if r["returncode"] == 0), None)
    speed = inference_speed(runs / f"{name}-teacher", first_kd, name) if first_kd else None
    out: dict[str, Any] = {
        "metric": metric, "larger_is_better": larger, "teacher": {metric: t_metric, "test": t_res.get("test"),
                                                                   "params": t_res.get("params")},
        "teacher_overrides": bc.overrides(teacher_pairs), "student_overrides": bc.overrides(student_pairs),
        "distill_overrides": bc.overrides(kd_pairs), "students": students, "summary": summary, "inference": speed,
    }
    kd_mean = summary["kd"]["mean"]
    if larger and kd_mean is not None:
        out["kd_student_teacher_ratio"] = round(kd_mean / t_metric, 4)
    if kd_mean is not None and summary["no_kd"]["mean"] is not None:
        out["kd_minus_no_kd"] = round(kd_mean - summary["no_kd"]["mean"], 4)
    if name == "text":
        out["targets"] = {
            "kd_student_teacher_accuracy_ratio": {"value": out.get("kd_student_teacher_ratio"),
                                                  "min": TARGETS["kd_student_teacher_accuracy_ratio_min"],
                                                  "pass": (out.get("kd_student_teacher_ratio") or 0)
                                                  >= TARGETS["kd_student_teacher_accuracy_ratio_min"]},
            "inference_speedup": {"value": speed and speed["speedup"], "min": TARGETS["inference_speedup_min"],
                                  "pass": bool(speed) and speed["speedup"] >= TARGETS["inference_speedup_min"]}}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_path = args.out or bc.REPO / "benchmarks" / "results" / ("distillation.quick.json" if args.quick
                                                                 else "distillation.json")
    env = bc.child_env()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tunelab-kd-") as tmp:
        root = args.keep_runs or Path(tmp)
        runs, logs = root / "runs", root / "logs"
        result: dict[str, Any] = {"benchmark": "distillation", "quick": args.quick,
                                  "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  "machine": bc.machine_info(), "alpha": args.alpha, "temperature": args.temperature,
                                  "seeds": args.seeds, "sft_seeds": args.sft_seeds, "sections": {}}
        if out_path.is_file():  # sections run by an earlier invocation (--only) are kept
            import json

            earlier = json.loads(out_path.read_text()).get("sections", {})
            result["sections"] = {k: v for k, v in earlier.items() if k not in args.only}
            result["earlier_sections_kept"] = sorted(result["sections"])
        for name in args.only:
            result["sections"][name] = run_section(name, args, runs, logs, env)
            result["total_seconds"] = round(time.time() - started, 1)
            bc.write_json(out_path, result)  # after every section: a stop keeps what finished
            print_section(name, result["sections"][name])
        noisy = bc.noise_warning([r for s in result["sections"].values() for rows in s.get("students", {}).values()
                                  for r in rows])
        if noisy:
            result["noise_warning"] = noisy
            print("WARNING:", noisy)
        bc.write_json(out_path, result)
    print(f"wrote {out_path}")
    return 0


def print_section(name: str, s: dict[str, Any]) -> None:
    if "error" in s:
        print(f"[{name}] {s['error']}")
        return
    m = s["metric"]
    kd, no = s["summary"]["kd"], s["summary"]["no_kd"]
    print(f"\n[{name}] test {m}: teacher {s['teacher'][m]:.4f} | KD student {kd['mean']} ± {kd['std']} | "
          f"no-KD student {no['mean']} ± {no['std']}")
    if s.get("inference"):
        i = s["inference"]
        print(f"[{name}] inference: teacher {i['teacher_seconds']} s, student {i['student_seconds']} s -> "
              f"{i['speedup']}x")
    for target, t in s.get("targets", {}).items():
        print(f"[{name}] {target}: {t['value']} (min {t['min']}) {'PASS' if t['pass'] else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())

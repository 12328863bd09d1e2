"""The built-in preference-alignment example, measured end to end on this machine (issue 12):

1. ``judge``: a sentiment classifier (LoRA MiniLM on rotten_tomatoes, the main job's recipe with
   fewer epochs). It only *judges*: no policy ever trains against it.
2. ``reward``: a reward model (LoRA MiniLM, ``task.name: reward``) on ``rt_preferences`` -- pairs of
   a fresh vs a rotten review of the same movie; target pairwise accuracy >= 0.8 on held-out movies.
3. ``dpo``: DPO (sigmoid, beta 0.1) with LoRA on SmolLM2-135M-Instruct on ``rt_preferences``.
4. ``ppo``: PPO with LoRA on SmolLM2-135M-Instruct on ``rt_prompts``, rewarded by the ``reward`` run.

The DPO and PPO runs are judged the same way: one sampled answer (same sampling settings, same
``task.eval_seed``) to each of the 141 held-out ``rt_prompts`` movies ("Write a short review of the
movie <name>."), scored by the judge as P(fresh), before training (``results.json`` -> baseline)
and after. Target: PPO's mean P(fresh) rises by >= 0.2 absolute, with its mean KL to the reference
reported; DPO's rises as well. Each stage should take at most ~20 minutes on 2 CPU cores.

Usage::

    python benchmarks/preference_alignment.py                 # every stage, results/preference_alignment.json
    python benchmarks/preference_alignment.py --stages ppo    # one stage (earlier stages' runs are reused)

Stages whose run already finished under ``benchmarks/runs/preference`` are reused, not retrained
(``--fresh`` retrains them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import RESULTS_DIR, child_env, machine_info, run_tunelab  # noqa: E402

RUNS = Path(__file__).resolve().parent / "runs" / "preference"
LOGS = RUNS / "logs"

SAMPLING = [("task.max_new_tokens", 32), ("task.temperature", 1.0), ("task.top_k", 0), ("task.top_p", 1.0),
            ("task.eval_seed", 0)]
JUDGE = [("task.judge", str(RUNS / "judge")), ("task.judge_label", "fresh")]

STAGES: dict[str, list[tuple[str, Any]]] = {
    "judge": [
        ("model.name_or_path", "minilm"), ("data.source", "rotten_tomatoes"), ("data.max_length", 64),
        ("method.name", "lora"), ("method.r", 8), ("method.alpha", 16), ("method.target_modules", "all-linear"),
        ("train.epochs", 3), ("train.batch_size", 32), ("train.lr", 1e-3), ("train.eval_strategy", "epoch"),
        ("train.keep_best", True),
    ],
    "reward": [
        ("task.name", "reward"), ("model.name_or_path", "minilm"), ("data.source", "rt_preferences"),
        ("data.max_length", 128), ("method.name", "lora"), ("method.r", 8), ("method.alpha", 16),
        ("method.target_modules", "all-linear"), ("train.epochs", 2), ("train.batch_size", 16),
        ("train.eval_batch_size", 64), ("train.lr", 1e-3), ("train.eval_strategy", "epoch"),
        ("train.keep_best", True),
    ],
    "dpo": [
        ("task.name", "dpo"), ("model.name_or_path", "smollm2-135m"), ("data.source", "rt_preferences"),
        ("data.max_length", 128), ("data.max_train_samples", 256), ("data.max_eval_samples", 160),
        ("task.beta", 0.1), *JUDGE, ("task.judge_prompts", "rt_prompts"), *SAMPLING,
        ("method.name", "lora"), ("method.r", 8), ("method.alpha", 16), ("method.target_modules", "all-linear"),
        ("train.epochs", 1), ("train.batch_size", 8), ("train.eval_batch_size", 48), ("train.lr", 1e-3),
        ("train.warmup_ratio", 0.1), ("train.eval_strategy", "no"), ("train.log_steps", 5),
    ],
    "ppo": [
        ("task.name", "ppo"), ("model.name_or_path", "smollm2-135m"), ("data.source", "rt_prompts"),
        ("data.max_length", 128), ("task.reward", str(RUNS / "reward")), *JUDGE, *SAMPLING,
        ("task.kl_coef", 0.02), ("task.ppo_epochs", 2), ("task.minibatches", 2), ("task.missing_eos_penalty", 0.0),
        ("method.name", "lora"), ("method.r", 8), ("method.alpha", 16), ("method.target_modules", "all-linear"),
        ("train.max_steps", 120), ("train.batch_size", 16), ("train.eval_batch_size", 48), ("train.lr", 1e-3),
        ("train.warmup_ratio", 0.05), ("train.eval_strategy", "no"), ("train.log_steps", 4),
    ],
}
ORDER = ("judge", "reward", "dpo", "ppo")
NEEDS = {"dpo": ("judge",), "ppo": ("judge", "reward")}


def finished(name: str) -> dict[str, Any] | None:
    path = RUNS / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_stage(name: str, fresh: bool) -> dict[str, Any]:
    done = None if fresh else finished(name)
    if done is not None:
        print(f"[{name}] reusing the finished run {RUNS / name}", flush=True)
        return {"reused": True, "results": done}
    for need in NEEDS.get(name, ()):
        if finished(need) is None:
            raise SystemExit(f"stage {name} needs the {need} run; run --stages {need} first")
    print(f"[{name}] training ... (log: {LOGS / (name + '.log')})", flush=True)
    info = run_tunelab(STAGES[name], name, RUNS, LOGS, env=child_env())
    if info["returncode"] != 0:
        raise SystemExit(f"stage {name} failed (exit {info['returncode']}):\n{info.get('log_tail', '')}")
    print(f"[{name}] done in {info['wall_seconds']:.0f} s", flush=True)
    return info


def summary(name: str, info: dict[str, Any]) -> dict[str, Any]:
    r = info["results"]
    test, base = r.get("test", {}), r.get("baseline", {})
    out: dict[str, Any] = {"wall_seconds": info.get("wall_seconds", r.get("wall_seconds")),
                           "train_seconds": r.get("train_seconds"), "global_step": r.get("global_step"),
                           "peak_memory_mb": r.get("peak_memory_mb"), "trainable_params": r["params"]["trainable"]}
    if name == "judge":
        out["test_accuracy"] = test.get("accuracy")
    elif name == "reward":
        out.update({k: test.get(k) for k in ("pairwise_accuracy", "mean_margin", "reward_mean", "reward_std")})
        out["target_pairwise_accuracy_ge_0_8"] = (test.get("pairwise_accuracy") or 0) >= 0.8
    else:
        out["judge_p_fresh_before"] = base.get("judge_mean")
        out["judge_p_fresh_after"] = test.get("judge_mean")
        out["judge_p_fresh_gain"] = round(test["judge_mean"] - base["judge_mean"], 4) \
            if "judge_mean" in test and "judge_mean" in base else None
        out["kl_to_reference_after"] = test.get("kl")
        out["response_length_before"], out["response_length_after"] = (base.get("response_length"),
                                                                       test.get("response_length"))
        out["ended_fraction_before"], out["ended_fraction_after"] = (base.get("ended_fraction"),
                                                                     test.get("ended_fraction"))
        out["judged_prompts"] = test.get("judged_prompts", test.get("prompts"))
        if name == "ppo":
            out["reward_before"], out["reward_after"] = base.get("reward_mean"), test.get("reward_mean")
            out["target_gain_ge_0_2"] = (out["judge_p_fresh_gain"] or 0) >= 0.2
        else:
            out.update({k: test.get(k) for k in ("reward_accuracy", "reward_margin", "loss")})
            out["target_gain_gt_0"] = (out["judge_p_fresh_gain"] or 0) > 0
    out["within_20_min"] = (out["wall_seconds"] or 0) <= 20 * 60
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--fresh", action="store_true", help="retrain stages whose run already finished")
    parser.add_argument("--out", default=str(RESULTS_DIR / "preference_alignment.json"))
    args = parser.parse_args()
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.is_file() else {}
    report.setdefault("stages", {})
    report["machine"] = machine_info()
    report["recipes"] = {name: dict(STAGES[name]) for name in ORDER}
    for name in ORDER:
        if name not in args.stages:
            continue
        info = run_stage(name, args.fresh)
        report["stages"][name] = summary(name, info)
        report["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(json.dumps({name: report["stages"][name]}, indent=2), flush=True)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmark scripts: run a child process and measure it from outside,
build ``tunelab train`` commands, read results, describe the machine.

Not a benchmark itself; imported by ``lora_vs_peer.py`` and ``flops_and_cache.py`` (which run as
scripts, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
GNU_TIME = "/usr/bin/time"

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment every child runs in: offline, and optionally a fixed thread count."""
    env = dict(os.environ, **OFFLINE_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = str(threads)
    return env


def tunelab_command() -> list[str]:
    """The ``tunelab`` console script next to this interpreter, else ``python -m tunelab``."""
    exe = Path(sys.executable).parent / "tunelab"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "tunelab"]


def fmt(value: Any) -> str:
    """A value as a ``key=value`` override (YAML-parsed by tunelab).

    Strings are single-quoted so that YAML 1.1 does not turn words like ``no`` into booleans
    (``train.eval_strategy=no`` is read as ``False`` and rejected; ``'no'`` is the string).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def recipe_pairs(a: Any) -> list[tuple[str, Any]]:
    """The recipe both benchmarks share: minilm, rotten_tomatoes 80/10/10, max length, batch,
    warmup, weight decay, no evaluation during training (``a`` is the parsed argparse namespace)."""
    pairs: list[tuple[str, Any]] = [
        ("seed", a.seed),
        ("model.name_or_path", "minilm"),
        ("data.source", "rotten_tomatoes"),
        ("data.validation_ratio", 0.1),
        ("data.test_ratio", 0.1),
        ("data.split_seed", a.split_seed),
        ("data.max_length", a.max_length),
        ("train.batch_size", a.batch_size),
        ("train.warmup_ratio", a.warmup_ratio),
        ("train.weight_decay", a.weight_decay),
        ("train.eval_strategy", "no"),
        ("train.keep_best", False),
    ]
    if a.max_train_samples:
        pairs.append(("data.max_train_samples", a.max_train_samples))
    return pairs


def overrides(pairs: list[tuple[str, Any]]) -> list[str]:
    return [f"{k}={fmt(v)}" for k, v in pairs]


def _gnu_time_works() -> bool:
    if not (os.path.exists(GNU_TIME) and os.access(GNU_TIME, os.X_OK)):
        return False
    try:
        proc = subprocess.run([GNU_TIME, "-v", "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "Maximum resident set size" in proc.stderr


_GNU_TIME_OK: bool | None = None


def _parse_gnu_time(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_mb"] = round(int(m.group(1)) / 1024, 1)
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        seconds = 0.0
        for part in m.group(1).split(":"):
            seconds = seconds * 60 + float(part)
        out["gnu_time_wall_seconds"] = round(seconds, 2)
    for key, label in (("user_seconds", "User time (seconds)"), ("system_seconds", "System time (seconds)")):
        m = re.search(re.escape(label) + r": ([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Percent of CPU this job got: (\d+)%", text)
    if m:
        out["cpu_percent"] = int(m.group(1))
    return out


def busy_cpus_now(interval: float = 0.5) -> float:
    """How many CPUs were busy over ``interval`` seconds just before a run (other people's load)."""
    import psutil

    return round(psutil.cpu_percent(interval=interval) / 100 * (psutil.cpu_count() or 1), 2)


def run_measured(cmd: list[str], log_path: Path, *, env: dict[str, str], timeout: float | None = None
                 ) -> dict[str, Any]:
    """Run ``cmd`` to completion; return exit code, wall time and peak RSS measured from outside.

    Peak RSS comes from GNU ``/usr/bin/time -v`` (the child's ru_maxrss) when it is available,
    otherwise from polling the child process tree with psutil every 50 ms (a lower bound).
    stdout+stderr go to ``log_path``.
    """
    global _GNU_TIME_OK
    if _GNU_TIME_OK is None:
        _GNU_TIME_OK = _gnu_time_works()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    busy_before = busy_cpus_now()
    info: dict[str, Any] = {"command": cmd, "log": str(log_path), "loadavg_before": [round(x, 2) for x in load_before],
                            "busy_cpus_before": busy_before}
    time_file = log_path.with_suffix(".time.txt")
    full = [GNU_TIME, "-v", "-o", str(time_file), *cmd] if _GNU_TIME_OK else cmd
    info["rss_source"] = "gnu_time" if _GNU_TIME_OK else "psutil_poll"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        peak = 0
        if not _GNU_TIME_OK:
            import psutil

            try:
                ps = psutil.Process(proc.pid)
                while proc.poll() is None:
                    try:
                        rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                        peak = max(peak, rss)
                    except psutil.Error:
                        pass
                    time.sleep(0.05)
            except psutil.Error:
                pass
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            info["timed_out"] = True
    info["returncode"] = rc
    info["wall_seconds"] = round(time.perf_counter() - t0, 2)
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if _GNU_TIME_OK and time_file.is_file():
        info.update(_parse_gnu_time(time_file.read_text()))
    elif peak:
        info["peak_rss_mb"] = round(peak / 2**20, 1)
    if rc != 0:
        info["log_tail"] = tail(log_path)
    return info


def tail(path: Path, chars: int = 2500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    # tqdm writes carriage returns; keep the last state of each line
    lines = [line.split("\r")[-1] for line in text.splitlines()]
    return "\n".join(lines)[-chars:]


def run_tunelab(pairs: list[tuple[str, Any]], name: str, runs_dir: Path, log_dir: Path, *,
                env: dict[str, str], timeout: float | None = None) -> dict[str, Any]:
    """``tunelab train <overrides> name=NAME output_dir=DIR --overwrite``; adds results.json."""
    cmd = [*tunelab_command(), "train", *overrides(pairs), f"name={name}", f"output_dir={runs_dir}", "--overwrite"]
    info = run_measured(cmd, log_dir / f"{name}.log", env=env, timeout=timeout)
    results = runs_dir / name / "results.json"
    if info["returncode"] == 0 and results.is_file():
        info["results"] = json.loads(results.read_text())
        metrics = runs_dir / name / "metrics.jsonl"
        if metrics.is_file():
            info["train_losses"] = [
                (e["step"], e["loss"]) for e in map(json.loads, metrics.read_text().splitlines())
                if e.get("event") == "train"
            ]
    return info


def is_config_error(info: dict[str, Any]) -> bool:
    """tunelab exits 2 on user errors; a config error names a config key."""
    text = info.get("log_tail", "")
    return info.get("returncode") == 2 and ("config key" in text or "tunelab: error" in text)


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(k)},
    }
    try:
        import psutil

        info["memory_total_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    for mod in ("transformers", "peft", "accelerate", "datasets", "tunelab"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - informative only
            info[mod] = None
    info["gnu_time"] = _gnu_time_works()
    return info


def noise_warning(runs: list[dict[str, Any]], limit: float = 0.5) -> str | None:
    """A warning when other processes kept CPUs busy just before a measured run."""
    busy = [r.get("busy_cpus_before") for r in runs if r.get("busy_cpus_before") is not None]
    if busy and max(busy) > limit:
        return (f"other processes kept up to {max(busy)} CPUs busy just before a run "
                f"(of {os.cpu_count()}); timings are unreliable, re-run on a quiet machine")
    return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

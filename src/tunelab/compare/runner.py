"""``tunelab compare CONFIG``: train every run of a compare file (one after another, or ``--jobs N`` at
once, one device each), then report.

Layout of ``<output_dir>/<name>/``: ``compare.yaml`` (the compare file as read), ``configs/<label>.yaml``
(each run's full config), ``runs/<label>/`` (ordinary run directories), ``logs/<label>.log`` (each run's
stdout and stderr) and the reports of :func:`tunelab.compare.report.write_reports`.

Each run is its own ``python -m tunelab train`` process, so its peak memory is its own and a crash ends
only that run: a nonzero exit is recorded as a failed run with the error it printed, and the comparison
goes on. Rerunning is cheap: a finished run (``results.json``) is skipped, an interrupted one continues
from its latest checkpoint (``tunelab train --resume``), one that stopped before its first checkpoint
starts over. A run whose directory was made from a different config is refused before anything runs
(``--overwrite`` redoes runs; ``--only LABEL ...`` limits which runs are run or redone). Each training
process gets ``TUNELAB_PARENT_PID`` and dies with the comparison, so a ``kill -9`` leaves no orphan
writing into a run folder.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from tunelab.compare.config import (
    CompareConfig,
    PlannedRun,
    check_budget_measurable,
    compare_dir,
    load_compare,
    plan_runs,
)
from tunelab.compare.report import (
    RunSummary,
    Settings,
    analyse,
    check_budget,
    check_comparable,
    rich_table,
    summarize_run,
    write_reports,
)
from tunelab.errors import UserError, unknown

FINISHED, INTERRUPTED, PARTIAL, NEW = "finished", "interrupted", "partial", "new"
IGNORED_KEYS = ("output_dir",)
"""Config keys a rerun may change without redoing a run (the folder may be reached by another path)."""
INTERRUPT_GRACE_S = 60
"""How long an interrupted training process gets to exit on its own before it is killed."""


def run_compare(path: str | Path, *, overwrite: bool = False, only: Sequence[str] | None = None,
                budget: str | None = None, stream: TextIO | None = None, jobs: int = 1) -> Path:
    """Check everything, train what is not finished, write the reports; return the comparison folder.

    ``jobs`` runs train at once, each on its own device (``CUDA_VISIBLE_DEVICES``) when there are
    accelerators; on a CPU-only machine they share the cores (threads split between them)."""
    out = stream or sys.stdout
    cfg = load_compare(path)
    budget = check_budget(budget or cfg.budget)
    root = compare_dir(cfg)
    devices = job_devices(jobs)
    plan = plan_runs(cfg, root)
    check_budget_measurable(budget, plan[0].config)  # --budget may differ from the file's
    selected = select_runs(plan, only)
    check_existing(plan, root, redo=selected if overwrite else set())
    write_plan(cfg, plan, root)
    if jobs > 1:
        _say(out, f"{jobs} jobs at once, " + (f"on devices {', '.join(d for d in devices)}" if devices[0] != "cpu"
                                             else f"sharing this machine's CPU ({_threads(jobs)} threads each)"))
    heads = {run.label: f"[{i}/{len(plan)}] {run.label}:" for i, run in enumerate(plan, 1)}

    def one(run: PlannedRun, device: str) -> RunSummary | None:
        summary = execute(run, root, heads[run.label], metric=cfg.metric, in_scope=run.label in selected,
                          redo=overwrite, out=out, env=device_env(device, jobs))
        return None if summary is None else place(summary, run)

    summaries = [s for s in run_jobs(plan, one, devices) if s is not None]
    report(summaries, root, budget, cfg.tolerance, out, settings(cfg))
    return root


def settings(cfg: CompareConfig) -> Settings:
    """How the report judges the runs, from the compare file."""
    return Settings(cfg.confidence, cfg.resamples, cfg.max_memory_mb, cfg.max_params)


def place(summary: RunSummary, run: PlannedRun) -> RunSummary:
    """The run's place in the grid: its method (group), seed and training-set size."""
    summary.group, summary.seed, summary.size, summary.train_rows = run.group, run.seed, run.size, run.train_rows
    return summary


# ---------------------------------------------------------------------------- parallel jobs

def job_devices(jobs: int) -> list[str]:
    """One device per job: CUDA device numbers, or ``cpu`` for every job on a machine without them."""
    if jobs < 1:
        raise UserError(f"--jobs must be 1 or more (got {jobs})")
    if jobs == 1:
        return ["cpu"]  # one job: its process sees every device, as a plain tunelab train does (no torch here)
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return ["cpu"] * jobs
    if jobs > count:
        raise UserError(f"--jobs {jobs} asks for one device per job, but this machine has {count} CUDA device"
                        f"{'s' if count > 1 else ''}; use --jobs {count} or fewer")
    return [str(i) for i in range(jobs)]


def _threads(jobs: int) -> int:
    return max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // jobs)


def device_env(device: str, jobs: int) -> dict[str, str]:
    """Environment of a training process on ``device`` (nothing changes for a single job)."""
    if jobs == 1:
        return {}
    if device == "cpu":
        n = str(_threads(jobs))
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    return {"CUDA_VISIBLE_DEVICES": device}


def run_jobs(plan: list[PlannedRun], one, devices: list[str]) -> list[RunSummary | None]:
    """``one(run, device)`` for every run, ``len(devices)`` at a time; results in plan order."""
    if len(devices) == 1:
        return [one(run, devices[0]) for run in plan]
    import queue
    from concurrent.futures import ThreadPoolExecutor

    free: queue.Queue[str] = queue.Queue()
    for d in devices:
        free.put(d)

    def on_a_device(run: PlannedRun) -> RunSummary | None:
        device = free.get()
        try:
            return one(run, device)
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        futures = [pool.submit(on_a_device, run) for run in plan]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            raise


def select_runs(plan: list[PlannedRun], only: Sequence[str] | None) -> set[str]:
    """Labels to run: all, or those named by ``--only`` (unknown labels are refused)."""
    labels = [run.label for run in plan]
    for label in only or []:
        if label not in labels:
            raise unknown("run label in --only", label, labels)
    return set(only) if only else set(labels)


# ---------------------------------------------------------------------------- state of a run

def run_dir(root: Path, label: str) -> Path:
    return root / "runs" / label


def run_state(path: Path) -> str:
    """finished (results.json), interrupted (a checkpoint to resume), partial (neither) or new (no folder)."""
    from tunelab.train.checkpoint import latest_checkpoint

    if (path / "results.json").is_file():
        return FINISHED
    if latest_checkpoint(path / "checkpoints") is not None:
        return INTERRUPTED
    return PARTIAL if path.exists() else NEW


def config_difference(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> str | None:
    """The first key whose value differs, as ``key: old -> new`` (``None`` when the configs agree)."""
    for key in dict.fromkeys([*saved, *wanted]):
        dotted = f"{prefix}{key}"
        if dotted in IGNORED_KEYS:
            continue
        old, new = saved.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found = config_difference(old, new, dotted + ".")
            if found:
                return found
        elif old != new:
            return f"{dotted}: {old!r} -> {new!r}"
    return None


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config with the defaults of keys added since it was written (as it reads today);
    unchanged when it no longer validates (then the raw difference is reported)."""
    from tunelab.config import to_yaml_dict, validate_config

    try:
        return yaml.safe_load(yaml.safe_dump(to_yaml_dict(validate_config(saved)), sort_keys=False))
    except UserError:
        return saved


def check_existing(plan: list[PlannedRun], root: Path, redo: set[str]) -> None:
    """Refuse to skip or resume a run whose folder was made from another config (runs in ``redo`` start over)."""
    for run in plan:
        path = run_dir(root, run.label)
        if run.label in redo or run_state(path) not in (FINISHED, INTERRUPTED) or not (path / "config.yaml").is_file():
            continue
        saved = with_defaults(yaml.safe_load((path / "config.yaml").read_text()) or {})
        wanted = yaml.safe_load(yaml.safe_dump(run.data, sort_keys=False))  # as the run directory stores it
        diff = config_difference(saved, wanted)
        if diff:
            raise UserError(f"run '{run.label}' in {path} was made with a different config ({diff}); rerun with "
                            f"--overwrite to redo every run, or --overwrite --only {run.label} to redo this one")


def write_plan(cfg: CompareConfig, plan: list[PlannedRun], root: Path) -> None:
    """``compare.yaml`` and ``configs/<label>.yaml`` (what each ``tunelab train`` reads)."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    (root / "compare.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    for run in plan:
        (root / "configs" / f"{run.label}.yaml").write_text(yaml.safe_dump(run.data, sort_keys=False))


# ---------------------------------------------------------------------------- running

def execute(run: PlannedRun, root: Path, head: str, *, metric: str | None, in_scope: bool, redo: bool,
            out: TextIO, env: dict[str, str] | None = None) -> RunSummary | None:
    """Skip, resume or (re)start one run and print one progress line; ``None`` when left out by ``--only``."""
    path = run_dir(root, run.label)
    state = run_state(path)
    if not in_scope or (state == FINISHED and not redo):
        if state != FINISHED:
            _say(out, f"{head} not in --only and not finished, left out")
            return None
        summary = summarize_run(run.label, path, metric)
        _say(out, f"{head} finished earlier, {'skipped' if in_scope else 'kept'} ({_score(summary)})")
        return summary
    resume = state == INTERRUPTED and not redo
    if not resume and path.exists():
        shutil.rmtree(path)
    if resume:
        from tunelab.train.checkpoint import latest_checkpoint

        step = latest_checkpoint(path / "checkpoints").name.split("-")[-1]
        action, cmd = f"resuming from step {step}", ["--resume", str(path)]
    else:
        action, cmd = "training", [str(root / "configs" / f"{run.label}.yaml")]
    parallel = bool(env)
    if parallel:  # other jobs print between the start and the end of this one: say both in full
        _say(out, f"{head} {action} ...")
    else:
        _say(out, f"{head} {action} ...", end=" ")
    log = root / "logs" / f"{run.label}.log"
    started = time.monotonic()
    code, output = run_logged([sys.executable, "-m", "tunelab", "train", *cmd], log, append=resume, env=env)
    took = _seconds(time.monotonic() - started)
    lead = f"{head} " if parallel else ""
    if code != 0:
        summary = RunSummary.failed(run.label, path, f"{failure_message(output, code)} (log: {log})")
        _say(out, f"{lead}failed after {took}: {summary.error}")
        return summary
    summary = summarize_run(run.label, path, metric)
    _say(out, f"{lead}done in {took}, {_score(summary)}" if summary.ok
         else f"{lead}failed after {took}: {summary.error}")
    return summary


def run_logged(cmd: list[str], log: Path, *, append: bool, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr (unbuffered, in order) going to ``log``; return (exit code, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNELAB_PARENT_PID": str(os.getpid()), **(env or {})}
    with log.open("ab" if append else "wb") as f:
        f.write(f"$ {shlex.join(cmd)}\n".encode())
        f.flush()
        start = f.tell()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            stop(proc)
            raise
    with log.open("rb") as f:
        f.seek(start)
        return code, f.read().decode("utf-8", errors="replace")


def stop(proc: subprocess.Popen) -> None:
    """Let an interrupted training save and exit (it got the terminal's Ctrl-C too); kill it if it will not."""
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def failure_message(output: str, code: int) -> str:
    """The last ``tunelab:`` line a failed run printed (its one-line error), else its last line."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    tagged = [line for line in lines if line.startswith("tunelab:")]
    if tagged:
        return tagged[-1].removeprefix("tunelab:").strip().removeprefix("error:").strip()
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return f"killed by {name}" + (f" after: {lines[-1].strip()}" if lines else "")
    return lines[-1].strip() if lines else f"exited with code {code} and printed nothing"


# ---------------------------------------------------------------------------- report

def report(summaries: list[RunSummary], root: Path, budget: str, tolerance: float, out: TextIO,
           judged: Settings | None = None) -> None:
    """Write the report files, print the table and the recommendation; the last line is the folder."""
    from rich.console import Console

    if not summaries:
        raise UserError("nothing to compare: none of the runs has finished (run them without --only)")
    check_comparable(summaries)
    result = analyse(summaries, budget, tolerance, judged)
    paths = write_reports(summaries, root, budget, tolerance, judged, analysis=result)
    Console(file=out).print(rich_table(result.methods, budget))
    print(result.advice, file=out)
    print(f"report: {paths['html']}", file=out)
    print(root, file=out, flush=True)


def _say(out: TextIO, text: str, end: str = "\n") -> None:
    print(text, end=end, file=out, flush=True)


def _score(summary: RunSummary) -> str:
    if not summary.ok:
        return f"failed: {summary.error}"
    return f"{summary.metric} {summary.value:.4f}" if summary.value is not None else f"no test {summary.metric}"


def _seconds(x: float) -> str:
    return f"{x:.0f} s" if x >= 10 else f"{x:.1f} s"

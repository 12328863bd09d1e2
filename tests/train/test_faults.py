"""Faults: ``kill -9`` at random moments of a real run (one of them in the middle of a checkpoint write)
resumes to weights bit-identical to an uninterrupted run, and never leaves a checkpoint that cannot be
read; a full disk while writing a checkpoint leaves the previous one intact and says so in one line."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli, tiny_overrides
from tunelab.cli import main
from tunelab.train import checkpoint as ckpt

# 3 epochs of 192 training rows at batch 16 = 36 steps; validation, best/ and a checkpoint every 5 steps.
# The tiny model's accuracy stays flat for a while; its AUC climbs, so best/ is rewritten at most validations.
EXTRA = {"train.epochs": 3, "train.eval_strategy": "steps", "train.eval_steps": 5, "method.dropout": 0.1,
         "train.save_total_limit": 2, "train.metric_for_best": "auc_roc"}

# Run as `python LAUNCHER ARGS`: tunelab's CLI, except that the N-th safetensors write of a checkpoint or
# best/ folder writes half a file and then the process SIGKILLs itself: a kill in the middle of a write.
LAUNCHER = """
import os, signal, sys
from tunelab.train import checkpoint
real, calls, die_at = checkpoint.save_tensors, [0], int(os.environ["DIE_AT_WRITE"])
def dying(tensors, path, metadata=None):
    calls[0] += 1
    if calls[0] == die_at:
        real(tensors, path, metadata)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tensors, path, metadata)
checkpoint.save_tensors = dying
from tunelab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(run / "model" / "weights.safetensors")


def assert_checkpoints_readable(run: Path) -> None:
    """Every checkpoint folder loads completely; ``latest`` names one of them; best/ (if any) loads."""
    root = run / "checkpoints"
    folders = sorted(root.glob("step-*")) if root.is_dir() else []
    for folder in folders:
        ckpt.load_tensors(folder / ckpt.WEIGHTS)
        ckpt.load_tensors(folder / "rng.safetensors")
        torch.load(folder / "optimizer.pt", weights_only=True)
        json.loads((folder / "state.json").read_text())
    if (root / "latest").is_file():
        assert ckpt.latest_checkpoint(root) in folders, "latest names a missing or incomplete checkpoint"
    ckpt.recover_atomic(run / "best")  # what the next start does first
    if (run / "best").exists():
        ckpt.load_tensors(run / "best" / ckpt.WEIGHTS)


def _start(args: list[str], env: dict[str, str] | None = None, launcher: Path | None = None) -> subprocess.Popen:
    entry = [str(launcher)] if launcher else ["-m", "tunelab"]
    return subprocess.Popen([sys.executable, *entry, "train", *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _logged_step(run: Path) -> int:
    """The last training step the run has logged (``metrics.jsonl``), 0 before the first."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [0]
    for line in lines[-5:]:
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue  # a line being written
    return max(steps)


def _kill_when(proc: subprocess.Popen, ready, delay: float, timeout: float = 300) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_at_five_moments_resumes_to_identical_weights(tiny_bert_dir, reviews_jsonl, tmp_path) -> None:
    ref = run_cli("train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path / "a", **EXTRA))
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "b" / "run"
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    first = tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path / "b", **EXTRA)
    rng = random.Random(17)
    early, later = rng.randint(2, 9), sorted(rng.sample(range(14, 30), 2))
    # (what the kill waits for, then a random extra delay): start-up (imports, data, model), a random
    # training step, the middle of the 4th safetensors write of a process (best/ or a checkpoint), and two
    # later random steps, each kill a random fraction of a second after its step was logged
    moments = [(lambda: True, rng.uniform(1.0, 3.0)), (lambda: _logged_step(run) >= early, 0.0),
               ("mid-write", 0.0), *[(lambda k=k: _logged_step(run) >= k, rng.uniform(0.0, 0.1)) for k in later]]
    killed_at = []
    for ready, delay in moments:
        resume = (run / "config.yaml").is_file()  # as a user would: --resume once the run exists
        args = ["--resume", str(run)] if resume else first
        if ready == "mid-write":
            proc = _start(args, {"DIE_AT_WRITE": "4"}, launcher)
            proc.wait(timeout=300)
        else:
            proc = _start(args)
            _kill_when(proc, ready, delay)
        assert proc.returncode == -signal.SIGKILL, f"ended before kill {len(killed_at) + 1} (after {killed_at}): " \
                                                   f"{proc.stderr.read()[-2000:]}"
        latest = ckpt.latest_checkpoint(run / "checkpoints")
        killed_at.append((_logged_step(run), latest.name if latest else None))
        assert_checkpoints_readable(run)
    assert not (run / "results.json").exists()
    assert sum(latest is not None for _, latest in killed_at) >= 3, killed_at  # most kills had progress to keep

    final = run_cli("train", "--resume", str(run))
    assert final.returncode == 0, final.stderr[-2000:]
    a, b = _weights(tmp_path / "a" / "run"), _weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after kills at {killed_at}"
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (tmp_path / "a" / "run", run))
    assert ra["test"] == rb["test"] and ra["global_step"] == rb["global_step"] == 36
    assert ra["best_validation"] == rb["best_validation"]
    assert not list((run / "checkpoints").glob(".tmp-*")), "a half-written checkpoint was left behind"


def _full_disk_when(fails) -> object:
    """A ``save_file`` that fails like a full disk (after writing part of the file) when ``fails(path)``."""
    real = ckpt.save_file

    def save_file(tensors, filename, metadata=None):
        if fails(Path(filename)):
            Path(filename).write_bytes(b"\0" * 64)  # a partial file, as a full disk leaves one
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, metadata=metadata)

    return save_file


FULL_DISK = {
    # the checkpoint of step 10 (step 5's is complete)
    "checkpoint": (lambda path: path.parent.name == ".tmp-step-00000010", ["checkpoint step-00000010",
                                                                          "step-00000005 is intact"]),
    # best/ after its first version exists (the first validation always sets it)
    "best": (lambda path: path.parent.name == ".best.tmp" and (path.parent.parent / "best").is_dir(),
             ["best", "the earlier best/ is intact"]),
}


@pytest.mark.parametrize("case", list(FULL_DISK))
def test_full_disk_keeps_the_previous_checkpoint_and_says_so(case, tiny_bert_dir, reviews_jsonl, tmp_path,
                                                             monkeypatch, capsys) -> None:
    fails, fragments = FULL_DISK[case]
    args = tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **EXTRA)
    run = tmp_path / "run"
    monkeypatch.setattr(ckpt, "save_file", _full_disk_when(fails))
    capsys.readouterr()
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("tunelab: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "no space left on device" in lines[0] and all(f in lines[0] for f in fragments), lines[0]
    assert not list((run / "checkpoints").glob(".tmp-*")) and not (run / ".best.tmp").exists()
    assert_checkpoints_readable(run)
    kept = json.loads((run / "best" / "meta.json").read_text())["step"]
    assert ckpt.latest_checkpoint(run / "checkpoints") is not None and kept >= 5

    monkeypatch.undo()  # space freed: the run resumes and finishes
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["global_step"] == 36


def test_a_half_written_metrics_line_does_not_stop_the_resume(tmp_path) -> None:
    """A kill in the middle of ``metrics.jsonl``'s append leaves a torn last line: it is dropped."""
    from tunelab.run import RunDir

    run = RunDir(tmp_path)
    for step in (1, 2, 3):
        run.log({"event": "train", "step": step, "loss": 1.0 / step})
    with run.metrics.open("a") as handle:
        handle.write('{"event": "train", "step": 4, "lo')
    assert [e["step"] for e in run.events(event="train")] == [1, 2, 3]
    run.truncate_metrics_after(2)
    assert run.metrics.read_text().splitlines() == [json.dumps({"event": "train", "step": s, "loss": 1.0 / s})
                                                    for s in (1, 2)]


def test_best_swap_killed_between_its_renames_is_put_back(tmp_path) -> None:
    """``save_weights_atomic`` moves best/ aside, then the new one in; a kill between the two leaves
    only ``.best.old``, which the next start (and restore_best) put back."""
    model = torch.nn.Linear(3, 2)
    best = tmp_path / "best"
    ckpt.save_weights_atomic(best, model, {"step": 5})
    os.replace(best, tmp_path / ".best.old")  # the state right after the first rename
    ckpt.recover_atomic(best)
    assert json.loads((best / "meta.json").read_text()) == {"step": 5}
    assert torch.equal(ckpt.load_tensors(best / ckpt.WEIGHTS)["weight"], model.weight.detach())
    ckpt.recover_atomic(best)  # nothing to do when best/ is in place
    assert best.is_dir() and not (tmp_path / ".best.old").exists()

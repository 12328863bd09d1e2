"""The same training code under ``accelerate launch`` with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, tiny_overrides
from tunelab.cli import main


def test_two_process_training_under_accelerate_launch(tiny_bert_dir, reviews_jsonl, tmp_path, capsys):
    accelerate = Path(sys.executable).with_name("accelerate")
    # accelerate's --multi_gpu path is torchrun; on a machine without GPUs tunelab trains on CPU (gloo).
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunelab", "train",
           *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{"train.batch_size": 8})]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert proc.stdout.strip().splitlines()[-1] == str(run)
    assert proc.stdout.count("tunelab: run") == 1  # only the main process prints the summary
    results = json.loads((run / "results.json").read_text())
    assert results["num_processes"] == 2
    # 192 train rows / 8 = 24 batches, dealt to 2 processes = 12 steps per epoch, 2 epochs
    assert results["global_step"] == 24 and results["train_samples"] == 384
    # evaluation gathers both shards without duplicates: every one of the 24 test rows once
    assert sum(map(sum, results["test"]["confusion_matrix"])) == 24
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == results["test"]["accuracy"]

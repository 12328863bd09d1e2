"""Integration on the real offline MiniLM and real Rotten Tomatoes reviews (about a minute)."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main

pytestmark = pytest.mark.integration


def test_lora_on_real_minilm_learns_sentiment(tmp_path, capsys):
    # 1,200 training reviews, 2 epochs: far below the main job, but well above chance (0.5).
    code = main(["train", f"output_dir={tmp_path}", "name=real", "data.max_train_samples=1200",
                 "train.epochs=2", "train.eval_strategy=no", "data.test_ratio=0.1"])
    assert code == 0
    results = json.loads((tmp_path / "real" / "results.json").read_text())
    assert results["test"]["accuracy"] >= 0.70, results["test"]
    assert results["test"]["auc_roc"] >= 0.78
    assert results["params"]["total"] > 22_000_000 and results["params"]["trainable_percent"] < 2
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "real"), "A beautiful, moving and funny film.",
                 "Tedious, clumsy and far too long."]) == 0
    labels = [json.loads(x)["label"] for x in capsys.readouterr().out.strip().splitlines()]
    assert labels == ["fresh", "rotten"]

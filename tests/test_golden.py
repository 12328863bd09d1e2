"""A pinned short loss curve for the LoRA recipe on the tiny model: any change to data order,
initialisation, the LoRA maths, the optimizer groups or the schedule shows up here."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_overrides
from tunelab.cli import main

GOLDEN = [0.68894, 0.69786, 0.67686, 0.70156, 0.69763, 0.69543, 0.71129, 0.69161]  # train losses at steps 1..8, recorded with torch 2.14.1 on CPU


def test_lora_loss_curve_is_pinned(tiny_bert_dir, reviews_jsonl, tmp_path):
    overrides = tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{
        "method.r": 4, "method.target_modules": "[query,value]", "method.dropout": 0.1,
        "train.max_steps": 8, "train.eval_strategy": "no"})
    assert main(["train", *overrides]) == 0
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses == pytest.approx(GOLDEN, abs=2e-4)

"""Fixtures for interop tests: tiny runs trained once per session through the CLI, and peft adapters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from tunelab.cli import main

RUNS: dict[str, dict[str, object]] = {
    # init=random: A and B both non-zero, so the adapter changes the logits before any step.
    "lora": {"method.r": 4, "method.target_modules": "[query,value]", "method.init": "random"},
    "lora_rs_pattern": {
        "method.r": 4, "method.target_modules": "[query,key,value]", "method.use_rslora": "true",
        "method.rank_pattern": r"{'layer\.0\.attention\.self\.query': 2, key: 6}",
        "method.alpha_pattern": "{value: 4}", "method.init": "random",
    },
    "lora_layers": {"method.r": 2, "method.target_modules": "[query,value]", "method.layers": "[1]",
                    "method.init": "random"},
    # DoRA on all linear layers; a high LR moves the magnitudes away from the row norms.
    "dora": {"method.r": 4, "method.use_dora": "true", "method.init": "random", "train.lr": 2e-2},
    "ia3": {"method.name": "ia3", "train.lr": 5e-2},
    # Virtual tokens: prefix tuning's MLP is folded into its table when training ends.
    "prompt_tuning": {"method.name": "prompt_tuning", "method.num_virtual_tokens": 4, "train.lr": 5e-2},
    "prefix_tuning": {"method.name": "prefix_tuning", "method.num_virtual_tokens": 4,
                      "method.projection_size": 16, "train.lr": 3e-3},
    "ptuning_v2": {"method.name": "ptuning_v2", "method.num_virtual_tokens": 3, "train.lr": 1e-2},
    # QLoRA: NF4 base linears (dequantised on export), LoRA with both factors non-zero.
    "qlora": {"method.name": "qlora", "method.r": 4, "method.init": "random"},
    "bitfit": {"method.name": "bitfit", "train.lr": 5e-2},
    "full": {"method.name": "full"},
    "freeze": {"method.name": "freeze", "method.top_layers": 1},
}
"""Run name -> overrides; each trains 2 steps (32 rows, batch 16) on the tiny BERT."""


@pytest.fixture(scope="session")
def make_run(tiny_bert_dir: Path, reviews_jsonl: Path, tmp_path_factory) -> Callable[[str], Path]:
    """``make_run(name)``: the run directory of ``RUNS[name]``, trained on first use."""
    root = tmp_path_factory.mktemp("interop-runs")
    done: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in done:
            extra = {"name": name, "train.epochs": 1, "data.max_train_samples": 32, **RUNS[name]}
            assert main(["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, root, **extra)]) == 0
            done[name] = root / name
        return done[name]

    return make

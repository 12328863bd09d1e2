"""Shared helpers: a padded text batch, logits of a run, of a peft adapter and of a plain model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

TEXTS = ["a wonderful, moving film", "a dull mess", "neither good nor bad, just long and loud and slow", "ok"]


def batch(tokenizer) -> dict[str, torch.Tensor]:
    """TEXTS tokenised with padding (rows of different lengths exercise the attention mask)."""
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def run_logits(run: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits of a run rebuilt by tunelab (and the inputs used)."""
    from tunelab.pipeline import load_run

    loaded = load_run(str(run))
    inputs = batch(loaded.tokenizer)
    return logits(loaded.model, inputs), inputs


def peft_model(base_dir: Path, adapter: Path, num_labels: int) -> nn.Module:
    """``PeftModel.from_pretrained`` on a fresh base classifier (its random head replaced by the adapter's)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=num_labels)
    return PeftModel.from_pretrained(base, adapter)


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def adapter_config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def export_runs(make_run, out: Path, names) -> dict[str, tuple[Path, Path]]:
    """name -> (run, adapter folder): each run of ``names`` exported to ``out/<name>`` through the CLI."""
    from tunelab.cli import main

    folders = {}
    for name in names:
        run = make_run(name)
        assert main(["export", str(run), "--format", "peft", "--out", str(out / name)]) == 0
        folders[name] = (run, out / name)
    return folders


def assert_reexport_identical(folder: Path, run: Path, out: Path, config_keys: tuple[str, ...]) -> dict:
    """Export the imported ``run`` again to ``out``: the same tensors and ``config_keys`` as the
    peft folder it came from; returns the new adapter config."""
    from tunelab.cli import main

    assert main(["export", str(run), "--format", "peft", "--out", str(out)]) == 0
    theirs, ours = adapter_tensors(folder), adapter_tensors(out)
    assert theirs.keys() == ours.keys()
    for key in theirs:
        assert theirs[key].shape == ours[key].shape and torch.equal(theirs[key], ours[key]), key
    before, after = adapter_config(folder), adapter_config(out)
    for key in config_keys:
        assert before.get(key) == after.get(key), key
    return after

"""tunelab export --format merged: a plain transformers folder with the run's logits."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from tunelab.cli import main
from tunelab.pipeline import load_run

from .helpers import logits, run_logits


@pytest.mark.parametrize("name", ["lora", "lora_rs_pattern", "dora", "qlora", "ia3", "bitfit", "full", "freeze"])
def test_merged_model_loads_with_transformers_and_matches_run(name, make_run, tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run, out = make_run(name), tmp_path / "merged"
    assert main(["export", str(run), "--format", "merged", "--out", str(out)]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    ours, inputs = run_logits(run)
    assert (ours - logits(merged, inputs)).abs().max().item() <= 1e-5
    # plain transformers names (the base model's), no adapter tensors
    merged_state = load_file(str(out / "model.safetensors"))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).state_dict()
    assert set(merged_state) == set(base)
    # the trained update was folded into the trunk (not only the head changed)
    assert any(not k.startswith("classifier.") and (merged_state[k] - base[k]).abs().max() > 1e-6 for k in base)
    assert merged.config.id2label == load_run(str(run)).labels.id2label
    assert (out / "tokenizer_config.json").is_file()

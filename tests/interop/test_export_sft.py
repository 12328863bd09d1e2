"""tunelab export --format peft of instruction-tuning runs: task type CAUSAL_LM (from the task's registry
entry), loaded by peft onto AutoModelForCausalLM with the run's logits; tasks peft has no type for refuse."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli
from tests.tasks.test_sft import alpaca_jsonl, sft_args  # noqa: F401 (fixture)
from tunelab.cli import main
from tunelab.pipeline import load_run

from .helpers import adapter_config, logits


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt_tuning"])
def test_sft_export_is_causal_lm_and_peft_reproduces_it(method, tiny_llama_dir, alpaca_jsonl, tmp_path):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert main(sft_args(tiny_llama_dir, alpaca_jsonl, tmp_path, "run", **{
        "method.name": method, "train.lr": 3e-2, "task.eval_generate": 0, "task.eval_baseline": "false"})) == 0
    run, out = tmp_path / "run", tmp_path / "peft"
    assert main(["export", str(run), "--format", "peft", "--out", str(out)]) == 0
    config = adapter_config(out)
    assert config["task_type"] == "CAUSAL_LM" and not config.get("modules_to_save")
    assert "AutoModelForCausalLM" in (out / "README.md").read_text()
    loaded = load_run(str(run))
    inputs = dict(loaded.tokenizer(["Define the noun \"kite\".", "Use the word \"calm\" in a sentence please."],
                                   padding=True, return_tensors="pt"))
    ours = logits(loaded.model, inputs)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    untrained = logits(base, inputs)
    theirs = logits(PeftModel.from_pretrained(base, out), inputs)
    theirs = theirs[:, theirs.shape[1] - ours.shape[1]:]  # peft's causal LM also returns the virtual positions
    assert (ours - untrained).abs().max().item() > 1e-3  # the adapter changed the model
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_image_runs_have_no_peft_task_type(tmp_path):
    """A task whose spec names no peft task type is refused in one line (merged export is the way)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: {name: image_classification}\nmethod: {name: lora}\n")
    (run / "results.json").write_text(json.dumps({"task": "image_classification"}))
    (run / "model").mkdir()
    (run / "model" / "weights.safetensors").write_bytes(b"")  # never read: the task type is checked first
    proc = run_cli("export", str(run), "--format", "peft", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "image_classification" in proc.stderr and "--format merged" in proc.stderr

"""tunelab export --format peft: PeftModel.from_pretrained gives the run's logits; round trips are exact."""

from __future__ import annotations

import pytest
import torch

from tunelab.cli import main
from tunelab.methods.lora import LoRALinear
from tunelab.pipeline import load_run

from .helpers import adapter_config, adapter_tensors, export_runs, logits, peft_model, run_logits

PEFT_RUNS = ["lora", "lora_rs_pattern", "lora_layers", "dora", "ia3"]


def assert_adapter_is_not_trivial(name: str, run) -> None:
    """A test comparing logits proves nothing if the adapter is the identity: check it is not."""
    model = load_run(str(run)).model
    if name == "ia3":
        scales = [p for n, p in model.named_parameters() if n.endswith("ia3_l")]
        assert max((s - 1).abs().max().item() for s in scales) > 1e-3
        return
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert wrapped and all(m.lora_B.weight.abs().max() > 1e-3 for m in wrapped)
    if name == "dora":
        with torch.no_grad():
            moved = max((m.lora_magnitude - m.dora_weight_norm()).abs().max().item() for m in wrapped)
        assert moved > 1e-4  # magnitudes trained away from ||W0 + dW||, so DoRA differs from LoRA


@pytest.fixture(scope="module")
def exported(make_run, tmp_path_factory):
    """name -> (run, exported adapter folder), exported through the CLI."""
    return export_runs(make_run, tmp_path_factory.mktemp("peft-exports"), PEFT_RUNS)


@pytest.mark.parametrize("name", PEFT_RUNS)
def test_peft_loads_export_with_same_logits(name, exported, tiny_bert_dir):
    run, folder = exported[name]
    assert_adapter_is_not_trivial(name, run)
    ours, inputs = run_logits(run)
    theirs = logits(peft_model(tiny_bert_dir, folder, num_labels=2), inputs)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_lora_export_keys_and_config(exported):
    _, folder = exported["lora"]
    tensors, config = adapter_tensors(folder), adapter_config(folder)
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert config["target_modules"] == ["query", "value"]  # the user's entries, as peft reads them the same
    assert config["modules_to_save"] == ["classifier"]
    assert config["r"] == 4 and config["lora_alpha"] == 16
    expected = {f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.weight"
                for i in range(2) for m in ("query", "value") for ab in "AB"}
    assert set(tensors) == expected | {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    assert tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"].shape == (32, 4)
    assert (folder / "tokenizer_config.json").is_file() and (folder / "label_map.json").is_file()


def test_pattern_and_layer_options_exported(exported):
    config = adapter_config(exported["lora_rs_pattern"][1])
    assert config["use_rslora"] is True
    assert config["rank_pattern"] == {r"layer\.0\.attention\.self\.query": 2, "key": 6}
    assert config["alpha_pattern"] == {"value": 4}
    tensors = adapter_tensors(exported["lora_rs_pattern"][1])
    assert tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"].shape == (2, 32)
    assert tensors["base_model.model.bert.encoder.layer.1.attention.self.key.lora_A.weight"].shape == (6, 32)
    layers = adapter_config(exported["lora_layers"][1])
    assert layers["layers_to_transform"] == [1] and layers["target_modules"] == ["query", "value"]
    assert not any(".layer.0." in k for k in adapter_tensors(exported["lora_layers"][1]))


def test_dora_and_ia3_tensor_layout(exported):
    dora = adapter_tensors(exported["dora"][1])
    magnitude = "base_model.model.bert.encoder.layer.0.output.dense.lora_magnitude_vector"
    assert dora[magnitude].shape == (32,) and adapter_config(exported["dora"][1])["use_dora"] is True
    ia3 = adapter_tensors(exported["ia3"][1])
    assert ia3["base_model.model.bert.encoder.layer.0.attention.self.key.ia3_l"].shape == (32, 1)
    assert ia3["base_model.model.bert.encoder.layer.0.output.dense.ia3_l"].shape == (1, 64)  # feed-forward: input
    config = adapter_config(exported["ia3"][1])
    assert config["peft_type"] == "IA3" and config["feedforward_modules"] == ["output.dense"]


@pytest.mark.parametrize("name", PEFT_RUNS)
def test_round_trip_tunelab_peft_tunelab_peft_is_exact(name, exported, tmp_path):
    run, folder = exported[name]
    assert main(["import-peft", str(folder), "--out", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "--format", "peft", "--out", str(tmp_path / "again")]) == 0
    first, second = adapter_tensors(folder), adapter_tensors(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert adapter_config(folder) == adapter_config(tmp_path / "again")
    ours, inputs = run_logits(run)
    assert torch.allclose(run_logits(tmp_path / "run")[0], ours, atol=1e-6, rtol=0)

"""Virtual-token methods and peft: prompt tuning, prefix tuning and P-tuning v2 export as peft's
PROMPT_TUNING / PREFIX_TUNING and load there with the run's logits; peft's adapters import back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunelab.cli import main
from tunelab.pipeline import load_run

from .helpers import (
    adapter_config,
    adapter_tensors,
    assert_reexport_identical,
    export_runs,
    logits,
    peft_model,
    run_logits,
)
from .test_errors import edited, error_of

PROMPT_RUNS = ["prompt_tuning", "prefix_tuning", "ptuning_v2"]
PEFT_TYPE = {"prompt_tuning": "PROMPT_TUNING", "prefix_tuning": "PREFIX_TUNING", "ptuning_v2": "PREFIX_TUNING"}
HEAD = {"base_model.classifier.weight", "base_model.classifier.bias"}  # prompt learning: no ".model."
HIDDEN, LAYERS, HEADS = 32, 2, 2  # tiny_bert_dir


def base_logits(base_dir: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return logits(AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2), inputs)


def run_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "weights.safetensors"))


# ---------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def exported(make_run, tmp_path_factory):
    """name -> (run, exported adapter folder), exported through the CLI."""
    return export_runs(make_run, tmp_path_factory.mktemp("peft-prompt-exports"), PROMPT_RUNS)


@pytest.mark.parametrize("name", PROMPT_RUNS)
def test_peft_loads_export_with_same_logits(name, exported, tiny_bert_dir):
    run, folder = exported[name]
    ours, inputs = run_logits(run)
    assert inputs["attention_mask"].min() == 0 and "token_type_ids" in inputs  # padded rows, segment ids
    theirs = logits(peft_model(tiny_bert_dir, folder, num_labels=2), inputs)
    assert (theirs - base_logits(tiny_bert_dir, inputs)).abs().max() > 1e-3
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", PROMPT_RUNS)
def test_export_keys_and_config(name, exported):
    run, folder = exported[name]
    tensors, config = adapter_tensors(folder), adapter_config(folder)
    n = config["num_virtual_tokens"]
    assert set(tensors) == {"prompt_embeddings"} | HEAD
    assert config["peft_type"] == PEFT_TYPE[name] and config["task_type"] == "SEQ_CLS"
    assert config["modules_to_save"] == ["classifier"]
    assert (config["token_dim"], config["num_layers"], config["num_attention_heads"]) == (HIDDEN, LAYERS, HEADS)
    assert config["num_transformer_submodules"] == 1
    table = next(v for k, v in run_weights(run).items() if not k.startswith("classifier."))
    assert torch.equal(tensors["prompt_embeddings"], table)  # the tunelab table as it is
    if name == "prompt_tuning":
        assert n == 4 and tensors["prompt_embeddings"].shape == (4, HIDDEN)
        assert config["prompt_tuning_init"] == "SAMPLE_VOCAB"  # tunelab's default init: vocab
    else:
        assert tensors["prompt_embeddings"].shape == (n, LAYERS * 2 * HIDDEN)
        assert config["prefix_projection"] is False


def test_prefix_table_order_is_peft_layer_key_value_head(exported, tiny_bert_dir):
    """peft's per-layer keys/values from the exported table are tunelab's, tensor for tensor."""
    for name in ("prefix_tuning", "ptuning_v2"):
        run, folder = exported[name]
        prefix = getattr(load_run(str(run)).model, name)
        cache = peft_model(tiny_bert_dir, folder, num_labels=2).get_prompt(batch_size=2)
        ours = prefix.key_values(2, torch.float32)
        assert len(cache.layers) == len(ours) == LAYERS
        for layer, (keys, values) in enumerate(ours):
            assert keys.shape == (2, HEADS, prefix.num_virtual_tokens, HIDDEN // HEADS)
            assert torch.equal(cache.layers[layer].keys, keys), (name, layer)
            assert torch.equal(cache.layers[layer].values, values), (name, layer)


@pytest.mark.parametrize("name", PROMPT_RUNS)
def test_round_trip_tunelab_peft_tunelab_peft_is_exact(name, exported, tmp_path):
    run, folder = exported[name]
    assert main(["import-peft", str(folder), "--out", str(tmp_path / "run")]) == 0
    method = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method"]
    assert method["name"] == ("prompt_tuning" if name == "prompt_tuning" else "ptuning_v2")
    # The same tensors; a prefix_tuning run's table comes back as ptuning_v2.prefix_table.
    before = {k.replace(f"{name}.", f"{method['name']}.", 1): v for k, v in run_weights(run).items()}
    after = run_weights(tmp_path / "run")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in after)
    assert main(["export", str(tmp_path / "run"), "--format", "peft", "--out", str(tmp_path / "again")]) == 0
    first, second = adapter_tensors(folder), adapter_tensors(tmp_path / "again")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert adapter_config(folder) == adapter_config(tmp_path / "again")
    assert torch.allclose(run_logits(tmp_path / "run")[0], run_logits(run)[0], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- import


def peft_configs():
    """Name -> a peft prompt learning config (built lazily so collection does not need peft)."""
    from peft import PrefixTuningConfig, PromptTuningConfig

    return {
        "prompt": PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5),
        "prefix": PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5),
        "prefix_projection": PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3, prefix_projection=True,
                                                encoder_hidden_size=16),
    }


def make_peft_adapter(base_dir: Path, kind: str, out: Path, seed: int = 2) -> Path:
    """Save a peft prompt learning adapter with random prompt tensors and a perturbed head."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2),
                           peft_configs()[kind])
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def imported(tiny_bert_dir, tmp_path_factory):
    """kind -> (peft folder, imported run), imported through the CLI."""
    root = tmp_path_factory.mktemp("peft-prompt-imports")
    result = {}
    for kind in peft_configs():
        folder = make_peft_adapter(tiny_bert_dir, kind, root / f"peft-{kind}")
        run = root / f"run-{kind}"
        assert main(["import-peft", str(folder), "--out", str(run)]) == 0
        result[kind] = (folder, run)
    return result


@pytest.mark.parametrize("kind", ["prompt", "prefix", "prefix_projection"])
def test_imported_run_gives_peft_logits(kind, imported, tiny_bert_dir):
    folder, run = imported[kind]
    ours, inputs = run_logits(run)
    theirs = logits(peft_model(tiny_bert_dir, folder, num_labels=2), inputs)
    assert (theirs - base_logits(tiny_bert_dir, inputs)).abs().max() > 1e-3
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_imported_config_is_the_equivalent_method(imported):
    method = {k: yaml.safe_load((imported[k][1] / "config.yaml").read_text())["method"] for k in imported}
    assert method["prompt"]["name"] == "prompt_tuning" and method["prompt"]["num_virtual_tokens"] == 5
    assert method["prompt"]["init"] == "random"  # peft's prompt_tuning_init RANDOM
    assert method["prefix"]["name"] == "ptuning_v2" and method["prefix"]["num_virtual_tokens"] == 5
    assert method["prefix_projection"]["name"] == "ptuning_v2"  # the computed table, the MLP is not saved
    results = json.loads((imported["prefix"][1] / "results.json").read_text())
    assert results["imported_from"]["peft_type"] == "PREFIX_TUNING"


@pytest.mark.parametrize("kind", ["prompt", "prefix", "prefix_projection"])
def test_round_trip_peft_tunelab_peft_gives_identical_tensors(kind, imported, tmp_path):
    folder, run = imported[kind]
    after = assert_reexport_identical(folder, run, tmp_path / "out", (
        "peft_type", "num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads",
        "num_transformer_submodules", "prompt_tuning_init"))
    assert after.get("prefix_projection") in (None, False)


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind,changes,expected", [
    ("prompt", {"token_dim": 64}, ("token_dim=64", "hidden size", "32")),
    ("prefix", {"token_dim": 64}, ("token_dim=64", "key/value width", "32")),
    ("prefix", {"num_layers": 3}, ("num_layers=3", "number of layers", "2")),
    ("prefix", {"num_attention_heads": 4}, ("num_attention_heads=4", "key/value heads", "2")),
    ("prompt", {"num_transformer_submodules": 2}, ("num_transformer_submodules=2", "num_transformer_submodules=1")),
    ("prompt", {"num_virtual_tokens": 6}, ("prompt_embeddings has shape (5, 32)", "(6, 32)")),
    ("prefix_projection", {"num_virtual_tokens": 2}, ("(3, 128)", "(2, 128)", "prefix_projection=true")),
    ("prefix", {"init_weights": "zero", "inference_mode": False, "num_virtual_tokens": 5.5},
     ("num_virtual_tokens must be a positive integer",)),
])
def test_import_refuses_what_tunelab_cannot_express(kind, changes, expected, imported, tmp_path, capsys):
    folder = edited(imported[kind][0], tmp_path / "peft", **changes)
    err = error_of(capsys, "import-peft", str(folder), "--out", str(tmp_path / "r"))
    assert "adapter_config.json" in err and all(part in err for part in expected), err
    assert not (tmp_path / "r").exists()


def test_import_refuses_unknown_prompt_options(imported, tmp_path, capsys):
    folder = edited(imported["prompt"][0], tmp_path / "peft", some_new_option=True)
    err = error_of(capsys, "import-peft", str(folder), "--out", str(tmp_path / "r"))
    assert "some_new_option=True has no tunelab equivalent" in err and "num_virtual_tokens" in err


def test_import_needs_the_prompt_tensor(imported, tmp_path, capsys):
    from safetensors.torch import save_file

    folder = shutil.copytree(imported["prefix"][0], tmp_path / "peft")
    tensors = adapter_tensors(folder)
    del tensors["prompt_embeddings"]
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    err = error_of(capsys, "import-peft", str(folder), "--out", str(tmp_path / "r"))
    assert "no 'prompt_embeddings' tensor" in err

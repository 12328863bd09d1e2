"""tunelab import-peft: adapters made by peft become runs whose eval/predict match PeftModel."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tunelab.cli import main

from .helpers import (
    TEXTS,
    assert_reexport_identical,
    batch,
    logits,
    peft_model,
    run_logits,
)


def peft_configs():
    """Name -> a peft config (built lazily so collection does not need peft)."""
    from peft import IA3Config, LoraConfig

    return {
        "lora": LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"],
                           init_lora_weights=False),
        "dora": LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "key", "dense"],
                           use_dora=True, use_rslora=True, init_lora_weights=False,
                           rank_pattern={r"layer\.0\.attention\.self\.query": 2}, alpha_pattern={"key": 3}),
        "lora_regex_layers": LoraConfig(r=3, lora_alpha=5, target_modules=r".*\.attention\.self\.(query|value)",
                                        modules_to_save=["classifier"], init_lora_weights=False),
        "lora_layers": LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["value"], layers_to_transform=[1],
                                  init_lora_weights=False),
        "ia3": IA3Config(task_type="SEQ_CLS"),
    }


def make_peft_adapter(base_dir, kind: str, out, seed: int = 1):
    """Save a peft adapter with non-trivial weights: random LoRA (init False), perturbed vectors and head."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2),
                           peft_configs()[kind])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_l" in name or "lora_magnitude" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def imported(tiny_bert_dir, reviews_jsonl, tmp_path_factory):
    """kind -> (peft folder, imported run), imported through the CLI."""
    root = tmp_path_factory.mktemp("peft-imports")
    result = {}
    for kind in peft_configs():
        folder = make_peft_adapter(tiny_bert_dir, kind, root / f"peft-{kind}")
        run = root / f"run-{kind}"
        assert main(["import-peft", str(folder), "--out", str(run), "--data", str(reviews_jsonl),
                     "--set", "data.label_names=[rotten,fresh]"]) == 0
        result[kind] = (folder, run)
    return result


@pytest.mark.parametrize("kind", ["lora", "dora", "lora_regex_layers", "lora_layers", "ia3"])
def test_imported_run_gives_peft_logits(kind, imported, tiny_bert_dir):
    folder, run = imported[kind]
    ours, inputs = run_logits(run)
    theirs = logits(peft_model(tiny_bert_dir, folder, num_labels=2), inputs)
    from transformers import AutoModelForSequenceClassification

    base = logits(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2), inputs)
    assert (theirs - base).abs().max() > 1e-3  # the adapter changes the model, so the match means something
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_predict_and_eval_on_imported_run(imported, tiny_bert_dir, reviews_jsonl, capsys):
    folder, run = imported["dora"]
    assert main(["predict", str(run), *TEXTS]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    model = peft_model(tiny_bert_dir, folder, num_labels=2)
    from transformers import AutoTokenizer

    probs = torch.softmax(logits(model, batch(AutoTokenizer.from_pretrained(tiny_bert_dir))), -1)
    for row, p in zip(rows, probs):
        assert row["probabilities"]["rotten"] == pytest.approx(p[0].item(), abs=1e-5)
        assert row["probabilities"]["fresh"] == pytest.approx(p[1].item(), abs=1e-5)
    assert main(["eval", str(run)]) == 0  # the run's own data source (--data at import)
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0


def test_imported_config_is_the_equivalent_method(imported):
    cfg = {k: yaml.safe_load((imported[k][1] / "config.yaml").read_text())["method"] for k in imported}
    assert cfg["lora"]["name"] == "lora" and cfg["lora"]["r"] == 4 and cfg["lora"]["alpha"] == 8
    assert sorted(cfg["lora"]["target_modules"]) == ["query", "value"]  # peft keeps them as a set
    assert cfg["lora"]["init"] == "random"  # peft's init_lora_weights=False
    assert cfg["dora"]["use_dora"] and cfg["dora"]["use_rslora"]
    assert cfg["dora"]["rank_pattern"] == {r"layer\.0\.attention\.self\.query": 2}
    assert cfg["lora_regex_layers"]["target_modules"] == r"re:.*\.attention\.self\.(query|value)"
    assert cfg["lora_layers"]["layers"] == [1]
    assert cfg["ia3"]["name"] == "ia3" and cfg["ia3"]["feedforward_modules"] == ["output.dense"]
    run = imported["lora"][1]
    assert json.loads((run / "label_map.json").read_text())["id2label"] == {"0": "rotten", "1": "fresh"}
    assert json.loads((run / "base_fingerprint.json").read_text())["fingerprint"]
    assert json.loads((run / "results.json").read_text())["imported_from"]["peft_type"] == "LORA"


@pytest.mark.parametrize("kind", ["lora", "dora", "lora_regex_layers", "lora_layers", "ia3"])
def test_round_trip_peft_tunelab_peft_gives_identical_tensors(kind, imported, tmp_path):
    folder, run = imported[kind]
    assert_reexport_identical(folder, run, tmp_path / "out", (
        "peft_type", "r", "lora_alpha", "use_dora", "use_rslora", "rank_pattern", "alpha_pattern",
        "feedforward_modules"))


def test_labels_default_to_ids_and_regression_head(tiny_bert_dir, tmp_path):
    """No label names anywhere: "0".."K-1"; a one-output head imports as a regression run."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    for labels in (3, 1):
        model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=labels),
                               LoraConfig(task_type="SEQ_CLS", target_modules=["query"], init_lora_weights=False))
        model.save_pretrained(tmp_path / f"peft{labels}")
        assert main(["import-peft", str(tmp_path / f"peft{labels}"), "--out", str(tmp_path / f"run{labels}")]) == 0
        ours, inputs = run_logits(tmp_path / f"run{labels}")
        assert ours.shape[-1] == labels
        theirs = logits(peft_model(tiny_bert_dir, tmp_path / f"peft{labels}", labels), inputs)
        assert (ours - theirs).abs().max() <= 1e-5
    names = json.loads((tmp_path / "run3" / "label_map.json").read_text())["id2label"]
    assert names == {"0": "0", "1": "1", "2": "2"}
    assert yaml.safe_load((tmp_path / "run1" / "config.yaml").read_text())["task"]["name"] == "regression"

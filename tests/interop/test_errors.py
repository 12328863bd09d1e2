"""Bad input to export / import-peft: one clear line, exit code 2, nothing destroyed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tunelab.cli import main


def error_of(capsys, *argv: str) -> str:
    """Run the CLI in-process, expect exit code 2 and one error line; return it."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tunelab: error: "), err
    return err


def with_methods(run: Path, dest: Path, method: dict, extra: list[dict] | None = None) -> Path:
    """A copy of a finished run whose config names other methods (refusals happen before loading)."""
    shutil.copytree(run, dest)
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    cfg["method"], cfg["extra_methods"] = method, extra or []
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def peft_lora(tiny_bert_dir, tmp_path_factory) -> Path:
    """A small peft LoRA adapter (SEQ_CLS, 2 labels) on the tiny BERT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    out = tmp_path_factory.mktemp("peft-errors") / "lora"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"])).save_pretrained(out)
    return out


def edited(folder: Path, dest: Path, **changes) -> Path:
    """A copy of a peft folder with some adapter_config.json fields changed."""
    shutil.copytree(folder, dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    config.update(changes)
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


# ---------------------------------------------------------------------------- export


def test_export_needs_a_finished_run(make_run, tmp_path, capsys):
    err = error_of(capsys, "export", str(tmp_path), "--format", "peft", "--out", str(tmp_path / "o"))
    assert "not a tunelab run directory" in err
    unfinished = shutil.copytree(make_run("lora"), tmp_path / "unfinished")
    (unfinished / "results.json").unlink()
    err = error_of(capsys, "export", str(unfinished), "--format", "merged", "--out", str(tmp_path / "o"))
    assert "has not finished" in err and "--resume" in err
    assert not (tmp_path / "o").exists()


def test_unknown_format(make_run, tmp_path, capsys):
    err = error_of(capsys, "export", str(make_run("lora")), "--format", "onnx", "--out", str(tmp_path / "o"))
    assert "unknown export format 'onnx'" in err and "merged, peft" in err


def test_non_empty_out_is_refused_and_kept_unless_overwrite(make_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    err = error_of(capsys, "export", str(make_run("lora")), "--format", "peft", "--out", str(out))
    assert "not empty" in err and "--overwrite" in err
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    assert main(["export", str(make_run("lora")), "--format", "peft", "--out", str(out), "--overwrite"]) == 0
    assert (out / "adapter_model.safetensors").is_file() and not (out / "precious.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_out_may_not_replace_the_run(make_run, capsys):
    run = make_run("lora")
    err = error_of(capsys, "export", str(run), "--format", "merged", "--out", str(run), "--overwrite")
    assert "would replace" in err
    err = error_of(capsys, "export", str(run), "--format", "merged", "--out", str(run.parent), "--overwrite")
    assert "would replace" in err
    assert (run / "results.json").is_file() and (run / "model" / "weights.safetensors").is_file()


def test_out_may_not_replace_the_base_model(make_run, tiny_bert_dir, capsys):
    err = error_of(capsys, "export", str(make_run("lora")), "--format", "merged", "--out", str(tiny_bert_dir),
                   "--overwrite")
    assert "would replace" in err and (tiny_bert_dir / "config.json").is_file()


@pytest.mark.parametrize("method,extra,merged_hint", [
    ({"name": "bitfit"}, [], True),
    ({"name": "full"}, [], True),
    ({"name": "freeze", "top_layers": 1}, [], True),
    ({"name": "lora", "r": 4}, [{"name": "bitfit"}], True),
    ({"name": "adapter", "bottleneck": 8}, [], False),
    ({"name": "parallel_adapter", "bottleneck": 8}, [], False),
])
def test_methods_without_peft_equivalent(method, extra, merged_hint, make_run, tmp_path, capsys):
    run = with_methods(make_run("lora"), tmp_path / "run", method, extra)
    err = error_of(capsys, "export", str(run), "--format", "peft", "--out", str(tmp_path / "o"))
    assert "no peft equivalent" in err and "ia3, lora" in err and method["name"] in err
    assert ("--format merged" in err) == merged_hint


@pytest.mark.parametrize("name", ["adapter", "parallel_adapter"])
def test_bottleneck_adapters_cannot_merge(name, make_run, tmp_path, capsys):
    run = with_methods(make_run("lora"), tmp_path / "run", {"name": name, "bottleneck": 8})
    err = error_of(capsys, "export", str(run), "--format", "merged", "--out", str(tmp_path / "o"))
    assert f"'{name}', which cannot be merged" in err and "nonlinear" in err


def test_cli_subprocess_prints_one_line_and_exits_2(make_run, tmp_path):
    proc = run_cli("export", str(make_run("lora")), "--format", "gguf", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("tunelab: error: unknown export format 'gguf'")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- import


def test_import_needs_an_adapter_folder(tmp_path, tiny_bert_dir, capsys):
    err = error_of(capsys, "import-peft", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert "does not exist" in err
    (tmp_path / "empty").mkdir()
    err = error_of(capsys, "import-peft", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))
    assert "has no adapter_config.json" in err


def test_import_refuses_pickled_weights(peft_lora, tmp_path, capsys):
    folder = shutil.copytree(peft_lora, tmp_path / "bin")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    err = error_of(capsys, "import-peft", str(folder), "--out", str(tmp_path / "r"))
    assert "adapter_model.bin" in err and "safe_serialization" in err


@pytest.mark.parametrize("changes,expected", [
    ({"bias": "all"}, "bias='all'"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out=True"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
    ({"use_qalora": True}, "use_qalora=True"),
    ({"exclude_modules": ["key"]}, "exclude_modules"),
    ({"peft_type": "P_TUNING"}, "peft_type 'P_TUNING'"),
    ({"task_type": "CAUSAL_LM"}, "task_type 'CAUSAL_LM'"),
])
def test_import_refuses_options_tunelab_lacks(changes, expected, peft_lora, tmp_path, capsys):
    folder = edited(peft_lora, tmp_path / "peft", **changes)
    err = error_of(capsys, "import-peft", str(folder), "--out", str(tmp_path / "r"))
    assert expected in err
    assert not (tmp_path / "r").exists()


def test_import_refuses_lora_on_embeddings(tiny_bert_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=["word_embeddings", "query"],
                                     use_dora=True)).save_pretrained(tmp_path / "peft")
    err = error_of(capsys, "import-peft", str(tmp_path / "peft"), "--out", str(tmp_path / "r"))
    assert "word_embeddings" in err and "embedding" in err and "nn.Linear" in err


def test_import_onto_a_base_that_does_not_fit(tiny_bert_dir, tmp_path, capsys):
    """An adapter made on a wider BERT, imported with --model pointing at the tiny one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    wide = tmp_path / "wide-bert"
    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.hidden_size, config.intermediate_size = 48, 96
    BertModel(config).save_pretrained(wide)
    model = AutoModelForSequenceClassification.from_pretrained(wide, num_labels=2)
    get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"])).save_pretrained(
        tmp_path / "peft")
    err = error_of(capsys, "import-peft", str(tmp_path / "peft"), "--model", str(tiny_bert_dir),
                   "--out", str(tmp_path / "r"))
    assert "adapter tensor base_model.model." in err and "has shape" in err and "different base model" in err
    assert not (tmp_path / "r").exists()


def test_import_needs_the_trained_head(tiny_bert_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    get_peft_model(model, LoraConfig(r=2, target_modules=["query"])).save_pretrained(tmp_path / "peft")
    err = error_of(capsys, "import-peft", str(tmp_path / "peft"), "--out", str(tmp_path / "r"))
    assert "no trained task head" in err and "classifier.weight" in err and "modules_to_save" in err


def test_import_overrides_and_out_are_checked(peft_lora, tmp_path, capsys):
    err = error_of(capsys, "import-peft", str(peft_lora), "--out", str(tmp_path / "r"), "--set", "method.r=8")
    assert "only data.*, train.* and seed" in err
    err = error_of(capsys, "import-peft", str(peft_lora), "--out", str(tmp_path / "r"),
                   "--set", "data.label_names=[a,b,c]")
    assert "3 names" in err and "2 outputs" in err
    err = error_of(capsys, "import-peft", str(peft_lora), "--out", str(peft_lora.parent), "--overwrite")
    assert "would replace" in err and (peft_lora / "adapter_config.json").is_file()


def test_eval_of_import_without_data_asks_for_it(peft_lora, tmp_path, capsys):
    assert main(["import-peft", str(peft_lora), "--out", str(tmp_path / "r")]) == 0
    err = error_of(capsys, "eval", str(tmp_path / "r"))
    assert "--data" in err

"""End to end on a tiny model: train -> run directory -> eval -> predict, all from the run dir."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import run_cli, tiny_overrides
from tunelab.cli import main


@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, reviews_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = run_cli("train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, out, **{"method.r": 4, "method.target_modules": "[query,value]"}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "run", proc


def test_results_break_the_peak_memory_down_by_stage(lora_run):
    run, _ = lora_run
    results = json.loads((run / "results.json").read_text())
    memory = results["memory_mb"]
    assert set(memory) == {"start", "data", "model", "peak_before_training", "peak_training", "peak"}
    assert 0 < memory["start"] <= memory["peak_before_training"] <= memory["peak_training"] <= memory["peak"]
    assert memory["model"] <= memory["peak_before_training"] and abs(memory["peak"] - results["peak_memory_mb"]) < 50


def test_run_directory_contract(lora_run):
    run, proc = lora_run
    assert proc.stdout.strip().splitlines()[-1] == str(run)  # the last line is the run directory
    for name in ("config.yaml", "metrics.jsonl", "results.json", "label_map.json", "base_fingerprint.json",
                 "README.md", "model/weights.safetensors", "model/tokenizer_config.json"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    assert sum(map(sum, results["test"]["confusion_matrix"])) == 24  # 10% of 240 rows
    # LoRA r=4 on query+value of 2 layers (hidden 32) + classifier (32*2 + 2)
    assert results["params"]["trainable"] == 2 * 2 * (4 * 32 * 2) + 66
    assert results["samples_per_second"] > 0 and results["peak_memory_mb"] > 0
    assert results["epochs"] == 2 and results["global_step"] == 24
    weights = load_file(str(run / "model/weights.safetensors"))
    assert all("lora_" in k or k.startswith("classifier.") for k in weights)  # adapter-only
    assert sum(t.numel() for t in weights.values()) == results["params"]["trainable"]
    labels = json.loads((run / "label_map.json").read_text())
    assert labels["id2label"] == {"0": "rotten", "1": "fresh"} or set(labels["label2id"]) == {"rotten", "fresh"}


def test_metrics_log_has_train_and_eval_events(lora_run):
    run, _ = lora_run
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval" and e["split"] == "validation"]
    assert len(train) == 24 and len(evals) == 2  # 192 rows / 16 = 12 steps x 2 epochs, eval per epoch
    assert all(e["loss"] > 0 and e["lr"] >= 0 for e in train)
    assert any(e["event"] == "eval" and e["split"] == "test" for e in events)


def test_eval_from_run_dir_reproduces_test_metrics(lora_run, capsys):
    run, _ = lora_run
    assert main(["eval", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    results = json.loads((run / "results.json").read_text())
    assert metrics["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert metrics["confusion_matrix"] == results["test"]["confusion_matrix"]


def test_predict_texts_and_file(lora_run, reviews_jsonl, tmp_path, capsys):
    run, _ = lora_run
    assert main(["predict", str(run), "a wonderful, moving film", "a dull mess"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["text"] for x in lines] == ["a wonderful, moving film", "a dull mess"]
    assert all(x["label"] in ("rotten", "fresh") and 0.5 <= x["score"] <= 1 for x in lines)
    assert all(sum(x["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for x in lines)
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(run), "--file", str(reviews_jsonl), "--out", str(out)]) == 0
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(preds) == 240 and all("label" in p and "text" in p for p in preds)


def test_existing_run_is_refused_and_kept(lora_run, tiny_bert_dir, reviews_jsonl, capsys):
    run, _ = lora_run
    before = (run / "results.json").read_text()
    code = main(["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, run.parent)])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (run / "results.json").read_text() == before


@pytest.mark.parametrize("method,extra", [
    ("full", {}), ("bitfit", {}), ("freeze", {"method.top_layers": 1}), ("ia3", {}),
    ("adapter", {"method.bottleneck": 8}), ("parallel_adapter", {"method.bottleneck": 8}),
    ("lora", {"method.use_dora": "true", "method.use_rslora": "true"}),
])
def test_other_methods_train_and_reload(method, extra, tiny_bert_dir, reviews_jsonl, tmp_path, capsys):
    overrides = tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{"method.name": method, **extra,
                                                                           "train.epochs": 1})
    assert main(["train", *overrides]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(results["test"]["accuracy"])


def test_regression_task(tiny_bert_dir, tmp_path, capsys):
    data = tmp_path / "scores.csv"
    rows = ["text,score"] + [f"\"review number {i} {'great' if i % 2 else 'bad'}\",{(i % 2) * 4 + 0.5}"
                             for i in range(60)]
    data.write_text("\n".join(rows) + "\n")
    overrides = tiny_overrides(tiny_bert_dir, data, tmp_path, **{"task.name": "regression",
                                                                  "data.label_column": "score"})
    assert main(["train", *overrides]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["test"]) == {"mae", "mse", "rmse", "r2"}
    assert results["test"]["rmse"] == pytest.approx(results["test"]["mse"] ** 0.5)
    assert results["best_validation"]["metric"] == "rmse"


def test_text_pair_multiclass(tiny_bert_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    labels = ["entail", "neutral", "contradict"]
    data.write_text("".join(json.dumps({"premise": f"sentence {i}", "hypothesis": f"other {i % 7}",
                                        "label": labels[i % 3]}) + "\n" for i in range(90)))
    overrides = tiny_overrides(tiny_bert_dir, data, tmp_path, **{"data.text_column": "premise",
                                                                  "data.text_pair_column": "hypothesis",
                                                                  "train.epochs": 1})
    assert main(["train", *overrides]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["test"]["confusion_matrix"]) == 3 and "f1_macro" in results["test"]
    assert "f1" not in results["test"]  # binary F1 only for two classes

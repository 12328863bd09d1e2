"""Instruction tuning end to end on a tiny random Llama with SmolLM2's tokenizer: every method,
packing, gradient checkpointing, evaluation, generation and chat from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import LLAMA_METHODS, run_cli, write_instruct_jsonl
from tunelab.cli import main


@pytest.fixture(scope="module")
def alpaca_jsonl(tmp_path_factory) -> Path:
    """80 real WordNet instruction rows (alpaca format) as a jsonl file."""
    return write_instruct_jsonl(tmp_path_factory.mktemp("sft-data") / "words.jsonl", 80)


def sft_args(model: Path, data: Path, out: Path, name: str, **extra: object) -> list[str]:
    base = {"task.name": "sft", "model.name_or_path": str(model), "data.source": str(data),
            "output_dir": str(out), "name": name, "train.epochs": 1, "train.batch_size": 8,
            "train.eval_batch_size": 16, "data.max_length": 64, "data.max_train_samples": 32,
            "task.eval_generate": 4, "task.max_new_tokens": 6, "train.log_steps": 1, "train.lr": 5e-3}
    base.update(extra)
    return ["train", *[f"{k}={v}" for k, v in base.items()]]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def events(run: Path, **match) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir, alpaca_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft-runs")
    assert main(sft_args(tiny_llama_dir, alpaca_jsonl, out, "lora", **{"method.name": "lora", "train.epochs": 2})) == 0
    return out / "lora"


def test_run_records_loss_perplexity_generation_metrics_and_baseline(lora_run) -> None:
    r = results(lora_run)
    assert r["task"] == "sft"
    for key in ("loss", "perplexity", "exact_match", "rouge_l", "bleu"):
        assert key in r["test"] and key in r["baseline"]
    assert r["test"]["count"] == 4
    assert abs(r["test"]["perplexity"] - 2.718281828 ** r["test"]["loss"]) < 1e-6 * r["test"]["perplexity"]
    assert r["train_tokens"] > 0 and r["tokens_per_second"] > 0
    generations = [json.loads(line) for line in (lora_run / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 4 and {"prompt", "reference", "generation"} <= set(generations[0])
    logged = events(lora_run, event="generations", split="test")
    assert len(logged) == 1 and len(logged[0]["samples"]) == 3  # task.log_generations
    assert events(lora_run, event="eval", split="baseline")[0]["step"] == 0
    assert "Before training" in (lora_run / "README.md").read_text()


def test_training_lowers_the_held_out_loss(tiny_llama_dir, alpaca_jsonl, tmp_path) -> None:
    args = sft_args(tiny_llama_dir, alpaca_jsonl, tmp_path, "full",
                    **{"method.name": "full", "train.epochs": 3, "data.max_train_samples": 64, "train.lr": 3e-3})
    assert main(args) == 0
    r = results(tmp_path / "full")
    assert r["test"]["loss"] < r["baseline"]["loss"] - 1.0  # a random model starts near ln(49152) = 10.8


def test_reloaded_run_reproduces_its_test_loss_and_generations(lora_run, capsys) -> None:
    assert main(["eval", str(lora_run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert abs(metrics["loss"] - results(lora_run)["test"]["loss"]) <= 1e-5
    first = json.loads((lora_run / "generations.jsonl").read_text().splitlines()[0])
    assert metrics["samples"][0]["generation"] == first["generation"]


METHODS = LLAMA_METHODS


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_saves_and_reloads(method, tiny_llama_dir, biased_llama_dir, alpaca_jsonl, tmp_path,
                                               capsys) -> None:
    name = "lora" if method == "dora" else method
    model = biased_llama_dir if method == "bitfit" else tiny_llama_dir
    extra = {"method.name": name, **METHODS[method], "task.eval_baseline": "false", "data.max_train_samples": 16,
             "task.eval_generate": 2}
    assert main(sft_args(model, alpaca_jsonl, tmp_path, method, **extra)) == 0
    r = results(tmp_path / method)
    assert r["method"] == [name] and 0 < r["params"]["trainable"] <= r["params"]["total"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / method)]) == 0
    assert abs(json.loads(capsys.readouterr().out)["loss"] - r["test"]["loss"]) <= 1e-4


def test_gradient_checkpointing_gives_the_same_training(tiny_llama_dir, alpaca_jsonl, tmp_path) -> None:
    losses = {}
    for flag in ("false", "true"):
        args = sft_args(tiny_llama_dir, alpaca_jsonl, tmp_path, f"gc-{flag}", **{
            "train.gradient_checkpointing": flag, "task.eval_generate": 0, "task.eval_baseline": "false"})
        assert main(args) == 0
        losses[flag] = [e["loss"] for e in events(tmp_path / f"gc-{flag}", event="train")]
    assert len(losses["true"]) == 4
    assert max(abs(a - b) for a, b in zip(losses["false"], losses["true"])) <= 1e-4


def test_packing_trains_fewer_fuller_rows(tiny_llama_dir, alpaca_jsonl, tmp_path) -> None:
    for pack in ("false", "true"):
        args = sft_args(tiny_llama_dir, alpaca_jsonl, tmp_path, f"pack-{pack}", **{
            "task.packing": pack, "data.max_length": 128, "task.eval_generate": 0, "task.eval_baseline": "false"})
        assert main(args) == 0
    plain, packed = results(tmp_path / "pack-false"), results(tmp_path / "pack-true")
    assert plain["train_tokens"] == packed["train_tokens"]  # the same tokens ...
    assert packed["train_samples"] < plain["train_samples"]  # ... in fewer rows
    assert packed["global_step"] < plain["global_step"]


def test_packing_with_virtual_tokens_is_refused(tiny_llama_dir, alpaca_jsonl, tmp_path, capsys) -> None:
    args = sft_args(tiny_llama_dir, alpaca_jsonl, tmp_path, "bad", **{"task.packing": "true",
                                                                      "method.name": "prompt_tuning"})
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "task.packing cannot be used with method 'prompt_tuning'" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_rows_of_the_wrong_format_stop_before_the_run_dir(tiny_llama_dir, tmp_path, capsys) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "Say hi.", "output": "hi"}\n{"instruction": "Say bye."}\n')
    assert main(sft_args(tiny_llama_dir, data, tmp_path, "bad", **{"task.format": "alpaca"})) == 2
    assert f"line 2 of file {data}: 'output' is empty" in capsys.readouterr().err  # as the user counts
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------- generate and chat

def test_generate_prompt_file_and_out(lora_run, tmp_path, capsys) -> None:
    first = json.loads((lora_run / "generations.jsonl").read_text().splitlines()[0])
    prompts = tmp_path / "prompts.jsonl"
    user = first["prompt"].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    prompts.write_text(json.dumps({"instruction": user, "id": 7}) + "\n" + json.dumps({"prompt": "Hello"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(lora_run), "--file", str(prompts), "--out", str(out), "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["id"] == 7 and rows[0]["generation"] == first["generation"]  # same prompt, greedy
    capsys.readouterr()
    assert main(["generate", str(lora_run), "--prompt", user, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == first["generation"].strip()


def test_generate_sampling_options_and_stop_strings(lora_run, capsys) -> None:
    args = ["generate", str(lora_run), "--prompt", "Define the noun \"tree\".", "--max-new-tokens", "12"]
    assert main([*args, "--temperature", "1.5", "--top-k", "50", "--top-p", "0.9", "--seed", "3"]) == 0
    a = capsys.readouterr().out
    assert main([*args, "--temperature", "1.5", "--top-k", "50", "--top-p", "0.9", "--seed", "3"]) == 0
    assert capsys.readouterr().out == a  # seeded
    assert main([*args, "--temperature", "-1"]) == 2
    assert "--temperature" in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["--prompt", "x", "--file", "y.jsonl"], "not both"),
    ([], "not both and not neither"),
    (["--prompt", "x", "--out", "o.jsonl"], "--out goes with --file"),
])
def test_generate_argument_errors(lora_run, argv, fragment, capsys) -> None:
    assert main(["generate", str(lora_run), *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_generate_refuses_a_classification_run_and_bad_rows(lora_run, tiny_bert_dir, reviews_jsonl, tmp_path,
                                                            capsys) -> None:
    from tests.conftest import tiny_overrides

    assert main(["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{"train.epochs": 1})]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompt", "hi"]) == 2
    assert "is a classification run" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "hi"}\n')
    assert main(["generate", str(lora_run), "--file", str(bad)]) == 2
    assert "needs a 'prompt', 'instruction' or 'messages' field" in capsys.readouterr().err


def test_generate_on_a_base_model_folder(tiny_llama_dir, capsys) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["generate", str(tiny_llama_dir), "--prompt", "Hi", "--max-new-tokens", "5", "--raw"]) == 0
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = tok("Hi", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    expected = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert capsys.readouterr().out == expected + "\n"


def test_chat_streams_and_keeps_history(lora_run) -> None:
    proc = run_cli("chat", str(lora_run), "--max-new-tokens", "4", input_text="hello\nagain\n/reset\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("bot> ") == 2 and "(history cleared)" in proc.stdout


def test_examples_that_do_not_fit_are_dropped_and_reported(tiny_llama_dir, alpaca_jsonl, tmp_path, capsys) -> None:
    args = sft_args(tiny_llama_dir, alpaca_jsonl, tmp_path, "drop", **{
        "task.truncation": "drop", "data.max_length": 56, "task.eval_generate": 0, "task.eval_baseline": "false"})
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "left out" in err and "train" in err and "data.max_length=56" in err
    assert results(tmp_path / "drop")["train_samples"] < 32

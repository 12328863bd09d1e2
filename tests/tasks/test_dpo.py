"""The DPO family end to end on a tiny random Llama with SmolLM2's tokenizer (pad == end-of-turn):
step-0 loss ln 2, the adapter-disabled reference, precomputed reference log-probabilities, every
loss and every method, exact resume, and bad input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import LLAMA_METHODS, run_cli, train_and_kill
from tunelab.cli import main


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory) -> Path:
    """48 real pairs of the built-in rt_preferences set."""
    from tunelab.data.builtin import get_builtin_dataset

    rows = get_builtin_dataset("rt_preferences").load()["train"].select(range(48))
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    return path


def dpo_args(model: Path, data: Path, out: Path, name: str, **extra: object) -> list[str]:
    base = {"task.name": "dpo", "model.name_or_path": str(model), "data.source": str(data), "output_dir": str(out),
            "name": name, "train.epochs": 1, "train.batch_size": 8, "train.eval_batch_size": 16,
            "data.max_length": 80, "train.log_steps": 1, "train.lr": 5e-3, "train.warmup_ratio": 0}
    base.update(extra)
    return ["train", *[f"{k}={v}" for k, v in base.items()]]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def train_events(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "train"]


def test_step_zero_sigmoid_loss_is_ln2_and_training_separates_the_pairs(tiny_llama_dir, pairs_jsonl, tmp_path) -> None:
    assert main(dpo_args(tiny_llama_dir, pairs_jsonl, tmp_path, "lora", **{"train.epochs": 4})) == 0
    first = train_events(tmp_path / "lora")[0]
    assert abs(first["loss"] - math.log(2)) <= 1e-6  # policy == reference: every log-ratio is exactly 0
    assert first["chosen_reward"] == first["rejected_reward"] == 0.0
    r = results(tmp_path / "lora")
    assert r["task"] == "dpo"
    for key in ("loss", "reward_accuracy", "chosen_reward", "rejected_reward", "reward_margin", "logp_chosen",
                "logp_rejected"):
        assert key in r["test"]
    last = train_events(tmp_path / "lora")[-1]
    assert last["loss"] < math.log(2) and last["reward_margin"] > 0  # it learns to prefer the chosen responses


def test_lora_reference_is_the_base_without_a_copy_and_full_gets_a_frozen_copy(tiny_llama_dir) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tunelab.data.preference_tokens import PairCollator, encode_pair, render_response
    from tunelab.data.templates import Template
    from tunelab.methods import apply_methods
    from tunelab.methods.full import FullConfig
    from tunelab.methods.lora import LoRAConfig
    from tunelab.tasks.dpo import reference_logps
    from tunelab.train.reference import Reference

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    template = Template.resolve("chat", tok)
    prompt, chosen = render_response(template, tok, [{"role": "user", "content": "Hi"}], "Hello there.")
    _, rejected = render_response(template, tok, [{"role": "user", "content": "Hi"}], "Go away.")
    batch = PairCollator(tok.pad_token_id)([encode_pair(prompt, chosen, rejected, tok, template, 64)])
    expected = reference_logps(base, batch)

    policy = copy.deepcopy(base)
    apply_methods(policy, [LoRAConfig(init="random")])  # B != 0: the policy differs from the base
    ref = Reference(policy)
    assert ref.kind == "disabled" and ref.copy is None
    assert not torch.allclose(reference_logps(policy, batch), expected)
    assert torch.equal(ref(policy, lambda net: reference_logps(net, batch)), expected)
    assert not torch.allclose(reference_logps(policy, batch), expected)  # the adapters are back afterwards

    full = copy.deepcopy(base)
    apply_methods(full, [FullConfig()])
    ref = Reference(full)
    assert ref.kind == "copy" and ref.copy is not None
    with torch.no_grad():
        next(full.parameters()).add_(1.0)  # training the policy does not move its reference
    assert torch.equal(ref(full, lambda net: reference_logps(net, batch)), expected)


def test_precomputed_reference_gives_the_same_training(tiny_llama_dir, pairs_jsonl, tmp_path) -> None:
    assert main(dpo_args(tiny_llama_dir, pairs_jsonl, tmp_path, "live")) == 0
    assert main(dpo_args(tiny_llama_dir, pairs_jsonl, tmp_path, "pre", **{"task.precompute_reference": "true"})) == 0
    live, pre = results(tmp_path / "live")["test"], results(tmp_path / "pre")["test"]
    assert abs(live["loss"] - pre["loss"]) <= 1e-4 and abs(live["reward_margin"] - pre["reward_margin"]) <= 1e-4


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo"])
def test_every_loss_trains_and_reloads(loss, tiny_llama_dir, pairs_jsonl, tmp_path, capsys) -> None:
    extra = {"task.loss": loss, "data.max_train_samples": 16, "task.label_smoothing": 0.1 if loss == "robust" else 0}
    assert main(dpo_args(tiny_llama_dir, pairs_jsonl, tmp_path, loss, **extra)) == 0
    r = results(tmp_path / loss)
    assert math.isfinite(r["test"]["loss"])
    capsys.readouterr()
    assert main(["eval", str(tmp_path / loss)]) == 0
    assert abs(json.loads(capsys.readouterr().out)["loss"] - r["test"]["loss"]) <= 1e-4


METHODS = LLAMA_METHODS


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_saves_and_reloads(method, tiny_llama_dir, biased_llama_dir, pairs_jsonl, tmp_path,
                                               capsys) -> None:
    from tunelab.methods import METHODS as REGISTRY

    assert set(METHODS) <= set(REGISTRY) | {"dora"}
    name = "lora" if method == "dora" else method
    extra = {"method.name": name, **METHODS[method], "data.max_train_samples": 16}
    model = biased_llama_dir if method == "bitfit" else tiny_llama_dir
    assert main(dpo_args(model, pairs_jsonl, tmp_path, method, **extra)) == 0
    r = results(tmp_path / method)
    assert r["method"] == [name] and 0 < r["params"]["trainable"] <= r["params"]["total"]
    first = train_events(tmp_path / method)[0]
    assert abs(first["loss"] - math.log(2)) <= 1e-5, "policy and reference differ before the first update"
    capsys.readouterr()
    assert main(["eval", str(tmp_path / method)]) == 0
    assert abs(json.loads(capsys.readouterr().out)["loss"] - r["test"]["loss"]) <= 1e-4


def test_killed_dpo_run_resumes_to_identical_weights(tiny_llama_dir, pairs_jsonl, tmp_path) -> None:
    from safetensors.torch import load_file

    extra = {"train.epochs": 12, "train.save_steps": 2, "method.dropout": 0.1, "data.max_train_samples": 24,
             "train.eval_strategy": "no", "train.log_steps": 5}
    straight = run_cli(*dpo_args(tiny_llama_dir, pairs_jsonl, tmp_path / "a", "run", **extra))
    assert straight.returncode == 0, straight.stderr[-2000:]
    run_b = tmp_path / "b" / "run"
    train_and_kill(dpo_args(tiny_llama_dir, pairs_jsonl, tmp_path / "b", "run", **extra)[1:], run_b, at_step=14)
    assert not (run_b / "results.json").exists(), "the run finished before it could be killed"
    resumed = run_cli("train", "--resume", str(run_b))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "a" / "run" / "model" / "weights.safetensors"))
    b = load_file(str(run_b / "model" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_identical_pairs_are_skipped_and_counted(tiny_llama_dir, pairs_jsonl, tmp_path) -> None:
    rows = [json.loads(line) for line in pairs_jsonl.read_text().splitlines()][:24]
    rows += [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": " Hi! "}] * 3
    data = _write(tmp_path / "dup.jsonl", rows)
    proc = run_cli(*dpo_args(tiny_llama_dir, data, tmp_path, "dup", **{"train.max_steps": 1}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped" in proc.stderr and "identical" in proc.stderr


@pytest.mark.parametrize("rows,fragment", [
    ([{"prompt": "Hi", "chosen": "Hello"}] * 4, "'rejected'"),
    ([{"prompt": "Hi", "chosen": "Hello", "rejected": ""}] * 4, "row 1"),
])
def test_bad_pairs_are_refused_in_one_line(rows, fragment, tiny_llama_dir, tmp_path) -> None:
    data = _write(tmp_path / "bad.jsonl", rows)
    proc = run_cli(*dpo_args(tiny_llama_dir, data, tmp_path, "bad"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_a_long_prompt_is_cut_from_the_left_and_the_end_of_turn_is_kept(tiny_llama_dir) -> None:
    from transformers import AutoTokenizer

    from tunelab.data.preference_tokens import encode_pair, render_response
    from tunelab.data.templates import Template

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    template = Template.resolve("chat", tok)
    messages = [{"role": "user", "content": "word " * 300}]
    prompt, chosen = render_response(template, tok, messages, "A fine film. " * 40)
    _, rejected = render_response(template, tok, messages, "Bad.")
    row = encode_pair(prompt, chosen, rejected, tok, template, 64)
    for side in ("chosen", "rejected"):
        ids, mask = row[f"input_ids_{side}"], row[f"response_mask_{side}"]
        assert len(ids) <= 64 and ids[-1] == tok.eos_token_id and mask[-1] == 1
        prompt_part = [t for t, m in zip(ids, mask) if not m]
        assert tok.decode(prompt_part).endswith("<|im_start|>assistant\n")  # the generation prompt survives


def test_a_judge_scores_sampled_answers_before_and_after_training(tiny_llama_dir, pairs_jsonl, tmp_path,
                                                                  capsys) -> None:
    extra = {"task.judge": "tests.tasks.rl_reward_fns:length", "task.max_new_tokens": 6, "data.max_train_samples": 16,
             "train.max_steps": 2}
    assert main(dpo_args(tiny_llama_dir, pairs_jsonl, tmp_path, "judged", **extra)) == 0
    r = results(tmp_path / "judged")
    for key in ("judge_mean", "judge_median", "kl", "response_length", "ended_fraction"):
        assert isinstance(r["test"][key], float), key
    assert "loss" in r["test"] and r["baseline"]["kl"] == 0.0 and "judge_mean" in r["baseline"]
    assert r["test"]["judged_prompts"] == len({json.dumps(g["prompt"]) for g in
                                                map(json.loads, (tmp_path / "judged" / "generations.jsonl")
                                                    .read_text().splitlines())})
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "judged")]) == 0
    assert json.loads(capsys.readouterr().out)["judge_mean"] == pytest.approx(r["test"]["judge_mean"], abs=1e-6)


def test_judged_prompts_can_come_from_another_prompt_source(tiny_llama_dir, pairs_jsonl, tmp_path) -> None:
    extra = {"task.judge": "tests.tasks.rl_reward_fns:length", "task.judge_prompts": "rt_prompts",
             "task.max_new_tokens": 4, "data.max_train_samples": 8, "train.max_steps": 1, "data.max_eval_samples": 2,
             "task.log_generations": 200}
    assert main(dpo_args(tiny_llama_dir, pairs_jsonl, tmp_path, "rtp", **extra)) == 0
    r = results(tmp_path / "rtp")
    assert r["test"]["judged_prompts"] == 2  # rt_prompts' test split, cut by data.max_eval_samples
    gens = [json.loads(line) for line in (tmp_path / "rtp" / "generations.jsonl").read_text().splitlines()]
    assert all(g["prompt"].startswith("Write a short review of the movie") for g in gens)

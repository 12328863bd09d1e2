"""Reward modelling on tiny random models: the pairwise loss (against TRL's own loss code), where a
causal LM's reward is read (the last real token, with pad == eos), training end to end with every
method, reloading, ``tunelab score`` and the one-line errors."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import run_cli
from tunelab.cli import main
from tunelab.methods import METHODS
from tunelab.tasks import get_task
from tunelab.tasks.reward import Encoder, pad_sequences, pair_metrics, pairwise_loss, sequence_rewards


@pytest.fixture(scope="module")
def prefs_jsonl(tmp_path_factory) -> Path:
    """60 real preference pairs from the built-in rt_preferences (positive review chosen)."""
    from tunelab.data.builtin import get_builtin_dataset

    ds = get_builtin_dataset("rt_preferences").load()["train"].shuffle(seed=0).select(range(60))
    path = tmp_path_factory.mktemp("reward-data") / "prefs.jsonl"
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in ds))
    return path


def reward_args(model: Path, data: Path, out: Path, name: str, **extra: object) -> list[str]:
    base = {"task.name": "reward", "model.name_or_path": str(model), "data.source": str(data),
            "output_dir": str(out), "name": name, "train.max_steps": 3, "train.batch_size": 8,
            "train.eval_batch_size": 16, "data.max_length": 48, "train.log_steps": 1, "train.lr": 5e-3}
    base.update(extra)
    return ["train", *[f"{k}={v}" for k, v in base.items()]]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def one_error_line(err: str, fragment: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("tunelab: error:")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- loss and metrics

REWARDS = dict(chosen=[1.5, -0.2, 0.3, 2.0], rejected=[0.5, 0.4, 0.3, -1.0], margin=[0.0, 1.0, 0.5, 0.25])


def test_pairwise_loss_matches_hand_computed_values() -> None:
    c, r, m = (torch.tensor(REWARDS[k], dtype=torch.float64) for k in ("chosen", "rejected", "margin"))
    by_hand = [-math.log(1 / (1 + math.exp(-(ci - ri - mi)))) for ci, ri, mi in zip(*REWARDS.values())]
    centre = sum((ci + ri) ** 2 for ci, ri in zip(REWARDS["chosen"], REWARDS["rejected"])) / 4
    assert float(pairwise_loss(c, r)) == pytest.approx(
        sum(-math.log(1 / (1 + math.exp(-(ci - ri)))) for ci, ri in zip(REWARDS["chosen"], REWARDS["rejected"])) / 4)
    assert float(pairwise_loss(c, r, m)) == pytest.approx(sum(by_hand) / 4)
    assert float(pairwise_loss(c, r, m, center=0.01)) == pytest.approx(sum(by_hand) / 4 + 0.01 * centre)


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01])
def test_pairwise_loss_equals_trls_reward_trainer_loss(with_margin, center) -> None:
    """TRL's RewardTrainer.compute_loss (its own code, on a stand-in model that returns these
    rewards as chosen-then-rejected logits) gives the same loss."""
    from trl.trainer.reward_trainer import RewardTrainer

    c, r, m = (torch.tensor(REWARDS[k]) for k in ("chosen", "rejected", "margin"))
    logits = torch.cat([c, r]).unsqueeze(-1)
    fake = SimpleNamespace(model=SimpleNamespace(training=False),
                           args=SimpleNamespace(center_rewards_coefficient=center),
                           accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x),
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0)
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3, dtype=torch.long)}
    if with_margin:
        inputs["margin"] = m
    trl_loss = RewardTrainer.compute_loss(fake, lambda **kw: SimpleNamespace(logits=logits), inputs)
    ours = pairwise_loss(c, r, m if with_margin else None, center or 0.0)
    assert float(ours) == pytest.approx(float(trl_loss), rel=1e-6)


def test_pair_metrics_count_ties_as_half_and_describe_both_sides() -> None:
    c, r = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 0.0, 3.0, 1.0])
    out = pair_metrics(c, r, None, 0.0)
    assert out["pairwise_accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert out["mean_margin"] == pytest.approx((1 + 0 - 1 + 4) / 4)
    both = [1.0, 0.0, 2.0, 5.0, 0.0, 0.0, 3.0, 1.0]
    mean = sum(both) / 8
    assert out["reward_mean"] == pytest.approx(mean)
    assert out["reward_std"] == pytest.approx((sum((x - mean) ** 2 for x in both) / 8) ** 0.5)
    assert (out["chosen_reward_mean"], out["rejected_reward_mean"]) == (pytest.approx(2.0), pytest.approx(1.0))
    assert out["loss"] == pytest.approx(float(pairwise_loss(c, r)))


# ---------------------------------------------------------------------------- where the reward is read

@pytest.fixture(scope="module")
def llama_reward(tiny_llama_dir):
    task = get_task("reward")
    tokenizer = task.load_processor(str(tiny_llama_dir))
    torch.manual_seed(1)
    model = task.build_model(str(tiny_llama_dir)).eval()
    return task, tokenizer, model


PROMPTS = [[{"role": "user", "content": "Review Up."}], [{"role": "user", "content": "Review a film you liked."}]]
RESPONSES = ["A warm and funny film, full of heart and wonder from start to end.", "Dull."]


def test_causal_reward_is_read_at_the_last_real_token_when_pad_is_eos(llama_reward) -> None:
    task, tok, model = llama_reward
    assert tok.pad_token_id == tok.eos_token_id and model.tunelab_last_token
    enc = Encoder(True, tok, 64, task.encoder(True, tok, 64).template)
    rows = [enc.single(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert all(row["input_ids"][-1] == tok.eos_token_id for row in rows)  # responses end with <|im_end|>
    batch = pad_sequences(rows, tok.pad_token_id)
    with torch.no_grad():
        ours = sequence_rewards(model, batch)
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        ends = [len(row["input_ids"]) - 1 for row in rows]
        by_hand = torch.stack([hidden[i, end] @ model.score.weight[0] for i, end in enumerate(ends)])
        naive = model(**batch).logits[:, 0]  # HF: the last token that is not the pad (= eos) token
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, naive, atol=1e-4)


def test_a_pad_token_other_than_eos_gives_the_same_reward(llama_reward, smol_tokenizer_dir) -> None:
    task, tok, model = llama_reward
    with torch.no_grad():
        same = task.score(SimpleNamespace(model=model, processor=tok, cfg=SimpleNamespace(data=SimpleNamespace(
            max_length=64))), PROMPTS, RESPONSES)
    other = task.load_processor(str(smol_tokenizer_dir))
    other.pad_token = "<|endoftext|>"
    assert other.pad_token_id != other.eos_token_id
    template = task.encoder(True, other, 64).template
    rows = [Encoder(True, other, 64, template).single(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    batch = pad_sequences(rows, other.pad_token_id)
    saved, model.config.pad_token_id = model.config.pad_token_id, other.pad_token_id
    try:
        with torch.no_grad():
            ours, hf = sequence_rewards(model, batch), model(**batch).logits[:, 0]
    finally:
        model.config.pad_token_id = saved
    torch.testing.assert_close(ours, torch.tensor(same), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-6)  # with pad != eos HF's pooling agrees


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "ptuning_v2"])
def test_virtual_token_methods_read_the_same_token_alone_or_padded(method, tiny_llama_dir) -> None:
    """Virtual tokens are trimmed before the head: the reward is the head on the last real input
    token's state, whatever the row's padding."""
    from tunelab.config import build_config
    from tunelab.methods import apply_methods

    task = get_task("reward")
    tok = task.load_processor(str(tiny_llama_dir))
    torch.manual_seed(2)
    model = task.build_model(str(tiny_llama_dir))
    apply_methods(model, build_config(None, [f"method.name={method}", "method.num_virtual_tokens=3"]).methods())
    model.eval()
    enc = task.encoder(True, tok, 64)
    rows = [enc.single(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    with torch.no_grad():
        together = sequence_rewards(model, pad_sequences(rows, tok.pad_token_id))
        alone = torch.cat([sequence_rewards(model, pad_sequences([row], tok.pad_token_id)) for row in rows])
        batch = pad_sequences(rows[1:], tok.pad_token_id)
        hidden = model.model(**batch).last_hidden_state
        by_hand = hidden[0, len(rows[1]["input_ids"]) - 1] @ model.score.weight[0]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone[1], by_hand, rtol=1e-5, atol=1e-6)


def test_encoder_pairs_keep_the_response_and_type_ids(tiny_bert_dir) -> None:
    task = get_task("reward")
    tok = task.load_processor(str(tiny_bert_dir))
    enc = task.encoder(False, tok, 16)
    long_prompt = [{"role": "user", "content": "word " * 40 + "end of the prompt"}]
    row = enc.single(long_prompt, "a fine film")
    assert len(row["input_ids"]) == 16 and tok.decode(row["input_ids"]).endswith("prompt [SEP] a fine film [SEP]")
    assert row["token_type_ids"][-5:] == [0, 1, 1, 1, 1] and row["response_mask"] == [*row["token_type_ids"][:-1], 0]
    too_long = enc.single([{"role": "user", "content": "hi"}], "good " * 40)
    assert len(too_long["input_ids"]) == 16 and tok.decode(too_long["input_ids"]).startswith("[CLS] hi [SEP] good")


# ---------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def llama_run(tiny_llama_dir, prefs_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reward-runs")
    proc = run_cli(*reward_args(tiny_llama_dir, prefs_jsonl, out, "llama", **{"task.center_rewards": 0.01}))
    assert proc.returncode == 0, proc.stderr
    return out / "llama"


def test_llama_reward_run_records_its_metrics(llama_run) -> None:
    r = results(llama_run)
    assert r["task"] == "reward" and r["method"] == ["lora"]
    for key in ("loss", "pairwise_accuracy", "mean_margin", "reward_mean", "reward_std", "chosen_reward_mean",
                "rejected_reward_mean"):
        assert isinstance(r["test"][key], float)
    assert r["test"]["pairs"] == 6 and 0 <= r["test"]["pairwise_accuracy"] <= 1
    assert r["best_validation"]["metric"] == "pairwise_accuracy"
    assert r["train_tokens"] > 0 and r["train_samples"] == 3 * 8  # pairs, not sequences
    assert (llama_run / "model" / "tokenizer_config.json").is_file()


def test_reloaded_run_gives_the_same_test_metrics(llama_run, capsys) -> None:
    assert main(["eval", str(llama_run)]) == 0
    again = json.loads(capsys.readouterr().out)
    test = results(llama_run)["test"]
    for key in ("loss", "pairwise_accuracy", "mean_margin", "reward_mean", "reward_std"):
        assert again[key] == pytest.approx(test[key], abs=1e-5)


def test_score_prompt_response_pairs(llama_run, capsys) -> None:
    args = ["score", str(llama_run), "--prompt", "Review Up.", "--response", RESPONSES[0], "--prompt", "Review Up.",
            "--response", RESPONSES[1]]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["response"] for r in rows] == RESPONSES and all(isinstance(r["reward"], float) for r in rows)
    assert rows[0]["reward"] != rows[1]["reward"]
    assert main(args[:6]) == 0  # scoring does not depend on the batch it is in
    assert json.loads(capsys.readouterr().out)["reward"] == pytest.approx(rows[0]["reward"], abs=1e-5)


def test_score_file_with_preference_rows_and_with_responses(llama_run, prefs_jsonl, tmp_path, capsys) -> None:
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(llama_run), "--file", str(prefs_jsonl), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 60 and {"chosen_reward", "rejected_reward", "prefers_chosen"} <= set(rows[0])
    assert all(r["prefers_chosen"] == (r["chosen_reward"] > r["rejected_reward"]) for r in rows)
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps({"prompt": rows[0]["prompt"], "response": rows[0]["chosen"]}) + "\n")
    assert main(["score", str(llama_run), "--file", str(single)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reward"] == pytest.approx(
        rows[0]["chosen_reward"], abs=1e-5)


def test_bert_reward_run_with_lora(tiny_bert_dir, prefs_jsonl, tmp_path, capsys) -> None:
    assert main(reward_args(tiny_bert_dir, prefs_jsonl, tmp_path, "bert", **{"data.max_length": 64})) == 0
    test = results(tmp_path / "bert")["test"]
    assert isinstance(test["pairwise_accuracy"], float) and test["pairs"] == 6
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "bert")]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(test["loss"], abs=1e-5)


METHOD_OPTIONS = {"freeze": {"method.top_layers": 1}, "prompt_tuning": {"method.num_virtual_tokens": 4},
                  "prefix_tuning": {"method.num_virtual_tokens": 4}, "ptuning_v2": {"method.num_virtual_tokens": 4}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_saves_and_reloads(method, tiny_llama_dir, biased_llama_dir, prefs_jsonl, tmp_path,
                                               capsys) -> None:
    model = biased_llama_dir if method == "bitfit" else tiny_llama_dir
    extra = {"method.name": method, **METHOD_OPTIONS.get(method, {}), "train.max_steps": 2,
             "data.max_train_samples": 16}
    assert main(reward_args(model, prefs_jsonl, tmp_path, method, **extra)) == 0, capsys.readouterr().err
    r = results(tmp_path / method)
    assert r["method"] == [method] and 0 < r["params"]["trainable"] <= r["params"]["total"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / method)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["loss"] == pytest.approx(r["test"]["loss"], abs=1e-5)
    assert again["mean_margin"] == pytest.approx(r["test"]["mean_margin"], abs=1e-5)


# ---------------------------------------------------------------------------- user errors

def test_missing_chosen_column_is_one_line(tiny_llama_dir, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"prompt": "p", "answer": "a", "rejected": "b"}) + "\n" for _ in range(5)))
    assert main(reward_args(tiny_llama_dir, bad, tmp_path, "bad")) == 2
    one_error_line(capsys.readouterr().err, "'chosen'")
    assert not (tmp_path / "bad").exists()


def test_empty_rejected_is_named_by_its_row(tiny_llama_dir, prefs_jsonl, tmp_path, capsys) -> None:
    rows = [json.loads(line) for line in prefs_jsonl.read_text().splitlines()][:20]
    rows[3]["rejected"] = "  "
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(reward_args(tiny_llama_dir, bad, tmp_path, "bad")) == 2
    one_error_line(capsys.readouterr().err, "train row 4, column 'rejected' is empty")


def test_a_builtin_dataset_for_another_task_is_refused(tiny_llama_dir, tmp_path, capsys) -> None:
    assert main(reward_args(tiny_llama_dir, Path("rotten_tomatoes"), tmp_path, "bad")) == 2
    one_error_line(capsys.readouterr().err, "made for task.name=classification")


def test_score_refuses_a_run_that_is_not_a_reward_model(tmp_path, capsys) -> None:
    from tunelab.config import build_config, to_yaml_dict
    from tunelab.run import RunDir

    run = RunDir.create(tmp_path / "cls", overwrite=False)
    run.write_config(to_yaml_dict(build_config(None, ["task.name=sft"])))
    assert main(["score", str(run.path), "--prompt", "p", "--response", "r"]) == 2
    one_error_line(capsys.readouterr().err, "cannot score responses; runs of task.name=classification or "
                                            "regression or reward can")


@pytest.mark.parametrize("argv, fragment", [
    (["--prompt", "a", "--prompt", "b", "--response", "c"], "got 2 --prompt but 1 --response"),
    (["--prompt", "a"], "got 1 --prompt but 0 --response"),
    ([], "not both and not neither"),
    (["--prompt", "a", "--response", "b", "--out", "x.jsonl"], "--out goes with --file"),
])
def test_score_argument_errors(llama_run, argv, fragment, capsys) -> None:
    assert main(["score", str(llama_run), *argv]) == 2
    one_error_line(capsys.readouterr().err, fragment)


def test_score_file_errors(llama_run, tmp_path, capsys) -> None:
    no_response = tmp_path / "a.jsonl"
    no_response.write_text(json.dumps({"prompt": "p", "answer": "x"}) + "\n")
    assert main(["score", str(llama_run), "--file", str(no_response)]) == 2
    one_error_line(capsys.readouterr().err, "needs columns 'prompt' and 'response'")
    empty = tmp_path / "b.jsonl"
    empty.write_text(json.dumps({"prompt": "p", "chosen": "good", "rejected": ""}) + "\n")
    assert main(["score", str(llama_run), "--file", str(empty)]) == 2
    one_error_line(capsys.readouterr().err, "row 1, column 'rejected' is empty")

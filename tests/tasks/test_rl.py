"""PPO and GRPO end to end on a tiny random Llama with SmolLM2's tokenizer: the update moves the
policy towards better-scored responses, the first update starts at ratio 1 and KL 0 for every
method, rewards from a function, a reward-model run and a classifier run (probability of a label),
judged evaluation with a baseline, a policy started from a finished SFT run, exact resume with the
rollout generator, and one-line errors for bad rewards and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import LLAMA_METHODS, run_cli, tiny_overrides, train_and_kill
from tunelab.cli import main

FNS = "tests.tasks.rl_reward_fns"


def rl_args(task: str, model: Path, out: Path, name: str, **extra: object) -> list[str]:
    base = {"task.name": task, "task.reward": f"{FNS}:length", "model.name_or_path": str(model),
            "data.source": "rt_prompts", "data.max_train_samples": 8, "data.max_eval_samples": 4,
            "output_dir": str(out), "name": name, "train.epochs": 1, "train.batch_size": 4,
            "train.eval_batch_size": 8, "task.max_new_tokens": 6, "data.max_length": 48, "train.log_steps": 1,
            "train.lr": 5e-3, "train.warmup_ratio": 0, "task.ppo_epochs": 2}
    if task == "grpo":
        base.update({"train.batch_size": 2, "task.group_size": 3})
    base.update(extra)
    return ["train", *[f"{k}={v}" for k, v in base.items()]]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def events(run: Path, event: str, **match: object) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event and all(r.get(k) == v for k, v in match.items())]


def one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("tunelab: error:")]
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- one update, by hand

def _step_setup(task_name: str, model_dir: Path, **options: object):
    """Task, a fully trainable policy, its step (reference made) and one prompt batch."""
    from tunelab.config import build_config
    from tunelab.pipeline import build_model
    from tunelab.tasks import get_task
    from tunelab.tasks.rl import PromptBatches

    overrides = {"task.name": task_name, "task.reward": f"{FNS}:length", "model.name_or_path": str(model_dir),
                 "data.source": "rt_prompts", "data.max_train_samples": 8, "data.max_eval_samples": 2,
                 "method.name": "full", "task.max_new_tokens": 8, "data.max_length": 48,
                 "task.eval_baseline": "false", "train.eval_batch_size": 4, **options}
    cfg = build_config(None, [f"{k}={v}" for k, v in overrides.items()])
    task = get_task(cfg.task)
    resolved = task.resolve_model(cfg.model.name_or_path)
    tokenizer = task.load_processor(resolved)
    data = task.prepare(cfg, tokenizer)
    torch.manual_seed(0)
    model, _ = build_model(cfg, task, resolved, None)
    step = task.train_step(cfg, model, tokenizer)
    rows = step.prepare(model, data.rows["train"])
    batch = PromptBatches(tokenizer.pad_token_id)(rows[:4])
    return task, model, step, batch


def _mean_logp(model, micro) -> torch.Tensor:
    from tunelab.tasks.logprobs import forward_logits, token_logps
    from tunelab.tasks.rl_math import masked_mean

    with torch.no_grad():
        logp = token_logps(forward_logits(model, micro), micro["input_ids"])
    return masked_mean(logp, micro["response_mask"][:, 1:], dim=-1)


def _sgd_step(model, loss: torch.Tensor, lr: float) -> None:
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def test_a_grpo_update_moves_log_probabilities_along_the_advantages(tiny_llama_dir) -> None:
    """To first order, sum_i A_i * delta(mean log p_i) = lr * |grad|^2 >= 0 (eq. 3 of DeepSeekMath)."""
    _, model, step, batch = _step_setup("grpo", tiny_llama_dir, **{"task.group_size": 4, "task.beta": 0})
    micros = step.micro_batches(model, batch)
    assert len(micros) == step.opts.ppo_epochs and all(m["input_ids"].shape[0] == 16 for m in micros)
    micro = micros[0]
    groups = micro["advantages"]
    assert groups.abs().sum() > 0
    before = _mean_logp(model, micro)
    loss = step.loss(model, micro)
    assert abs(float(loss.detach())) < 1e-6  # ratio 1 and advantages of zero mean in every group
    _sgd_step(model, loss, lr=1e-3)
    delta = _mean_logp(model, micro) - before
    assert float((groups * delta).sum()) > 0


def test_a_ppo_update_raises_the_advantage_weighted_log_probability(tiny_llama_dir) -> None:
    from tunelab.tasks.logprobs import forward_logits, token_logps
    from tunelab.tasks.rl_math import masked_mean

    _, model, step, batch = _step_setup("ppo", tiny_llama_dir, **{"task.vf_coef": 0})
    micro = step.micro_batches(model, batch)[0]
    mask = micro["response_mask"][:, 1:].float()
    assert float(micro["old_values"].abs().sum()) == 0  # the value head starts at zero

    def logps() -> torch.Tensor:
        with torch.no_grad():
            return token_logps(forward_logits(model, micro), micro["input_ids"])

    def weighted() -> float:
        return float(masked_mean(micro["advantages"] * logps(), mask))

    assert float(((logps() - micro["old_logp"]).abs() * mask).max()) < 1e-5  # the first ratio is 1
    before = weighted()
    _sgd_step(model, step.loss(model, micro), lr=1e-3)
    assert weighted() > before


def test_the_value_head_learns_the_returns(tiny_llama_dir) -> None:
    from tunelab.tasks.ppo import logps_and_values

    _, model, step, batch = _step_setup("ppo", tiny_llama_dir, **{"task.vf_coef": 1.0})
    micro = step.micro_batches(model, batch)[0]
    mask = micro["response_mask"][:, 1:].float()

    def value_error() -> float:
        with torch.no_grad():
            _, values = logps_and_values(model, micro)
        return float((((values - micro["returns"]) ** 2) * mask).sum() / mask.sum())

    before = value_error()
    for _ in range(3):
        _sgd_step(model, step.loss(model, micro), lr=1e-2)
    assert value_error() < before


# ---------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def ppo_run(tiny_llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppo-runs")
    extra = {"task.kl_target": 1.0, "task.kl_horizon": 100, "task.minibatches": 2, "task.missing_eos_penalty": 0.5,
             "task.kl_estimator": "k3"}
    assert main(rl_args("ppo", tiny_llama_dir, out, "ppo", **extra)) == 0
    return out / "ppo"


def test_ppo_logs_every_quantity_and_starts_at_ratio_one(ppo_run) -> None:
    train = events(ppo_run, "train")
    assert len(train) == 2 * 2 * 2  # 2 rollout batches x 2 PPO epochs x 2 minibatches
    first = train[0]
    for key in ("reward_mean", "reward_median", "kl", "kl_coef", "entropy", "clip_fraction", "value_loss",
                "policy_loss", "approx_kl", "response_length", "ended_fraction"):
        assert key in first, key
    assert first["kl"] == 0.0 and first["approx_kl"] == 0.0 and first["clip_fraction"] == 0.0
    assert first["kl_coef"] == 0.05
    coefs = [e["kl_coef"] for e in train if "kl_coef" in e]
    assert coefs[1] < coefs[0]  # KL far below its target: the adaptive coefficient shrinks
    r = results(ppo_run)
    assert r["task"] == "ppo" and r["train_samples"] == 8  # rollouts, counted once per rollout batch
    for key in ("reward_mean", "reward_median", "kl", "response_length", "ended_fraction"):
        assert isinstance(r["test"][key], float), key
    assert r["baseline"]["kl"] == 0.0 and "reward_mean" in r["baseline"]
    assert r["best_validation"]["metric"] == "reward_mean"
    gens = [json.loads(line) for line in (ppo_run / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 4 and all({"prompt", "response", "reward"} <= set(g) for g in gens)


def test_missing_eos_penalty_is_subtracted_from_unfinished_responses(ppo_run) -> None:
    first = events(ppo_run, "train")[0]
    # the length reward is at most 1 and a random tiny model never ends, so the penalty shows
    assert first["ended_fraction"] == 0.0
    assert first["penalised_reward_mean"] == pytest.approx(first["reward_mean"] - 0.5, abs=1e-6)


def test_a_finished_ppo_run_reevaluates_to_its_test_metrics(ppo_run, capsys) -> None:
    capsys.readouterr()
    assert main(["eval", str(ppo_run)]) == 0
    again = json.loads(capsys.readouterr().out)
    test = results(ppo_run)["test"]
    assert again["reward_mean"] == pytest.approx(test["reward_mean"], abs=1e-6)
    assert again["kl"] == pytest.approx(test["kl"], abs=1e-3)


@pytest.mark.parametrize("method", sorted(LLAMA_METHODS))
def test_every_method_runs_ppo_from_kl_zero_and_reloads(method, tiny_llama_dir, biased_llama_dir, tmp_path,
                                                        capsys) -> None:
    name = "lora" if method == "dora" else method
    extra = {"method.name": name, **LLAMA_METHODS[method], "train.max_steps": 1, "task.ppo_epochs": 1,
             "task.eval_baseline": "false", "train.eval_strategy": "no"}
    model = biased_llama_dir if method == "bitfit" else tiny_llama_dir
    assert main(rl_args("ppo", model, tmp_path, method, **extra)) == 0
    first = events(tmp_path / method, "train")[0]
    assert abs(first["kl"]) <= 1e-5, "the reference differs from the starting policy"
    assert first["clip_fraction"] == 0.0
    r = results(tmp_path / method)
    assert r["method"] == [name] and 0 < r["params"]["trainable"] <= r["params"]["total"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / method)]) == 0
    assert json.loads(capsys.readouterr().out)["reward_mean"] == pytest.approx(r["test"]["reward_mean"], abs=1e-6)


def test_grpo_counts_groups_and_starts_at_loss_zero(tiny_llama_dir, tmp_path) -> None:
    assert main(rl_args("grpo", tiny_llama_dir, tmp_path, "grpo", **{"task.eval_baseline": "false"})) == 0
    train = events(tmp_path / "grpo", "train")
    assert len(train) == 4 * 2  # 8 prompts / 2 per batch, 2 PPO epochs
    first = train[0]
    assert abs(first["loss"]) < 1e-6 and first["kl"] == pytest.approx(0.0, abs=1e-5)
    assert "reward_std_in_group" in first and first["clip_fraction"] == 0.0
    r = results(tmp_path / "grpo")
    assert r["task"] == "grpo" and r["train_samples"] == 8 * 3  # G responses per prompt
    assert "kl" in r["test"] and "reward_mean" in r["test"]


@pytest.mark.parametrize("method", sorted(LLAMA_METHODS))
def test_every_method_runs_grpo_and_reloads(method, tiny_llama_dir, biased_llama_dir, tmp_path, capsys) -> None:
    name = "lora" if method == "dora" else method
    extra = {"method.name": name, **LLAMA_METHODS[method], "train.max_steps": 1, "task.ppo_epochs": 1,
             "task.eval_baseline": "false", "train.eval_strategy": "no", "data.max_train_samples": 2}
    model = biased_llama_dir if method == "bitfit" else tiny_llama_dir
    assert main(rl_args("grpo", model, tmp_path, method, **extra)) == 0
    first = events(tmp_path / method, "train")[0]
    assert abs(first["loss"]) < 1e-6 and abs(first["kl"]) <= 1e-5
    r = results(tmp_path / method)
    assert r["method"] == [name] and 0 < r["params"]["trainable"] <= r["params"]["total"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / method)]) == 0
    assert json.loads(capsys.readouterr().out)["reward_mean"] == pytest.approx(r["test"]["reward_mean"], abs=1e-6)


def test_grpo_without_a_kl_term_needs_no_reference(tiny_llama_dir, tmp_path) -> None:
    extra = {"method.name": "full", "task.beta": 0, "task.eval_baseline": "false", "train.max_steps": 2}
    assert main(rl_args("grpo", tiny_llama_dir, tmp_path, "nokl", **extra)) == 0
    assert all("kl" not in e for e in events(tmp_path / "nokl", "train"))
    assert "kl" not in results(tmp_path / "nokl")["test"]


@pytest.mark.parametrize("task", ["ppo", "grpo"])
def test_killed_rl_run_resumes_to_identical_weights(task, tiny_llama_dir, tmp_path) -> None:
    """The rollout generator and the adaptive KL coefficient are checkpointed: a resumed run samples
    what the straight one did and ends bit-identical (dropout on in the adapter config, off in training)."""
    from safetensors.torch import load_file

    extra = {"data.max_train_samples": 12, "train.epochs": 3, "train.save_steps": 1, "method.dropout": 0.1,
             "train.eval_strategy": "no", "task.eval_baseline": "false", "train.log_steps": 5}
    if task == "ppo":
        extra.update({"task.kl_target": 0.5, "task.kl_horizon": 50})
    straight = run_cli(*rl_args(task, tiny_llama_dir, tmp_path / "a", "run", **extra))
    assert straight.returncode == 0, straight.stderr[-2000:]
    run_b = tmp_path / "b" / "run"
    train_and_kill(rl_args(task, tiny_llama_dir, tmp_path / "b", "run", **extra)[1:], run_b, at_step=8)
    assert not (run_b / "results.json").exists(), "the run finished before it could be killed"
    resumed = run_cli("train", "--resume", str(run_b))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "a" / "run" / "model" / "weights.safetensors"))
    b = load_file(str(run_b / "model" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert results(tmp_path / "a" / "run")["test"] == results(run_b)["test"]


# ---------------------------------------------------------------------------- reward sources

@pytest.fixture(scope="module")
def sentiment_run(tiny_bert_dir, reviews_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sentiment")
    assert main(["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, out, **{"train.epochs": 1})]) == 0
    return out / "run"


def test_a_classifier_run_is_the_reward_and_the_judge(sentiment_run, tiny_llama_dir, tmp_path) -> None:
    extra = {"task.reward": sentiment_run, "task.judge": sentiment_run, "task.reward_label": "fresh",
             "task.judge_label": "fresh", "train.max_steps": 2}
    assert main(rl_args("grpo", tiny_llama_dir, tmp_path, "cls", **extra)) == 0
    r = results(tmp_path / "cls")
    assert 0 <= r["test"]["reward_mean"] <= 1  # a probability
    assert r["test"]["judge_mean"] == r["test"]["reward_mean"] and "judge_mean" in r["baseline"]
    gens = [json.loads(line) for line in (tmp_path / "cls" / "generations.jsonl").read_text().splitlines()]
    assert all(g["judge"] == g["reward"] for g in gens)


def test_score_reads_a_classifier_runs_probability_or_logit(sentiment_run, capsys) -> None:
    import math

    args = ["score", str(sentiment_run), "--prompt", "Review it.", "--response", "A wonderful, moving film."]

    def scored(*extra: str) -> float:
        assert main([*args, *extra]) == 0
        return json.loads(capsys.readouterr().out)["reward"]

    p_rotten, p_fresh = scored(), scored("--label", "fresh")  # the default is the second label, rotten
    assert 0 < p_fresh < 1 and p_rotten == pytest.approx(1 - p_fresh, abs=1e-6)
    gap = scored("--label", "fresh", "--output", "logit") - scored("--output", "logit")
    assert 1 / (1 + math.exp(-gap)) == pytest.approx(p_fresh, abs=1e-5)
    assert main([*args, "--label", "maybe"]) == 2
    one_error_line(capsys.readouterr().err, "'maybe' is not one of", "fresh, rotten")


def test_a_reward_model_run_is_the_reward(tiny_llama_dir, tmp_path) -> None:
    from tunelab.data.builtin import get_builtin_dataset

    rows = get_builtin_dataset("rt_preferences").load()["train"].select(range(24))
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    reward = ["train", "task.name=reward", f"model.name_or_path={tiny_llama_dir}", f"data.source={prefs}",
              f"output_dir={tmp_path}", "name=rm", "train.max_steps=2", "train.batch_size=8", "data.max_length=48"]
    assert main(reward) == 0
    assert main(rl_args("ppo", tiny_llama_dir, tmp_path, "rl", **{"task.reward": tmp_path / "rm",
                                                                  "train.max_steps": 2})) == 0
    assert isinstance(results(tmp_path / "rl")["test"]["reward_mean"], float)


def test_the_policy_can_start_from_a_finished_sft_run(tiny_llama_dir, tmp_path, monkeypatch) -> None:
    from tunelab.data.builtin import get_builtin_dataset

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    rows = get_builtin_dataset("rt_preferences").load()["train"].select(range(16))
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows))
    assert main(["train", "task.name=sft", f"model.name_or_path={tiny_llama_dir}", f"data.source={sft}",
                 f"output_dir={tmp_path}", "name=sft", "train.max_steps=2", "train.batch_size=8",
                 "data.max_length=48", "train.lr=5e-2"]) == 0
    extra = {"train.max_steps": 1, "task.ppo_epochs": 1}
    assert main(rl_args("ppo", tmp_path / "sft", tmp_path, "rl", **extra)) == 0
    merged = list((tmp_path / "cache" / "merged-runs").iterdir())
    assert len(merged) == 1 and (merged[0] / "config.json").is_file()
    assert events(tmp_path / "rl", "train")[0]["kl"] == 0.0  # the reference is the SFT policy
    assert main(rl_args("ppo", tmp_path / "sft", tmp_path, "rl2", **extra)) == 0
    assert len(list((tmp_path / "cache" / "merged-runs").iterdir())) == 1  # merged once, reused


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("reward, fragments", [
    (f"{FNS}:nan_on_third", ["returned nan for rollout row 3", "finite number"]),
    (f"{FNS}:raises_on_second", ["raised ValueError: cannot score this one on rollout row 2"]),
    (f"{FNS}:too_few", ["returned 1 score(s) for 4 response(s)"]),
])
def test_a_bad_reward_function_stops_in_one_line(reward, fragments, tiny_llama_dir, tmp_path) -> None:
    proc = run_cli(*rl_args("ppo", tiny_llama_dir, tmp_path, "bad", **{"task.reward": reward}))
    assert proc.returncode == 2
    one_error_line(proc.stderr, *fragments)
    assert not (tmp_path / "bad" / "results.json").exists()


def test_bad_reward_references_are_refused_before_training(ppo_run, tiny_llama_dir, tmp_path, capsys) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("task:\n  name: reward\n")
    cases = [
        (str(ppo_run), "task.name=ppo run, which cannot score responses"),
        (str(tmp_path), "is not a tunelab run directory"),
        (str(unfinished), "is an unfinished run"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        (f"{FNS}:missing", "has no function 'missing'"),
        ("just-a-word", "neither a finished run directory nor a Python function"),
    ]
    for reward, fragment in cases:
        assert main(rl_args("ppo", tiny_llama_dir, tmp_path, "bad", **{"task.reward": reward})) == 2, reward
        one_error_line(capsys.readouterr().err, fragment)
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("extra, fragment", [
    ({"task.max_new_tokens": 48}, "leaves no room for the prompt"),
    ({"task.reward_label": "positive"}, "applies to classification runs"),
    ({"data.source": "rotten_tomatoes"}, "made for task.name=classification"),
    ({"task.group_size": 1}, "group_size"),
])
def test_bad_rl_options_are_one_line(extra, fragment, tiny_llama_dir, tmp_path, capsys) -> None:
    assert main(rl_args("grpo", tiny_llama_dir, tmp_path, "bad", **extra)) == 2
    one_error_line(capsys.readouterr().err, fragment)
    assert not (tmp_path / "bad").exists()

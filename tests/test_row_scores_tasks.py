"""Per-row test scores (``test_rows.json``, :mod:`tunelab.row_scores`) of the generative, preference,
RL and contrastive tasks: one tiny run each, whose saved rows must aggregate to the reported test
metrics, cover every test row, and hold 0/1 hits where a metric is an accuracy; plus the per-row
helpers against the totals they split up."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import results
from tests.tasks.test_contrastive import contrastive_args, write_jsonl
from tests.tasks.test_contrastive import pairs_jsonl as triplets_jsonl  # noqa: F401 -- a fixture
from tests.tasks.test_dpo import dpo_args
from tests.tasks.test_dpo import pairs_jsonl as dpo_pairs_jsonl  # noqa: F401 -- a fixture
from tests.tasks.test_reward import prefs_jsonl, reward_args  # noqa: F401 -- prefs_jsonl is a fixture
from tests.tasks.test_rl import rl_args
from tests.tasks.test_sft import alpaca_jsonl, sft_args  # noqa: F401 -- alpaca_jsonl is a fixture
from tunelab.cli import main
from tunelab.row_scores import FILE, ROWS_KEY, RowScores, read_row_scores


def saved_rows(run: Path, metrics: tuple[str, ...], rows: int | None = None,
               binary: tuple[str, ...] = ()) -> dict[str, RowScores]:
    """The run's per-row scores, checked: each of ``metrics`` aggregates to results.json's test value,
    has ``rows`` rows (when given), and the ``binary`` ones are flagged and hold only 0/1."""
    assert (run / FILE).is_file(), f"{run} has no {FILE}"
    saved, test = read_row_scores(run / FILE), results(run)["test"]
    assert ROWS_KEY not in test
    for name in metrics:
        assert name in saved, f"no per-row {name}; saved: {sorted(saved)}"
        assert math.isclose(saved[name].value(), test[name], rel_tol=1e-6, abs_tol=1e-9), name
        if rows is not None:
            assert len(saved[name]) == rows, name
    for name in binary:
        assert saved[name].binary and set(np.unique(saved[name].values)) <= {0.0, 1.0}, name
    return saved


# ---------------------------------------------------------------------------- the helpers

def test_token_loss_rows_split_token_loss_sum_by_row(tiny_llama_dir) -> None:
    from transformers import LlamaForCausalLM

    from tunelab.tasks.sft import token_loss_rows, token_loss_sum

    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (3, 9))
    labels = ids.clone()
    labels[0, :4] = labels[1, :7] = labels[2, 6:] = -100  # 5, 2 and 5 labelled targets after the shift
    mask = torch.ones_like(ids)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        total = token_loss_sum(model, dict(batch))
        rows = token_loss_rows(model, dict(batch))
        alone = torch.stack([token_loss_sum(model, {k: v[i:i + 1] for k, v in batch.items()}) for i in range(3)])
    assert rows.shape == (3, 2) and rows.dtype == torch.float64
    assert rows[:, 1].tolist() == [5.0, 2.0, 5.0]
    assert torch.allclose(rows, alone, rtol=1e-6)
    assert torch.allclose(rows.sum(0), total, rtol=1e-6)


def test_retrieval_rows_average_to_retrieval_metrics() -> None:
    from tunelab.tasks.retrieval import retrieval_metrics, retrieval_rows

    g = torch.Generator().manual_seed(0)
    queries, corpus = torch.randn(7, 4, generator=g), torch.randn(12, 4, generator=g)
    relevant = [{0}, {1, 5}, set(), {3}, {4, 8, 9}, {11}, {2}]  # the empty one is not counted
    rows = retrieval_rows(queries, corpus, relevant, ks=(1, 3), chunk=2)
    metrics = retrieval_metrics(queries, corpus, relevant, ks=(1, 3), chunk=2)
    assert set(rows) == {"recall_at_1", "recall_at_3", "mrr", "ndcg_at_10"} and metrics["queries"] == 6
    for name, values in rows.items():
        assert len(values) == 6 and RowScores(values).value() == pytest.approx(metrics[name], rel=1e-12)
    sims = torch.nn.functional.normalize(corpus, dim=1) @ torch.nn.functional.normalize(queries[0], dim=0)
    assert rows["mrr"][0] == 1.0 / (1 + int((sims > sims[0]).sum()))  # query 0's one relevant document: 0
    assert rows["recall_at_3"][1] in (0.0, 0.5, 1.0)  # two relevant documents


def test_reward_pair_rows_reproduce_pair_metrics_and_count_a_tie_half() -> None:
    from tunelab.tasks.reward import pair_metrics, pair_rows

    c = torch.tensor([1.5, -0.2, 0.3, 2.0])
    r = torch.tensor([0.5, 0.4, 0.3, -1.0])
    m = torch.tensor([0.0, 1.0, 0.5, 0.25])
    metrics, rows = pair_metrics(c, r, m, 0.01), pair_rows(c, r, m, 0.01)
    assert set(rows) == {"loss", "pairwise_accuracy", "mean_margin", "reward_mean", "chosen_reward_mean",
                         "rejected_reward_mean"}
    for name, scores in rows.items():
        assert scores.value() == pytest.approx(metrics[name], rel=1e-12), name
    assert rows["pairwise_accuracy"].values.tolist() == [1.0, 0.0, 0.5, 1.0]
    assert not rows["pairwise_accuracy"].binary  # the tie
    assert pair_rows(c[:2], r[:2], None, 0.0)["pairwise_accuracy"].binary


def test_dpo_rows_leave_out_a_loss_with_an_nll_term() -> None:
    from tunelab.tasks.dpo import PAIR_COLUMNS, DPOTask, DPOTaskConfig

    table = torch.tensor([[0.7, 0.2, -0.1, -5.0, -6.0], [0.6, -0.3, 0.1, -4.0, -3.0]], dtype=torch.float64)
    assert len(PAIR_COLUMNS) == table.shape[1]
    plain = DPOTask(DPOTaskConfig()).pair_rows(table)
    assert plain["loss"].value() == pytest.approx(0.65) and plain["reward_accuracy"].values.tolist() == [1.0, 0.0]
    assert plain["reward_margin"].values.tolist() == pytest.approx([0.3, -0.4])
    for cfg in (DPOTaskConfig(loss="orpo"), DPOTaskConfig(sft_weight=0.5)):
        rows = DPOTask(cfg).pair_rows(table)
        assert "loss" not in rows and "reward_accuracy" in rows


# ---------------------------------------------------------------------------- tiny runs

def test_sft_rows_are_each_rows_token_loss_and_each_generations_scores(tiny_llama_dir, alpaca_jsonl,  # noqa: F811
                                                                      tmp_path, capsys) -> None:
    lines = alpaca_jsonl.read_text().splitlines()
    train, test = write_jsonl(tmp_path / "train.jsonl", [json.loads(x) for x in lines[:40]]), tmp_path / "test.jsonl"
    test.write_text("\n".join(lines[40:47]) + "\n")
    args = sft_args(tiny_llama_dir, train, tmp_path, "sft", **{
        "data.test_file": str(test), "train.max_steps": 1, "task.eval_generate": 3, "task.max_new_tokens": 3,
        "train.eval_strategy": "no", "data.max_length": 128})
    assert main(args) == 0
    run = tmp_path / "sft"
    rows = saved_rows(run, ("loss", "rouge_l", "exact_match"), binary=("exact_match",))
    r = results(run)
    assert len(rows["loss"]) == 7 and r["test_rows"] == 7  # every test row, once
    assert rows["loss"].aggregate == "ratio" and rows["loss"].weights.sum() == r["test"]["tokens"]
    assert np.all(rows["loss"].weights > 0) and np.all(rows["loss"].values > 0)
    assert len(rows["rouge_l"]) == len(rows["exact_match"]) == r["test"]["count"] == 3  # the generated ones
    assert "bleu" not in rows and "perplexity" not in rows  # corpus-level / not a mean of rows
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # the per-row scores stay out of the printed metrics
    printed = json.loads(capsys.readouterr().out)
    assert ROWS_KEY not in printed and printed["loss"] == pytest.approx(r["test"]["loss"], abs=1e-5)


def test_reward_rows_are_each_pairs_hit_and_rewards(tiny_bert_dir, prefs_jsonl, tmp_path) -> None:  # noqa: F811
    args = reward_args(tiny_bert_dir, prefs_jsonl, tmp_path, "reward", **{
        "train.max_steps": 1, "data.max_eval_samples": 5, "train.eval_strategy": "no"})
    assert main(args) == 0
    run = tmp_path / "reward"
    names = ("pairwise_accuracy", "loss", "mean_margin", "reward_mean", "chosen_reward_mean", "rejected_reward_mean")
    saved_rows(run, names, rows=5, binary=("pairwise_accuracy",))
    assert results(run)["test"]["pairs"] == 5


def test_dpo_rows_are_each_pairs_and_each_judged_prompts(tiny_llama_dir, dpo_pairs_jsonl, tmp_path) -> None:  # noqa: F811
    args = dpo_args(tiny_llama_dir, dpo_pairs_jsonl, tmp_path, "dpo", **{
        "train.max_steps": 1, "data.max_train_samples": 8, "data.max_eval_samples": 4, "train.eval_strategy": "no",
        "task.judge": "tests.tasks.rl_reward_fns:length", "task.max_new_tokens": 3})
    assert main(args) == 0
    run = tmp_path / "dpo"
    pairs = ("loss", "reward_accuracy", "chosen_reward", "rejected_reward", "reward_margin", "logp_chosen",
             "logp_rejected")
    saved_rows(run, pairs, rows=4, binary=("reward_accuracy",))
    test = results(run)["test"]
    judged = saved_rows(run, ("judge_mean", "kl", "response_length", "ended_fraction"), rows=test["judged_prompts"],
                        binary=("ended_fraction",))
    assert test["pairs"] == 4 and "judge_median" not in judged


def test_rl_rows_are_each_prompts_reward_judge_kl_and_length(tiny_llama_dir, tmp_path, capsys) -> None:
    args = rl_args("ppo", tiny_llama_dir, tmp_path, "ppo", **{
        "task.judge": "tests.tasks.rl_reward_fns:length", "train.max_steps": 1, "task.ppo_epochs": 1,
        "task.eval_baseline": "false", "train.eval_strategy": "no", "data.max_train_samples": 4,
        "task.max_new_tokens": 4})
    assert main(args) == 0
    run = tmp_path / "ppo"
    rows = saved_rows(run, ("judge_mean", "reward_mean", "kl", "response_length", "ended_fraction"), rows=4,
                      binary=("ended_fraction",))
    assert results(run)["test"]["prompts"] == 4 and "reward_median" not in rows
    assert np.all((rows["reward_mean"].values >= 0) & (rows["reward_mean"].values <= 1))  # length/40, capped
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert ROWS_KEY not in json.loads(capsys.readouterr().out)


def test_contrastive_rows_are_each_querys_retrieval_scores(tiny_bert_dir, triplets_jsonl, reviews_jsonl,  # noqa: F811
                                                           tmp_path) -> None:
    rows = [json.loads(line) for line in triplets_jsonl.read_text().splitlines()]
    scored = write_jsonl(tmp_path / "scored.jsonl", [
        {"anchor": r["anchor"], "positive": r["positive"] if i % 2 else r["negative"],
         "score": float(i % 2 * 4 + i % 3)} for i, r in enumerate(rows)])
    for name, data in (("pairs", triplets_jsonl), ("labelled", reviews_jsonl), ("scored", scored)):
        assert main(contrastive_args(tiny_bert_dir, data, tmp_path, name, **{
            "train.max_steps": 1, "train.eval_strategy": "no"})) == 0
    recalls = ("recall_at_1", "recall_at_5", "recall_at_10")
    saved_rows(tmp_path / "pairs", (*recalls, "mrr", "ndcg_at_10"), rows=12, binary=recalls)  # 12 test anchors
    assert results(tmp_path / "pairs")["test"]["queries"] == 12
    labelled = saved_rows(tmp_path / "labelled", ("knn_accuracy", "mrr", "ndcg_at_10"), rows=24,
                          binary=("knn_accuracy",))
    assert results(tmp_path / "labelled")["test"]["corpus"] == 24 and not set(recalls) & set(labelled)
    assert not (tmp_path / "scored" / FILE).exists()  # a correlation has no per-row form


def test_two_processes_save_every_sft_test_row_once(tiny_llama_dir, alpaca_jsonl, tmp_path) -> None:  # noqa: F811
    """7 test rows over 2 processes: one shard repeats a row to even out; the saved rows and the
    reported loss (which they must reproduce) count each row once."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    lines = alpaca_jsonl.read_text().splitlines()
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("\n".join(lines[:16]) + "\n")
    test.write_text("\n".join(lines[40:47]) + "\n")
    args = sft_args(tiny_llama_dir, train, tmp_path, "ddp", **{
        "data.test_file": str(test), "train.max_steps": 1, "task.eval_generate": 0, "task.eval_baseline": "false",
        "train.eval_strategy": "no", "data.max_length": 128, "train.eval_batch_size": 2})
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunelab", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    assert results(run)["num_processes"] == 2
    rows = saved_rows(run, ("loss",), rows=7)  # all_gather would give 8: the repeated row twice
    assert rows["loss"].weights.sum() == results(run)["test"]["tokens"]

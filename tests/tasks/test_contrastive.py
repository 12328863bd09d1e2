"""Contrastive embedding learning on tiny random encoders: data shapes and their losses, GradCache
equal to the uncached gradient, every method trains/saves/reloads, exact resume, ``tunelab embed``,
sentence-transformers export and import (the library itself is the oracle), and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import one_error_line, results, run_cli, train_and_kill
from tunelab.cli import main
from tunelab.methods import METHODS


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory) -> Path:
    """120 real (synonym set, gloss) pairs from the built-in wordnet_triplets (with a hard negative)."""
    from tunelab.data.builtin import get_builtin_dataset

    ds = get_builtin_dataset("wordnet_triplets").load()["train"].select(range(120))
    rows = [{k: r[k] for k in ("anchor", "positive", "negative")} for r in ds]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


def contrastive_args(model: Path, data: Path, out: Path, name: str, **extra: object) -> list[str]:
    base = {"task.name": "contrastive", "model.name_or_path": str(model), "data.source": str(data),
            "output_dir": str(out), "name": name, "train.max_steps": 3, "train.batch_size": 8,
            "train.eval_batch_size": 32, "data.max_length": 32, "train.log_steps": 1, "train.lr": 5e-3}
    base.update(extra)
    return ["train", *[f"{k}={v}" for k, v in base.items()]]


# ---------------------------------------------------------------------------- data shapes -> losses

def test_each_data_shape_trains_with_its_loss_and_metrics(tiny_bert_dir, pairs_jsonl, reviews_jsonl, tmp_path,
                                                          capsys) -> None:
    rows = [json.loads(line) for line in pairs_jsonl.read_text().splitlines()]
    scored = write_jsonl(tmp_path / "scored.jsonl", [
        {"anchor": r["anchor"], "positive": r["positive"] if i % 2 else r["negative"],
         "score": float(i % 2 * 4 + i % 3)}
        for i, r in enumerate(rows)])
    for name, data in (("pairs", pairs_jsonl), ("scored", scored), ("labelled", reviews_jsonl)):
        assert main(contrastive_args(tiny_bert_dir, data, tmp_path, name)) == 0, capsys.readouterr().err
    pairs, sc, lab = (results(tmp_path / n)["test"] for n in ("pairs", "scored", "labelled"))
    assert {"recall_at_1", "recall_at_5", "recall_at_10", "mrr", "ndcg_at_10"} <= set(pairs)
    assert pairs["corpus"] == 24  # 12 test rows: 12 positives + 12 hard negatives, all distinct
    assert 0 <= pairs["recall_at_1"] <= pairs["recall_at_5"] <= pairs["recall_at_10"] <= 1
    assert set(sc) >= {"spearman", "pearson"} and -1 <= sc["spearman"] <= 1
    assert set(lab) >= {"knn_accuracy", "mrr", "ndcg_at_10"} and "recall_at_1" not in lab
    best = {n: results(tmp_path / n)["best_validation"]["metric"] for n in ("pairs", "scored", "labelled")}
    assert best == {"pairs": "recall_at_1", "scored": "spearman", "labelled": "knn_accuracy"}
    baseline = results(tmp_path / "pairs")["baseline"]  # a pretrained encoder already embeds
    assert baseline["split"] == "test" and "recall_at_1" in baseline


def test_step_picks_the_loss_of_the_data_shape() -> None:
    from tunelab.errors import UserError
    from tunelab.tasks.contrastive import ContrastiveTask, ContrastiveTaskConfig

    task = ContrastiveTask(ContrastiveTaskConfig())
    assert [task.loss_name(f) for f in ("pairs", "scored", "labelled")] == ["mnrl", "cosent", "supcon"]
    with pytest.raises(UserError, match="does not fit labelled data"):
        ContrastiveTask(ContrastiveTaskConfig(loss="mnrl")).loss_name("labelled")


def test_the_loss_in_training_is_the_loss_function_on_the_pooled_embeddings(tiny_bert_dir) -> None:
    """The step's loss = mnrl_loss on mean-pooled, normalised embeddings computed by hand."""
    from transformers import AutoModel, AutoTokenizer

    from tunelab.tasks.contrastive import ContrastiveStep, ContrastiveTask, ContrastiveTaskConfig
    from tunelab.tasks.contrastive_data import ColumnCollator
    from tunelab.tasks.contrastive_losses import mnrl_loss

    task = ContrastiveTask(ContrastiveTaskConfig())
    model = task.build_model(str(tiny_bert_dir), None).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = [["a dog", "a cat", "a tree"], ["an animal that barks", "an animal that purrs", "a woody plant"]]
    batch = ColumnCollator(tok.pad_token_id)([{f"input_ids_{c}": tok(texts[c][i])["input_ids"] for c in (0, 1)}
                                              for i in range(3)])
    got = ContrastiveStep("mnrl", 20.0, "cosine", True, None).loss(model, batch)
    plain = AutoModel.from_pretrained(tiny_bert_dir).eval()

    def by_hand(column: list[str]) -> torch.Tensor:
        vectors = []
        for text in column:
            enc = tok(text, return_tensors="pt")
            vectors.append(plain(**enc).last_hidden_state[0].mean(0))
        return torch.nn.functional.normalize(torch.stack(vectors), dim=-1)

    assert model.tunelab_pooling == "mean" and model.tunelab_normalize is True
    assert got.item() == pytest.approx(mnrl_loss(by_hand(texts[0]), by_hand(texts[1])).item(), abs=1e-5)


# ---------------------------------------------------------------------------- GradCache

@pytest.mark.parametrize("loss, chunk", [("mnrl", 2), ("symmetric_mnrl", 3), ("mnrl", 1)])
def test_grad_cache_gives_the_uncached_loss_and_gradient(tiny_bert_dir, loss, chunk) -> None:
    from transformers import AutoTokenizer

    from tunelab.tasks.contrastive import ContrastiveStep, ContrastiveTask, ContrastiveTaskConfig
    from tunelab.tasks.contrastive_data import ColumnCollator

    task = ContrastiveTask(ContrastiveTaskConfig())
    model = task.build_model(str(tiny_bert_dir), None).eval()  # dropout off: both passes see the same net
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words = ["bank", "river", "money", "tree", "stone", "cloud", "music"]
    rows = [{"input_ids_0": tok(w)["input_ids"], "input_ids_1": tok(f"a thing called {w} " * (i + 1))["input_ids"],
             "input_ids_2": tok(f"not {w}")["input_ids"]} for i, w in enumerate(words)]
    batch = ColumnCollator(tok.pad_token_id)(rows)

    def grads(step: ContrastiveStep) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        if step.chunk is None:
            value = step.loss(model, batch)
            value.backward()
        else:
            value = step.backward(model, batch, lambda t: t.backward())
        return value.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = grads(ContrastiveStep(loss, 20.0, "cosine", True, None))
    cached_loss, cached = grads(ContrastiveStep(loss, 20.0, "cosine", True, chunk))
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_grad_cache_trains_end_to_end_like_the_uncached_run(tiny_bert_dir, pairs_jsonl, tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    model = tmp_path / "no-dropout"  # dropout masks differ between a chunk and the whole batch
    shutil.copytree(tiny_bert_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    for name, extra in (("plain", {}), ("cached", {"task.grad_cache_chunk": 3})):
        args = contrastive_args(model, pairs_jsonl, tmp_path, name, **{"train.max_steps": 3, "method.name": "lora",
                                                                        "train.lr": 1e-3}, **extra)
        assert main(args) == 0, capsys.readouterr().err
    a, b = (load_file(str(tmp_path / n / "model" / "weights.safetensors")) for n in ("plain", "cached"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-3, msg=key)


# ---------------------------------------------------------------------------- every method

METHOD_OPTIONS = {"freeze": {"method.top_layers": 1}, "prompt_tuning": {"method.num_virtual_tokens": 4},
                  "prefix_tuning": {"method.num_virtual_tokens": 4}, "ptuning_v2": {"method.num_virtual_tokens": 4}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_saves_and_reloads(method, tiny_bert_dir, pairs_jsonl, tmp_path, capsys) -> None:
    extra = {"method.name": method, **METHOD_OPTIONS.get(method, {}), "train.max_steps": 2}
    assert main(contrastive_args(tiny_bert_dir, pairs_jsonl, tmp_path, method, **extra)) == 0, capsys.readouterr().err
    r = results(tmp_path / method)
    assert r["method"] == [method] and 0 < r["params"]["trainable"] <= r["params"]["total"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / method)]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("recall_at_1", "mrr", "ndcg_at_10"):
        assert again[key] == pytest.approx(r["test"][key], abs=1e-6)
    trained = [line for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert trained and all(json.loads(line)["loss"] > 0 for line in trained)


def test_a_method_changes_the_embeddings(tiny_bert_dir, pairs_jsonl, tmp_path, capsys) -> None:
    from tunelab.pipeline import load_run

    assert main(contrastive_args(tiny_bert_dir, pairs_jsonl, tmp_path, "lora", **{"method.name": "lora"})) == 0
    loaded = load_run(str(tmp_path / "lora"))
    trained = loaded.task.embed(loaded, ["a bank", "a river"])
    for module in loaded.model.modules():  # zero every LoRA update: the base's embeddings again
        if hasattr(module, "lora_B"):
            torch.nn.init.zeros_(module.lora_B.weight)
    assert not torch.allclose(trained, loaded.task.embed(loaded, ["a bank", "a river"]), atol=1e-6)


# ---------------------------------------------------------------------------- resume

def test_a_killed_run_resumes_to_identical_weights(tiny_bert_dir, pairs_jsonl, tmp_path) -> None:
    from safetensors.torch import load_file

    extra = {"train.max_steps": 12, "train.save_steps": 2, "train.eval_strategy": "no", "train.batch_size": 8,
             "task.grad_cache_chunk": 3}
    a = run_cli(*contrastive_args(tiny_bert_dir, pairs_jsonl, tmp_path / "a", "run", **extra))
    assert a.returncode == 0, a.stderr[-2000:]
    run_b = tmp_path / "b" / "run"
    train_and_kill(contrastive_args(tiny_bert_dir, pairs_jsonl, tmp_path / "b", "run", **extra)[1:], run_b, at_step=6)
    assert not (run_b / "results.json").exists(), "the run finished before it could be killed"
    resumed = run_cli("train", "--resume", str(run_b))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    wa = load_file(str(tmp_path / "a" / "run" / "model" / "weights.safetensors"))
    wb = load_file(str(run_b / "model" / "weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert results(tmp_path / "a" / "run")["test"] == results(run_b)["test"]


# ---------------------------------------------------------------------------- duplicate-free batches

def test_training_batches_never_hold_a_text_twice(tiny_bert_dir, tmp_path) -> None:
    from tunelab.data.batching import DistinctTextBatches
    from tunelab.tasks.contrastive import ContrastiveStep

    # 40 rows over 10 positives: many rows share a positive (synonyms of one gloss)
    rows = [{"keys": (f"word {i}", f"gloss {i % 10}")} for i in range(40)]
    order = ContrastiveStep("mnrl", 20.0, "cosine", True, None).order(rows, 8, 0)
    assert isinstance(order, DistinctTextBatches)
    for epoch in range(3):
        order.set_epoch(epoch)
        batches = order.batches()
        assert len(batches) == 5
        for batch in batches:
            texts = [t for i in batch for t in rows[i]["keys"]]
            assert len(texts) == len(set(texts))
    assert ContrastiveStep("mnrl", 20.0, "cosine", False, None).order(rows, 8, 0) is None
    assert ContrastiveStep("supcon", 20.0, "cosine", True, None).order(rows, 8, 0) is None


# ---------------------------------------------------------------------------- tunelab embed

@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, pairs_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embed-run")
    assert main(contrastive_args(tiny_bert_dir, pairs_jsonl, out, "run", **{"method.name": "lora"})) == 0
    return out / "run"


def test_embed_prints_and_writes_the_runs_vectors(lora_run, tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    from tunelab.pipeline import load_run

    loaded = load_run(str(lora_run))
    expected = loaded.task.embed(loaded, ["a bank", "  a river ", "stone"])
    assert torch.allclose(expected.norm(dim=1), torch.ones(3), atol=1e-5)
    capsys.readouterr()
    assert main(["embed", str(lora_run), "a bank", "  a river ", "stone"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["text"] for p in printed] == ["a bank", "  a river ", "stone"]
    assert np.allclose([p["embedding"] for p in printed], expected.numpy(), atol=1e-6)
    texts = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in ["a bank", "  a river ", "stone"]])
    for suffix in (".npy", ".safetensors", ".jsonl"):
        out = tmp_path / f"vectors{suffix}"
        assert main(["embed", str(lora_run), "--file", str(texts), "--out", str(out)]) == 0
        if suffix == ".npy":
            got = np.load(out)
        elif suffix == ".safetensors":
            got = load_file(str(out))["embeddings"].numpy()
        else:
            got = np.array([json.loads(x)["embedding"] for x in out.read_text().splitlines()])
        assert got.shape == (3, expected.shape[1]) and np.allclose(got, expected.numpy(), atol=1e-6)
    assert main(["predict", str(lora_run), "a bank"]) == 0
    predicted = json.loads(capsys.readouterr().out.splitlines()[-1])["embedding"]
    assert np.allclose(predicted, expected[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("argv, fragment", [
    ([], "not both and not neither"),
    (["a", "--out", "x.txt"], "accepted: .npy, .safetensors, .jsonl"),
    (["a", "--batch-size", "0"], "--batch-size must be at least 1"),
    ([""], "text 1 is empty"),
])
def test_embed_argument_errors(lora_run, argv, fragment, capsys) -> None:
    assert main(["embed", str(lora_run), *argv]) == 2
    one_error_line(capsys.readouterr().err, fragment)


def test_embed_refuses_an_existing_out_file_and_other_tasks(lora_run, tiny_bert_dir, reviews_jsonl, tmp_path,
                                                            capsys) -> None:
    out = tmp_path / "v.npy"
    out.write_bytes(b"keep me")
    assert main(["embed", str(lora_run), "a", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "exists; pass --overwrite")
    assert out.read_bytes() == b"keep me"
    from tests.conftest import tiny_overrides

    assert main(["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{"train.max_steps": 1})]) == 0
    capsys.readouterr()
    assert main(["embed", str(tmp_path / "run"), "a"]) == 2
    one_error_line(capsys.readouterr().err, "does not embed texts; runs of task.name=contrastive do")


# ---------------------------------------------------------------------------- sentence-transformers

def test_export_loads_in_sentence_transformers_with_the_same_embeddings(lora_run, tmp_path, capsys) -> None:
    from sentence_transformers import SentenceTransformer

    from tunelab.pipeline import load_run

    out = tmp_path / "st"
    assert main(["export", str(lora_run), "--format", "sentence-transformers", "--out", str(out)]) == 0
    texts = ["a bank", "sloping land beside a body of water", "x " * 80]  # the last is truncated at 32 tokens
    loaded = load_run(str(lora_run))
    ours = loaded.task.embed(loaded, texts)
    theirs = torch.tensor(SentenceTransformer(str(out), device="cpu").encode(texts))
    assert (ours - theirs).abs().max() <= 1e-5
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True


def test_export_refuses_a_method_that_does_not_merge(tiny_bert_dir, pairs_jsonl, tmp_path, capsys) -> None:
    extra = {"method.name": "prompt_tuning", "method.num_virtual_tokens": 4, "train.max_steps": 1}
    assert main(contrastive_args(tiny_bert_dir, pairs_jsonl, tmp_path, "pt", **extra)) == 0
    capsys.readouterr()
    out = str(tmp_path / "o")
    assert main(["export", str(tmp_path / "pt"), "--format", "sentence-transformers", "--out", out]) == 2
    one_error_line(capsys.readouterr().err, "cannot be merged")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("pooling, normalize", [("cls", False), ("mean", True), ("last", False)])
def test_a_sentence_transformers_folder_is_a_base_with_its_pooling(tiny_bert_dir, tmp_path, pooling,
                                                                   normalize) -> None:
    from sentence_transformers import SentenceTransformer

    from tunelab.tasks.contrastive import ContrastiveTask, ContrastiveTaskConfig
    from tunelab.tasks.embedding import st_pooling_config

    folder = tmp_path / "st-base"
    shutil.copytree(tiny_bert_dir, folder / "0_Transformer")  # the older layout: the model in a subfolder
    modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(st_pooling_config(pooling, 32)))
    task = ContrastiveTask(ContrastiveTaskConfig())
    resolved = task.resolve_model(str(folder))
    model = task.build_model(resolved, None).eval()
    assert (model.tunelab_pooling, model.tunelab_normalize) == (pooling, normalize)
    loaded = type("Loaded", (), {"model": model, "processor": task.load_processor(resolved),
                                 "cfg": type("C", (), {"data": type("D", (), {"max_length": 64})})})
    texts = ["a bank", "the side of a river where the land slopes"]
    theirs = torch.tensor(SentenceTransformer(str(folder), device="cpu").encode(texts))
    assert (task.embed(loaded, texts) - theirs).abs().max() <= 1e-5


def test_the_builtin_minilm_keeps_its_mean_pooling_and_normalisation() -> None:
    from tunelab.assets import builtin_model_path
    from tunelab.tasks.embedding import st_settings

    assert st_settings(builtin_model_path("minilm")) == ("mean", True)


@pytest.mark.integration
def test_pretrained_minilm_retrieves_glosses_far_better_than_a_random_encoder(tiny_bert_dir, tmp_path,
                                                                               capsys) -> None:
    from tunelab.data.builtin import get_builtin_dataset

    test = get_builtin_dataset("wordnet_pairs").load()["test"].select(range(200))
    data = write_jsonl(tmp_path / "t.jsonl", [{"anchor": r["anchor"], "positive": r["positive"]} for r in test])
    for name, model in (("minilm", "minilm"), ("random", str(tiny_bert_dir))):
        extra = {"data.validation_ratio": 0.1, "data.test_ratio": 0.5, "train.max_steps": 1, "train.lr": 1e-9}
        assert main(contrastive_args(Path(model), data, tmp_path, name, **extra)) == 0, capsys.readouterr().err
    minilm, random = (results(tmp_path / n)["baseline"] for n in ("minilm", "random"))
    assert minilm["recall_at_1"] > 0.4 > random["recall_at_1"] + 0.2


# ---------------------------------------------------------------------------- user errors

def test_an_empty_side_is_named_by_its_row(tiny_bert_dir, pairs_jsonl, tmp_path, capsys) -> None:
    rows = [json.loads(line) for line in pairs_jsonl.read_text().splitlines()][:30]
    rows[4]["positive"] = "   "
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert main(contrastive_args(tiny_bert_dir, bad, tmp_path, "bad")) == 2
    one_error_line(capsys.readouterr().err, "train row 5, column 'positive' is empty")
    assert not (tmp_path / "bad").exists()


def test_all_identical_texts_are_refused(tiny_bert_dir, tmp_path, capsys) -> None:
    bad = write_jsonl(tmp_path / "same.jsonl", [{"anchor": f"w{i}", "positive": "the same gloss"} for i in range(30)])
    assert main(contrastive_args(tiny_bert_dir, bad, tmp_path, "bad")) == 2
    one_error_line(capsys.readouterr().err, "have the same 'positive' text; in-batch negatives need different texts")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("rows, extra, fragment", [
    ([{"query": "a", "doc": "b"}] * 10, {}, "contrastive data needs (anchor, positive"),
    ([{"anchor": f"a{i}", "positive": f"b{i}", "score": "high"} for i in range(10)], {}, "scores must be numbers"),
    ([{"anchor": f"a{i}", "positive": f"b{i}"} for i in range(10)], {"task.loss": "cosent"},
     "task.loss=cosent does not fit pairs data"),
    ([{"anchor": f"a{i}", "positive": f"b{i}"} for i in range(10)], {"task.negative_columns": "[neg]"},
     "task.negative_columns[0]='neg' is not a column"),
    ([{"text": f"t{i}", "label": str(i)} for i in range(10)], {}, "supervised contrastive learning needs"),
])
def test_bad_data_is_one_line(tiny_bert_dir, tmp_path, capsys, rows, extra, fragment) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert main(contrastive_args(tiny_bert_dir, bad, tmp_path, "bad", **extra)) == 2
    one_error_line(capsys.readouterr().err, fragment)
    assert not (tmp_path / "bad").exists()


def test_a_builtin_dataset_for_another_task_is_refused(tiny_bert_dir, tmp_path, capsys) -> None:
    assert main(contrastive_args(tiny_bert_dir, Path("rt_preferences"), tmp_path, "bad")) == 2
    one_error_line(capsys.readouterr().err, "made for task.name=preference")

"""Engine: exact resume after a kill, NaN/inf stop with the last checkpoint intact, early stopping,
best-checkpoint restore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from tests.conftest import run_cli, tiny_overrides, train_and_kill
from tunelab.config import TrainConfig
from tunelab.errors import TrainingDiverged
from tunelab.methods import apply_methods
from tunelab.methods.full import FullConfig
from tunelab.tasks.common import predict_logits
from tunelab.train.checkpoint import latest_checkpoint
from tunelab.train.engine import Trainer


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "weights.safetensors"))


def test_killed_run_resumes_to_identical_weights(tiny_bert_dir, reviews_jsonl, tmp_path):
    # Dropout is on (BERT's 0.1 plus LoRA's), so equality also needs the RNG states restored.
    extra = {"train.epochs": 16, "train.save_steps": 3, "method.dropout": 0.1, "train.log_steps": 5}
    ref = run_cli("train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path / "a", **extra))
    assert ref.returncode == 0, ref.stderr[-2000:]

    run_b = tmp_path / "b" / "run"
    train_and_kill(tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path / "b", **extra), run_b, at_step=30)
    assert not (run_b / "results.json").exists(), "the run finished before it could be killed"

    resumed = run_cli("train", "--resume", str(run_b))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = _weights(tmp_path / "a" / "run"), _weights(run_b)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ra = json.loads((tmp_path / "a" / "run" / "results.json").read_text())
    rb = json.loads((run_b / "results.json").read_text())
    assert ra["test"] == rb["test"] and ra["global_step"] == rb["global_step"] == 192
    steps = [json.loads(x)["step"] for x in (run_b / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["event"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # the log reads as one run


def test_resume_of_finished_run_is_refused(tiny_bert_dir, reviews_jsonl, tmp_path):
    assert run_cli("train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path,
                                            **{"train.epochs": 1})).returncode == 0
    proc = run_cli("train", "--resume", str(tmp_path / "run"))
    assert proc.returncode == 2 and "already finished" in proc.stderr


def _tiny_trainer(tmp_path: Path, cfg: TrainConfig) -> tuple[Trainer, list[dict]]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32))
    apply_methods(model, [FullConfig()])
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 50, (8,), generator=g).tolist(), "labels": i % 2} for i in range(64)]

    def collate(batch):
        return {"input_ids": torch.tensor([r["input_ids"] for r in batch]),
                "labels": torch.tensor([r["labels"] for r in batch])}

    def evaluate(model, loader, accelerator):
        logits, labels = predict_logits(model, loader, accelerator)
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    trainer = Trainer(model, cfg, Accelerator(cpu=True), seed=0, collate=collate, evaluate_fn=evaluate,
                      best_metric=("accuracy", True), log=lambda e: None, run_dir=tmp_path)
    return trainer, rows


def test_nan_loss_stops_with_last_checkpoint_intact(tmp_path, monkeypatch):
    trainer, rows = _tiny_trainer(tmp_path, TrainConfig(epochs=3, batch_size=8, save_steps=2,
                                                        eval_strategy="no"))
    forward = trainer.model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = forward(*args, **kwargs)
        if calls["n"] == 6:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.model, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"nan at step 6.*step-00000004"):
        trainer.fit(rows, None)
    latest = latest_checkpoint(tmp_path / "checkpoints")
    assert latest is not None and latest.name == "step-00000004"
    weights = load_file(str(latest / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_nan_loss_cli_exit_code(tiny_bert_dir, tmp_path):
    data = tmp_path / "huge.csv"
    data.write_text("text,y\n" + "".join(f"row {i},1e39\n" for i in range(40)))
    proc = run_cli("train", *tiny_overrides(tiny_bert_dir, data, tmp_path, **{
        "task.name": "regression", "data.label_column": "y"}))
    assert proc.returncode == 3
    assert "loss became inf" in proc.stderr and "Traceback" not in proc.stderr


def test_early_stopping_and_best_checkpoint(tmp_path):
    # A vanishing LR never improves validation accuracy after the first evaluation.
    trainer, rows = _tiny_trainer(tmp_path, TrainConfig(epochs=10, batch_size=8, lr=1e-12,
                                                        early_stopping_patience=2, warmup_ratio=0))
    result = trainer.fit(rows[:48], rows[48:])
    assert result.stopped_early and result.epochs_completed == 3 and result.global_step == 18
    assert result.best_step == 6
    assert (tmp_path / "best" / "trainable.safetensors").is_file()
    assert trainer.restore_best()
    best = load_file(str(tmp_path / "best" / "trainable.safetensors"))
    params = dict(trainer.acc.unwrap_model(trainer.model).named_parameters())
    assert all(torch.equal(params[k].detach(), v) for k, v in best.items())


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    trainer, rows = _tiny_trainer(tmp_path, TrainConfig(epochs=2, batch_size=8, grad_accum=2,
                                                        eval_strategy="no"))
    result = trainer.fit(rows, None)
    assert result.global_step == 8 and result.train_samples == 128


def test_gradient_accumulation_steps_on_the_epoch_remainder(tmp_path):
    # 64 rows / 8 = 8 batches per epoch; accumulating 3 gives steps after batches 3, 6 and 8.
    trainer, rows = _tiny_trainer(tmp_path, TrainConfig(epochs=2, batch_size=8, grad_accum=3,
                                                        eval_strategy="no"))
    result = trainer.fit(rows, None)
    assert result.global_step == 6 and result.epochs_completed == 2
    assert all(p.grad is None for p in trainer.model.parameters())  # nothing left over

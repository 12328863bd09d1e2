#!/usr/bin/env python
"""The peer of tunelab's LoRA run: Hugging Face ``transformers.Trainer`` + ``peft`` LoRA.

It trains on exactly the rows tunelab uses (``tunelab.tasks.classification.prepare_data`` with the same data
settings) and with the same hyperparameters, given on the command line, then evaluates once on the
test split and writes one JSON file (``--out``):

    test_accuracy        sklearn accuracy on the test split
    train_seconds        Trainer's ``train_runtime`` (the training loop; no evaluation happens in it)
    samples_per_second   training samples seen / train_seconds
    train_samples        training samples seen (rows x epochs; no batch is dropped)
    peak_memory_mb       peak RSS of this process, ru_maxrss(RUSAGE_SELF) / 1024 (Linux: KiB -> MiB)
    params               trainable / total / trainable_percent

Only HF defaults are used where tunelab has no counterpart to match: random (not length-grouped)
batches, dynamic padding (``DataCollatorWithPadding``), the default optimizer, no evaluation
during training, no checkpoints.

Run from the repository root, e.g.:
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/peer_hf_peft.py --out /tmp/peer.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABEL_IDS = {"rotten": 0, "fresh": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # LoRA
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--target-modules", default="query,value", help="comma separated")
    # optimisation
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--optim", default=None,
                   help="TrainingArguments.optim (default: the Trainer's own default)")
    # data (passed to tunelab.prepare_data so the rows are identical)
    p.add_argument("--model", default="minilm", help="tunelab alias or local model folder")
    p.add_argument("--data", default="rotten_tomatoes")
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--validation-ratio", type=float, default=0.1)
    p.add_argument("--test-ratio", type=float, default=0.1)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--out", required=True, help="where to write the JSON result")
    return p.parse_args(argv)


def tunelab_warmup_steps(n_train: int, batch_size: int, epochs: int, ratio: float) -> tuple[int, int]:
    """(total optimizer steps, warmup steps) computed the way tunelab's engine does (1 process,
    no gradient accumulation), so both runs follow the same LR schedule step for step.
    (The Trainer would use ceil(ratio * total) instead of round.)"""
    steps_per_epoch = math.ceil(n_train / batch_size)
    total = steps_per_epoch * epochs
    return total, int(round(ratio * total))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.time()

    import numpy as np
    import peft
    import torch
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import accuracy_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, set_seed)

    from tunelab.config import build_config
    from tunelab.models.loading import resolve_model
    from tunelab.tasks.classification import prepare_data
    from tunelab.tasks import get_task

    # ---------------------------------------------------------------- data: tunelab's own splits
    overrides = [f"model.name_or_path={args.model}", f"data.source={args.data}",
                 f"data.split_seed={args.split_seed}", f"data.validation_ratio={args.validation_ratio}",
                 f"data.test_ratio={args.test_ratio}", f"data.max_length={args.max_length}"]
    if args.max_train_samples:
        overrides.append(f"data.max_train_samples={args.max_train_samples}")
    cfg = build_config(None, overrides)
    prep = prepare_data(cfg, get_task("classification"))
    text_col, label_col = prep.columns.text, prep.columns.label
    model_dir = resolve_model(args.model)

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    def encode(ds):
        labels = list(ds[label_col])
        unknown = sorted(set(labels) - set(LABEL_IDS))
        if unknown:
            raise SystemExit(f"unexpected labels {unknown}; expected {sorted(LABEL_IDS)}")

        def tok(batch):
            enc = tokenizer([str(t) for t in batch[text_col]], truncation=True, max_length=args.max_length)
            enc["labels"] = [LABEL_IDS[y] for y in batch[label_col]]
            return enc

        return ds.map(tok, batched=True, remove_columns=ds.column_names, keep_in_memory=True)

    train_ds = encode(prep.splits["train"])
    test_ds = encode(prep.splits["test"])

    # ---------------------------------------------------------------- model: peft LoRA
    set_seed(args.seed)  # the classifier head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label={v: k for k, v in LABEL_IDS.items()}, label2id=LABEL_IDS,
        local_files_only=True)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.r, lora_alpha=args.alpha,
                      lora_dropout=args.dropout, target_modules=args.target_modules.split(","),
                      modules_to_save=["classifier"])
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    # peft keeps a frozen copy of the classifier (modules_to_save): count the base model's size too
    base_total = sum(p.numel() for n, p in model.named_parameters() if "original_module" not in n)

    scratch = tempfile.mkdtemp(prefix="peer_hf_peft_")
    total_steps, warmup_steps = tunelab_warmup_steps(len(train_ds), args.batch_size, args.epochs,
                                                     args.warmup_ratio)
    targs = dict(
        output_dir=scratch,  # nothing is saved there (save_strategy="no")
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=warmup_steps,
        lr_scheduler_type="linear",
        max_grad_norm=args.max_grad_norm,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=args.seed,
        logging_steps=10,
    )
    if args.optim:
        targs["optim"] = args.optim
    training_args = TrainingArguments(**targs)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    out = trainer.train()
    train_seconds = float(out.metrics["train_runtime"])
    train_samples = len(train_ds) * args.epochs

    # ---------------------------------------------------------------- final test evaluation only
    pred = trainer.predict(test_ds)
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    accuracy = float(accuracy_score(np.asarray(pred.label_ids), np.asarray(logits).argmax(-1)))

    result = {
        "tool": "hf_trainer+peft",
        "test_accuracy": accuracy,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(train_samples / train_seconds, 3),
        "train_samples": train_samples,
        "trainer_train_samples_per_second": out.metrics.get("train_samples_per_second"),
        "global_step": int(out.global_step),
        "planned_steps": total_steps,
        "warmup_steps": warmup_steps,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "params": {"trainable": trainable, "total": base_total, "total_with_peft_copies": total,
                   "trainable_percent": 100.0 * trainable / base_total},
        "rows": {"train": len(train_ds), "test": len(test_ds)},
        "training_loss": out.metrics.get("train_loss"),
        "optimizer": training_args.optim if isinstance(training_args.optim, str) else str(training_args.optim),
        "hyperparameters": {k: v for k, v in vars(args).items() if k != "out"},
        "wall_seconds_in_process": round(time.time() - t_start, 3),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "torch_threads": torch.get_num_threads(),
    }
    shutil.rmtree(scratch, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("test_accuracy", "train_seconds", "samples_per_second",
                                             "peak_memory_mb")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

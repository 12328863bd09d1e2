#!/usr/bin/env python
"""The peer of tunelab's contrastive run: sentence-transformers' ``SentenceTransformerTrainer``.

One run in its own process. It trains the built-in MiniLM sentence-transformers folder on the
(anchor, positive) rows of ``--train-file`` (a jsonl the parent writes: exactly the rows tunelab
trains on) with ``MultipleNegativesRankingLoss(scale=20)`` (cosine, in-batch negatives) and
``BatchSamplers.NO_DUPLICATES``, then scores the anchors of ``--test-file`` retrieving their positive
among the unique positives, and writes one JSON file (``--out``):

    samples_per_second   the Trainer's own ``train_samples_per_second`` (rows x epochs / train_runtime)
    train_seconds        the Trainer's ``train_runtime`` (its whole ``train()`` loop; nothing is
                         evaluated or saved inside it)
    loop_seconds         a callback's sum of the step loop (batch fetch + collation + forward/backward/
                         optimizer step), logging excluded -- the closer analogue of tunelab's
                         ``train_seconds``; ``loop_samples_per_second`` from it
    test                 recall@1/5/10, MRR (full ranking), nDCG@10 computed by tunelab's own
                         ``tunelab.tasks.retrieval.retrieval_metrics`` on this model's embeddings
    st_evaluator         the same queries/corpus scored by sentence-transformers'
                         ``InformationRetrievalEvaluator`` (a cross-check of the metric code; it reports
                         MRR@10, not the full-ranking MRR)
    peak_memory_mb       ru_maxrss(RUSAGE_SELF) / 1024 (Linux: KiB -> MiB)

Settings matched to tunelab: lr, epochs, batch size, weight decay, max grad norm, seed, linear
schedule with the warmup given in steps computed as tunelab does (``round(ratio x total steps)``;
the Trainer would take ``ceil``), ``model.max_seq_length = --max-length``, fp32 on the CPU, no
evaluation during training, no checkpoints (``save_strategy="no"``), ``report_to="none"``,
``dataloader_drop_last=False``, no dataloader workers. Everything else is the library's default
(optimizer, tokenising in the collator at each step).

Run from the repository root, e.g.:
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/peer_st.py \\
        --train-file /tmp/train.jsonl --test-file /tmp/test.jsonl --out /tmp/peer_st.json
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-file", type=Path, required=True, help="jsonl with anchor, positive")
    p.add_argument("--test-file", type=Path, required=True, help="jsonl with anchor, positive")
    p.add_argument("--model", default="minilm", help="tunelab built-in alias or a sentence-transformers folder")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--scale", type=float, default=20.0, help="MNRL similarity scale (1 / temperature)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--optim", default=None, help="TrainingArguments.optim (default: the Trainer's own)")
    p.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    return p.parse_args(argv)


def read_pairs(path: Path) -> list[dict[str, str]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("anchor"), str) or not isinstance(row.get("positive"), str):
            raise SystemExit(f"{path} line {n}: needs string 'anchor' and 'positive'")
        rows.append({"anchor": row["anchor"], "positive": row["positive"]})
    if not rows:
        raise SystemExit(f"{path} holds no rows")
    return rows


def corpus_key(text: str) -> str:
    """Two positives are the same corpus document when they match after collapsing whitespace and
    lower-casing (the identity tunelab's evaluation uses for its corpus of unique texts)."""
    return " ".join(str(text).split()).lower()


def planned_steps(n_train: int, batch_size: int, epochs: int, ratio: float) -> tuple[int, int]:
    """(optimizer steps, warmup steps) the way tunelab's engine counts them (1 process, no accumulation)."""
    total = math.ceil(n_train / batch_size) * epochs
    return total, int(round(ratio * total))


def make_loop_timer():
    """A TrainerCallback summing the step loop's time, logging excluded (built lazily: transformers)."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds, self.steps, self._mark = 0.0, 0, None

        def on_epoch_begin(self, args, state, control, **kwargs):
            self._mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self._mark is not None:
                self.seconds += now - self._mark
            self.steps += 1
            self._mark = now

        def on_log(self, args, state, control, **kwargs):
            self._mark = time.perf_counter()  # the next step starts after the logging

    return LoopTimer()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.time()

    import datasets
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from tunelab.tasks.retrieval import retrieval_metrics

    if Path(args.model).is_dir():
        model_dir = Path(args.model)
    else:
        from tunelab.assets import builtin_model_path

        model_dir = builtin_model_path(args.model)

    train_rows = read_pairs(args.train_file)
    test_rows = read_pairs(args.test_file)
    train_ds = datasets.Dataset.from_dict({"anchor": [r["anchor"] for r in train_rows],
                                           "positive": [r["positive"] for r in train_rows]})

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = args.max_length
    params_total = sum(p.numel() for p in model.parameters())
    params_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loss = MultipleNegativesRankingLoss(model, scale=args.scale)  # similarity: cos_sim (default)

    total_steps, warmup_steps = planned_steps(len(train_ds), args.batch_size, args.epochs, args.warmup_ratio)
    scratch = tempfile.mkdtemp(prefix="peer_st_")
    targs = dict(
        output_dir=scratch,  # nothing is written there (save_strategy="no")
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=warmup_steps,
        lr_scheduler_type="linear",
        max_grad_norm=args.max_grad_norm,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        dataloader_drop_last=False,
        dataloader_num_workers=0,
        fp16=False,
        bf16=False,
        use_cpu=True,
        seed=args.seed,
        logging_steps=args.logging_steps,
    )
    if args.optim:
        targs["optim"] = args.optim
    training_args = SentenceTransformerTrainingArguments(**targs)
    timer = make_loop_timer()
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_ds, loss=loss,
                                         callbacks=[timer])
    out = trainer.train()
    metrics = dict(out.metrics)
    train_seconds = float(metrics["train_runtime"])
    train_samples = len(train_ds) * args.epochs

    # ---------------------------------------------------------------- test: both metric codes, one model
    model.eval()
    corpus_index: dict[str, int] = {}
    corpus_texts: list[str] = []
    relevant: list[set[int]] = []
    for row in test_rows:
        key = corpus_key(row["positive"])
        if key not in corpus_index:
            corpus_index[key] = len(corpus_texts)
            corpus_texts.append(row["positive"])
        relevant.append({corpus_index[key]})
    anchors = [r["anchor"] for r in test_rows]
    t_eval = time.perf_counter()
    with torch.inference_mode():
        q = model.encode(anchors, batch_size=args.eval_batch_size, convert_to_tensor=True, show_progress_bar=False)
        c = model.encode(corpus_texts, batch_size=args.eval_batch_size, convert_to_tensor=True,
                         show_progress_bar=False)
    q, c = q.float().cpu(), c.float().cpu()
    ours = retrieval_metrics(q, c, relevant, similarity="cosine")
    encode_seconds = time.perf_counter() - t_eval
    norms = torch.linalg.vector_norm(torch.cat([q, c]), dim=-1)

    evaluator = InformationRetrievalEvaluator(
        queries={f"q{i}": a for i, a in enumerate(anchors)},
        corpus={f"d{j}": t for j, t in enumerate(corpus_texts)},
        relevant_docs={f"q{i}": {f"d{j}" for j in rel} for i, rel in enumerate(relevant)},
        accuracy_at_k=[1, 5, 10], precision_recall_at_k=[1, 5, 10], mrr_at_k=[10], ndcg_at_k=[10],
        map_at_k=[100], batch_size=args.eval_batch_size, name="test", write_csv=False, show_progress_bar=False,
    )
    st_raw = evaluator(model)
    prefix = f"test_{model.similarity_fn_name}_"
    st_eval = {
        "score_function": model.similarity_fn_name,
        "recall_at_1": st_raw.get(prefix + "recall@1"),
        "recall_at_5": st_raw.get(prefix + "recall@5"),
        "recall_at_10": st_raw.get(prefix + "recall@10"),
        "accuracy_at_1": st_raw.get(prefix + "accuracy@1"),
        "mrr_at_10": st_raw.get(prefix + "mrr@10"),
        "ndcg_at_10": st_raw.get(prefix + "ndcg@10"),
        "raw": {k: float(v) for k, v in st_raw.items()},
    }
    agree = {k: (abs(ours[k] - st_eval[k]) if st_eval[k] is not None else None)
             for k in ("recall_at_1", "recall_at_5", "recall_at_10", "ndcg_at_10")}

    result = {
        "tool": "sentence-transformers",
        "test": {"split": "test", **ours, "corpus": len(corpus_texts)},
        "st_evaluator": st_eval,
        "metric_code_abs_diff": agree,
        "embedding_norms": {"min": float(norms.min()), "max": float(norms.max())},
        "samples_per_second": float(metrics["train_samples_per_second"]),
        "train_seconds": round(train_seconds, 3),
        "train_samples": train_samples,
        "loop_seconds": round(timer.seconds, 3),
        "loop_samples_per_second": round(train_samples / timer.seconds, 3) if timer.seconds else None,
        "trainer_metrics": metrics,
        "global_step": int(out.global_step),
        "planned_steps": total_steps,
        "warmup_steps": warmup_steps,
        "training_loss": metrics.get("train_loss"),
        "encode_and_score_seconds": round(encode_seconds, 3),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "params": {"trainable": params_trainable, "total": params_total,
                   "trainable_percent": 100.0 * params_trainable / params_total},
        "rows": {"train": len(train_rows), "test": len(test_rows), "corpus": len(corpus_texts)},
        "model_dir": str(model_dir),
        "max_seq_length": model.max_seq_length,
        "modules": [type(m).__name__ for m in model],
        "optimizer": str(training_args.optim.value if hasattr(training_args.optim, "value") else training_args.optim),
        "batch_sampler": str(training_args.batch_sampler),
        "hyperparameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "wall_seconds_in_process": round(time.time() - t_start, 3),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__},
        "torch_threads": torch.get_num_threads(),
    }
    shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({"recall_at_1": ours["recall_at_1"], "st_recall_at_1": st_eval["recall_at_1"],
                      "samples_per_second": result["samples_per_second"], "train_seconds": result["train_seconds"],
                      "peak_memory_mb": result["peak_memory_mb"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The peer of tunelab's SFT + LoRA run: TRL ``SFTTrainer`` + ``SFTConfig`` + ``peft`` LoRA.

It trains on exactly the conversations tunelab uses (``tunelab.config.build_config`` +
``get_task(cfg.task).prepare(cfg, tokenizer)`` with the same data settings, ``.conversations["train"]``)
and with the same hyperparameters, given on the command line; there is no evaluation and nothing is
saved. It writes one JSON file (``--out``):

    train_seconds        the training loop, timed by a callback like tunelab times its loop: from the
                         start of the epoch to each optimizer step's end, summed, the logging after a
                         step excluded (batch fetching and collation included, as in tunelab)
    train_tokens         non-padding input tokens of the batches of the optimizer steps, summed
                         (counted by wrapping TRL's collator: attention_mask.sum(), or, padding-free,
                         the flattened row's length); trl_reported_num_tokens is TRL's own count
    tokens_per_second    train_tokens / train_seconds
    global_step, final_train_loss (the last step's loss), train_loss (the mean over the run)
    peak_memory_mb       peak RSS of this process, ru_maxrss(RUSAGE_SELF) / 1024 (Linux: KiB -> MiB)
    masking              how TRL masked the prompt and whether its labels equal tunelab's exactly
    packing              TRL's packing strategy, padding-free, position ids, attention implementation
                         and a measured cross-contamination check (packed mode only)

Row format (``--format``):

* ``prompt_completion`` (default): each conversation becomes TRL's conversational prompt-completion
  example ``{"prompt": turns[:-1], "completion": [last assistant turn]}``; TRL renders both with the
  tokenizer's own chat template and, with ``completion_only_loss=True``, trains only the tokens after
  the rendered prompt + generation prompt, i.e. the response and its ``<|im_end|>\\n``: tunelab's mask.
* ``messages``: ``{"messages": turns}`` with ``assistant_only_loss=True``. TRL 1.16 needs
  ``{% generation %}`` markers for that, and cannot patch SmolLM2's ChatML template itself
  (``get_training_chat_template`` raises), so this script wraps the assistant turn's
  ``content + '<|im_end|>\\n'`` in markers (the rendered text is unchanged).

Run from the repository root, e.g.:
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/peer_trl_sft.py --out /tmp/trl.json
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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IGNORE = -100
# SmolLM2's ChatML turn, as its chat template writes it, and the same turn with TRL's generation markers
# around what the assistant writes (only for --format messages).
# (the template's string literals hold real newline characters)
CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
CHATML_TURN_MARKED = (
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}{% else %}" + CHATML_TURN + "{% endif %}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # LoRA
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--target-modules", default="all-linear", help="'all-linear' or a comma separated list")
    # optimisation
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--log-steps", type=int, default=1)
    p.add_argument("--packing", action="store_true", help="SFTConfig(packing=True) (TRL's default strategy)")
    p.add_argument("--packing-strategy", default=None, help="SFTConfig.packing_strategy (default: TRL's, 'bfd')")
    p.add_argument("--format", choices=("prompt_completion", "messages"), default="prompt_completion")
    p.add_argument("--optim", default=None, help="SFTConfig.optim (default: the Trainer's own default)")
    p.add_argument("--trl-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more SFTConfig fields (values parsed as JSON when possible), e.g. "
                        "train_sampling_strategy=group_by_length")
    # data (passed to tunelab's own data path so the conversations are identical)
    p.add_argument("--model", default="smollm2-135m", help="tunelab alias or local model folder")
    p.add_argument("--data", default="wordnet_instruct")
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--validation-ratio", type=float, default=0.0)
    p.add_argument("--test-ratio", type=float, default=0.1)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--test-file", default=None, help="data.test_file (does not change the training rows)")
    p.add_argument("--out", required=True, help="where to write the JSON result")
    return p.parse_args(argv)


def parse_extra(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--trl-extra {pair!r}: expected KEY=VALUE")
        key, raw = pair.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


# ---------------------------------------------------------------------------- data

def tunelab_data(args: argparse.Namespace):
    """(tokenizer, train conversations, tunelab's unpacked train rows) through tunelab's own data path."""
    from tunelab.config import build_config
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.tasks import get_task

    overrides = ["task.name=sft", "task.packing=false", f"model.name_or_path={args.model}",
                 f"data.source={args.data}", f"data.split_seed={args.split_seed}",
                 f"data.validation_ratio={args.validation_ratio}", f"data.test_ratio={args.test_ratio}",
                 f"data.max_length={args.max_length}"]
    if args.max_train_samples:
        overrides.append(f"data.max_train_samples={args.max_train_samples}")
    if args.test_file:
        overrides.append(f"data.test_file={args.test_file}")
    cfg = build_config(None, overrides)
    resolved = resolve_model(args.model)
    tokenizer = load_tokenizer(resolved)
    data = get_task(cfg.task).prepare(cfg, tokenizer)  # also sets the pad token as tunelab does
    return resolved, tokenizer, data.conversations["train"], data.rows["train"], data.dropped.get("train", 0)


def to_trl_rows(convs, fmt: str) -> list[dict[str, Any]]:
    rows = []
    for conv in convs:
        if conv.is_text:
            raise SystemExit("plain-text rows are not instruction data; use an instruction dataset")
        turns = [dict(t) for t in conv.messages]
        if fmt == "messages":
            rows.append({"messages": turns})
        else:
            rows.append({"prompt": turns[:-1], "completion": turns[-1:]})
    return rows


def mark_generation(template: str) -> str:
    """SmolLM2's ChatML template with ``{% generation %}`` around the assistant's content + end of turn."""
    if CHATML_TURN not in template:
        raise SystemExit("--format messages needs the ChatML chat template of smollm2-135m (the turn expression "
                         "to wrap in generation markers was not found); use --format prompt_completion")
    return template.replace(CHATML_TURN, CHATML_TURN_MARKED)


def split_packed(ds) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Examples (input_ids, labels) of a prepared TRL dataset; packed rows are cut at ``seq_lengths``."""
    out = []
    for row in ds:
        ids, labels = list(row["input_ids"]), list(row["labels"])
        lengths = row.get("seq_lengths") or [len(ids)]
        start = 0
        for n in lengths:
            out.append((tuple(ids[start:start + n]), tuple(labels[start:start + n])))
            start += n
    return out


def compare_labels(trl_examples, tunelab_rows, tokenizer) -> dict[str, Any]:
    """Do TRL's token ids and loss labels equal tunelab's, example for example (as multisets)?"""
    from collections import Counter

    mine = Counter((tuple(r["input_ids"]), tuple(r["labels"])) for r in tunelab_rows)
    theirs = Counter(trl_examples)
    only_trl, only_tl = theirs - mine, mine - theirs
    out: dict[str, Any] = {
        "examples_tunelab": sum(mine.values()), "examples_trl": sum(theirs.values()),
        "identical_input_ids_and_labels": not only_trl and not only_tl,
        "examples_only_in_trl": sum(only_trl.values()), "examples_only_in_tunelab": sum(only_tl.values()),
        "trained_tokens_tunelab": sum(sum(1 for x in r["labels"][1:] if x != IGNORE) for r in tunelab_rows),
        "trained_tokens_trl": sum(sum(1 for x in lab[1:] if x != IGNORE) for _, lab in trl_examples),
    }
    if only_trl and only_tl:  # show the first difference, decoded
        (ids_a, lab_a), (ids_b, lab_b) = next(iter(only_trl)), next(iter(only_tl))
        out["first_difference"] = {
            "trl_text": tokenizer.decode(ids_a), "tunelab_text": tokenizer.decode(ids_b),
            "trl_trained_text": tokenizer.decode([t for t, y in zip(ids_a, lab_a) if y != IGNORE]),
            "tunelab_trained_text": tokenizer.decode([t for t, y in zip(ids_b, lab_b) if y != IGNORE]),
        }
    return out


# ---------------------------------------------------------------------------- measuring

class CountingCollator:
    """Wraps TRL's collator: records each batch's non-padding, padded and trained-label token counts."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[dict[str, int]] = []

    def __call__(self, examples):
        batch = self.inner(examples)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else int(ids.numel())  # padding-free: one row, no padding
        labels = batch["labels"]
        self.batches.append({"tokens": real, "padded_tokens": int(ids.numel()), "rows": int(ids.shape[0]),
                             "trained_tokens": int((labels[..., 1:] != IGNORE).sum())})
        return batch

    def __getattr__(self, name):  # anything the Trainer asks of the collator itself
        return getattr(self.inner, name)


def loop_timer():
    """A TrainerCallback that sums, per optimizer step, the time since the previous boundary (epoch
    start, previous step end, or end of the logging that followed it): the loop without logging."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def __init__(self) -> None:
            self.mark: float | None = None
            self.seconds = 0.0
            self.step_seconds: list[float] = []
            self.log_seconds = 0.0

        def on_epoch_begin(self, args, state, control, **kw):
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.step_seconds.append(now - self.mark)
            self.seconds += now - self.mark
            self.mark = now

        def on_log(self, args, state, control, **kw):
            if self.mark is not None:
                now = time.perf_counter()
                self.log_seconds += now - self.mark
                self.mark = now

    return LoopTimer()


def contamination_check(model, ds, collator, n_rows: int = 2) -> dict[str, Any]:
    """Logits of each example alone vs inside TRL's packed, padding-free batch (same model, eval mode)."""
    from itertools import pairwise

    import torch

    rows = [ds[i] for i in range(min(n_rows, len(ds)))]
    batch = collator.inner(rows) if isinstance(collator, CountingCollator) else collator(rows)
    was_training = model.training
    model.eval()
    worst = 0.0
    examples = 0
    with torch.no_grad():
        # the training batch as the model gets it (minus labels): position_ids, cu_seq_lens_*, no attention mask
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        flat = batch["input_ids"][0]
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [flat.numel()]
        for a, b in pairwise(starts):
            alone = model(input_ids=flat[a:b][None]).logits[0]
            worst = max(worst, float((alone - packed[a:b]).abs().max()))
            examples += 1
    model.train(was_training)
    return {"examples_checked": examples, "packed_rows_checked": len(rows),
            "flattened_length": int(flat.numel()), "max_abs_logit_diff": worst,
            "cross_contamination_free": worst < 1e-3}


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.time()

    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    resolved, tokenizer, convs, tunelab_rows, tunelab_dropped = tunelab_data(args)
    train_ds = Dataset.from_list(to_trl_rows(convs, args.format))

    original_template = tokenizer.chat_template
    template_note = "the tokenizer's own chat template, unchanged"
    patch_error = None
    try:
        from trl.chat_template_utils import get_training_chat_template

        get_training_chat_template(tokenizer)
    except Exception as e:  # noqa: BLE001 - what TRL says about this template, for the JSON
        patch_error = f"{type(e).__name__}: {e}"
    if args.format == "messages":
        tokenizer.chat_template = mark_generation(original_template)
        template_note = ("the tokenizer's chat template with {% generation %} markers around the assistant's "
                         "content + '<|im_end|>\\n' (rendered text unchanged)")

    scratch = tempfile.mkdtemp(prefix="peer_trl_sft_")
    config_kwargs: dict[str, Any] = dict(
        output_dir=scratch,  # nothing is saved there (save_strategy="no")
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps or -1,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        lr_scheduler_type="linear",
        max_grad_norm=args.max_grad_norm,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL's default is bf16=True: train in fp32 like tunelab
        fp16=False,
        gradient_checkpointing=False,  # TRL's default is True; tunelab's train.gradient_checkpointing=false
        dataloader_num_workers=0,
        seed=args.seed,
        logging_steps=args.log_steps,
        disable_tqdm=True,  # tunelab shows no bar when its output is not a terminal
        max_length=args.max_length,
        packing=args.packing,
        model_init_kwargs={"dtype": "float32"},
    )
    if args.packing_strategy:
        config_kwargs["packing_strategy"] = args.packing_strategy
    if args.format == "messages":
        config_kwargs["assistant_only_loss"] = True
    else:
        config_kwargs["completion_only_loss"] = True
    if args.optim:
        config_kwargs["optim"] = args.optim
    extra = parse_extra(args.trl_extra)
    config_kwargs.update(extra)
    sft_config = SFTConfig(**config_kwargs)

    targets: str | list[str] = (args.target_modules if args.target_modules == "all-linear"
                                else args.target_modules.split(","))
    lora = LoraConfig(task_type="CAUSAL_LM", r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                      target_modules=targets, bias="none")

    timer = loop_timer()
    trainer = SFTTrainer(model=resolved, args=sft_config, train_dataset=train_ds, processing_class=tokenizer,
                         peft_config=lora, callbacks=[timer])
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter

    # the learning-rate schedule of tunelab: warmup = round(ratio x total optimizer steps)
    n_rows = len(trainer.train_dataset)
    steps_per_epoch = math.ceil(n_rows / args.batch_size)
    planned_steps = args.max_steps or steps_per_epoch * args.epochs
    warmup_steps = int(round(args.warmup_ratio * planned_steps))
    trainer.args.warmup_steps = warmup_steps

    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base_total = total - lora_params

    # labels check (before training; reads the prepared dataset only)
    masking = compare_labels(split_packed(trainer.train_dataset), tunelab_rows, tokenizer)
    masking.update({
        "format": args.format,
        "option": "assistant_only_loss=True" if args.format == "messages" else "completion_only_loss=True",
        "template": template_note,
        "trl_can_patch_this_template_for_assistant_only_loss": patch_error is None,
        "trl_get_training_chat_template_says": patch_error,
        "how": ("prompt-completion: TRL tokenizes the prompt with add_generation_prompt=True and prompt+completion; "
                "labels after their common prefix are trained (completion_mask)" if args.format != "messages" else
                "messages: apply_chat_template(return_assistant_tokens_mask=True) marks the tokens rendered inside "
                "{% generation %} ... {% endgeneration %} (assistant_masks)"),
    })

    out = trainer.train()
    steps = out.global_step
    used = counter.batches[: steps * max(1, sft_config.gradient_accumulation_steps)]
    train_tokens = sum(b["tokens"] for b in used)
    train_seconds = timer.seconds
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e and "step" in e]

    packing: dict[str, Any] = {"packing": bool(args.packing)}
    if args.packing:
        packing.update({
            "strategy": sft_config.packing_strategy,
            "padding_free": bool(trainer.padding_free),
            "position_ids_restart_per_example": True,
            "attention_mask_passed": False,
            "how": ("best-fit decreasing: examples sorted by length (longest first), each put into the fullest "
                    "row it fits (max_length tokens per row), over-long examples truncated; the collator then "
                    "concatenates the batch's rows into ONE row (padding-free) with position_ids restarting at 0 "
                    "per example, labels -100 at each example start, and no attention mask"),
            "attention": ("transformers masking_utils.find_packed_sequence_indices turns position_id restarts into "
                          "a block-diagonal causal mask when no attention_mask is given (sdpa, eager, flex); "
                          "flash-attention kernels use cu_seq_lens instead"),
            "packed_rows": n_rows,
            "examples": len(convs),
        })
        packing.update(contamination_check(model, trainer.train_dataset, counter))

    result = {
        "tool": "trl_sft+peft",
        "train_seconds": round(train_seconds, 3),
        "train_tokens": train_tokens,
        "tokens_per_second": round(train_tokens / train_seconds, 3) if train_seconds else None,
        "trl_reported_num_tokens": int(trainer._total_train_tokens),
        "padded_tokens": sum(b["padded_tokens"] for b in used),
        "trained_label_tokens": sum(b["trained_tokens"] for b in used),
        "batches_counted": len(used),
        "train_samples": sum(b["rows"] for b in used),
        "samples_per_second": round(sum(b["rows"] for b in used) / train_seconds, 3) if train_seconds else None,
        "trainer_train_runtime": float(out.metrics["train_runtime"]),
        "logging_seconds_excluded": round(timer.log_seconds, 3),
        "step_seconds": [round(s, 4) for s in timer.step_seconds],
        "global_step": steps,
        "planned_steps": planned_steps,
        "warmup_steps": warmup_steps,
        "final_train_loss": losses[-1][1] if losses else None,
        "train_losses": losses,
        "train_loss": out.metrics.get("train_loss"),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "params": {"trainable": trainable, "total": base_total, "total_with_lora": total,
                   "trainable_percent": 100.0 * trainable / base_total},
        "rows": {"examples": len(convs), "trl_train_rows": n_rows, "tunelab_dropped": tunelab_dropped},
        "masking": masking,
        "packing": packing,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "model_dtype": str(next(model.parameters()).dtype),
        "optimizer": sft_config.optim if isinstance(sft_config.optim, str) else str(sft_config.optim),
        "sampler": getattr(sft_config, "train_sampling_strategy", None),
        "fused_lm_head": ("TRL computes the loss from log-probabilities of the labelled positions only, in tiles, "
                          "without materialising the (batch, length, vocabulary) logits (trl add_fused_lm_head)"),
        "sft_config": {k: getattr(sft_config, k) for k in (
            "per_device_train_batch_size", "num_train_epochs", "max_steps", "learning_rate", "weight_decay",
            "lr_scheduler_type", "max_grad_norm", "bf16", "gradient_checkpointing", "max_length", "packing",
            "packing_strategy", "padding_free", "completion_only_loss", "assistant_only_loss", "seed",
            "logging_steps", "shuffle_dataset", "gradient_accumulation_steps", "dataloader_num_workers")},
        "trl_extra": extra,
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("out", "trl_extra")},
        "wall_seconds_in_process": round(time.time() - t_start, 3),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__},
        "torch_threads": torch.get_num_threads(),
    }
    shutil.rmtree(scratch, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("train_seconds", "train_tokens", "tokens_per_second", "global_step",
                                             "final_train_loss", "peak_memory_mb")}))
    print(json.dumps({"labels_identical_to_tunelab": masking["identical_input_ids_and_labels"],
                      "cross_contamination_free": packing.get("cross_contamination_free")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

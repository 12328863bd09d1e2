"""Connects a task, its methods, the engine and the run directory: train, eval, predict.

A task never imports a method and a method never imports a task; this module is where the two meet.
Everything that can fail on user input (config, data, model) is checked before the run directory
is touched, so a mistake never destroys an earlier run.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from tunelab.allocator import active_allocator
from tunelab.config import RunConfig, to_yaml_dict, validate_config
from tunelab.data.columns import require_columns
from tunelab.data.labels import LabelMap
from tunelab.data.readers import load_source
from tunelab.errors import UserError
from tunelab.methods import apply_methods, count_parameters, get_method
from tunelab.models.loading import fingerprint, load_tokenizer, resolve_model
from tunelab.run import RunDir, write_model_card
from tunelab.tasks import Task, get_task
from tunelab.tasks.classification import Prepared, prepare_data, resolve_columns  # noqa: F401 (re-exported)
from tunelab.tasks.classification import padding_collator as collator
from tunelab.tasks.sft import SFTTask, ensure_pad_token
from tunelab.train.checkpoint import finalize, latest_checkpoint, load_trainable
from tunelab.train.engine import Trainer, make_loader, predict_logits

# ---------------------------------------------------------------------------- data

def encode_splits(task, tokenizer, prep: Prepared, max_length: int) -> dict[str, list[dict]]:
    """Classification rows of every split (kept for callers that prepare data themselves)."""
    return {name: task.encode(tokenizer, ds, prep.columns, max_length, prep.labels, name)
            for name, ds in prep.splits.items()}


def check_task_methods(cfg: RunConfig) -> None:
    """Refuse task x method combinations that cannot work, before anything is loaded."""
    if cfg.task.name == "sft" and cfg.task.packing:
        virtual = [m.name for m in cfg.methods() if get_method(m.name).virtual_tokens]
        if virtual:
            raise UserError(f"task.packing cannot be used with method '{virtual[0]}': its virtual tokens need "
                            "one example per row (a 2-D attention mask); set task.packing=false")
    if cfg.train.cache_frozen_trunk and cfg.task.name == "sft":
        raise UserError("train.cache_frozen_trunk is for classification runs; set it to false for task.name=sft")


# ---------------------------------------------------------------------------- model

def build_model(cfg: RunConfig, task: Task, resolved: str, labels: LabelMap | None):
    """Base model with a fresh head, its fingerprint (taken before any method touches it), adapted."""
    model = task.build_model(resolved, labels)
    fp = fingerprint(model, exclude=set(model.tunelab_head_params))
    apply_methods(model, cfg.methods())
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, fp


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in backward (non-reentrant: works with frozen inputs)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"train.gradient_checkpointing: {type(model).__name__} does not support it")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator

    mp = cfg.train.mixed_precision if torch.cuda.is_available() else "no"
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp)


def default_run_name(cfg: RunConfig) -> str:
    model = Path(cfg.model.name_or_path.rstrip("/")).name
    data = Path(cfg.data.source.rstrip("/")).stem
    return f"{cfg.method.name}-{model}-{data}-{datetime.now():%Y%m%d-%H%M%S}"


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- train

def train(cfg: RunConfig, *, overwrite: bool = False, resume: str | None = None) -> Path:
    """Train one run end to end and return its directory."""
    from accelerate.utils import broadcast_object_list, set_seed

    check_task_methods(cfg)
    accelerator = make_accelerator(cfg)
    task = get_task(cfg.task)
    resolved = resolve_model(cfg.model.name_or_path)
    tokenizer = load_tokenizer(resolved)
    data = task.prepare(cfg, tokenizer)
    set_seed(cfg.seed)
    model, fp = build_model(cfg, task, resolved, data.labels)
    params = count_parameters(model)
    accelerator.print(f"trainable params: {params['trainable']:,} || all params: {params['total']:,} "
                      f"|| trainable%: {params['trainable_percent']:.4f}")
    name = [cfg.name or default_run_name(cfg)]
    broadcast_object_list(name)
    run = open_run(Path(resume) if resume else Path(cfg.output_dir) / name[0], cfg, accelerator,
                   overwrite=overwrite, resume=bool(resume))
    log = run.log if accelerator.is_main_process else (lambda event: None)
    train_collate, eval_collate = task.collators(cfg, tokenizer, model)
    if not resume:
        model.to(accelerator.device)  # the baseline runs before the trainer places the model
    baseline = None if resume else task.baseline(model, data, tokenizer, accelerator, cfg)
    if baseline:
        log_test(log, "baseline", 0, *baseline, cfg)
    trainer = Trainer(model, cfg.train, accelerator, seed=cfg.seed, collate=train_collate,
                      eval_collate=eval_collate, evaluate_fn=task.evaluate, best_metric=task.best_metric,
                      log=log, run_dir=run.path, group_by_length=cfg.data.group_by_length)
    started = time.time()
    fit = trainer.fit(data.rows["train"], data.rows.get("validation"))
    trainer.restore_best()
    finalize(accelerator.unwrap_model(trainer.model))  # the saved form; test metrics come from it too
    test, samples = task.test_metrics(trainer.model, data, tokenizer, accelerator, cfg)
    if accelerator.is_main_process:
        if test:
            log_test(log, "test", fit.global_step, test, samples, cfg)
        results = results_record(cfg, task, fit, trainer.metric_name, test, params, fp, accelerator,
                                 wall_seconds=time.time() - started)
        before = baseline[0] if baseline else next(iter(run.events(event="eval", split="baseline")), None)
        before = dict(before, split=test.get("split")) if before else None
        if before:
            results["baseline"] = {k: v for k, v in before.items() if k not in ("event", "step")}
        save_artifacts(run, accelerator.unwrap_model(trainer.model), tokenizer, data.labels, fp, cfg)
        if samples:
            run.write_jsonl(run.path / "generations.jsonl", samples)
        run.write_json(run.results, results)
        write_model_card(run, to_yaml_dict(cfg), results)
    accelerator.wait_for_everyone()
    return run.path


def log_test(log, split: str, step: int, metrics: dict[str, Any], samples: list[dict], cfg: RunConfig) -> None:
    """One eval event for the split (scalars only) and, for generative tasks, a few generations."""
    log({"event": "eval", **{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
         "split": split, "step": step})
    shown = getattr(cfg.task, "log_generations", 0)
    if samples and shown:
        log({"event": "generations", "split": split, "step": step, "samples": samples[:shown]})


def results_record(cfg: RunConfig, task, fit, metric: str, test: dict, params: dict, fp: str,
                   accelerator, wall_seconds: float) -> dict[str, Any]:
    """What ``results.json`` holds: final metrics, cost and size of the run."""
    return {
        "task": task.name, "method": [m.name for m in cfg.methods()],
        "base_model": cfg.model.name_or_path, "base_fingerprint": fp,
        "test": test, "last_validation": fit.last_eval,
        "best_validation": {"metric": metric, "value": fit.best_metric, "step": fit.best_step},
        "params": params, "global_step": fit.global_step, "epochs": fit.epochs_completed,
        "stopped_early": fit.stopped_early, "train_seconds": round(fit.train_seconds, 3),
        "samples_per_second": round(fit.samples_per_second, 3), "train_samples": fit.train_samples,
        "tokens_per_second": round(fit.tokens_per_second, 3), "train_tokens": fit.train_tokens,
        "wall_seconds": round(wall_seconds, 3), "peak_memory_mb": round(peak_memory_mb(), 1),
        "allocator": active_allocator(), "num_processes": accelerator.num_processes,
    }


def open_run(path: Path, cfg: RunConfig, accelerator, *, overwrite: bool, resume: bool) -> RunDir:
    """Create (or reopen, on resume) the run directory on the main process."""
    if resume:
        run = RunDir.open(path)
        if run.finished:
            raise UserError(f"run {path} already finished (results.json exists); nothing to resume")
        ckpt = latest_checkpoint(run.checkpoints)
        if accelerator.is_main_process:
            run.truncate_metrics_after(json_step(ckpt) if ckpt else 0)
        accelerator.wait_for_everyone()
        return run
    if accelerator.is_main_process:
        run = RunDir.create(path, overwrite=overwrite)
        run.write_config(to_yaml_dict(cfg))
    accelerator.wait_for_everyone()
    return RunDir(path)


def json_step(ckpt_path: Path) -> int:
    return int(ckpt_path.name.split("-")[-1])


def save_artifacts(run: RunDir, model, tokenizer, labels: LabelMap | None, fp: str, cfg: RunConfig) -> None:
    run.save_weights(model)
    tokenizer.save_pretrained(run.model_dir)
    if labels is not None:
        run.write_json(run.label_map, labels.to_dict())
    run.write_json(run.fingerprint, {"name_or_path": cfg.model.name_or_path, "fingerprint": fp})


# ---------------------------------------------------------------------------- load a run

@dataclass
class LoadedRun:
    run: RunDir
    cfg: RunConfig
    task: Task
    model: Any
    tokenizer: Any
    labels: LabelMap | None


def resume_config(path: str) -> RunConfig:
    return validate_config(RunDir.open(path).read_config())


def load_run(path: str) -> LoadedRun:
    """Rebuild a trained model from its run directory alone (base + methods + saved weights)."""
    run = RunDir.open(path)
    cfg = validate_config(run.read_config())
    cfg.train.gradient_checkpointing = False  # a training-time memory trade; loading never needs it
    task = get_task(cfg.task)
    labels = LabelMap.from_dict(run.read_json(run.label_map)) if run.label_map.is_file() else None
    resolved = resolve_model(cfg.model.name_or_path)
    model, fp = build_model(cfg, task, resolved, labels)
    expected = run.read_json(run.fingerprint)["fingerprint"] if run.fingerprint.is_file() else fp
    if fp != expected:
        raise UserError(f"run {run.path} was trained on a different base model than "
                        f"'{cfg.model.name_or_path}' resolves to now (fingerprint {expected} vs {fp})")
    finalize(model)  # final weights are always saved finalized (see train)
    load_trainable(model, run.load_weights())
    model.eval()
    tokenizer = load_tokenizer(str(run.model_dir) if (run.model_dir / "tokenizer_config.json").is_file()
                               else resolved)
    if isinstance(task, SFTTask):
        ensure_pad_token(tokenizer)
    return LoadedRun(run, cfg, task, model, tokenizer, labels)


def predict_texts(loaded: LoadedRun, rows: Dataset, batch_size: int = 64) -> list[dict[str, Any]]:
    """Predictions for rows holding the run's text column(s)."""
    from accelerate import Accelerator

    cols = resolve_columns(loaded.cfg)
    require_columns(rows, {"data.text_column": cols.text, "data.text_pair_column": cols.text_pair}, "input")
    enc = loaded.task.encode(loaded.tokenizer, rows, cols, loaded.cfg.data.max_length, loaded.labels,
                             "input", with_labels=False)
    loader, _ = make_loader(enc, batch_size, collator(loaded.tokenizer), train=False, seed=0,
                            group_by_length=False)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    logits, _ = predict_logits(acc.prepare(loaded.model), acc.prepare(loader), acc)
    return loaded.task.predictions(logits, loaded.labels)


def evaluate_run(loaded: LoadedRun, data: str | None, split: str) -> dict[str, Any]:
    """Metrics of a trained run on its own test split, or on another labelled file/folder."""
    from accelerate import Accelerator

    cfg = loaded.cfg
    if isinstance(loaded.task, SFTTask):
        return evaluate_sft_run(loaded, data, split)
    if data:
        splits = load_source(data)
        ds = splits.get(split) or splits.get("test") or splits["train"]
        prep = Prepared({"eval": ds}, resolve_columns(cfg), loaded.labels)
        require_columns(ds, prep.columns.required(), "eval")
        name = "eval"
    else:
        prep = prepare_data(cfg, loaded.task)
        prep.labels = loaded.labels
        if split not in prep.splits:
            raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prep.splits)}")
        name = split
    rows = loaded.task.encode(loaded.tokenizer, prep.splits[name], prep.columns, cfg.data.max_length,
                              loaded.labels, name)
    loader, _ = make_loader(rows, cfg.train.eval_batch_size, collator(loaded.tokenizer), train=False,
                            seed=0, group_by_length=False)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    logits, labels = predict_logits(acc.prepare(loaded.model), acc.prepare(loader), acc)
    return loaded.task.metrics(logits, np.asarray(labels))


def evaluate_sft_run(loaded: LoadedRun, data: str | None, split: str) -> dict[str, Any]:
    """Loss, perplexity and generation metrics of an instruction-tuned run on a split or a file."""
    from accelerate import Accelerator

    cfg = loaded.cfg.model_copy(deep=True)
    cfg.task.packing = False  # evaluation scores one example per row
    if data:
        cfg.data.source, cfg.data.validation_file, cfg.data.test_file = data, None, None
        cfg.data.validation_ratio = cfg.data.test_ratio = 0.0
        cfg.data.max_train_samples = None
    prepared = loaded.task.prepare(cfg, loaded.tokenizer)
    name = "train" if data else split
    if name not in prepared.rows:
        raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prepared.rows)}")
    prepared.rows = {"test": prepared.rows[name]}
    prepared.conversations = {"test": prepared.conversations[name]}
    acc = Accelerator(cpu=not torch.cuda.is_available())
    metrics, samples = loaded.task.test_metrics(acc.prepare(loaded.model), prepared, loaded.tokenizer, acc, cfg)
    metrics["split"] = "eval" if data else split
    return {**metrics, "samples": samples[: loaded.cfg.task.log_generations]}

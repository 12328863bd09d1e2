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

import torch
from datasets import Dataset

from tunelab.allocator import active_allocator
from tunelab.config import RunConfig, to_yaml_dict, validate_config
from tunelab.data.labels import LabelMap
from tunelab.distill import check_fit, distill_step, load_teacher
from tunelab.errors import UserError
from tunelab.methods import apply_methods, count_parameters, get_method
from tunelab.models.loading import fingerprint
from tunelab.models.shrink import shrink
from tunelab.row_scores import FILE as ROW_SCORES_FILE
from tunelab.row_scores import split_rows, write_row_scores
from tunelab.run import RunDir, write_model_card
from tunelab.tasks import Task, get_task
from tunelab.train import tracking
from tunelab.train.checkpoint import finalize, latest_checkpoint, load_trainable
from tunelab.train.engine import Trainer

# ---------------------------------------------------------------------------- checks

def check_task_methods(cfg: RunConfig) -> None:
    """Refuse task x method combinations that cannot work, before anything is loaded."""
    from tunelab.distill import check_distill_config
    from tunelab.tasks import TASK_SPECS

    task = get_task(cfg.task)
    if cfg.train.cache_frozen_trunk and not task.spec.can_cache_trunk:
        raise UserError(f"train.cache_frozen_trunk does not apply to task.name={task.name} runs; set it to false")
    check_distill_config(cfg, task, [name for name, spec in TASK_SPECS.items() if spec.can_distill])
    task.check_methods(cfg, [get_method(m.name) for m in cfg.methods()])


# ---------------------------------------------------------------------------- model

def build_model(cfg: RunConfig, task: Task, resolved: str, labels: LabelMap | None):
    """Base model with a fresh head, its fingerprint (taken before any method touches it), adapted."""
    streamed = streamed_model(cfg, task, resolved)
    if streamed is not None:
        model, fp = streamed
    else:
        model = task.build_model(resolved, labels)
        shrink(model, cfg.model.num_layers, cfg.model.keep_layers)  # a smaller student (distillation)
        fp = fingerprint(model, exclude=set(model.tunelab_head_params))
    apply_methods(model, cfg.methods())
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, fp


def streamed_model(cfg: RunConfig, task: Task, resolved: str):
    """(model, fingerprint) loaded tensor by tensor with the methods' load-time transforms applied as
    each module arrives (QLoRA's quantisation), when a method has some and the task can stream its
    model (``build_model_streamed``); else ``None`` (the usual whole-model load)."""
    methods = [(get_method(m.name), m) for m in cfg.methods()]
    wanted = [(spec.load_transforms, m) for spec, m in methods if spec.load_transforms is not None]
    build = getattr(task, "build_model_streamed", None)
    if not wanted or build is None or cfg.model.num_layers or cfg.model.keep_layers:
        return None

    def transforms(empty_model):
        out = {}
        for plan, method_cfg in wanted:
            out.update(plan(empty_model, method_cfg))
        return out

    return build(resolved, transforms)


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


def validation_metric(task: Task) -> tuple[str, bool]:
    """The task's metric for the best checkpoint: its own (when its data decides, e.g. contrastive
    pairs vs scored pairs), else its spec's."""
    return getattr(task, "validation_metric", None) or task.spec.validation_metric


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator

    mp = cfg.train.mixed_precision if torch.cuda.is_available() else "no"
    trackers = cfg.train.report_to
    if not trackers:
        return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp)
    tracking.check_trackers(trackers)
    # the folder is the run's, known once the run is opened (tracking.start moves it there)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp, log_with=list(trackers),
                       project_dir=cfg.output_dir)


def default_run_name(cfg: RunConfig) -> str:
    model = Path(cfg.model.name_or_path.rstrip("/")).name
    data = Path(cfg.data.source.rstrip("/")).stem
    return f"{cfg.method.name}-{model}-{data}-{datetime.now():%Y%m%d-%H%M%S}"


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mb() -> float:
    """Resident memory of this process now (``VmRSS``; the peak where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_memory_mb()


class MemoryMarks(dict):
    """Resident memory (MB) at the stages of a run, for results.json's ``memory_mb``: where the peak
    comes from. ``start``: the process with its imports; ``data``: after the data is prepared;
    ``model``: after the model is built and adapted (weights); ``peak_before_training``: the
    highest point until then (loading's own peak); ``peak_training``: the highest point by the end of
    training (it adds activations, logits, gradients and optimizer state on top of ``model``);
    ``peak``: the whole run's, the test evaluation included."""

    def mark(self, stage: str) -> None:
        self[stage] = round(resident_mb(), 1)

    def final(self) -> dict[str, float]:
        return {**self, "peak": round(peak_memory_mb(), 1)}


# ---------------------------------------------------------------------------- train

def train(cfg: RunConfig, *, overwrite: bool = False, resume: str | None = None) -> Path:
    """Train one run end to end and return its directory."""
    from accelerate.utils import broadcast_object_list, set_seed

    check_task_methods(cfg)
    memory = MemoryMarks()
    memory.mark("start")
    accelerator = make_accelerator(cfg)
    task = get_task(cfg.task)
    resolved = task.resolve_model(cfg.model.name_or_path)
    processor = task.load_processor(resolved)
    data = task.prepare(cfg, processor)
    teacher = load_teacher(cfg, task, data.labels, processor) if cfg.distill.teacher else None
    memory.mark("data")
    set_seed(cfg.seed)
    model, fp = build_model(cfg, task, resolved, data.labels)
    memory.mark("model")
    memory["peak_before_training"] = round(peak_memory_mb(), 1)
    if teacher is not None:
        check_fit(model, teacher)
    params = count_parameters(model)
    accelerator.print(f"trainable params: {params['trainable']:,} || all params: {params['total']:,} "
                      f"|| trainable%: {params['trainable_percent']:.4f}")
    name = [cfg.name or default_run_name(cfg)]
    broadcast_object_list(name)
    run = open_run(Path(resume) if resume else Path(cfg.output_dir) / name[0], cfg, accelerator,
                   overwrite=overwrite, resume=bool(resume))
    log = run.log if accelerator.is_main_process else (lambda event: None)
    if cfg.train.report_to:
        tracking.offline_defaults(cfg.train.report_to, run.path)
        mirror = tracking.start(accelerator, cfg.train.report_to, run.path, run.path.name, to_yaml_dict(cfg))
        log = mirrored(log, mirror)
    train_collate, eval_collate = task.collators(cfg, processor, model)
    if not resume:
        model.to(accelerator.device)  # the baseline runs before the trainer places the model
    baseline = None if resume else task.baseline(model, data, processor, accelerator, cfg)
    if baseline:
        baseline = (split_rows(baseline[0])[0], baseline[1])
    if baseline:
        log_test(log, "baseline", 0, *baseline, cfg)
    step = task.train_step(cfg, model, processor, accelerator.print)
    if teacher is not None:
        step = distill_step(cfg, task, step, model, teacher, train_collate, accelerator.print)
    trainer = Trainer(model, cfg.train, accelerator, seed=cfg.seed, collate=train_collate,
                      eval_collate=eval_collate, evaluate_fn=task.evaluate, best_metric=validation_metric(task),
                      log=log, run_dir=run.path, group_by_length=cfg.data.group_by_length, step=step)
    started = time.time()
    fit = trainer.fit(data.rows["train"], data.rows.get("validation"))
    memory["peak_training"] = round(peak_memory_mb(), 1)
    trainer.restore_best()
    finish = getattr(step, "finish", None)
    if callable(finish):  # training-only modules (a distillation projection) leave before saving
        finish(accelerator.unwrap_model(trainer.model))
    finalize(accelerator.unwrap_model(trainer.model))  # the saved form; test metrics come from it too
    tested = time.perf_counter()
    test, samples = task.test_metrics(trainer.model, data, processor, accelerator, cfg)
    test_seconds = time.perf_counter() - tested
    test, rows = split_rows(test)
    if accelerator.is_main_process:
        if test:
            log_test(log, "test", fit.global_step, test, samples, cfg)
        results = results_record(cfg, task, fit, trainer.metric_name, test, params, fp, accelerator,
                                 wall_seconds=time.time() - started, memory=memory)
        if test:
            results["test_seconds"] = round(test_seconds, 3)
        if rows:
            write_row_scores(run.path / ROW_SCORES_FILE, rows, test)
            results["test_rows"] = len(next(iter(rows.values())))
            results["latency_ms_per_row"] = round(1000 * test_seconds / max(results["test_rows"], 1), 3)
        before = baseline[0] if baseline else next(iter(run.events(event="eval", split="baseline")), None)
        before = dict(before, split=test.get("split")) if before else None
        if before:
            results["baseline"] = {k: v for k, v in before.items() if k not in ("event", "step")}
        save_artifacts(run, task, accelerator.unwrap_model(trainer.model), processor, data, test, fp, cfg)
        if samples:
            run.write_jsonl(run.path / "generations.jsonl", samples)
        run.write_json(run.results, results)
        write_model_card(run, to_yaml_dict(cfg), results)
    if cfg.train.report_to:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return run.path


def mirrored(log, mirror):
    """``log(event)`` that also sends the event to the experiment trackers."""
    def both(event: dict[str, Any]) -> None:
        log(event)
        mirror(event)

    return both


def log_test(log, split: str, step: int, metrics: dict[str, Any], samples: list[dict], cfg: RunConfig) -> None:
    """One eval event for the split (scalars only) and, for generative tasks, a few generations."""
    log({"event": "eval", **{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
         "split": split, "step": step})
    shown = getattr(cfg.task, "log_generations", 0)
    if samples and shown:
        log({"event": "generations", "split": split, "step": step, "samples": samples[:shown]})


def results_record(cfg: RunConfig, task, fit, metric: str, test: dict, params: dict, fp: str,
                   accelerator, wall_seconds: float, memory: MemoryMarks | None = None) -> dict[str, Any]:
    """What ``results.json`` holds: final metrics, cost and size of the run."""
    return {
        "task": task.name, "method": [m.name for m in cfg.methods()],
        "base_model": cfg.model.name_or_path, "base_fingerprint": fp,
        "test": test, "last_validation": fit.last_eval,
        "best_validation": {"metric": metric, "value": fit.best_metric, "step": fit.best_step},
        "params": params, "global_step": fit.global_step, "epochs": fit.epochs_completed,
        "stopped_early": fit.stopped_early, "time_budget_reached": fit.time_budget_reached,
        "train_seconds": round(fit.train_seconds, 3),
        "samples_per_second": round(fit.samples_per_second, 3), "train_samples": fit.train_samples,
        "tokens_per_second": round(fit.tokens_per_second, 3), "train_tokens": fit.train_tokens,
        "wall_seconds": round(wall_seconds, 3), "peak_memory_mb": round(peak_memory_mb(), 1),
        "allocator": active_allocator(), "num_processes": accelerator.num_processes,
        **({"memory_mb": memory.final()} if memory else {}),
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


def save_artifacts(run: RunDir, task: Task, model, processor, data, test: dict, fp: str, cfg: RunConfig) -> None:
    """Weights, the task's processor and extras, label map and base fingerprint."""
    run.save_weights(model)
    task.save_artifacts(run.path, model, processor, data, test)
    if data.labels is not None:
        run.write_json(run.label_map, data.labels.to_dict())
    run.write_json(run.fingerprint, {"name_or_path": cfg.model.name_or_path, "fingerprint": fp})


# ---------------------------------------------------------------------------- load a run

@dataclass
class LoadedRun:
    run: RunDir
    cfg: RunConfig
    task: Task
    model: Any
    processor: Any
    labels: LabelMap | None

    @property
    def tokenizer(self) -> Any:
        """The processor of a text run (its tokenizer)."""
        return self.processor


def resume_config(path: str) -> RunConfig:
    return validate_config(RunDir.open(path).read_config())


def load_run(path: str) -> LoadedRun:
    """Rebuild a trained model from its run directory alone (base + methods + saved weights)."""
    run = RunDir.open(path)
    cfg = validate_config(run.read_config())
    cfg.train.gradient_checkpointing = False  # a training-time memory trade; loading never needs it
    task = get_task(cfg.task)
    labels = LabelMap.from_dict(run.read_json(run.label_map)) if run.label_map.is_file() else None
    resolved = task.resolve_model(cfg.model.name_or_path)
    model, fp = build_model(cfg, task, resolved, labels)
    expected = run.read_json(run.fingerprint)["fingerprint"] if run.fingerprint.is_file() else fp
    if fp != expected:
        raise UserError(f"run {run.path} was trained on a different base model than "
                        f"'{cfg.model.name_or_path}' resolves to now (fingerprint {expected} vs {fp})")
    finalize(model)  # final weights are always saved finalized (see train)
    load_trainable(model, run.load_weights())
    model.eval()
    processor = task.load_saved_processor(run.model_dir, resolved)
    return LoadedRun(run, cfg, task, model, processor, labels)


def predict_texts(loaded: LoadedRun, rows: Dataset, batch_size: int = 64) -> list[dict[str, Any]]:
    """Predictions for rows holding the run's input column(s) (text tasks)."""
    return loaded.task.predict_rows(loaded, rows, batch_size)


def evaluate_run(loaded: LoadedRun, data: str | None, split: str) -> dict[str, Any]:
    """Metrics of a trained run on its own split, or on another labelled file/folder."""
    return loaded.task.evaluate_source(loaded, data, split)

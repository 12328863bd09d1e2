"""The teacher: a finished run of the student's task, or a model whose head is already trained.

Checks, each a one-line error before anything is written: the reference exists and is finished;
a run is of the student's task; a model is not missing its head (a classifier's head would start
random); the teacher predicts the student's labels in the same order; text models share the
vocabulary (the same token ids mean the same tokens, so one batch feeds both); image models read
the same preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tunelab.errors import UserError


@dataclass
class Teacher:
    model: nn.Module
    ref: str
    labels: Any
    processor: Any


def check_distill_config(cfg: Any, task: Any, can_distill: list[str]) -> None:
    """Refuse distillation for tasks that cannot distil and options it cannot combine with."""
    if not cfg.distill.teacher:
        return
    if not task.spec.can_distill:
        raise UserError(f"distill.teacher is set, but task.name={task.spec.name} runs cannot be distilled; tasks "
                        f"that can: {', '.join(can_distill)}")
    if cfg.distill.cache_teacher and not task.distill_cacheable(cfg):
        raise UserError(f"distill.cache_teacher=true, but a task.name={cfg.task.name} run's teacher outputs are not "
                        "fixed per row or too large to keep (augmentation, or one distribution per token); set it "
                        "to false or leave it null")
    if cfg.train.cache_frozen_trunk:
        raise UserError("distill.teacher and train.cache_frozen_trunk cannot be combined (the student's loss reads "
                        "its whole forward pass); set train.cache_frozen_trunk=false")


def load_teacher(cfg: Any, task: Any, student_labels: Any, student_processor: Any) -> Teacher:
    """The configured teacher, frozen in eval mode, checked against the student (module docstring)."""
    from tunelab.inference import is_run_dir

    ref = str(cfg.distill.teacher)
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():
        if not is_run_dir(ref):
            raise UserError(f"distill.teacher: run {path} has not finished (no results.json); finish it with "
                            f"'tunelab train --resume {path}' or choose another teacher")
        teacher = _teacher_run(ref, cfg)
    else:
        teacher = _teacher_model(ref, task, student_labels)
    teacher.model.eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    _check_labels(teacher, student_labels)
    _check_inputs(teacher, student_processor)
    return teacher


def _teacher_run(ref: str, cfg: Any) -> Teacher:
    from tunelab.pipeline import load_run, resume_config

    task_name = resume_config(ref).task.name
    if task_name != cfg.task.name:
        raise UserError(f"distill.teacher: run {ref} is a task.name={task_name} run; the student is a "
                        f"task.name={cfg.task.name} run (the teacher must be of the same task)")
    loaded = load_run(ref)
    _merge_if_possible(loaded)
    return Teacher(loaded.model, ref, loaded.labels, loaded.processor)


def _merge_if_possible(loaded: Any) -> None:
    """Fold the teacher's adapters into its weights when its methods allow (the same outputs, one
    matmul per layer instead of two): the teacher runs on every batch, or once per row."""
    from tunelab.interop.merged import merge_into_base
    from tunelab.methods import get_method

    if all(get_method(m.name).mergeable for m in loaded.cfg.methods()):
        merge_into_base(loaded.model, loaded.cfg)


def _teacher_model(ref: str, task: Any, student_labels: Any) -> Teacher:
    try:
        resolved = task.resolve_model(ref)
    except UserError as e:
        raise UserError(f"distill.teacher {ref!r} is neither a finished run nor a model: {e}") from None
    model = task.build_model(resolved, student_labels)
    if getattr(model, "tunelab_head_params", None):
        raise UserError(f"distill.teacher: model {ref!r} has no trained head for these labels (its head would start "
                        "random); train a teacher run first and give its run directory")
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    labels = list(id2label[i] for i in sorted(id2label)) if student_labels is not None and id2label else None
    return Teacher(model, ref, _Names(labels) if labels else None, task.load_processor(resolved))


@dataclass
class _Names:
    names: list[str]


def _check_labels(teacher: Teacher, student_labels: Any) -> None:
    if student_labels is None:
        return
    mine = list(student_labels.names)
    theirs = list(teacher.labels.names) if teacher.labels is not None else None
    if theirs != mine:
        raise UserError(f"distill.teacher {teacher.ref} predicts labels {theirs} but the student's are {mine}; the "
                        "teacher must have the student's labels in the same order")


def _check_inputs(teacher: Teacher, student_processor: Any) -> None:
    t, s = teacher.processor, student_processor
    if hasattr(s, "get_vocab"):
        if not hasattr(t, "get_vocab") or t.get_vocab() != s.get_vocab():
            size = len(t.get_vocab()) if hasattr(t, "get_vocab") else "no"
            raise UserError(f"distill.teacher {teacher.ref} has a different vocabulary ({size} tokens) than the "
                            f"student ({len(s.get_vocab())} tokens); teacher and student must share a tokenizer")
    elif t != s:
        raise UserError(f"distill.teacher {teacher.ref} reads its inputs as {t} but the student as {s}; use the "
                        "same preprocessing (e.g. task.image_size)")

"""Tasks: what is learned (data schema, head, loss, metrics). One module per task, registered here.

Every task offers the same protocol to :mod:`tunelab.pipeline`: ``prepare(cfg, tokenizer)`` (read,
check, split, encode), ``build_model(resolved, labels)``, ``collators(cfg, tokenizer, model)``,
``evaluate(model, loader, accelerator)`` (validation metrics), ``test_metrics(...)`` and
``baseline(...)`` (the test evaluation before training, or None), plus ``name`` and
``best_metric``.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import unknown
from tunelab.tasks.classification import ClassificationTask
from tunelab.tasks.sft import SFTTask, SFTTaskConfig

Task = ClassificationTask | SFTTask

TASKS = {
    "classification": lambda cfg: ClassificationTask(regression=False),
    "regression": lambda cfg: ClassificationTask(regression=True),
    "sft": lambda cfg: SFTTask(cfg if isinstance(cfg, SFTTaskConfig) else SFTTaskConfig()),
}


def get_task(spec: str | Any) -> Task:
    """The task named ``spec``, or built from a ``task:`` config section (which carries its options)."""
    name = spec if isinstance(spec, str) else spec.name
    if name not in TASKS:
        raise unknown("task", name, TASKS)
    return TASKS[name](None if isinstance(spec, str) else spec)

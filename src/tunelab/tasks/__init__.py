"""Tasks: what is learned (data schema, head, loss, metrics). One module per task, registered here.

Every task implements the protocol in :mod:`tunelab.tasks.base` and exposes ``SPECS`` (its
:class:`~tunelab.tasks.base.TaskSpec` entries). Adding a task is one module plus one entry in
:data:`TASK_MODULES`; the ``task:`` config section, ``tunelab train --help``, compare's metric
checks and the CLI's verbs all read the registry (see ``docs/tasks.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import Field

from tunelab.errors import unknown
from tunelab.tasks import classification, contrastive, dpo, grpo, image, ppo, reward, sft
from tunelab.tasks.base import Task, TaskSpec

TASK_MODULES = (classification, sft, image, reward, dpo, ppo, grpo, contrastive)

TASK_SPECS: dict[str, TaskSpec] = {spec.name: spec for module in TASK_MODULES for spec in module.SPECS}

TASK_CONFIGS: dict[str, type] = {name: spec.config_cls for name, spec in TASK_SPECS.items()}
"""Task name -> the class of its ``task:`` section (classification and regression share one)."""

AnyTaskConfig = Annotated[
    Union[tuple(dict.fromkeys(TASK_CONFIGS.values()))],  # type: ignore[valid-type]
    Field(discriminator="name"),
]
"""The ``task:`` section: a union over the registered tasks' config classes, by ``name``."""

DEFAULT_TASK = "classification"


def get_spec(name: str) -> TaskSpec:
    """The registry entry of task ``name``; unknown names raise a UserError listing the accepted ones."""
    if name not in TASK_SPECS:
        raise unknown("task", name, TASK_SPECS)
    return TASK_SPECS[name]


def get_task(spec: str | Any) -> Task:
    """The task named ``spec``, or built from a ``task:`` config section (which carries its options)."""
    name = spec if isinstance(spec, str) else spec.name
    entry = get_spec(name)
    return entry.build(entry.config_cls(name=name) if isinstance(spec, str) else spec)


def headline_metric(task: str | None, test: Mapping[str, float], fallback: str | None = None) -> str | None:
    """The metric a comparison ranks ``task`` runs by, given the test metrics they reported."""
    if task not in TASK_SPECS:
        return fallback
    return TASK_SPECS[task].headline_metric(test)


def greater_is_better(metric: str, task: str | None = None) -> bool:
    """Whether a larger ``metric`` is better (the task's own direction when known)."""
    if task in TASK_SPECS:
        return TASK_SPECS[task].greater_is_better(metric)
    for spec in TASK_SPECS.values():
        if metric in spec.metrics:
            return spec.metrics[metric]
    return not any(k in metric for k in ("loss", "mae", "mse", "rmse", "perplexity"))


__all__ = ["AnyTaskConfig", "TASK_CONFIGS", "TASK_SPECS", "Task", "TaskSpec", "get_spec", "get_task",
           "greater_is_better", "headline_metric"]

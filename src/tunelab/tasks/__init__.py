"""Tasks: what is learned (data schema, head, loss, metrics). One module per task, registered here."""

from __future__ import annotations

from tunelab.errors import unknown
from tunelab.tasks.classification import ClassificationTask

TASKS = {
    "classification": lambda: ClassificationTask(regression=False),
    "regression": lambda: ClassificationTask(regression=True),
}


def get_task(name: str) -> ClassificationTask:
    if name not in TASKS:
        raise unknown("task", name, TASKS)
    return TASKS[name]()

"""The label map that travels with each adapter's head.

Each adapter carries the head it trained and its label map; activating it swaps both in
(``config.id2label`` / ``label2id`` / ``num_labels`` follow), so adapters with different label sets
can share a base.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn


def label_config(model: nn.Module) -> dict[str, Any] | None:
    """The model's ``id2label`` / ``label2id`` (None without a config)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "id2label"):
        return None
    return {"id2label": dict(config.id2label), "label2id": dict(config.label2id)}


def labels_dict(labels: dict[str, Any] | None) -> dict[str, Any] | None:
    """JSON-ready label config (string keys)."""
    if labels is None:
        return None
    return {"id2label": {str(k): v for k, v in labels["id2label"].items()}, "label2id": dict(labels["label2id"])}


def set_label_config(model: nn.Module, labels: Mapping[str, Any] | None) -> None:
    """Point the model's label map (and ``num_labels``, used by the loss) at ``labels``."""
    config = getattr(model, "config", None)
    if labels is None or config is None:
        return
    config.id2label = {int(k): v for k, v in labels["id2label"].items()}
    config.label2id = {k: int(v) for k, v in labels["label2id"].items()}
    if hasattr(model, "num_labels"):
        model.num_labels = len(config.id2label)


def run_label_map(run: Any) -> Any:
    """A run's :class:`LabelMap`, or None (regression)."""
    from tunelab.data.labels import LabelMap

    return LabelMap.from_dict(run.read_json(run.label_map)) if run.label_map.is_file() else None

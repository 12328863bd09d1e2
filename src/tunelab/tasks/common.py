"""Helpers tasks share: logits over a loader and an accelerator for inference (nothing here names a task)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

Forward = Callable[[nn.Module, dict[str, Any]], torch.Tensor]


def hf_logits(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Logits of a Hugging Face model called with the batch's keyword arguments."""
    return model(**batch).logits


@torch.inference_mode()
def predict_logits(model: nn.Module, loader, accelerator, forward: Forward = hf_logits
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and labels when present) over a prepared loader, gathered across processes."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        labels = batch.pop("labels", None)
        batch.pop("row_index", None)
        logits = accelerator.gather_for_metrics(forward(model, batch))
        all_logits.append(logits.float().cpu())
        if labels is not None:
            all_labels.append(accelerator.gather_for_metrics(labels).cpu())
    logits_np = torch.cat(all_logits).numpy()
    labels_np = torch.cat(all_labels).numpy() if all_labels else None
    return logits_np, labels_np


def inference_accelerator():
    """An accelerator for eval/predict outside training (GPU when there is one)."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def config_for_source(cfg: Any, data: str | None) -> Any:
    """A copy of a run's config that reads ``data`` (all of it, as the ``train`` split) instead of
    the run's own source when given -- how ``tunelab eval RUN --data FILE`` scores another file."""
    cfg = cfg.model_copy(deep=True)
    if data:
        cfg.data.source, cfg.data.validation_file, cfg.data.test_file = data, None, None
        cfg.data.validation_ratio = cfg.data.test_ratio = 0.0
        cfg.data.max_train_samples = None
    return cfg


def tokenizer_source(model_dir: str | Path, resolved: str) -> str:
    """Where a run's tokenizer loads from: the one it saved in ``model/``, else the base model's."""
    return str(model_dir) if (Path(model_dir) / "tokenizer_config.json").is_file() else resolved

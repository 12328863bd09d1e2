"""Saving and loading an adapter set: the manifest, one safetensors per adapter, the base.

``save`` writes ``adapters.json`` (format version, base model and fingerprint, task, active name,
and per adapter its method configs, label map, run config and origin) plus one
``<name>.safetensors`` per adapter holding the same tensor names a run's ``weights.safetensors``
has, the base head, and the tokenizer when known; the folder is written next to the target and
renamed into place, so a crash never leaves half a save. ``load`` rebuilds the base from the
manifest (or takes ``model=``, which must have the same fingerprint) and restores every adapter by
name. Runs feed a set too: :func:`run_methods` reads a run's method configs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.adapters.capture import Adapter
from tunelab.adapters.labels import labels_dict
from tunelab.errors import UserError
from tunelab.methods import get_method
from tunelab.methods.base import MethodConfig
from tunelab.train.checkpoint import load_tensors, save_tensors

MANIFEST = "adapters.json"
BASE_HEAD = "base_head.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT = "tunelab-adapter-set"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- writing

@contextmanager
def staged_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh hidden folder next to ``target`` to write into; leaving the block without an error
    replaces ``target`` by it. An existing non-empty ``target`` is refused unless ``overwrite``."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise UserError(f"{target} already exists; pass overwrite=True to replace it")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(tmp, target)


def save_adapter(folder: Path, adapter: Adapter) -> None:
    """``<name>.safetensors``: the adapter's tensors under a run's weight names."""
    save_tensors(adapter.state_dict(), folder / f"{adapter.name}.safetensors",
                 metadata={"format": "pt", "producer": "tunelab", "adapter": adapter.name})


def save_base_head(folder: Path, head: dict[str, torch.Tensor]) -> None:
    """The base's own (untrained) head, so a load rebuilds the base exactly."""
    save_tensors(head, folder / BASE_HEAD, metadata={"format": "pt", "producer": "tunelab"})


def manifest(*, base_model: str, fingerprint: str, task: str | None, base_labels: dict[str, Any] | None,
             active: str | None, adapters: Iterable[Adapter]) -> dict[str, Any]:
    """What ``adapters.json`` holds."""
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "base_model": base_model, "base_fingerprint": fingerprint, "task": task,
        "base_labels": labels_dict(base_labels), "active": active,
        "adapters": [{
            "name": a.name, "file": f"{a.name}.safetensors",
            "methods": [m.model_dump(mode="json") for m in a.methods],
            "labels": a.labels, "run_config": a.run_config, "source": a.source,
            "combined_from": a.combined_from,
        } for a in adapters],
    }


def write_manifest(folder: Path, content: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(content, indent=2) + "\n")


# ---------------------------------------------------------------------------- reading

def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a saved set; a missing or foreign one is a UserError."""
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a saved adapter set (no {MANIFEST})")
    content = json.loads(path.read_text())
    if content.get("format") != FORMAT or content.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} is not a {FORMAT} manifest of version {FORMAT_VERSION}")
    return content


def saved_tokenizer(folder: Path) -> Any:
    """The tokenizer saved with the set, or None."""
    if not (folder / TOKENIZER_DIR).is_dir():
        return None
    from tunelab.models.loading import load_tokenizer

    return load_tokenizer(str(folder / TOKENIZER_DIR))


def entry_methods(entry: Mapping[str, Any]) -> list[MethodConfig]:
    """The validated method configs of one manifest entry."""
    return [get_method(m["name"]).config_cls.model_validate(m) for m in entry["methods"]]


def entry_weights(folder: Path, entry: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of one manifest entry's safetensors file."""
    return load_tensors(folder / entry["file"])


def rebuild_base(content: Mapping[str, Any], folder: Path) -> nn.Module:
    """The base model of a saved set, with the head it was saved with."""
    from tunelab.data.labels import LabelMap
    from tunelab.models.loading import resolve_model
    from tunelab.tasks import get_task

    if not content.get("task") or not content.get("base_model"):
        raise UserError(f"{folder} does not say which base model and task to build; pass model=")
    task = get_task(content["task"])
    known = content.get("base_labels") and not task.regression
    labels = LabelMap.from_dict(content["base_labels"]) if known else None
    model = task.build_model(resolve_model(content["base_model"]), labels)
    head = load_tensors(folder / BASE_HEAD)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in head.items():
            params[name].copy_(value)
    model.eval()
    return model


def run_methods(cfg: Mapping[str, Any]) -> list[MethodConfig]:
    """The validated method configs of a run's ``config.yaml``."""
    from tunelab.config import validate_config

    return validate_config(dict(cfg)).methods()

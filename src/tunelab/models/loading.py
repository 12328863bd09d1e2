"""Resolve a model reference (alias, folder, hub id) and load Hugging Face models from it."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.assets import BUILTIN_MODELS, builtin_model_path
from tunelab.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    """True when Hugging Face hub access is switched off (the default here: no network)."""
    on = {"1", "true", "yes", "on"}
    return (os.environ.get("HF_HUB_OFFLINE", "").lower() in on
            or os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in on)


def resolve_model(ref: str) -> str:
    """Return a local folder (or, when online, a hub id) for ``model.name_or_path``.

    Order: built-in alias, existing local folder, hub id (only when the hub is not offline).
    """
    if ref in BUILTIN_MODELS:
        entry = BUILTIN_MODELS[ref]
        if entry.task is not None:
            raise UserError(f"built-in model '{ref}' is a {entry.architecture or 'non-Hugging Face'} model for "
                            f"task.name={entry.task}; this task needs a Hugging Face model: "
                            f"{', '.join(a for a, e in BUILTIN_MODELS.items() if e.task is None)}")
        return str(builtin_model_path(ref))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json; is it a Hugging Face model folder?")
        return str(path)
    aliases = ", ".join(sorted(BUILTIN_MODELS))
    if not _HUB_ID.match(ref):
        raise UserError(f"model '{ref}' is neither a built-in alias ({aliases}) nor an existing folder")
    if hub_offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE=1" if hub_offline() else "no connection to huggingface.co"
        raise UserError(
            f"model '{ref}' looks like a hub id but the hub is offline ({why}); "
            f"use a local folder or a built-in alias: {aliases}"
        )
    return ref


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub (no request), so an offline machine fails in seconds, not retries."""
    import socket

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((endpoint, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_kwargs(resolved: str) -> dict[str, Any]:
    """Keyword arguments that keep local loads local (no hub call for a folder)."""
    return {"local_files_only": True} if Path(resolved).is_dir() else {}


def load_tokenizer(resolved: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolved, **hub_kwargs(resolved))
    except OSError as e:
        raise UserError(f"cannot load a tokenizer from '{resolved}': {str(e).splitlines()[0]}") from None


def fingerprint(model: nn.Module, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """A short hash of the base model: parameter names, shapes and a strided sample of values.

    Stored with every run, so an adapter is never loaded onto a different base model.
    """
    return hash_samples({name: fingerprint_samples(tensor) for name, tensor in model.state_dict().items()
                         if name not in exclude})


def fingerprint_samples(tensor: torch.Tensor) -> tuple[list[int], bytes]:
    """(shape, a strided sample of about 2,048 values as fp32 bytes): what the fingerprint hashes of a tensor."""
    flat = tensor.detach().reshape(-1)
    return list(tensor.shape), flat[:: max(1, flat.numel() // 2048)].to(torch.float32).cpu().numpy().tobytes()


def hash_samples(samples: dict[str, tuple[list[int], bytes]]) -> str:
    """The fingerprint of ``{name: fingerprint_samples(tensor)}``, in name order."""
    h = hashlib.sha256()
    for name, (shape, sample) in sorted(samples.items()):
        h.update(name.encode())
        h.update(json.dumps(shape).encode())
        h.update(sample)
    return h.hexdigest()[:32]


def ensure_pad_token(tokenizer: Any) -> None:
    """Causal LM tokenizers often lack a pad token; padding then reuses EOS (masked out anyway)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError("the tokenizer has neither a pad nor an EOS token; cannot batch examples")
        tokenizer.pad_token = tokenizer.eos_token

"""Atomic checkpoints for exact resume, with no pickles.

A checkpoint folder holds the trainable weights (safetensors), the optimizer state (``torch.save``
of tensors and plain numbers, read back with ``weights_only=True``), the torch RNG state
(safetensors), and ``state.json`` (step, epoch, position in the epoch, scheduler, best metric,
Python and NumPy RNG states). It is written to a temporary folder and renamed into place, then the
``latest`` pointer is replaced atomically, so a crash never leaves a corrupt "latest".
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.errors import UserError

WEIGHTS = "trainable.safetensors"
DIGEST_KEY = "tunelab_sha256"
"""safetensors metadata key: SHA-256 of the tensors (names, dtypes, shapes, bytes), checked on load."""


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors`` save with the tensors' digest in the metadata (see :func:`load_tensors`)."""
    save_file(tensors, str(path), metadata={**(metadata or {}), DIGEST_KEY: tensors_digest(tensors)})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated, overwritten or altered file (its digest, when it has one,
    no longer matches) is one :class:`UserError` naming the file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            expected = (handle.metadata() or {}).get(DIGEST_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read {path}: the file is damaged or truncated ({reason}); restore it or "
                        "train again") from None
    if expected is not None and tensors_digest(tensors) != expected:
        raise UserError(f"{path} is damaged: its tensors no longer match the checksum written with them; "
                        "restore it or train again")
    return tensors


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train (what a checkpoint and an adapter-only save hold), plus the running
    statistics of modules whose own parameters train (a BatchNorm that trains updates them)."""
    state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().contiguous().cpu() for n, b in trained_buffers(model).items()})
    return state


def trained_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers of modules that have both their own trainable parameters and their own buffers
    (BatchNorm's running mean/variance): they change in training, so they are saved with it."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own and any(p.requires_grad for p in own):
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and name in module._buffers and name not in module._non_persistent_buffers_set:
                    out[f"{prefix}.{name}" if prefix else name] = buf
    return out


def finalize(model: nn.Module) -> int:
    """Put every method module into its final, saved form; return how many modules did so.

    The protocol: a module that trains one parametrisation but keeps another defines
    ``tunelab_finalize()`` (idempotent; e.g. prefix tuning replaces its MLP by the prefix table it
    computes). It runs after training, before the final weights are saved, and again on a freshly
    built model before those weights are loaded back. Checkpoints for resume are written before it,
    so they keep the training parametrisation and resume stays exact.
    """
    modules = [m for m in model.modules() if callable(getattr(m, "tunelab_finalize", None))]
    for module in modules:  # collected first: finalizing may change the module tree
        module.tunelab_finalize()
    return len(modules)


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors back; every trainable parameter must be present."""
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    buffers = trained_buffers(model)
    expected = {n for n, p in params.items() if p.requires_grad} | set(buffers)
    params.update(buffers)
    missing, extra = expected - weights.keys(), weights.keys() - params.keys()
    if missing or extra:
        raise ValueError(f"checkpoint does not fit the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(extra)[:5]}")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": _to_lists(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *[_plain(x) for x in np_state[2:]]]}


def set_rng_state(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
    torch.set_rng_state(torch_state)


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int) -> Path:
    """Write ``root/step-N`` atomically, point ``root/latest`` at it, prune old ones."""
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_tensors(trainable_state(model), tmp / WEIGHTS)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_tensors({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "rng": rng_state()}))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(_write_failure(f"checkpoint {final.name}", root, exc,
                                                  latest_checkpoint(root))) from None
    previous = latest_checkpoint(root)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    try:
        write_atomic_text(root / "latest", final.name)
    except OSError as exc:  # the pointer still names the previous checkpoint, which is complete
        raise CheckpointWriteError(_write_failure(f"the pointer to {final.name}", root, exc, previous)) from None
    _prune(root, keep, final.name)
    return final


def remove_partial(root: Path) -> int:
    """Delete checkpoint folders a killed process left half-written (``.tmp-step-*``); return how many."""
    partial = sorted(root.glob(".tmp-step-*")) if root.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return len(partial)


class CheckpointWriteError(UserError):
    """A checkpoint (or best-weights) write failed, e.g. a full disk; what was there before is intact."""


def _write_failure(what: str, where: Path, exc: OSError, previous: Path | None) -> str:
    """One line: what could not be written, why, and what is still there to resume from."""
    reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    kept = (f"the previous checkpoint {previous} is intact; free space and continue with "
            f"`tunelab train --resume {where.parent}`") if previous else "no earlier checkpoint exists"
    return f"could not write {what} in {where}: {reason}; the partial write was removed and {kept}"


def _prune(root: Path, keep: int, latest: str) -> None:
    ckpts = sorted(p.name for p in root.glob("step-*") if p.is_dir())
    for name in ckpts[:-keep]:
        if name != latest:
            shutil.rmtree(root / name, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[dict[str, Any], Callable[[], None]]:
    """Restore weights and optimizer; return the saved loop state and a function that restores
    the RNG states. The caller runs it *after* creating the resumed data iterator, because making
    an iterator may draw from the global RNG and would otherwise shift every later dropout mask."""
    load_trainable(model, load_tensors(path / WEIGHTS))
    try:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        state = json.loads((path / "state.json").read_text())
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot resume from checkpoint {path}: a file in it is damaged ({reason}); delete "
                        "that folder to resume from the one before") from None
    rng, torch_rng = state.pop("rng"), load_tensors(path / "rng.safetensors")["torch"]
    return state, lambda: set_rng_state(rng, torch_rng)


def save_weights_atomic(folder: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Replace ``folder`` (e.g. ``best/``) with the current trainable weights, atomically."""
    tmp = folder.with_name("." + folder.name + ".tmp")
    recover_atomic(folder)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_tensors(trainable_state(model), tmp / WEIGHTS)
        (tmp / "meta.json").write_text(json.dumps(meta))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the earlier {folder.name}/ is intact" if folder.exists() else f"no earlier {folder.name}/ exists"
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CheckpointWriteError(f"could not write {folder}: {reason}; the partial write was removed and "
                                   f"{kept}") from None
    old = folder.with_name("." + folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)  # a kill between the two renames leaves .old: recover_atomic puts it back
    shutil.rmtree(old, ignore_errors=True)


def recover_atomic(folder: Path) -> None:
    """Undo a :func:`save_weights_atomic` killed between its two renames: ``folder`` is gone and
    ``.folder.old`` holds the last complete one, so it goes back in place."""
    old = folder.with_name("." + folder.name + ".old")
    if not folder.exists() and (old / WEIGHTS).is_file():
        os.replace(old, folder)

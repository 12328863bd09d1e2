"""Load a pretrained model one tensor at a time, transforming modules as soon as their weights arrive.

``from_pretrained`` followed by quantisation holds the whole model in fp32 before the first layer is
quantised: QLoRA's training peak was then no lower than fp32 LoRA's. :func:`load_streamed` builds the
model with its parameters on the meta device (``accelerate.init_empty_weights``; buffers such as
rotary frequencies are real), reads the safetensors checkpoint lazily (``safetensors.safe_open``),
materialises each parameter in fp32 and, the moment every parameter of a module named in
``transforms`` is in place, replaces that module by ``transforms[name](module)`` (e.g. its 4-bit
version), so its fp32 weight is freed before the next one is read. At most one module's fp32 weights
exist at a time besides the modules that stay in fp32.

The base fingerprint (:func:`tunelab.models.loading.fingerprint`) is computed on the way, from the
fp32 values before any transform, so it equals the fingerprint of the same model loaded whole.

Checkpoints this cannot map one-to-one (sharded without an index, keys renamed by transformers'
conversions, a ``.bin`` file, missing weights) return ``None`` before anything is read, and the
caller loads the usual way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tunelab.models.loading import fingerprint_samples, hash_samples

Transform = Callable[[nn.Module], nn.Module]


def checkpoint_files(folder: Path) -> dict[str, Path] | None:
    """Every tensor name of a local safetensors checkpoint -> its file (``None`` when there is none)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def load_streamed(auto_cls: type, resolved: str, transforms_for: Callable[[nn.Module], dict[str, Transform]],
                  **config_kwargs) -> tuple[nn.Module, str] | None:
    """(the model in fp32 with ``transforms_for(empty_model)`` applied while loading, its base
    fingerprint), or ``None`` when the checkpoint is not a local safetensors one this maps exactly."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, GenerationConfig

    folder = Path(resolved)
    files = checkpoint_files(folder) if folder.is_dir() else None
    if files is None:
        return None
    config = AutoConfig.from_pretrained(folder, **config_kwargs)
    with init_empty_weights(include_buffers=False):
        model = auto_cls.from_config(config, dtype=torch.float32)
    model.tie_weights()
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    owners = _tied_names(model)
    if set(files) != {n for n in params if n == owners.get(n, n)}:
        return None  # renamed, missing or extra keys: leave it to from_pretrained's conversions
    transforms = transforms_for(model)
    waiting = {name: {n for n, _ in model.get_submodule(name).named_parameters()} for name in transforms}
    samples: dict[str, tuple[list[int], bytes]] = {}
    for name, file in files.items():
        tensor = _read(file, name)
        for alias in [name, *(n for n, owner in owners.items() if owner == name and n != name)]:
            samples[alias] = fingerprint_samples(tensor)
        set_module_tensor_to_device(model, name, "cpu", value=tensor)
        del tensor
        _transform_ready(model, name, transforms, waiting)
    model.tie_weights()  # the tied copies still point at their meta placeholders
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"streamed loading left parameters on the meta device: {left[:5]}")
    for name, buffer in model.state_dict().items():  # persistent buffers the checkpoint does not hold
        if name not in samples and not any(name.startswith(m + ".") for m in transforms):
            samples[name] = fingerprint_samples(buffer)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.eval()
    return model, hash_samples(samples)


def _read(file: Path, name: str) -> torch.Tensor:
    """One tensor of a safetensors file as an fp32 copy. The file is opened for this tensor alone: the
    pages a memory-mapped read touches count in the process's resident memory until it is unmapped,
    so one mapping held for the whole load would end up holding the whole checkpoint."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(name).to(torch.float32, copy=True)


def _tied_names(model: nn.Module) -> dict[str, str]:
    """Each parameter name -> the name under which it is first reached (tied weights share one)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


def _transform_ready(model: nn.Module, loaded: str, transforms: dict[str, Transform],
                     waiting: dict[str, set[str]]) -> None:
    """Transform the module that ``loaded`` completes, if it is one of ``transforms``'."""
    from tunelab.methods.targets import replace_module

    name, _, leaf = loaded.rpartition(".")
    if name in waiting:
        waiting[name].discard(leaf)
        if not waiting[name]:
            replace_module(model, name, transforms[name](model.get_submodule(name)))
            del waiting[name]

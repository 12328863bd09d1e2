"""Model-structure helpers shared by methods and the engine (no task or method imports)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

HEAD_MODULE_NAMES = ("classifier", "score", "pre_classifier", "qa_outputs", "lm_head_cls")
"""Leaf-module names that are task heads across Hugging Face models."""


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return the qualified name and the ``nn.ModuleList`` of transformer blocks.

    Picks the longest ModuleList whose name ends in ``layer``, ``layers``, ``h`` or ``block``
    (``bert.encoder.layer``, ``model.layers``, ``transformer.h``). A model whose loader recorded
    ``model.tunelab_layer_list`` (e.g. ``features``, a CNN's ``nn.Sequential`` of blocks) uses that.
    """
    recorded = getattr(model, "tunelab_layer_list", None)
    if recorded:
        blocks = model.get_submodule(recorded)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            return recorded, blocks  # type: ignore[return-value]
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in {"layer", "layers", "h", "block"}:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise ValueError(f"cannot find the transformer layer list in {type(model).__name__}")
    return best


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the task-head parameters.

    The loader records the newly initialised keys in ``model.tunelab_head_params`` (a head is what
    the pretrained checkpoint did not have); otherwise fall back to well-known head module names.
    """
    recorded = getattr(model, "tunelab_head_params", None)
    if recorded:
        return list(recorded)
    return [
        n for n, _ in model.named_parameters()
        if any(part in HEAD_MODULE_NAMES for part in n.split(".")[:-1])
    ]


def head_module(model: nn.Module) -> nn.Module:
    """The module that maps features to outputs: the recorded task head, else the output embeddings
    (a causal LM's ``lm_head``). Unwraps a DDP/accelerate wrapper first."""
    core = getattr(model, "module", model)
    names = head_parameter_names(core)
    if names:
        return core.get_submodule(names[0].rsplit(".", 1)[0]) if "." in names[0] else core
    getter = getattr(core, "get_output_embeddings", None)
    out = getter() if callable(getter) else None
    if out is None:
        raise ValueError(f"cannot find the head of {type(core).__name__}")
    return out


@contextmanager
def head_inputs(model: nn.Module, wanted: bool = True):
    """Collect what the model's head reads (its input tensor) during the block; nothing when not ``wanted``."""
    seen: list[torch.Tensor] = []
    if not wanted:
        yield seen
        return
    handle = head_module(model).register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()

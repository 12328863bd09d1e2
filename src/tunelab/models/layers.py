"""Model-structure helpers shared by methods and the engine (no task or method imports)."""

from __future__ import annotations

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

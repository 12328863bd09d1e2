"""A smaller student from a pretrained model: keep some of its blocks, drop the rest.

DistilBERT (Sanh et al., 2019, sec. 3) initialises its 6-layer student from BERT-base "by taking
one layer out of two"; the same works for any stack of blocks that map a state to a state of the
same shape: transformer layers (BERT, Llama, ...) and a CNN's shape-preserving blocks (MobileNetV2's
repeated inverted residuals). ``model.num_layers: N`` keeps every k-th block with ``k = L // N``,
ending with the last block (whose output the head was trained on): MiniLM's 6 layers -> 3 keeps
layers 1, 3, 5; SmolLM2's 30 -> 10 keeps 2, 5, ..., 29. ``model.keep_layers`` names the blocks.

Dropping a block that changes its input's shape would break the network, so for blocks that are
not transformer layers each dropped block is checked with a dummy forward (its output must have its
input's shape); a refusal names the blocks that may be dropped. Transformer configs are updated
(``num_hidden_layers``; attention ``layer_idx`` renumbered so the KV cache indexes the kept layers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.models.layers import find_layer_list


def every_kth(total: int, keep: int) -> list[int]:
    """``keep`` block indices out of ``total``: every k-th (k = total // keep), ending with the last."""
    if keep > total:
        raise UserError(f"model.num_layers={keep} is more than the model's {total} blocks")
    k = total // keep
    return [total - 1 - k * j for j in range(keep)][::-1]


def kept_indices(total: int, num_layers: int | None, keep_layers: Sequence[int] | None) -> list[int] | None:
    """The blocks to keep (None: all), checked against the model's ``total`` blocks."""
    if num_layers is not None:
        return None if num_layers == total else every_kth(total, num_layers)
    if keep_layers is None:
        return None
    keep = list(keep_layers)
    bad = [i for i in keep if not 0 <= i < total]
    if not keep or bad or len(set(keep)) != len(keep) or keep != sorted(keep):
        why = f"index {bad[0]} is outside 0..{total - 1}" if bad else "give distinct indices in increasing order"
        raise UserError(f"model.keep_layers={keep}: {why} (the model has {total} blocks)")
    return keep


def shrink(model: nn.Module, num_layers: int | None, keep_layers: Sequence[int] | None) -> list[int] | None:
    """Drop all blocks but the kept ones, in place; return the kept indices (None: nothing dropped)."""
    name, blocks = find_layer_list(model)
    keep = kept_indices(len(blocks), num_layers, keep_layers)
    if keep is None:
        return None
    if not _is_transformer_stack(model, name):
        _check_droppable(model, blocks, [i for i in range(len(blocks)) if i not in keep])
    kept = [blocks[i] for i in keep]
    new = nn.ModuleList(kept) if isinstance(blocks, nn.ModuleList) else nn.Sequential(*kept)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    _update_config(model, keep)
    return keep


def _is_transformer_stack(model: nn.Module, name: str) -> bool:
    return getattr(model, "tunelab_layer_list", None) is None and hasattr(getattr(model, "config", None),
                                                                          "num_hidden_layers")


def _update_config(model: nn.Module, keep: list[int]) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(keep)
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and types:
        config.layer_types = [types[i] for i in keep]
    for new_index, block in enumerate(find_layer_list(model)[1]):
        for module in block.modules():
            if hasattr(module, "layer_idx") and isinstance(module.layer_idx, int):
                module.layer_idx = new_index


def _check_droppable(model: nn.Module, blocks: nn.Module, drop: list[int]) -> None:
    """Refuse dropping a block whose output shape differs from its input's (found by a dummy forward)."""
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def record(i: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            shapes[i] = (tuple(args[0].shape), tuple(out.shape))
        return hook

    handles = [block.register_forward_hook(record(i)) for i, block in enumerate(blocks)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    droppable = [i for i, (a, b) in sorted(shapes.items()) if a == b]
    bad = [i for i in drop if i not in droppable]
    if bad:
        raise UserError(f"model.keep_layers/num_layers would drop block(s) {bad}, which change the shape of their "
                        f"input; blocks that can be dropped: {droppable}")

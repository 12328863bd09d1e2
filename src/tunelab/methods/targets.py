"""Selecting modules to adapt by name, shared by the methods that wrap linear layers.

A target entry selects a module whose qualified name equals it or ends in ``.<entry>`` (so
``query`` and ``attention.output.dense`` both work), or, prefixed with ``re:``, whose whole name
matches the regular expression. Task heads, ``lm_head`` and output embeddings are never wrapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

from tunelab.models.layers import HEAD_MODULE_NAMES, head_parameter_names

REGEX_PREFIX = "re:"


def excluded_module_names(model: nn.Module) -> set[str]:
    """Names of modules never wrapped: the task head, ``lm_head``, the output embedding."""
    heads = {name.rsplit(".", 1)[0] for name in head_parameter_names(model) if "." in name}
    getter = getattr(model, "get_output_embeddings", None)
    output_embeddings = getter() if callable(getter) else None
    excluded: set[str] = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if (
            name in heads
            or any(part in HEAD_MODULE_NAMES or part == "lm_head" for part in parts)
            or (output_embeddings is not None and module is output_embeddings)
        ):
            excluded.add(name)
    return excluded


def matches(name: str, targets: list[str]) -> bool:
    """Whether module ``name`` is selected by any target entry (name suffix or ``re:`` full match)."""
    for target in targets:
        if target.startswith(REGEX_PREFIX):
            if re.fullmatch(target[len(REGEX_PREFIX):], name):
                return True
        elif name == target or name.endswith(f".{target}"):
            return True
    return False


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` was."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def merge_all(modules: Mapping[str, nn.Module]) -> int:
    """Call ``merge()`` on every wrapper (LoRA, IA3, ...); return how many there are."""
    for module in modules.values():
        module.merge()
    return len(modules)


def unmerge_all(modules: Mapping[str, nn.Module]) -> int:
    """Call ``unmerge()`` on every wrapper; return how many there are."""
    for module in modules.values():
        module.unmerge()
    return len(modules)


def unwrap_all(model: nn.Module, modules: Mapping[str, nn.Module]) -> nn.Module:
    """Merge each wrapper, then put its ``base_layer`` back (plain transformers names for export)."""
    for name, module in modules.items():
        module.merge()
        replace_module(model, name, module.base_layer)
    return model

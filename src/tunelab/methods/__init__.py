"""Methods: which parameters adapt, and how. One module per method, registered here.

Adding a method is one module exposing ``SPEC`` (a :class:`MethodSpec`) plus one line below.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field
from torch import nn

from tunelab.errors import UserError, unknown
from tunelab.methods import adapter, bitfit, freeze, full, ia3, lora
from tunelab.methods.base import MethodConfig, MethodSpec
from tunelab.models.layers import head_parameter_names

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (full.SPEC, freeze.SPEC, bitfit.SPEC, lora.SPEC, ia3.SPEC, *adapter.SPECS)
}

AnyMethodConfig = Annotated[
    Union[tuple(spec.config_cls for spec in METHODS.values())],  # type: ignore[valid-type]
    Field(discriminator="name"),
]


def get_method(name: str) -> MethodSpec:
    """Look a method up by name; unknown names raise a :class:`UserError` listing the accepted ones."""
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]


def check_composition(configs: list[MethodConfig]) -> None:
    """Refuse combinations that make no sense (``full`` with anything, a method twice)."""
    names = [c.name for c in configs]  # type: ignore[attr-defined]
    if len(set(names)) != len(names):
        raise UserError(f"methods repeat a name: {names}; list each method once")
    if "full" in names and len(names) > 1:
        raise UserError(
            f"method 'full' already trains every parameter; it cannot be combined with {names[1:]}"
        )


def apply_methods(model: nn.Module, configs: list[MethodConfig]) -> nn.Module:
    """Freeze everything, apply each method in order (union of what they train), then the head."""
    check_composition(configs)
    for p in model.parameters():
        p.requires_grad_(False)
    for cfg in configs:
        get_method(cfg.name).apply(model, cfg)  # type: ignore[attr-defined]
    if any(c.train_head for c in configs):
        params = dict(model.named_parameters())
        for name in head_parameter_names(model):
            params[name].requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts and the trainable percentage (shared tensors once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(total, 1)}

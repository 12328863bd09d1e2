"""Methods: which parameters adapt, and how. One module per method, registered here.

Adding a method is one module exposing ``SPEC`` (a :class:`MethodSpec`) plus one line below.
"""

from __future__ import annotations

from typing import Annotated, Union

import torch
from pydantic import Field
from torch import nn

from tunelab.errors import UserError, unknown
from tunelab.methods import adapter, bitfit, freeze, full, ia3, lora, prefix, prompt, qlora
from tunelab.methods.base import MethodConfig, MethodSpec
from tunelab.models.layers import head_parameter_names

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (full.SPEC, freeze.SPEC, bitfit.SPEC, lora.SPEC, qlora.SPEC, ia3.SPEC, *adapter.SPECS, prompt.SPEC,
                 *prefix.SPECS)
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


LINEAR_REWRAPPERS = tuple(name for name, spec in METHODS.items() if spec.wraps_linear)
"""Methods that replace the same Linear modules with their own wrapper: at most one per model."""
VIRTUAL_TOKEN_METHODS = tuple(name for name, spec in METHODS.items() if spec.virtual_tokens)
"""Methods that put virtual tokens in front of every row (they need a 2-D attention mask)."""


def check_composition(configs: list[MethodConfig]) -> None:
    """Refuse combinations that make no sense: a method that trains everything (``full``) with
    anything, a method twice, two methods that rewrap the same linear layers (LoRA, QLoRA, IA3), and
    ``freeze`` over QLoRA's 4-bit weights (which cannot train). Virtual-token methods refuse each
    other when applied."""
    names = [c.name for c in configs]  # type: ignore[attr-defined]
    if len(set(names)) != len(names):
        raise UserError(f"methods repeat a name: {names}; list each method once")
    everything = [n for n in names if n in METHODS and METHODS[n].trains_everything]
    if everything and len(names) > 1:
        raise UserError(
            f"method '{everything[0]}' already trains every parameter; it cannot be combined with {names[1:]}"
        )
    clash = [n for n in names if n in LINEAR_REWRAPPERS]
    if len(clash) > 1:
        raise UserError(f"methods {' and '.join(clash)} both wrap the model's linear layers and cannot be "
                        f"combined; use one of {', '.join(LINEAR_REWRAPPERS)} (with adapters, BitFit, "
                        "freeze or a virtual-token method if you like)")
    if "qlora" in names and "freeze" in names:
        raise UserError("method 'freeze' cannot be combined with 'qlora': QLoRA stores the linear weights "
                        "in 4 bits, which cannot train; use lora with freeze instead, or qlora alone")


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


def parameter_numel(p: torch.Tensor) -> int:
    """Logical element count: a bitsandbytes 4-bit weight packs two values per byte and keeps its
    real shape in ``quant_state``, so it counts as that shape, not as its packed storage."""
    state = getattr(p, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else p.numel()


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts and the trainable percentage (shared tensors once;
    4-bit quantised weights by their logical shape)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = parameter_numel(p)
        total += n
        trainable += n if p.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(total, 1)}

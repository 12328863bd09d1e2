"""(IA)^3 <-> peft ``peft_type="IA3"``.

Both sides hold one scaling vector per targeted Linear layer. tunelab's ``<m>.ia3_l`` is 1-D; peft
stores ``base_model.model.<m>.ia3_l`` as a column ``(out_features, 1)`` when the layer's output is
scaled and as a row ``(1, in_features)`` for a feed-forward layer (input scaled), so the shape on
disk says which kind a layer is. ``target_modules`` / ``feedforward_modules`` go over as the user's
entries when peft selects the same layers with them (peft matches feed-forward entries by plain
``str.endswith``), else as exact module names.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.interop.peft_base import (
    PEFT_PREFIX,
    PeftConverter,
    check_options,
    choose_import_targets,
    import_targets,
    peft_selects_same,
    plain_entries,
    strip_prefix,
)
from tunelab.methods.base import MethodConfig
from tunelab.methods.ia3 import IA3Config, default_targets, find_ia3_targets, ia3_modules

HANDLED = ("target_modules", "feedforward_modules")
IGNORED = ("init_ia3_weights",)
_SUFFIX = ".ia3_l"


# ---------------------------------------------------------------------------- tunelab -> peft

def _effective_entries(cfg: IA3Config, model: nn.Module) -> tuple[list[str] | None, list[str] | None]:
    """The target / feed-forward entries training used (the architecture table fills unset ones)."""
    try:
        default_t, default_ff = default_targets(model)
    except UserError:
        default_t = default_ff = None  # type: ignore[assignment]
    targets = plain_entries(cfg.target_modules) if cfg.target_modules is not None else default_t
    feedforward = plain_entries(cfg.feedforward_modules) if cfg.feedforward_modules is not None else default_ff
    return targets, feedforward


def to_peft_config(cfg: MethodConfig, model: nn.Module) -> dict[str, Any]:
    """The IA3 fields of ``adapter_config.json`` for a run adapted with ``cfg``."""
    assert isinstance(cfg, IA3Config)
    chosen = {name: module.is_feedforward for name, module in ia3_modules(model).items()}
    exact_ff = sorted(name for name, ff in chosen.items() if ff)
    targets, feedforward = _effective_entries(cfg, model)
    if peft_selects_same(targets, chosen, model) and feedforward is not None and sorted(
            name for name in chosen if any(name.endswith(e) for e in feedforward)) == exact_ff:
        return {"target_modules": targets, "feedforward_modules": feedforward, "fan_in_fan_out": False}
    return {"target_modules": sorted(chosen), "feedforward_modules": exact_ff, "fan_in_fan_out": False}


def to_peft_key(name: str, tensor: torch.Tensor, model: nn.Module) -> tuple[str, torch.Tensor] | None:
    """``<m>.ia3_l`` -> a ``(1, in)`` row for a feed-forward layer, else an ``(out, 1)`` column."""
    if not name.endswith(_SUFFIX):
        return None
    module = model.get_submodule(name.removesuffix(_SUFFIX))
    shape = (1, -1) if module.is_feedforward else (-1, 1)
    return PEFT_PREFIX + name, tensor.reshape(shape).contiguous()


# ---------------------------------------------------------------------------- peft -> tunelab

def from_peft_key(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """The tunelab name of an ``ia3_l`` tensor, flattened to 1-D."""
    if not key.endswith(_SUFFIX):
        return None
    return strip_prefix(key), tensor.reshape(-1).contiguous()


def _peft_feedforward(value: Any, name: str) -> bool:
    """peft's own rule for whether ``name`` is a feed-forward module (string: full regex; list: endswith)."""
    if isinstance(value, str):
        return bool(re.fullmatch(value, name))
    return any(name.endswith(str(e)) for e in value or [])


def _adapted(peft_cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Module name -> feed-forward, read off the stored shapes (a row is feed-forward)."""
    adapted: dict[str, bool] = {}
    for key, tensor in tensors.items():
        mapped = from_peft_key(key, tensor)
        if mapped is None:
            continue
        module = mapped[0].removesuffix(_SUFFIX)
        shape = tuple(tensor.shape)
        if len(shape) == 2 and shape[0] != shape[1]:
            adapted[module] = shape[0] == 1
        else:  # a (1, 1) vector says nothing; ask the config
            adapted[module] = _peft_feedforward(peft_cfg.get("feedforward_modules"), module)
    return adapted


def from_peft_config(peft_cfg: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                     where: str) -> dict[str, Any]:
    """tunelab ``method:`` data for a peft IA3 config whose tensors are ``tensors`` (on-disk keys)."""
    check_options(peft_cfg, HANDLED, where, IGNORED)
    adapted = _adapted(peft_cfg, tensors)
    if not adapted:
        raise UserError(f"{where}: the adapter holds no IA3 tensors (ia3_l)")
    exact = (sorted(adapted), sorted(name for name, ff in adapted.items() if ff))
    ff_value = peft_cfg.get("feedforward_modules")
    spec = (import_targets(peft_cfg.get("target_modules")),
            f"re:{ff_value}" if isinstance(ff_value, str) else (list(ff_value) if ff_value is not None else None))

    def fits(candidate: tuple[Any, Any]) -> bool:
        targets, feedforward = candidate
        return find_ia3_targets(model, IA3Config(target_modules=targets, feedforward_modules=feedforward)) == adapted

    targets, feedforward = choose_import_targets([spec], fits, exact)
    return {"name": "ia3", "target_modules": targets, "feedforward_modules": feedforward}


CONVERTER = PeftConverter(
    imports_as="ia3",
    peft_type="IA3",
    to_peft_config=to_peft_config,
    from_peft_config=from_peft_config,
    to_peft_key=to_peft_key,
    from_peft_key=from_peft_key,
)

"""LoRA (with rsLoRA, DoRA, rank/alpha patterns) <-> peft ``peft_type="LORA"``.

Tensor names (tunelab -> peft, on disk; see :mod:`tunelab.interop.peft_base` for the prefix):
``<m>.lora_A.weight`` -> ``base_model.model.<m>.lora_A.weight`` (same for ``lora_B``), and DoRA's
``<m>.lora_magnitude`` -> ``base_model.model.<m>.lora_magnitude_vector``. Options: ``r`` / ``r``,
``alpha`` / ``lora_alpha``, ``dropout`` / ``lora_dropout``, ``use_rslora``, ``use_dora``,
``rank_pattern`` and ``alpha_pattern`` (both sides match a key against a dot-aligned suffix of the
module name), ``init`` / ``init_lora_weights`` (irrelevant once weights exist). Targets go over as the
user's entries when peft would select the same modules with them, else as exact module names.
"""

from __future__ import annotations

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
    number,
    peft_selects_same,
    plain_entries,
    strip_prefix,
)
from tunelab.methods.base import MethodConfig
from tunelab.methods.lora import LoRAConfig, find_lora_targets, lora_modules
from tunelab.models.layers import find_layer_list

INIT_TO_PEFT = {"kaiming": True, "gaussian": "gaussian", "random": False}
"""tunelab ``init`` -> peft ``init_lora_weights`` (informational: saved weights replace the init)."""

BASE_CHANGING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")
"""peft initialisations that also rewrite the base weights, so the adapter does not fit the original base."""

HANDLED = ("r", "lora_alpha", "lora_dropout", "target_modules", "layers_to_transform", "layers_pattern",
           "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "bias", "init_lora_weights")
IGNORED = ("qalora_group_size", "megatron_core", "eva_config")
"""Fields that only matter together with an option that is off, or only at initialisation."""

_FACTORS = (".lora_A.weight", ".lora_B.weight")
_MAGNITUDE = ".lora_magnitude"
_PEFT_MAGNITUDE = ".lora_magnitude_vector"


# ---------------------------------------------------------------------------- tunelab -> peft

def _export_targets(cfg: LoRAConfig, model: nn.Module) -> dict[str, Any]:
    """``target_modules`` (+ layer fields): the user's entries when peft adapts the same modules with
    them, else the exact names of the adapted modules."""
    chosen = sorted(lora_modules(model))
    entries = plain_entries(cfg.target_modules)
    if cfg.layers is not None and entries:
        pattern = find_layer_list(model)[0].rsplit(".", 1)[-1]
        if peft_selects_same(entries, chosen, model, cfg.layers, pattern):
            return {"target_modules": entries, "layers_to_transform": sorted(cfg.layers), "layers_pattern": pattern}
    elif peft_selects_same(entries, chosen, model):
        return {"target_modules": entries, "layers_to_transform": None, "layers_pattern": None}
    return {"target_modules": chosen, "layers_to_transform": None, "layers_pattern": None}


def to_peft_config(cfg: MethodConfig, model: nn.Module) -> dict[str, Any]:
    """The LoRA fields of ``adapter_config.json`` for a run adapted with ``cfg``."""
    assert isinstance(cfg, LoRAConfig)
    return {
        "r": cfg.r,
        "lora_alpha": number(cfg.alpha),
        "lora_dropout": cfg.dropout,
        **_export_targets(cfg, model),
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "rank_pattern": dict(cfg.rank_pattern),
        "alpha_pattern": {k: number(v) for k, v in cfg.alpha_pattern.items()},
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": INIT_TO_PEFT[cfg.init],
    }


def to_peft_key(name: str, tensor: torch.Tensor, model: nn.Module) -> tuple[str, torch.Tensor] | None:
    """``<m>.lora_A.weight`` keeps its name under the prefix; ``lora_magnitude`` gains ``_vector``."""
    if name.endswith(_FACTORS):
        return PEFT_PREFIX + name, tensor
    if name.endswith(_MAGNITUDE):
        return PEFT_PREFIX + name + "_vector", tensor
    return None


# ---------------------------------------------------------------------------- peft -> tunelab

def from_peft_key(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """The tunelab parameter name of a LoRA tensor; other LoRA tensors (embeddings, biases) are refused."""
    if ".lora_" not in key:
        return None
    name = strip_prefix(key)
    if name.endswith(_FACTORS):
        return name, tensor
    if name.endswith(_PEFT_MAGNITUDE):
        return name.removesuffix("_vector"), tensor
    if ".lora_embedding_" in name:
        raise UserError(f"adapter tensor {key} is a LoRA on an embedding layer; tunelab's lora adapts "
                        "nn.Linear layers only")
    raise UserError(f"adapter tensor {key} has no tunelab lora equivalent (tunelab stores lora_A, "
                    "lora_B and DoRA's magnitude only)")


def _check_lora_options(peft_cfg: dict[str, Any], where: str) -> None:
    """Refuse options tunelab's lora lacks: trained biases, base-changing inits, anything else set."""
    bias = peft_cfg.get("bias", "none")
    if bias != "none":
        raise UserError(f"{where}: LORA option bias={bias!r} (also training the base biases) has no tunelab "
                        "equivalent; tunelab's lora needs bias='none'")
    init = peft_cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise UserError(f"{where}: LORA option init_lora_weights={init!r} also rewrites the base weights, so "
                        "the adapter does not apply to the original base; convert it to a plain LoRA with "
                        "peft's path_initial_model_for_weight_conversion first")
    check_options(peft_cfg, HANDLED, where, IGNORED)


def _layers(value: Any) -> list[int] | None:
    """peft ``layers_to_transform`` (int or list) as tunelab ``layers``."""
    if value is None or value == []:
        return None
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _init_from_peft(value: Any) -> str:
    """peft ``init_lora_weights`` as tunelab ``init`` where one corresponds (else the default)."""
    return next((ours for ours, theirs in INIT_TO_PEFT.items() if theirs == value and type(theirs) is type(value)),
                "kaiming")


def from_peft_config(peft_cfg: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                     where: str) -> dict[str, Any]:
    """tunelab ``method:`` data for a peft LoRA config whose tensors are ``tensors`` (on-disk keys)."""
    _check_lora_options(peft_cfg, where)
    adapted = sorted({name.rsplit(".lora_", 1)[0] for name, _ in filter(None, (
        from_peft_key(k, t) for k, t in tensors.items()))})
    if not adapted:
        raise UserError(f"{where}: the adapter holds no LoRA tensors (lora_A / lora_B)")
    spec, layers = import_targets(peft_cfg.get("target_modules")), _layers(peft_cfg.get("layers_to_transform"))

    def fits(candidate: tuple[Any, list[int] | None]) -> bool:
        targets, only = candidate
        return sorted(find_lora_targets(model, LoRAConfig(target_modules=targets, layers=only))) == adapted

    candidates = [(spec, layers)] if spec is not None else []
    targets, layers = choose_import_targets(candidates, fits, (adapted, None))
    return {
        "name": "lora",
        "r": int(peft_cfg.get("r", 8)),
        "alpha": float(peft_cfg.get("lora_alpha", 8)),
        "dropout": float(peft_cfg.get("lora_dropout") or 0.0),
        "target_modules": targets,
        "layers": layers,
        "use_rslora": bool(peft_cfg.get("use_rslora", False)),
        "use_dora": bool(peft_cfg.get("use_dora", False)),
        "init": _init_from_peft(peft_cfg.get("init_lora_weights", True)),
        "rank_pattern": {str(k): int(v) for k, v in (peft_cfg.get("rank_pattern") or {}).items()},
        "alpha_pattern": {str(k): float(v) for k, v in (peft_cfg.get("alpha_pattern") or {}).items()},
    }


CONVERTER = PeftConverter(
    imports_as="lora",
    peft_type="LORA",
    to_peft_config=to_peft_config,
    from_peft_config=from_peft_config,
    to_peft_key=to_peft_key,
    from_peft_key=from_peft_key,
)

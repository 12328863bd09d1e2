"""Weighted LoRA blends, and merging an adapter into the base weights and back out.

**Weighted combination**: plain LoRA adapters only (no DoRA, no IA3 or bottleneck adapters, no
BitFit). The update of each module is ``sum_i w_i s_i B_i A_i`` (``s_i`` the scaling), realised
exactly as one LoRA of rank ``sum_i r_i`` with scaling 1 by stacking the rows ``w_i s_i A_i`` and the
columns ``B_i`` (the "cat" combination of peft's ``add_weighted_adapter``). Weights may be negative
(subtracting a task vector).

**Merging** folds an adapter's wrappers into the base weights (LoRA, DoRA, IA3; bottleneck adapters
have no merged form). With ``exact`` a host-memory copy of the base weights it changes is kept, so
unmerging restores them bit for bit; otherwise the update is undone arithmetically (exact up to
rounding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch
from torch import nn

from tunelab.adapters.capture import Adapter
from tunelab.errors import UserError
from tunelab.methods.lora import LoRAConfig, LoRALinear

MergeBackup = list[tuple[nn.Parameter, torch.Tensor]]
"""Base parameters a merge changed, each with a host-memory copy of its value before."""


# ---------------------------------------------------------------------------- weighted LoRA

def components(weights: Mapping[str, float], get: Callable[[str], Adapter],
               head_names: list[str]) -> dict[str, Adapter]:
    """The adapters a weighted combination names, after checking the weights are finite numbers and
    every adapter is plain LoRA (``get`` looks an adapter up by name, refusing unknown ones)."""
    if not weights:
        raise UserError("add_weighted needs at least one adapter and its weight, e.g. {'a': 0.5, 'b': 0.5}")
    parts = {n: get(n) for n in weights}
    for n, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w):
            raise UserError(f"add_weighted: the weight of '{n}' must be a finite number, got {w!r}")
    for adapter in parts.values():
        check_plain_lora(adapter, head_names)
    return parts


def check_plain_lora(adapter: Adapter, head_names: list[str]) -> None:
    """A weighted combination takes plain LoRA on linear layers only (plus a head)."""
    why = ""
    if [type(m) for m in adapter.methods] != [LoRAConfig]:
        why = f"uses {'+'.join(adapter.method_names)}"
    elif getattr(adapter.methods[0], "use_dora", False):
        why = "uses DoRA, whose magnitude rescaling is not linear in the update"
    elif any(not isinstance(w, LoRALinear) for w in adapter.wrappers.values()):
        why = "has LoRA on non-linear layers"
    elif any(n not in head_names for n in adapter.owned):
        why = "trains base tensors besides the head"
    if why:
        raise UserError(f"add_weighted combines plain LoRA adapters only; '{adapter.name}' {why}")


def concatenated_config(parts: Mapping[str, Adapter], module_order: Mapping[str, nn.Module],
                        train_head: bool) -> LoRAConfig:
    """The LoRA config of the combination: every module any part adapts (in the base's order), each
    with the sum of the parts' ranks and alpha = rank (scaling 1)."""
    modules = [n for n in module_order if any(n in a.wrappers for a in parts.values())]
    ranks = {n: sum(a.wrappers[n].r for a in parts.values() if n in a.wrappers) for n in modules}
    return LoRAConfig(
        r=max(ranks.values()), alpha=float(max(ranks.values())), target_modules=modules,
        rank_pattern={re.escape(n): r for n, r in ranks.items()},
        alpha_pattern={re.escape(n): float(r) for n, r in ranks.items()},
        train_head=train_head,
    )


@torch.no_grad()
def fill_concatenated(target: Adapter, parts: Mapping[str, Adapter], weights: Mapping[str, float]) -> None:
    """Set each wrapper of ``target`` to A = [w_i s_i A_i] (rows), B = [B_i] (columns), scaling 1,
    so that B A = sum_i w_i s_i B_i A_i."""
    for name, wrapper in target.wrappers.items():
        found = [(a.wrappers[name], weights[n]) for n, a in parts.items() if name in a.wrappers]
        a_rows = torch.cat([w.lora_A.weight * (weight * w.scaling) for w, weight in found], dim=0)
        b_cols = torch.cat([w.lora_B.weight for w, _ in found], dim=1)
        assert wrapper.scaling == 1.0 and wrapper.lora_A.weight.shape == a_rows.shape
        wrapper.lora_A.weight.copy_(a_rows)
        wrapper.lora_B.weight.copy_(b_cols)


# ---------------------------------------------------------------------------- merging

def check_mergeable(adapter: Adapter) -> None:
    """Every wrapper must fold into its (unwrapped) base layer."""
    for name, wrapper in adapter.wrappers.items():
        if not callable(getattr(wrapper, "merge", None)) or not callable(getattr(wrapper, "unmerge", None)):
            why = f"{name} holds a {type(wrapper).__name__}, which has no merged form"
        elif hasattr(wrapper.base_layer, "base_layer"):
            why = f"{name} holds a {type(wrapper).__name__} around a {type(wrapper.base_layer).__name__}"
        else:
            continue
        raise UserError(f"adapter '{adapter.name}' cannot be merged: {why}; merge works for lora (incl. DoRA) "
                        "and ia3 adapters")


def merge_wrappers(adapter: Adapter, exact: bool) -> MergeBackup:
    """Fold the (installed) adapter's wrappers into their base layers; with ``exact``, return a
    host-memory copy of every base parameter they change first (else nothing to restore)."""
    check_mergeable(adapter)
    backup: MergeBackup = []
    if exact:
        seen: set[int] = set()
        for wrapper in adapter.wrappers.values():
            for p in wrapper.base_layer.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    backup.append((p, p.detach().to("cpu", copy=True)))
    for wrapper in adapter.wrappers.values():
        wrapper.merge()
    return backup


@torch.no_grad()
def unmerge_wrappers(adapter: Adapter, backup: MergeBackup) -> None:
    """Take a merged adapter back out of the base weights: undo each wrapper's update, then put the
    saved values back (bit for bit where :func:`merge_wrappers` kept them)."""
    for wrapper in adapter.wrappers.values():
        wrapper.unmerge()
    for param, saved in backup:
        param.copy_(saved.to(param.device))

"""Optimizer parameter groups and learning-rate schedules.

- No weight decay on biases and normalisation weights (Loshchilov & Hutter, 2019, AdamW, apply decay
  to weight matrices only, as BERT's recipe does).
- Layer-wise LR decay (Clark et al., 2020, ELECTRA; Howard & Ruder, 2018, ULMFiT discriminative
  fine-tuning): transformer block l of L gets ``lr * decay**(L - l)``, embeddings ``lr * decay**L``.
- A separate head LR: the freshly initialised head often wants a larger step than the trunk.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import nn

from tunelab.models.layers import find_layer_list, head_parameter_names

_NO_DECAY = re.compile(r"(^|\.)(bias|LayerNorm\.weight|layer_norm\.weight|norm\.weight|ln_\w*\.weight)$|norm")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights and any 1-d parameter get no weight decay."""
    return param.ndim < 2 or bool(_NO_DECAY.search(name))


def layer_depth(name: str, layers_prefix: str | None, n_layers: int) -> int:
    """0 for embeddings/below the blocks, l+1 for block l, n_layers+1 above the blocks."""
    if layers_prefix:
        m = re.search(re.escape(layers_prefix) + r"\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1
    if "embed" in name or "wte" in name or "wpe" in name:
        return 0
    return n_layers + 1


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr: float | None = None,
                 layer_lr_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups for the trainable parameters, keyed by (lr, weight decay)."""
    head = set(head_parameter_names(model))
    try:
        prefix, layers = find_layer_list(model)
        n_layers = len(layers)
    except ValueError:
        prefix, n_layers = None, 0
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = defaultdict(list)
    names: dict[tuple[float, float], list[str]] = defaultdict(list)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in head:
            group_lr = head_lr or lr
        else:
            depth = min(layer_depth(name, prefix, n_layers), n_layers)
            group_lr = lr * layer_lr_decay ** (n_layers - depth)
        wd = 0.0 if no_weight_decay(name, p) else weight_decay
        groups[(group_lr, wd)].append(p)
        names[(group_lr, wd)].append(name)
    return [{"params": ps, "lr": k[0], "weight_decay": k[1], "names": names[k]}
            for k, ps in sorted(groups.items(), key=lambda kv: kv[0])]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, head_lr: float | None,
                    layer_lr_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, lr, weight_decay, head_lr, layer_lr_decay)
    if not groups:
        raise ValueError("no trainable parameters: the method configuration trains nothing")
    for g in groups:
        g.pop("names")
    # foreach=True: one fused update over all tensors, no per-parameter Python loop per step.
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int):
    """Linear/cosine decay after linear warmup, or constant after warmup (transformers' schedules)."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[kind]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)

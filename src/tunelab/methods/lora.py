"""LoRA: low-rank adaptation of the linear layers.

Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022,
arXiv:2106.09685). A frozen weight ``W0`` (out x in) receives a trainable rank-``r`` update; with the
forward pass of eq. 3 and the ``alpha / r`` scaling of sec. 4.1::

    h = W0 x + (alpha / r) * B A x,    A: r x in,  B: out x r

``A`` starts Kaiming-uniform and ``B`` at zero, so training starts exactly at the pretrained model.
After training, ``B A`` can be folded into ``W0`` (:func:`merge_lora`), leaving no inference cost,
and the wrappers removed (:func:`unwrap_lora`) so the state dict has the original names.

Targets: each ``target_modules`` entry matches a module whose name is the entry or ends in
``.<entry>`` (so a plain entry matches the last name component exactly); an entry ``re:<regex>``
must match the whole qualified name; ``"all-linear"`` means every ``nn.Linear`` outside the head.
The task head and any ``lm_head`` / output embedding are never wrapped (the head trains in full).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.base import MethodConfig, MethodSpec
from tunelab.models.layers import HEAD_MODULE_NAMES, find_layer_list, head_parameter_names

ALL_LINEAR = "all-linear"
REGEX_PREFIX = "re:"


class LoRAConfig(MethodConfig):
    """Rank, scaling, dropout and placement of the low-rank adapters."""

    name: Literal["lora"] = Field("lora", description="Method name: low-rank adapters on linear layers.")
    r: int = Field(8, ge=1, description="Rank of the update B A.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator; the update is multiplied by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input (0 disables it).")
    target_modules: list[str] | str = Field(
        "all-linear",
        description="Linear modules to adapt: last-name components ('query'), 're:<regex>' on the "
        "full name, or 'all-linear' (default; every linear layer except the task head, which "
        "Dettmers et al., 2023, QLoRA, found needed to match full fine-tuning).",
    )
    layers: list[int] | None = Field(
        None, description="Only adapt modules inside these transformer-block indices (0-based)."
    )

    @field_validator("target_modules")
    @classmethod
    def _check_targets(cls, value: list[str] | str) -> list[str] | str:
        """Reject an empty target list and ``re:`` entries that do not compile."""
        entries = [value] if isinstance(value, str) else value
        if not entries or any(not e for e in entries):
            raise ValueError("target_modules must name at least one module (or be 'all-linear')")
        for entry in entries:
            if entry.startswith(REGEX_PREFIX):
                try:
                    re.compile(entry[len(REGEX_PREFIX):])
                except re.error as exc:
                    raise ValueError(f"{entry!r} is not a valid regular expression: {exc}") from exc
        return value

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: list[int] | None) -> list[int] | None:
        """Layer indices are non-negative and the list, when given, is not empty."""
        if value is not None and (not value or min(value) < 0):
            raise ValueError("layers must be a non-empty list of block indices >= 0")
        return value

    def target_list(self) -> list[str]:
        """``target_modules`` as a list (a single string becomes one entry)."""
        return [self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules)


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a low-rank update: ``base_layer(x) + lora_B(lora_A(dropout(x))) * alpha/r``.

    ``base_layer`` keeps its ``requires_grad`` as it was (``apply_methods`` has frozen it); the
    factors ``lora_A`` and ``lora_B`` are new, trainable parameters on the base weight's device/dtype.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        weight = base_layer.weight
        self.base_layer = base_layer
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """Paper / peft initialisation: A Kaiming-uniform (a=sqrt(5)), B zeros, so B A = 0."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def weight(self) -> nn.Parameter:
        """The base layer's weight (for code that inspects ``module.weight``)."""
        return self.base_layer.weight

    @property
    def bias(self) -> nn.Parameter | None:
        """The base layer's bias."""
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        """Input width of the base layer."""
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        """Output width of the base layer."""
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the scaled low-rank update (only the base once merged)."""
        out = self.base_layer(x)
        if self.merged:
            return out
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return out + (update * self.scaling).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``(alpha / r) * B @ A`` with the base weight's shape."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base_layer.weight``; a second call does nothing."""
        if not self.merged:
            weight = self.base_layer.weight
            weight.add_(self.delta_weight().to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged update back out of ``base_layer.weight``; no-op when not merged."""
        if self.merged:
            weight = self.base_layer.weight
            weight.sub_(self.delta_weight().to(weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` in ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _excluded_module_names(model: nn.Module) -> set[str]:
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


def _layer_prefixes(model: nn.Module, layers: list[int] | None) -> tuple[str, ...] | None:
    """Name prefixes of the chosen transformer blocks, or ``None`` when all blocks are allowed."""
    if layers is None:
        return None
    try:
        list_name, blocks = find_layer_list(model)
    except ValueError as exc:
        raise UserError(f"lora.layers: {exc}; remove 'layers' to adapt the whole model") from exc
    bad = [i for i in layers if i >= len(blocks)]
    if bad:
        raise UserError(
            f"lora.layers: {bad} out of range; {type(model).__name__} has {len(blocks)} transformer "
            f"layers (indices 0 to {len(blocks) - 1})"
        )
    return tuple(f"{list_name}.{i}." for i in sorted(set(layers)))


def _candidate_linears(model: nn.Module, layers: list[int] | None) -> dict[str, nn.Linear]:
    """Linear layers LoRA may wrap: not head, not inside an existing LoRALinear, in ``layers``."""
    excluded = _excluded_module_names(model)
    inside_lora = tuple(f"{name}." for name in lora_modules(model))
    prefixes = _layer_prefixes(model, layers)
    candidates: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, nn.Linear) or name in excluded:
            continue
        if (inside_lora and name.startswith(inside_lora)) or (prefixes and not name.startswith(prefixes)):
            continue
        candidates[name] = module
    return candidates


def _matches(name: str, targets: list[str]) -> bool:
    """Whether module ``name`` is selected by any target entry (name suffix or ``re:`` full match)."""
    for target in targets:
        if target.startswith(REGEX_PREFIX):
            if re.fullmatch(target[len(REGEX_PREFIX):], name):
                return True
        elif name == target or name.endswith(f".{target}"):
            return True
    return False


def _no_match_error(model: nn.Module, targets: list[str], layers: list[int] | None) -> UserError:
    """A :class:`UserError` naming the targets and up to 10 close Linear module names."""
    inside_lora = tuple(f"{name}." for name in lora_modules(model))
    names = [
        n for n, m in model.named_modules()
        if n and isinstance(m, (nn.Linear, LoRALinear)) and not (inside_lora and n.startswith(inside_lora))
    ]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    close: list[str] = []
    for target in targets:
        plain = target.removeprefix(REGEX_PREFIX)
        close += difflib.get_close_matches(plain.rsplit(".", 1)[-1], leaves, n=10, cutoff=0.5)
        close += difflib.get_close_matches(plain, names, n=10, cutoff=0.6)
    close = list(dict.fromkeys(close))[:10]
    where = f" inside layers {layers}" if layers is not None else ""
    hint = f"close Linear modules: {', '.join(close)}" if close else f"Linear module names: {', '.join(leaves)}"
    return UserError(
        f"lora.target_modules {targets} match no Linear module{where} of {type(model).__name__} "
        f"(the task head is never targeted); {hint}"
    )


def find_lora_targets(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Qualified names of the Linear modules ``cfg`` selects; none is a :class:`UserError`."""
    targets = cfg.target_list()
    candidates = _candidate_linears(model, cfg.layers)
    if [t.lower() for t in targets] == [ALL_LINEAR]:
        chosen = list(candidates)
    else:
        chosen = [name for name in candidates if _matches(name, targets)]
    if not chosen:
        raise _no_match_error(model, targets, cfg.layers)
    return chosen


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` was."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Wrap each targeted Linear in a :class:`LoRALinear`; only ``lora_A``/``lora_B`` are trained."""
    assert isinstance(cfg, LoRAConfig)
    for name in find_lora_targets(model, cfg):
        wrapped = LoRALinear(model.get_submodule(name), cfg.r, cfg.alpha, cfg.dropout)
        _replace_module(model, name, wrapped)
        wrapped.lora_A.weight.requires_grad_(True)
        wrapped.lora_B.weight.requires_grad_(True)


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight; returns how many modules were merged."""
    modules = lora_modules(model)
    for module in modules.values():
        module.merge()
    return len(modules)


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`; returns how many modules there are."""
    modules = lora_modules(model)
    for module in modules.values():
        module.unmerge()
    return len(modules)


def unwrap_lora(model: nn.Module) -> nn.Module:
    """Merge, then replace each :class:`LoRALinear` by its base layer (plain names for export)."""
    for name, module in lora_modules(model).items():
        module.merge()
        _replace_module(model, name, module.base_layer)
    return model


SPEC = MethodSpec(
    name="lora",
    config_cls=LoRAConfig,
    apply=apply,
    description="LoRA: trainable low-rank updates B A on chosen linear layers.",
    paper="Hu et al., 2021, LoRA: Low-Rank Adaptation of Large Language Models, arXiv:2106.09685",
)

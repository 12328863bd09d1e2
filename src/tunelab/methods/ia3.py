"""(IA)^3: learned vectors that rescale activations of chosen linear layers.

Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning" (NeurIPS 2022, arXiv:2205.05638), sec. 3.3. Three learned vectors ``l_k``, ``l_v``,
``l_ff`` rescale the keys, the values and the intermediate feed-forward activation element-wise::

    softmax(Q (l_k ⊙ K^T) / sqrt(d_k)) (l_v ⊙ V),      (l_ff ⊙ gamma(W_1 x)) W_2

In terms of linear layers (what this module and peft implement) a targeted layer either scales
its *output* -- keys and values, including the bias: ``y = l ⊙ (W x + b)``, ``l`` of size
``out_features`` -- or, for a *feed-forward* module, its *input*: ``y = W (l ⊙ x) + b``, ``l`` of
size ``in_features`` (the FFN down-projection, whose input is the intermediate activation).
Every ``l`` starts at ones, so training starts exactly at the pretrained model. Both forms fold
into the base layer (:func:`merge_ia3`): rows of ``W`` and ``b`` times ``l``, or columns of ``W``
times ``l``; :func:`unmerge_ia3` divides back out.

Targets: as for LoRA, a ``target_modules`` / ``feedforward_modules`` entry matches a module whose
name is the entry or ends in ``.<entry>``; ``re:<regex>`` must match the whole qualified name. Left
unset, both come from a per-architecture table (:data:`DEFAULT_TARGETS`): for BERT the peft default
``["key", "value", "output.dense"]`` with ``output.dense`` feed-forward. Note that the suffix
``output.dense`` selects both ``intermediate -> output.dense`` (the FFN down-projection) *and*
``attention.output.dense``, so both scale their input. ``feedforward_modules`` filters the targeted
modules; an entry that selects no targeted module is an error (it must be a subset of the targets).
The task head and any ``lm_head`` / output embedding are never wrapped (the head trains in full).
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.base import MethodConfig, MethodSpec
from tunelab.methods.targets import (
    REGEX_PREFIX,
    excluded_module_names,
    matches,
    merge_all,
    replace_module,
    unmerge_all,
    unwrap_all,
)

BERT_LIKE = (["key", "value", "output.dense"], ["output.dense"])
DECODER = (["k_proj", "v_proj", "down_proj"], ["down_proj"])

DEFAULT_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "bert": BERT_LIKE,
    "roberta": BERT_LIKE,
    "xlm-roberta": BERT_LIKE,
    "electra": BERT_LIKE,
    "distilbert": (["k_lin", "v_lin", "lin2"], ["lin2"]),
    "deberta-v2": (["key_proj", "value_proj", "output.dense"], ["output.dense"]),
    "t5": (["k", "v", "wo"], ["wo"]),
    "llama": DECODER,
    "mistral": DECODER,
    "qwen2": DECODER,
    "qwen3": DECODER,
    "gemma": DECODER,
    "gemma2": DECODER,
}
"""``model_type`` -> (target_modules, feedforward_modules) used when the config leaves them unset:
keys, values and the FFN down-projection (input-scaled), as in the paper and peft's table."""


def _check_entries(value: list[str] | str | None, field: str, allow_empty: bool) -> list[str] | str | None:
    """Reject empty entries (and an empty list unless allowed) and ``re:`` entries that do not compile."""
    if value is None:
        return value
    entries = [value] if isinstance(value, str) else value
    if (not entries and not allow_empty) or any(not e for e in entries):
        raise ValueError(f"{field} must name at least one module (or be left unset for the default)")
    for entry in entries:
        if entry.startswith(REGEX_PREFIX):
            try:
                re.compile(entry[len(REGEX_PREFIX):])
            except re.error as exc:
                raise ValueError(f"{entry!r} is not a valid regular expression: {exc}") from exc
    return value


def _as_list(value: list[str] | str) -> list[str]:
    """A single string becomes one entry."""
    return [value] if isinstance(value, str) else list(value)


class IA3Config(MethodConfig):
    """Which linear layers get a learned scaling vector, and which of them scale their input."""

    name: Literal["ia3"] = Field("ia3", description="Method name: (IA)^3 learned activation scaling vectors.")
    target_modules: list[str] | str | None = Field(
        None,
        description="Linear modules to rescale: last-name components ('value'), dotted suffixes "
        "('output.dense') or 're:<regex>' on the full name. Unset: the architecture's keys, values "
        "and feed-forward down-projection (BERT: key, value, output.dense).",
    )
    feedforward_modules: list[str] | str | None = Field(
        None,
        description="Among the targets, the modules whose *input* is scaled (the others scale their "
        "output); same matching rules, must select targeted modules only. Unset: the architecture's "
        "feed-forward down-projection (BERT: output.dense); [] scales every target's output.",
    )

    @field_validator("target_modules")
    @classmethod
    def _check_targets(cls, value: list[str] | str | None) -> list[str] | str | None:
        """Non-empty entries; ``re:`` entries compile."""
        return _check_entries(value, "target_modules", allow_empty=False)

    @field_validator("feedforward_modules")
    @classmethod
    def _check_feedforward(cls, value: list[str] | str | None) -> list[str] | str | None:
        """Entries non-empty (the list itself may be empty); ``re:`` entries compile."""
        return _check_entries(value, "feedforward_modules", allow_empty=True)


class IA3Linear(nn.Module):
    """An ``nn.Linear`` whose output (``y = l ⊙ base(x)``) or input (``y = base(l ⊙ x)``) is rescaled.

    ``ia3_l`` is a 1-D vector of ``out_features`` (output scaling, which also scales the bias) or
    ``in_features`` (``is_feedforward``) ones on the base weight's device/dtype. ``base_layer`` keeps
    its ``requires_grad`` as it was (``apply_methods`` has frozen it).
    """

    def __init__(self, base_layer: nn.Linear, is_feedforward: bool = False) -> None:
        super().__init__()
        weight = base_layer.weight
        self.base_layer = base_layer
        self.is_feedforward = is_feedforward
        size = base_layer.in_features if is_feedforward else base_layer.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, device=weight.device, dtype=weight.dtype))
        self.merged = False

    def reset_ia3_parameters(self) -> None:
        """Paper / peft initialisation: all ones, so the layer is unchanged."""
        nn.init.ones_(self.ia3_l)

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
        """Scale the input (feed-forward) or the whole output, bias included (only the base once merged)."""
        if self.merged:
            return self.base_layer(x)
        if self.is_feedforward:
            return self.base_layer((x.to(self.ia3_l.dtype) * self.ia3_l).to(x.dtype))
        out = self.base_layer(x)
        return (out * self.ia3_l).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``l`` into the base layer (columns of W, or rows of W and b); a second call does nothing."""
        if self.merged:
            return
        weight, bias, scale = self.base_layer.weight, self.base_layer.bias, self.ia3_l.to(self.base_layer.weight.dtype)
        if self.is_feedforward:
            weight.mul_(scale.unsqueeze(0))
        else:
            weight.mul_(scale.unsqueeze(1))
            if bias is not None:
                bias.mul_(scale.to(bias.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide a merged ``l`` back out; no-op when not merged. A zero entry cannot be undone."""
        if not self.merged:
            return
        if torch.any(self.ia3_l == 0):
            raise RuntimeError("cannot unmerge (IA)^3: the scaling vector has zero entries (the merge lost them)")
        weight, bias, scale = self.base_layer.weight, self.base_layer.bias, self.ia3_l.to(self.base_layer.weight.dtype)
        if self.is_feedforward:
            weight.div_(scale.unsqueeze(0))
        else:
            weight.div_(scale.unsqueeze(1))
            if bias is not None:
                bias.div_(scale.to(bias.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"scales={'input' if self.is_feedforward else 'output'}, size={self.ia3_l.numel()}, merged={self.merged}"


def ia3_modules(model: nn.Module) -> dict[str, IA3Linear]:
    """Every :class:`IA3Linear` in ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, IA3Linear)}


def _candidate_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Linear layers (IA)^3 may wrap: not the head, not inside another wrapper (IA3, LoRA, ...)."""
    excluded = excluded_module_names(model)
    wrappers = tuple(f"{n}." for n, m in model.named_modules() if n and hasattr(m, "base_layer"))
    return {
        name: module for name, module in model.named_modules()
        if name and isinstance(module, nn.Linear) and name not in excluded
        and not (wrappers and name.startswith(wrappers))
    }


def default_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """The architecture's (target_modules, feedforward_modules); unknown architectures are a UserError."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise UserError(
            f"ia3 has no default targets for model type '{model_type}' ({type(model).__name__}); "
            f"set both ia3.target_modules and ia3.feedforward_modules ([] for none) (defaults exist for: "
            f"{', '.join(sorted(DEFAULT_TARGETS))})"
        )
    targets, feedforward = DEFAULT_TARGETS[model_type]
    return list(targets), list(feedforward)


def _close_names(model: nn.Module, entries: list[str]) -> str:
    """A hint naming up to 10 Linear modules close to ``entries`` (or every Linear leaf name)."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, (nn.Linear, IA3Linear))]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    pairs = sorted({".".join(n.split(".")[-2:]) for n in names if "." in n})  # "intermediate.dense"
    close: list[str] = []
    for entry in entries:
        plain = entry.removeprefix(REGEX_PREFIX)
        close += difflib.get_close_matches(plain.rsplit(".", 1)[-1], leaves, n=10, cutoff=0.5)
        close += difflib.get_close_matches(plain, pairs, n=10, cutoff=0.6)
        close += difflib.get_close_matches(plain, names, n=10, cutoff=0.6)
    close = list(dict.fromkeys(close))[:10]
    return f"close Linear modules: {', '.join(close)}" if close else f"Linear module names: {', '.join(leaves)}"


def find_ia3_targets(model: nn.Module, cfg: IA3Config) -> dict[str, bool]:
    """Qualified names of the Linear modules ``cfg`` selects -> whether each is feed-forward.

    No target matching, or a ``feedforward_modules`` entry selecting no targeted module, is a
    :class:`UserError`. Defaulted feed-forward entries silently filter the chosen targets.
    """
    explicit_ff = cfg.feedforward_modules is not None
    unset = cfg.target_modules is None or cfg.feedforward_modules is None
    default_t, default_ff = default_targets(model) if unset else ([], [])
    targets = _as_list(cfg.target_modules) if cfg.target_modules is not None else default_t
    feedforward = _as_list(cfg.feedforward_modules) if cfg.feedforward_modules is not None else default_ff

    chosen = [name for name in _candidate_linears(model) if matches(name, targets)]
    if not chosen:
        raise UserError(
            f"ia3.target_modules {targets} match no Linear module of {type(model).__name__} "
            f"(the task head is never targeted); {_close_names(model, targets)}"
        )
    if explicit_ff:
        stray = [entry for entry in feedforward if not any(matches(name, [entry]) for name in chosen)]
        if stray:
            raise UserError(
                f"ia3.feedforward_modules must be a subset of target_modules: {stray} select none of the "
                f"targeted modules (targets {targets}); add them to target_modules or remove them; "
                f"{_close_names(model, stray)}"
            )
    return {name: matches(name, feedforward) for name in chosen}


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Wrap each targeted Linear in an :class:`IA3Linear`; only the ``ia3_l`` vectors are trained."""
    assert isinstance(cfg, IA3Config)
    for name, is_feedforward in find_ia3_targets(model, cfg).items():
        wrapped = IA3Linear(model.get_submodule(name), is_feedforward=is_feedforward)
        replace_module(model, name, wrapped)
        wrapped.ia3_l.requires_grad_(True)


def merge_ia3(model: nn.Module) -> int:
    """Fold every IA3Linear into its base layer; returns how many modules were merged."""
    return merge_all(ia3_modules(model))


def unmerge_ia3(model: nn.Module) -> int:
    """Undo :func:`merge_ia3`; returns how many modules there are."""
    return unmerge_all(ia3_modules(model))


def unwrap_ia3(model: nn.Module) -> nn.Module:
    """Merge, then replace each :class:`IA3Linear` by its base layer (plain names for export)."""
    return unwrap_all(model, ia3_modules(model))


SPEC = MethodSpec(
    name="ia3",
    config_cls=IA3Config,
    apply=apply,
    description="(IA)^3: learned vectors rescaling keys, values and feed-forward activations.",
    paper="Liu et al., 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than "
    "In-Context Learning, arXiv:2205.05638",
    wraps_linear=True,
    merge_modules=ia3_modules,
    swappable=True,
    peft_type="IA3",
)

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

Variants, each off by default (so the plain method above is unchanged):

* ``use_rslora`` -- Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with
  LoRA" (arXiv:2312.03732): scale by ``alpha / sqrt(r)`` instead of ``alpha / r``, which keeps the
  update's magnitude (and learning) from collapsing as the rank grows.
* ``use_dora`` -- Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation" (ICML 2024,
  arXiv:2402.09353): the adapted weight is split into a trainable per-output-row magnitude ``m``
  and a direction ``W0 + dW`` (``dW`` the scaled LoRA update), ``W' = m * (W0 + dW) / ||W0 + dW||``,
  with the row norm treated as a constant for back-propagation (sec. 4.3 of the paper).
* ``init`` -- how ``A`` and ``B`` start (Kaiming-uniform or Gaussian ``A``, zero ``B``; or both
  random, which deliberately changes the model at step 0 and is meant for tests).
* ``rank_pattern`` / ``alpha_pattern`` -- per-module rank and alpha, keyed by regexes on the
  qualified module name, with the same matching rule as peft (see :func:`pattern_value`).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn import functional as F

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
from tunelab.models.layers import find_layer_list

ALL_LINEAR = "all-linear"
INIT_CHOICES = ("kaiming", "gaussian", "random")


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
    use_rslora: bool = Field(
        False,
        description="Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (Kalajdzievski, 2023, "
        "rsLoRA, arXiv:2312.03732); helps larger ranks.",
    )
    init: Literal["kaiming", "gaussian", "random"] = Field(
        "kaiming",
        description="Adapter initialisation. 'kaiming': A Kaiming-uniform (a=sqrt(5)), B zero (default; "
        "peft's init_lora_weights=True). 'gaussian': A ~ Normal(0, std=1/r), B zero (Hu et al., 2021 "
        "use a random Gaussian A and zero B; peft's 'gaussian'). 'random': A and B both "
        "Kaiming-uniform, so the model changes before training (peft's False; for tests only).",
    )
    use_dora: bool = Field(
        False,
        description="DoRA (Liu et al., 2024, arXiv:2402.09353): also train a per-output-row magnitude "
        "and use W0 + scaled B A only as the direction; adds out_features parameters per module.",
    )
    rank_pattern: dict[str, int] = Field(
        default_factory=dict,
        description="Per-module rank overrides: {regex: r}. A key matches a module when it matches a "
        "dot-separated suffix of the full name in full (peft's rule: 'query' matches every "
        "'...query', 'layer\\.0\\..*query' only layer 0); the first matching key wins.",
    )
    alpha_pattern: dict[str, float] = Field(
        default_factory=dict,
        description="Per-module alpha overrides: {regex: alpha}, matched like rank_pattern.",
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

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _check_patterns(cls, value: dict[str, float]) -> dict[str, float]:
        """Every key compiles as a regex and every rank / alpha is positive."""
        for key, number in value.items():
            try:
                re.compile(key)
            except re.error as exc:
                raise ValueError(f"pattern {key!r} is not a valid regular expression: {exc}") from exc
            if number <= 0:
                raise ValueError(f"pattern {key!r}: value must be > 0, got {number}")
        return value

    def module_rank_alpha(self, name: str) -> tuple[int, float]:
        """Rank and alpha for module ``name`` after ``rank_pattern`` / ``alpha_pattern``."""
        r = pattern_value(self.rank_pattern, name, self.r)
        return int(r), float(pattern_value(self.alpha_pattern, name, self.alpha))

    def target_list(self) -> list[str]:
        """``target_modules`` as a list (a single string becomes one entry)."""
        return [self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules)


def pattern_value(patterns: dict[str, float], name: str, default: float) -> float:
    """The value of the first key in ``patterns`` that selects module ``name``, else ``default``.

    A key selects ``name`` when the whole of some dot-aligned suffix of ``name`` (or ``name``
    itself) matches the key as a regex: ``(?:.*\\.)?(?:key)`` must match the full name. This is the
    rule peft applies to ``rank_pattern`` / ``alpha_pattern``, so the same dict means the same thing.
    """
    for key, value in patterns.items():
        if re.fullmatch(rf"(?:.*\.)?(?:{key})", name):
            return value
    return default


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a low-rank update: ``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``.

    ``scaling`` is ``alpha / r`` (Hu et al., 2021) or, with ``use_rslora``, ``alpha / sqrt(r)``
    (Kalajdzievski, 2023). With ``use_dora`` (Liu et al., 2024) the layer computes::

        y = m / ||W0 + dW||_row * (W0 + dW) x + b,    dW = scaling * B A

    where ``m`` (``lora_magnitude``, one entry per output row) is trainable and starts at
    ``||W0 + dW||_row``, so at initialisation the layer reproduces plain LoRA (and the base layer
    when ``B = 0``). The row norm is recomputed every call but detached from the graph (paper,
    sec. 4.3), so only ``m``, ``A`` and ``B`` receive gradients through their direct paths.

    ``base_layer`` keeps its ``requires_grad`` as it was (``apply_methods`` has frozen it); the
    adapter parameters (all named ``lora_*``) are new, on the base weight's device/dtype.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        use_rslora: bool = False,
        use_dora: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        if init not in INIT_CHOICES:
            raise ValueError(f"unknown LoRA init {init!r}; choose one of {', '.join(INIT_CHOICES)}")
        weight = base_layer.weight
        self.base_layer = base_layer
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        self.r = r
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.use_dora = use_dora
        self.init = init
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.merged = False
        self.lora_magnitude: nn.Parameter | None
        self.register_parameter("lora_magnitude", None)
        # Row norms ||W0 + dW|| used by a DoRA merge, kept to undo it exactly (not saved in state_dict).
        self.register_buffer("lora_merged_norm", None, persistent=False)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """Initialise A and B per ``init``, then (DoRA) the magnitude to the current row norms.

        ``kaiming``: A Kaiming-uniform with a=sqrt(5) (the ``nn.Linear`` default), B zeros.
        ``gaussian``: A ~ Normal(0, std=1/r), B zeros. ``random``: both Kaiming-uniform (B != 0).
        """
        if self.init == "gaussian":
            nn.init.normal_(self.lora_A.weight, mean=0.0, std=1.0 / self.r)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        if self.init == "random":
            nn.init.kaiming_uniform_(self.lora_B.weight, a=math.sqrt(5))
        else:
            nn.init.zeros_(self.lora_B.weight)
        if self.use_dora:
            norm = self.dora_weight_norm().to(self.base_layer.weight.dtype)
            if self.lora_magnitude is None:
                self.lora_magnitude = nn.Parameter(norm)
            else:
                with torch.no_grad():
                    self.lora_magnitude.copy_(norm)

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

    def dora_weight_norm(self, delta: torch.Tensor | None = None) -> torch.Tensor:
        """L2 norm of each output row of ``W0 + dW`` (shape ``out_features``), detached.

        Must be called while unmerged (``base_layer.weight`` is ``W0``); ``delta`` defaults to
        :meth:`delta_weight`.
        """
        with torch.no_grad():
            delta = self.delta_weight() if delta is None else delta
            direction = self.base_layer.weight.to(delta.dtype) + delta
            return torch.linalg.vector_norm(direction, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the scaled low-rank update (DoRA: rescaled rows); only the base once merged."""
        out = self.base_layer(x)
        if self.merged:
            return out
        x_lora = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        update = self.lora_B(self.lora_A(x_lora)) * self.scaling
        if not self.use_dora:
            return out + update.to(out.dtype)
        assert self.lora_magnitude is not None
        factor = self.lora_magnitude / self.dora_weight_norm().to(self.lora_magnitude.dtype)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            # W0 x is the base output less its bias: reuse it instead of a second matmul.
            base_out = out if self.base_layer.bias is None else out - self.base_layer.bias
        else:
            # With active dropout the direction term sees the same dropped input as the update.
            base_out = F.linear(x_lora, self.base_layer.weight.to(x_lora.dtype))
        # m/n * (W0 + dW) x + b  ==  (W0 x + b) + (m/n - 1) W0 x + m/n dW x
        extra = (factor - 1) * base_out.to(factor.dtype) + factor * update
        return out + extra.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``scaling * B @ A`` with the base weight's shape."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base_layer.weight``; a second call does nothing.

        LoRA: ``W0 + dW``. DoRA: ``m / ||W0 + dW||_row * (W0 + dW)`` (bias untouched); the row
        norms are kept in ``lora_merged_norm`` so :meth:`unmerge` can invert the rescaling.
        """
        if self.merged:
            return
        weight = self.base_layer.weight
        delta = self.delta_weight()
        if self.use_dora:
            assert self.lora_magnitude is not None
            norm = self.dora_weight_norm(delta)
            factor = (self.lora_magnitude / norm).view(-1, 1)
            weight.copy_((factor * (weight.to(delta.dtype) + delta)).to(weight.dtype))
            self.lora_merged_norm = norm
        else:
            weight.add_(delta.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take a merged update back out of ``base_layer.weight``; no-op when not merged."""
        if not self.merged:
            return
        weight = self.base_layer.weight
        delta = self.delta_weight()
        if self.use_dora:
            assert self.lora_magnitude is not None and self.lora_merged_norm is not None
            factor = (self.lora_magnitude / self.lora_merged_norm).view(-1, 1)
            weight.copy_((weight.to(delta.dtype) / factor - delta).to(weight.dtype))
            self.lora_merged_norm = None
        else:
            weight.sub_(delta.to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        flags = "".join(f", {k}=True" for k in ("use_rslora", "use_dora") if getattr(self, k))
        scaling = f"{self.scaling:.4g}"
        return f"r={self.r}, alpha={self.alpha}, scaling={scaling}, init={self.init}{flags}, merged={self.merged}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` in ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


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
    excluded = excluded_module_names(model)
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
        chosen = [name for name in candidates if matches(name, targets)]
    if not chosen:
        raise _no_match_error(model, targets, cfg.layers)
    return chosen


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Wrap each targeted Linear in a :class:`LoRALinear`; only its ``lora_*`` parameters are trained
    (``lora_A``, ``lora_B`` and, with DoRA, ``lora_magnitude``)."""
    assert isinstance(cfg, LoRAConfig)
    for name in find_lora_targets(model, cfg):
        r, alpha = cfg.module_rank_alpha(name)
        wrapped = LoRALinear(
            model.get_submodule(name), r, alpha, cfg.dropout,
            use_rslora=cfg.use_rslora, use_dora=cfg.use_dora, init=cfg.init,
        )
        replace_module(model, name, wrapped)
        for param_name, param in wrapped.named_parameters():
            if param_name.startswith("lora_"):
                param.requires_grad_(True)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRALinear into its base layer; returns how many modules were merged."""
    return merge_all(lora_modules(model))


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`; returns how many modules there are."""
    return unmerge_all(lora_modules(model))


def unwrap_lora(model: nn.Module) -> nn.Module:
    """Merge, then replace each :class:`LoRALinear` by its base layer (plain names for export)."""
    return unwrap_all(model, lora_modules(model))


SPEC = MethodSpec(
    name="lora",
    config_cls=LoRAConfig,
    apply=apply,
    description="LoRA: trainable low-rank updates B A on chosen linear layers.",
    paper="Hu et al., 2021, LoRA: Low-Rank Adaptation of Large Language Models, arXiv:2106.09685",
)

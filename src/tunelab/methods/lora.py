"""LoRA: low-rank adaptation of linear, embedding and 2-D convolution layers.

Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022,
arXiv:2106.09685). A frozen weight ``W0`` (out x in) receives a trainable rank-``r`` update; with the
forward pass of eq. 3 and the ``alpha / r`` scaling of sec. 4.1::

    h = W0 x + (alpha / r) * B A x,    A: r x in,  B: out x r

``A`` starts Kaiming-uniform and ``B`` at zero, so training starts exactly at the pretrained model.
After training, ``B A`` can be folded into ``W0`` (:func:`merge_lora`), leaving no inference cost,
and the wrappers removed (:func:`unwrap_lora`) so the state dict has the original names.

The paper states the update for "any dense layer"; besides ``nn.Linear`` (:class:`LoRALinear`) it
is applied here to ``nn.Embedding`` (:class:`LoRAEmbedding`: the table gets ``(B A)^T``) and
``nn.Conv2d`` (:class:`LoRAConv2d`: ``A`` is a convolution with the base kernel producing ``r``
channels, ``B`` a 1x1 convolution), the same three layer kinds peft adapts.

Targets: each ``target_modules`` entry matches a module whose name is the entry or ends in
``.<entry>`` (so a plain entry matches the last name component exactly); an entry ``re:<regex>``
must match the whole qualified name; ``"all-linear"`` means every ``nn.Linear`` outside the head
(embeddings and convolutions are adapted only when named). The task head and any ``lm_head`` /
output embedding are never wrapped (the head trains in full).

Variants, each off by default (so the plain method above is unchanged):

* ``use_rslora`` -- Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with
  LoRA" (arXiv:2312.03732): scale by ``alpha / sqrt(r)`` instead of ``alpha / r``, which keeps the
  update's magnitude (and learning) from collapsing as the rank grows.
* ``use_dora`` -- Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation" (ICML 2024,
  arXiv:2402.09353): the adapted weight is split into a trainable per-output-row magnitude ``m``
  and a direction ``W0 + dW`` (``dW`` the scaled LoRA update), ``W' = m * (W0 + dW) / ||W0 + dW||``,
  with the row norm treated as a constant for back-propagation (sec. 4.3 of the paper). Linear
  layers only: the paper defines and evaluates it on linear weights, and targeting an embedding
  or a convolution with ``use_dora`` is a :class:`UserError`.
* ``init`` -- how ``A`` and ``B`` start (Kaiming-uniform or Gaussian ``A``, zero ``B``; or both
  random, which deliberately changes the model at step 0 and is meant for tests).
* ``rank_pattern`` / ``alpha_pattern`` -- per-module rank and alpha, keyed by regexes on the
  qualified module name, with the same matching rule as peft (see :func:`pattern_value`).

A base layer may hold its weight quantised (QLoRA's bitsandbytes 4-bit linears, see
:mod:`tunelab.methods.qlora`): the forward pass only calls it, DoRA reads the dequantised weight
(:func:`dense_weight`), and merging into it is refused (see :meth:`LoRALayer.writable_weight`).
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
ALL_CONV = "all-conv"
"""Every ``nn.Conv2d`` with ``groups=1`` (a CNN's full and pointwise convolutions; depthwise ones
have no low-rank structure worth adapting and are skipped)."""
TARGET_KEYWORDS = {
    ALL_LINEAR: lambda module: isinstance(module, nn.Linear),
    ALL_CONV: lambda module: isinstance(module, nn.Conv2d) and module.groups == 1,
}
INIT_CHOICES = ("kaiming", "gaussian", "random")
TARGET_TYPES = (nn.Linear, nn.Embedding, nn.Conv2d)
"""Module kinds LoRA can wrap (``all-linear`` selects only the first)."""


def check_target_entries(value: list[str] | str, field: str) -> list[str] | str:
    """Reject an empty module list and ``re:`` entries that do not compile (shared by QLoRA)."""
    entries = [value] if isinstance(value, str) else value
    if not entries or any(not e for e in entries):
        raise ValueError(f"{field} must name at least one module (or be '{ALL_LINEAR}')")
    for entry in entries:
        if entry.startswith(REGEX_PREFIX):
            try:
                re.compile(entry[len(REGEX_PREFIX):])
            except re.error as exc:
                raise ValueError(f"{entry!r} is not a valid regular expression: {exc}") from exc
    return value


class LoRAConfig(MethodConfig):
    """Rank, scaling, dropout and placement of the low-rank adapters."""

    name: Literal["lora"] = Field("lora", description="Method name: low-rank adapters on linear layers.")
    r: int = Field(8, ge=1, description="Rank of the update B A.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator; the update is multiplied by alpha / r.")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout on the adapter input (0 disables it; not applied to embeddings, whose input is ids).",
    )
    target_modules: list[str] | str = Field(
        "all-linear",
        description="Modules to adapt: last-name components ('query', 'word_embeddings'), 're:<regex>' "
        "on the full name, or 'all-linear' (default; every linear layer except the task head, which "
        "Dettmers et al., 2023, QLoRA, found needed to match full fine-tuning). Linear, Embedding "
        "and Conv2d modules can be named; 'all-linear' selects Linear layers only, 'all-conv' every Conv2d "
        "with groups=1 (CNNs; may be combined with names or 'all-linear').",
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
        "Kaiming-uniform, so the model changes before training (peft's False; for tests only). "
        "Embeddings mirror the zero factor: A zero, B ~ Normal(0, 1) (both normal for 'random').",
    )
    use_dora: bool = Field(
        False,
        description="DoRA (Liu et al., 2024, arXiv:2402.09353): also train a per-output-row magnitude "
        "and use W0 + scaled B A only as the direction; adds out_features parameters per module. "
        "Linear layers only.",
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
        return check_target_entries(value, "target_modules")

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


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """``layer.weight`` as a dense floating-point tensor.

    A bitsandbytes 4-bit weight (``Params4bit``: packed uint8 codes plus a ``quant_state``) is
    dequantised, giving exactly the matrix its forward pass multiplies by (QLoRA, Dettmers et al.,
    2023, eq. 5); any other weight is returned as it is.
    """
    weight = layer.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None:
        return weight
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(weight.data, quant_state)


class LoRALayer(nn.Module):
    """What the three LoRA wrappers share: rank and scaling, the merged flag and the additive merge.

    ``scaling`` is ``alpha / r`` (Hu et al., 2021) or, with ``use_rslora``, ``alpha / sqrt(r)``
    (Kalajdzievski, 2023). ``base_layer`` keeps its ``requires_grad`` as it was (``apply_methods``
    has frozen it); subclasses add their ``lora_*`` parameters and :meth:`delta_weight`.
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, *, use_rslora: bool, init: str) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        if init not in INIT_CHOICES:
            raise ValueError(f"unknown LoRA init {init!r}; choose one of {', '.join(INIT_CHOICES)}")
        self.base_layer = base_layer
        self.r = r
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.init = init
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.merged = False

    def adapter_kwargs(self) -> dict[str, object]:
        """``device`` and ``dtype`` for new adapter tensors: the base weight's, float32 over an
        integer (quantised) weight, so QLoRA's adapters and optimizer state stay in full precision."""
        weight = self.base_layer.weight
        return {"device": weight.device, "dtype": weight.dtype if weight.is_floating_point() else torch.float32}

    @property
    def weight(self) -> nn.Parameter:
        """The base layer's weight (for code that inspects ``module.weight``)."""
        return self.base_layer.weight

    @property
    def bias(self) -> nn.Parameter | None:
        """The base layer's bias (``None`` for embeddings)."""
        return getattr(self.base_layer, "bias", None)

    def delta_weight(self) -> torch.Tensor:
        """The dense update with the base weight's shape."""
        raise NotImplementedError

    def writable_weight(self) -> nn.Parameter:
        """The base weight to merge into; a quantised one is a :class:`UserError`.

        Merging into 4-bit weights would mean dequantise, add, requantise: the result is rounded
        to the 4-bit grid again, so the merged model no longer computes what the trained adapter
        did and unmerging cannot restore the original codes (peft merges anyway, with a warning).
        tunelab refuses instead; ``tunelab.methods.qlora.unwrap_qlora`` dequantises to float
        first and merges there exactly.
        """
        weight = self.base_layer.weight
        if not weight.is_floating_point():
            raise UserError(
                f"cannot merge LoRA into the quantised weight of a {type(self.base_layer).__name__} "
                f"({weight.dtype}): requantising W + dW would change the model; dequantise first with "
                "tunelab.methods.qlora.unwrap_qlora(model), which merges into float32 weights exactly"
            )
        return weight

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base_layer.weight`` (``W0 + dW``); a second call does nothing."""
        if self.merged:
            return
        weight = self.writable_weight()
        weight.add_(self.delta_weight().to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take a merged update back out of ``base_layer.weight``; no-op when not merged."""
        if not self.merged:
            return
        weight = self.writable_weight()
        weight.sub_(self.delta_weight().to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        flags = ", use_rslora=True" if self.use_rslora else ""
        scaling = f"{self.scaling:.4g}"
        return f"r={self.r}, alpha={self.alpha}, scaling={scaling}, init={self.init}{flags}, merged={self.merged}"


class LoRALinear(LoRALayer):
    """An ``nn.Linear`` plus a low-rank update: ``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``.

    With ``use_dora`` (Liu et al., 2024) the layer computes::

        y = m / ||W0 + dW||_row * (W0 + dW) x + b,    dW = scaling * B A

    where ``m`` (``lora_magnitude``, one entry per output row) is trainable and starts at
    ``||W0 + dW||_row``, so at initialisation the layer reproduces plain LoRA (and the base layer
    when ``B = 0``). The row norm is recomputed every call but detached from the graph (paper,
    sec. 4.3), so only ``m``, ``A`` and ``B`` receive gradients through their direct paths.

    The base may be a bitsandbytes ``Linear4bit`` (QLoRA): its forward is called as is, ``W0`` in
    the DoRA terms is the dequantised weight, and the adapters are float32.
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
        super().__init__(base_layer, r, alpha, use_rslora=use_rslora, init=init)
        kwargs = self.adapter_kwargs()
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **kwargs)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **kwargs)
        self.use_dora = use_dora
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
        init_factors(self.lora_A.weight, self.lora_B.weight, self.init, self.r)
        if self.use_dora:
            norm = self.dora_weight_norm().to(self.lora_A.weight.dtype)
            if self.lora_magnitude is None:
                self.lora_magnitude = nn.Parameter(norm)
            else:
                with torch.no_grad():
                    self.lora_magnitude.copy_(norm)

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
            direction = dense_weight(self.base_layer).to(delta.dtype) + delta
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
            base_out = F.linear(x_lora, dense_weight(self.base_layer).to(x_lora.dtype))
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
        if self.merged or not self.use_dora:
            super().merge()
            return
        assert self.lora_magnitude is not None
        weight = self.writable_weight()
        delta = self.delta_weight()
        norm = self.dora_weight_norm(delta)
        factor = (self.lora_magnitude / norm).view(-1, 1)
        weight.copy_((factor * (weight.to(delta.dtype) + delta)).to(weight.dtype))
        self.lora_merged_norm = norm
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take a merged update back out of ``base_layer.weight``; no-op when not merged."""
        if not self.merged or not self.use_dora:
            super().unmerge()
            return
        assert self.lora_magnitude is not None and self.lora_merged_norm is not None
        weight = self.writable_weight()
        delta = self.delta_weight()
        factor = (self.lora_magnitude / self.lora_merged_norm).view(-1, 1)
        weight.copy_((weight.to(delta.dtype) / factor - delta).to(weight.dtype))
        self.lora_merged_norm = None
        self.merged = False

    def extra_repr(self) -> str:
        return super().extra_repr() + (", use_dora=True" if self.use_dora else "")


class LoRAEmbedding(LoRALayer):
    """An ``nn.Embedding`` plus a low-rank update of its table.

    ``A`` (``lora_embedding_A``, r x num_embeddings) is itself a lookup table: column ``i`` is the
    rank-``r`` code of token ``i``; ``B`` (``lora_embedding_B``, embedding_dim x r) maps codes to the
    embedding space. For ids ``x``::

        out = W0[x] + scaling * A^T[x] B^T,    i.e. the table becomes W0 + scaling * (B A)^T

    Initialisation mirrors the linear case with the roles swapped, as in the LoRA reference
    implementation for embeddings and in peft: ``A`` zero and ``B ~ Normal(0, 1)``, so the update
    starts at zero and the first step moves ``A`` (``init='random'`` draws both from Normal(0, 1)).
    No dropout: the input is token ids. The lookup of ``A`` uses the base layer's
    ``padding_idx`` (no gradient to the padding row), ``scale_grad_by_freq`` and ``sparse``;
    ``max_norm`` renormalisation is not applied to ``A``. A base that scales its output by an
    ``embed_scale`` attribute (Gemma's scaled word embedding) scales the update alike, so merging
    stays exact.

    Merging into a table that is tied to an output layer (``tie_word_embeddings``) changes that
    layer too.
    """

    def __init__(
        self, base_layer: nn.Embedding, r: int, alpha: float, *, use_rslora: bool = False, init: str = "kaiming"
    ) -> None:
        super().__init__(base_layer, r, alpha, use_rslora=use_rslora, init=init)
        kwargs = self.adapter_kwargs()
        self.lora_embedding_A = nn.Parameter(torch.empty(r, base_layer.num_embeddings, **kwargs))
        self.lora_embedding_B = nn.Parameter(torch.empty(base_layer.embedding_dim, r, **kwargs))
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """``A`` zero, ``B ~ Normal(0, 1)``; ``init='random'``: both Normal(0, 1)."""
        if self.init == "random":
            nn.init.normal_(self.lora_embedding_A)
        else:
            nn.init.zeros_(self.lora_embedding_A)
        nn.init.normal_(self.lora_embedding_B)

    @property
    def num_embeddings(self) -> int:
        """Rows of the base table."""
        return self.base_layer.num_embeddings

    @property
    def embedding_dim(self) -> int:
        """Width of the base table."""
        return self.base_layer.embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base lookup plus ``scaling * A^T[x] B^T``; only the base once merged."""
        out = self.base_layer(x)
        if self.merged:
            return out
        base = self.base_layer
        codes = F.embedding(
            x, self.lora_embedding_A.T, padding_idx=base.padding_idx,
            scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse,
        )
        update = (codes @ self.lora_embedding_B.T) * self.scaling
        embed_scale = getattr(base, "embed_scale", None)
        if embed_scale is not None:
            update = update * (embed_scale.to(update.dtype) if torch.is_tensor(embed_scale) else embed_scale)
        return out + update.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The table update ``scaling * (B A)^T`` (num_embeddings x embedding_dim)."""
        return (self.lora_embedding_B @ self.lora_embedding_A).T * self.scaling


class LoRAConv2d(LoRALayer):
    """An ``nn.Conv2d`` plus a low-rank update: ``base(x) + lora_B(lora_A(dropout(x))) * scaling``.

    ``lora_A`` is a convolution with the base layer's kernel size, stride, padding, dilation and
    padding mode producing ``r`` channels; ``lora_B`` a 1x1 convolution from ``r`` to the output
    channels (the decomposition peft uses). A 1x1 convolution after a convolution is a
    convolution with the composed kernel, so the update of the base kernel is
    ``dW[o, i, :, :] = scaling * sum_k B[o, k] A[k, i, :, :]`` and merging is exact. Grouped
    convolutions (``groups > 1``) are not supported. Initialisation as :class:`LoRALinear`.
    """

    def __init__(
        self,
        base_layer: nn.Conv2d,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        use_rslora: bool = False,
        init: str = "kaiming",
    ) -> None:
        if base_layer.groups != 1:
            raise ValueError(f"LoRAConv2d needs groups=1, got groups={base_layer.groups}")
        super().__init__(base_layer, r, alpha, use_rslora=use_rslora, init=init)
        kwargs = self.adapter_kwargs()
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Conv2d(
            base_layer.in_channels, r, base_layer.kernel_size, base_layer.stride, base_layer.padding,
            base_layer.dilation, bias=False, padding_mode=base_layer.padding_mode, **kwargs,
        )
        self.lora_B = nn.Conv2d(r, base_layer.out_channels, 1, bias=False, **kwargs)
        init_factors(self.lora_A.weight, self.lora_B.weight, self.init, self.r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the scaled low-rank update; only the base once merged."""
        out = self.base_layer(x)
        if self.merged:
            return out
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))) * self.scaling
        return out + update.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The kernel update ``scaling * B A`` with the base kernel's shape (out, in, kh, kw)."""
        b = self.lora_B.weight.flatten(1)  # out x r
        return (b @ self.lora_A.weight.flatten(1)).view_as(self.base_layer.weight) * self.scaling


def init_factors(a: torch.Tensor, b: torch.Tensor, init: str, r: int) -> None:
    """Initialise a linear/convolution ``A``, ``B`` pair per ``init`` (see :class:`LoRAConfig`)."""
    if init == "gaussian":
        nn.init.normal_(a, mean=0.0, std=1.0 / r)
    else:
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    if init == "random":
        nn.init.kaiming_uniform_(b, a=math.sqrt(5))
    else:
        nn.init.zeros_(b)


def lora_modules(model: nn.Module) -> dict[str, LoRALayer]:
    """Every LoRA wrapper (linear, embedding, convolution) in ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def _layer_prefixes(model: nn.Module, layers: list[int] | None, method: str) -> tuple[str, ...] | None:
    """Name prefixes of the chosen transformer blocks, or ``None`` when all blocks are allowed."""
    if layers is None:
        return None
    try:
        list_name, blocks = find_layer_list(model)
    except ValueError as exc:
        raise UserError(f"{method}.layers: {exc}; remove 'layers' to adapt the whole model") from exc
    bad = [i for i in layers if i >= len(blocks)]
    if bad:
        raise UserError(
            f"{method}.layers: {bad} out of range; {type(model).__name__} has {len(blocks)} transformer "
            f"layers (indices 0 to {len(blocks) - 1})"
        )
    return tuple(f"{list_name}.{i}." for i in sorted(set(layers)))


def _candidates(model: nn.Module, layers: list[int] | None, method: str) -> dict[str, nn.Module]:
    """Modules LoRA may wrap: a :data:`TARGET_TYPES` kind, not head, not inside a wrapper, in ``layers``."""
    excluded = excluded_module_names(model)
    inside_lora = tuple(f"{name}." for name in lora_modules(model))
    prefixes = _layer_prefixes(model, layers, method)
    candidates: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, TARGET_TYPES) or name in excluded:
            continue
        if (inside_lora and name.startswith(inside_lora)) or (prefixes and not name.startswith(prefixes)):
            continue
        candidates[name] = module
    return candidates


def _no_match_error(model: nn.Module, cfg: LoRAConfig) -> UserError:
    """A :class:`UserError` naming the targets and up to 10 close Linear/Embedding/Conv2d names."""
    targets = cfg.target_list()
    inside_lora = tuple(f"{name}." for name in lora_modules(model))
    names = [
        n for n, m in model.named_modules()
        if n and isinstance(m, (*TARGET_TYPES, LoRALayer)) and not (inside_lora and n.startswith(inside_lora))
    ]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    close: list[str] = []
    for target in targets:
        plain = target.removeprefix(REGEX_PREFIX)
        close += difflib.get_close_matches(plain.rsplit(".", 1)[-1], leaves, n=10, cutoff=0.5)
        close += difflib.get_close_matches(plain, names, n=10, cutoff=0.6)
    close = list(dict.fromkeys(close))[:10]
    where = f" inside layers {cfg.layers}" if cfg.layers is not None else ""
    kinds = "Linear/Embedding/Conv2d modules"
    hint = f"close {kinds}: {', '.join(close)}" if close else f"{kinds} names: {', '.join(leaves)}"
    return UserError(
        f"{cfg.name}.target_modules {targets} match no Linear, Embedding or Conv2d module{where} of "
        f"{type(model).__name__} (the task head is never targeted); {hint}"
    )


def find_lora_targets(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Qualified names of the modules ``cfg`` selects; none is a :class:`UserError`."""
    targets = cfg.target_list()
    candidates = _candidates(model, cfg.layers, cfg.name)
    keywords = [TARGET_KEYWORDS[t.lower()] for t in targets if t.lower() in TARGET_KEYWORDS]
    names = [t for t in targets if t.lower() not in TARGET_KEYWORDS]
    chosen = [name for name, module in candidates.items()
              if any(kind(module) for kind in keywords) or (names and matches(name, names))]
    if not chosen:
        raise _no_match_error(model, cfg)
    return chosen


def _check_wrappable(name: str, module: nn.Module, cfg: LoRAConfig) -> None:
    """Refuse, before anything changes, what the wrappers cannot do: DoRA off Linear, grouped convs."""
    kind = type(module).__name__
    if cfg.use_dora and not isinstance(module, nn.Linear):
        raise UserError(
            f"{cfg.name}.use_dora: DoRA is implemented for Linear layers only, but target '{name}' ({kind}) "
            "is not one; remove it from target_modules or set use_dora: false"
        )
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise UserError(
            f"{cfg.name}.target_modules: '{name}' is a grouped {kind} (groups={module.groups}), which LoRA "
            "does not adapt; target only convolutions with groups=1"
        )


def _wrap(name: str, module: nn.Module, cfg: LoRAConfig) -> LoRALayer:
    """The LoRA wrapper for one target module (rank and alpha after the per-module patterns)."""
    r, alpha = cfg.module_rank_alpha(name)
    if isinstance(module, nn.Embedding):
        return LoRAEmbedding(module, r, alpha, use_rslora=cfg.use_rslora, init=cfg.init)
    if isinstance(module, nn.Conv2d):
        return LoRAConv2d(module, r, alpha, cfg.dropout, use_rslora=cfg.use_rslora, init=cfg.init)
    return LoRALinear(
        module, r, alpha, cfg.dropout, use_rslora=cfg.use_rslora, use_dora=cfg.use_dora, init=cfg.init
    )


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Wrap each targeted module in its LoRA wrapper; only the ``lora_*`` parameters are trained
    (``lora_A``/``lora_B``, ``lora_embedding_A``/``lora_embedding_B`` and, with DoRA,
    ``lora_magnitude``)."""
    assert isinstance(cfg, LoRAConfig)
    targets = {name: model.get_submodule(name) for name in find_lora_targets(model, cfg)}
    for name, module in targets.items():
        _check_wrappable(name, module, cfg)
    for name, module in targets.items():
        wrapped = _wrap(name, module, cfg)
        replace_module(model, name, wrapped)
        for param_name, param in wrapped.named_parameters():
            if param_name.startswith("lora_"):
                param.requires_grad_(True)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA wrapper into its base layer; returns how many modules were merged."""
    return merge_all(lora_modules(model))


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`; returns how many modules there are."""
    return unmerge_all(lora_modules(model))


def unwrap_lora(model: nn.Module) -> nn.Module:
    """Merge, then replace each wrapper by its base layer (plain names for export)."""
    return unwrap_all(model, lora_modules(model))


SPEC = MethodSpec(
    name="lora",
    config_cls=LoRAConfig,
    apply=apply,
    description="LoRA: trainable low-rank updates B A on chosen linear (or embedding / conv) layers.",
    paper="Hu et al., 2021, LoRA: Low-Rank Adaptation of Large Language Models, arXiv:2106.09685",
    wraps_linear=True,
    merge_modules=lora_modules,
    swappable=True,
    peft_type="LORA",
)

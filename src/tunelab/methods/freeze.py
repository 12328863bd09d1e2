"""Partial fine-tuning: train a chosen subset of layers, the rest stays frozen.

Lee, Tang and Lin, 2019, "What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning"
(arXiv:1911.03090) show that training only the top blocks of BERT recovers most of full
fine-tuning quality. Selectors (their union is trained):

* ``top_layers`` / ``bottom_layers``: the last / first N transformer blocks;
* ``patterns``: parameters whose qualified name matches a regular expression (``re.search``);
* ``train_embeddings``: additionally the input embeddings.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.base import MethodConfig, MethodSpec
from tunelab.models.layers import find_layer_list

EMBEDDING_MODULE_NAMES = ("wte", "wpe", "shared")
"""Embedding module names not caught by the ``embed*`` prefix (GPT-2, T5)."""


class FreezeConfig(MethodConfig):
    """Which layers or parameters to train; everything else stays frozen."""

    name: Literal["freeze"] = Field("freeze", description="Method name: train a chosen subset of layers.")
    top_layers: int | None = Field(
        None, ge=0, description="Train the last N transformer blocks (closest to the output); 0 trains "
        "no block, only the task head: a linear probe on frozen features."
    )
    bottom_layers: int | None = Field(
        None, ge=1, description="Train the first N transformer blocks (closest to the input)."
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions; train every parameter whose qualified name matches one (re.search).",
    )
    train_embeddings: bool = Field(False, description="Also train the input embedding parameters.")

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        """Reject patterns that are not valid regular expressions."""
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from exc
        return patterns

    @model_validator(mode="after")
    def _needs_selector(self) -> FreezeConfig:
        """At least one of ``top_layers``, ``bottom_layers`` or ``patterns`` must be given."""
        if self.top_layers is None and self.bottom_layers is None and not self.patterns:
            raise ValueError(
                "method 'freeze' needs at least one selector: top_layers: N, bottom_layers: N, "
                "or patterns: [regex, ...] (train_embeddings only adds to a selector)"
            )
        return self


def _selected_blocks(model: nn.Module, cfg: FreezeConfig) -> list[nn.Module]:
    """The transformer blocks picked by ``top_layers`` / ``bottom_layers``."""
    if cfg.top_layers is None and cfg.bottom_layers is None:
        return []
    try:
        list_name, layers = find_layer_list(model)
    except ValueError as exc:
        raise UserError(f"method 'freeze' with top_layers/bottom_layers: {exc}; use patterns instead") from exc
    count = len(layers)
    for field, value in (("top_layers", cfg.top_layers), ("bottom_layers", cfg.bottom_layers)):
        if value is not None and value > count:
            raise UserError(
                f"freeze.{field}={value}, but {type(model).__name__} has only {count} transformer "
                f"layers (in '{list_name}'); choose a value from 1 to {count}"
            )
    blocks: list[nn.Module] = []
    if cfg.top_layers is not None:
        blocks.extend(layers[count - cfg.top_layers:])
    if cfg.bottom_layers is not None:
        blocks.extend(layers[: cfg.bottom_layers])
    return blocks


def _pattern_parameters(model: nn.Module, patterns: list[str]) -> list[nn.Parameter]:
    """Parameters matching any pattern; a pattern that matches nothing is a :class:`UserError`."""
    named = list(model.named_parameters())
    names = [name for name, _ in named]
    selected: list[nn.Parameter] = []
    for pattern in patterns:
        regex = re.compile(pattern)
        hits = [param for name, param in named if regex.search(name)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3) or names[:5]
            raise UserError(
                f"freeze.patterns: {pattern!r} matches no parameter of {type(model).__name__}; "
                f"parameter names look like: {', '.join(close)}"
            )
        selected.extend(hits)
    return selected


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Input-embedding parameters: the model's input embeddings plus modules named ``embed*``."""
    params: list[nn.Parameter] = []
    getter = getattr(model, "get_input_embeddings", None)
    try:
        inputs = getter() if callable(getter) else None
    except NotImplementedError:
        inputs = None
    if isinstance(inputs, nn.Module):
        params.extend(inputs.parameters())
    for name, param in model.named_parameters():
        parts = name.split(".")[:-1]
        if any(p.startswith("embed") or p in EMBEDDING_MODULE_NAMES for p in parts):
            params.append(param)
    return params


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Mark the union of the selected blocks, pattern matches and (optionally) embeddings trainable."""
    assert isinstance(cfg, FreezeConfig)
    params: list[nn.Parameter] = []
    for block in _selected_blocks(model, cfg):
        params.extend(block.parameters())
    params.extend(_pattern_parameters(model, cfg.patterns))
    if cfg.train_embeddings:
        embeddings = embedding_parameters(model)
        if not embeddings:
            raise UserError(f"freeze.train_embeddings: cannot find embeddings in {type(model).__name__}")
        params.extend(embeddings)
    for param in params:
        param.requires_grad_(True)


SPEC = MethodSpec(
    name="freeze",
    config_cls=FreezeConfig,
    apply=apply,
    description="Partial fine-tuning: train the top/bottom N layers or parameters matching regexes.",
    paper="Lee, Tang & Lin, 2019, What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning, arXiv:1911.03090",
    in_place=True,
    why_not_swappable="retrains whole base layers",
)

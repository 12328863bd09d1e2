"""BitFit: train only the bias terms.

Ben Zaken, Ravfogel and Goldberg, 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models" (ACL, arXiv:2106.10199). Every weight stays frozen; the
additive bias vectors ``b`` of every layer (attention projections, feed-forward, LayerNorm) are
trained, typically <0.1% of the parameters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.base import MethodConfig, MethodSpec


class BitFitConfig(MethodConfig):
    """Options for BitFit (none beyond the shared ones)."""

    name: Literal["bitfit"] = Field("bitfit", description="Method name: train only bias terms.")


def bias_parameter_names(model: nn.Module) -> list[str]:
    """Qualified names of every parameter whose own name is ``bias``."""
    return [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Mark every bias parameter trainable; a model without biases is a :class:`UserError`."""
    names = set(bias_parameter_names(model))
    if not names:
        raise UserError(
            f"method 'bitfit' trains bias terms, but {type(model).__name__} has no bias parameters "
            "(many recent decoders use bias-free linear layers); choose another method such as 'lora'"
        )
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad_(True)


SPEC = MethodSpec(
    name="bitfit",
    config_cls=BitFitConfig,
    apply=apply,
    description="BitFit: train only the bias terms.",
    paper="Ben Zaken, Ravfogel & Goldberg, 2022, BitFit (ACL), arXiv:2106.10199",
    in_place=True,
    swappable=True,
)

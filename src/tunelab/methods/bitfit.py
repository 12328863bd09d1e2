"""BitFit: train only the bias terms.

Ben Zaken, Ravfogel and Goldberg, 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models" (ACL, arXiv:2106.10199). Every weight stays frozen; the
additive bias vectors ``b`` of every layer (attention projections, feed-forward, LayerNorm) are
trained, typically <0.1% of the parameters. In a CNN, BatchNorm's scale is trained with its
shift (``batchnorm_affine``): together they are the layer's affine part, the normalisation
counterpart of a bias, and adapting them is a strong cheap baseline for convolutional transfer
(Frankle, Schwab & Morcos, 2021, "Training BatchNorm and Only BatchNorm", ICLR).
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
    batchnorm_affine: bool = Field(
        True, description="Also train BatchNorm scales (CNNs: the BatchNorm affine part; no effect on transformers).")


def bias_parameter_names(model: nn.Module) -> list[str]:
    """Qualified names of every parameter whose own name is ``bias``."""
    return [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]


def batchnorm_scale_names(model: nn.Module) -> list[str]:
    """Qualified names of the scales (``weight``) of affine BatchNorm layers."""
    return [f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine]


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Mark every bias parameter (and BatchNorm scale) trainable; a model without biases is a :class:`UserError`."""
    assert isinstance(cfg, BitFitConfig)
    names = set(bias_parameter_names(model)) | set(batchnorm_scale_names(model) if cfg.batchnorm_affine else ())
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

"""Full fine-tuning: every parameter of the pretrained model is updated.

The baseline every parameter-efficient method is measured against (Devlin et al., 2019, "BERT:
Pre-training of Deep Bidirectional Transformers for Language Understanding", NAACL, sec. 3.2).
It trains everything, so :func:`tunelab.methods.check_composition` refuses to combine it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from tunelab.methods.base import MethodConfig, MethodSpec


class FullConfig(MethodConfig):
    """Options for full fine-tuning (none beyond the shared ones)."""

    name: Literal["full"] = Field("full", description="Method name: train every parameter.")


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Mark every parameter of ``model`` trainable."""
    for param in model.parameters():
        param.requires_grad_(True)


SPEC = MethodSpec(
    name="full",
    config_cls=FullConfig,
    apply=apply,
    description="Full fine-tuning: every parameter is trained.",
    paper="Devlin et al., 2019, BERT: Pre-training of Deep Bidirectional Transformers (NAACL)",
    trains_everything=True,
    in_place=True,
    why_not_swappable="trains every base weight",
)

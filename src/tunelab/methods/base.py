"""What every method shares: its config base class and the registry entry shape.

A method takes a built model and adapts it *in place*: it injects modules and marks the parameters
it trains with ``requires_grad=True``. :func:`tunelab.methods.apply_methods` first freezes every
parameter, then applies each configured method in order, then unfreezes the task head. Methods
therefore compose as the *union* of what each trains (LoRA + BitFit trains LoRA factors and biases).
A method never imports a task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class MethodConfig(BaseModel):
    """Options every method has. Subclasses add a ``name: Literal[...]`` and their own fields."""

    model_config = ConfigDict(extra="forbid")

    train_head: bool = Field(True, description="Train the task head (classifier) as well.")


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: one per method module."""

    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, MethodConfig], None]
    """Adapt the model in place: inject modules, set ``requires_grad=True`` on what it trains."""
    description: str
    """One line for ``tunelab methods``."""
    paper: str = ""
    wraps_linear: bool = False
    """It replaces the model's Linear modules with its own wrapper (at most one such method per model)."""
    virtual_tokens: bool = False
    """It puts trainable virtual tokens in front of every row (needs one example per row, a 2-D mask)."""

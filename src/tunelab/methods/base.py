"""What every method shares: its config base class and the registry entry shape.

A method takes a built model and adapts it *in place*: it injects modules and marks the parameters
it trains with ``requires_grad=True``. :func:`tunelab.methods.apply_methods` first freezes every
parameter, then applies each configured method in order, then unfreezes the task head. Methods
therefore compose as the *union* of what each trains (LoRA + BitFit trains LoRA factors and biases).
A method never imports a task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class MethodConfig(BaseModel):
    """Options every method has. Subclasses add a ``name: Literal[...]`` and their own fields."""

    model_config = ConfigDict(extra="forbid")

    train_head: bool = Field(True, description="Train the task head (classifier) as well.")


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: one per method module, naming the method and declaring what it can do.

    The capability fields below are the only place that says which methods can do what: the
    pipeline, interop (peft and merged export), the adapter set and compare read them from the
    registry (:data:`tunelab.methods.METHODS`) and keep no lists of method names of their own.
    """

    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, MethodConfig], None]
    """Adapt the model in place: inject modules, set ``requires_grad=True`` on what it trains."""
    description: str
    """One line for ``tunelab methods``."""
    paper: str = ""

    # ---------------------------------------------------------------- capabilities
    wraps_linear: bool = False
    """It replaces the model's Linear modules with its own wrapper (LoRA, QLoRA, IA3): at most one
    such method per model."""
    virtual_tokens: bool = False
    """It puts virtual tokens in front of every row (prompt/prefix tuning, P-tuning v2): they need a
    2-D attention mask (no packing) and enter every layer (no frozen-trunk cache)."""
    trains_everything: bool = False
    """It trains every parameter (full fine-tuning): it combines with no other method, and a
    comparison states the other runs' trade-offs against it."""
    in_place: bool = False
    """It adds no modules, only marks base parameters trainable (full, freeze, BitFit): the trained
    model is already a plain model, so a merged export has nothing to fold."""
    merge_modules: Callable[[nn.Module], Mapping[str, nn.Module]] | None = None
    """For a method that injects wrappers whose update is linear in the weights: the trained model
    -> its wrappers by module name (each with ``merge()`` and ``base_layer``), which a merged export
    folds into the base layers. May convert the model first (QLoRA dequantises its base)."""
    why_not_mergeable: str = ""
    """Why a method that is not :attr:`mergeable` cannot be, for the one-line refusal."""
    swappable: bool = False
    """Its result can share one base with other adapters in a :class:`tunelab.adapters.AdapterSet`:
    it only wraps base modules (keeping them as ``base_layer``), registers hooks, or trains small
    base tensors the set can copy per adapter."""
    why_not_swappable: str = ""
    """Why a method that is not :attr:`swappable` cannot share a base, for the one-line refusal
    (completes "method 'NAME' ...")."""
    load_transforms: Callable[[nn.Module, MethodConfig], dict[str, Callable[[nn.Module], nn.Module]]] | None = None
    """Given the model still on the meta device, the modules to transform the moment their weights are
    loaded (QLoRA: quantise each linear while loading, :mod:`tunelab.models.streamed`); ``apply`` then
    finds them already transformed. None: nothing to do while loading."""
    peft_type: str | None = None
    """peft's ``peft_type`` of the same method (``"LORA"``), or None when peft has no equivalent.

    The converter itself lives in :mod:`tunelab.interop.peft_format`, keyed by this type. The
    direction is deliberate: interop imports methods (to rebuild and adapt a run's model), so a
    method must not import interop; the spec names the peft method as plain data, and interop
    looks up the converter for it (a test checks every named type has one). Several methods may
    share a type (prefix tuning and P-tuning v2 both export as ``PREFIX_TUNING``)."""

    @property
    def mergeable(self) -> bool:
        """Whether a run of this method can be saved as a plain model with its training folded in."""
        return self.in_place or self.merge_modules is not None

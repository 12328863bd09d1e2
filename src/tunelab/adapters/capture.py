"""What one adapter is, and how it is taken from a method applied to the bare base.

The methods of an adapter are applied to the bare base; the wrapper modules that appear (LoRA,
IA3, bottleneck adapters: each holds the base layer it wraps as ``base_layer``) are collected by
module name, together with the forward hooks they registered on base modules (parallel adapters
read the sublayer input that way), and the base is put back as it was. Base tensors the methods
train in place -- the task head, LayerNorms of serial adapters, BitFit's biases -- become
per-adapter copies (``owned``), swapped in as parameter objects when the adapter is installed, so
the base's own tensors are never written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.methods import METHODS, apply_methods, check_composition
from tunelab.methods.base import MethodConfig
from tunelab.train.checkpoint import finalize

_HOOK_DICTS = {  # kind -> (hook dict, with-kwargs flags) on nn.Module
    "forward_pre": ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"),
    "forward": ("_forward_hooks", "_forward_hooks_with_kwargs"),
}


def swappable_methods() -> tuple[str, ...]:
    """Methods whose result can be swapped in and out of a shared base (:attr:`MethodSpec.swappable`):
    those that add modules first, then those that train base tensors in place, each in registry order."""
    return tuple(sorted((n for n, s in METHODS.items() if s.swappable), key=lambda n: METHODS[n].in_place))


def supported() -> tuple[str, ...]:
    """The methods the checks accept: :data:`tunelab.adapters.SUPPORTED_METHODS`, read when a check
    runs, so the public tuple is the one place that decides (a test widens it to reach the capture
    checks with a method that would otherwise be refused by name)."""
    import tunelab.adapters

    return tunelab.adapters.SUPPORTED_METHODS


# ---------------------------------------------------------------------------- one adapter

@dataclass(frozen=True)
class HookSpec:
    """A forward (pre-)hook an adapter registers on a base module while it is installed."""

    module: str
    kind: str
    fn: Callable[..., Any]
    with_kwargs: bool


@dataclass
class Adapter:
    """One named adapter: its method configs and the modules and tensors it puts into the base.

    ``tensors`` maps the names a run's weights file uses (e.g. ``...query.lora_A.weight``,
    ``classifier.weight``) to this adapter's parameters; ``owned`` maps base parameter names to the
    adapter's own values of base tensors it trained (head, norms, biases).
    """

    name: str
    methods: list[MethodConfig]
    wrappers: dict[str, nn.Module]
    hooks: list[HookSpec]
    owned: dict[str, nn.Parameter]
    tensors: dict[str, nn.Parameter]
    labels: dict[str, Any] | None = None
    """``LabelMap.to_dict()`` of its head, or None (regression, or no label map known)."""
    run_config: dict[str, Any] | None = None
    """The resolved config of the run it came from (for ``predict``), if any."""
    source: str | None = None
    """The run directory it was loaded from, if any."""
    combined_from: dict[str, float] | None = None
    """For a weighted combination: component name -> weight."""

    @property
    def method_names(self) -> list[str]:
        """Names of its methods, in order (``['lora']``, ``['lora', 'bitfit']``)."""
        return [m.name for m in self.methods]  # type: ignore[attr-defined]

    @property
    def num_parameters(self) -> int:
        """How many numbers the adapter adds (what its safetensors file holds)."""
        return sum(p.numel() for p in self.tensors.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Its tensors under the names a run's ``weights.safetensors`` uses (contiguous, on CPU)."""
        return {n: p.detach().contiguous().cpu() for n, p in self.tensors.items()}


@dataclass
class Captured:
    """What applying an adapter's methods to the bare base produced (before the base is restored)."""

    wrappers: dict[str, nn.Module]
    hooks: list[HookSpec]
    trainable: dict[str, nn.Parameter]
    base_names: dict[str, str] = field(default_factory=dict)
    """Trainable names that are base tensors -> their name in the bare base."""


def check_methods(name: str, methods: list[MethodConfig]) -> None:
    """Only swappable methods (wrapping ones and BitFit) can share a base; refuse the rest with one line."""
    if not methods:
        raise UserError(f"adapter '{name}' needs at least one method config")
    accepted = supported()
    for cfg in methods:
        method = getattr(cfg, "name", type(cfg).__name__)
        if method not in accepted:
            why = getattr(METHODS.get(method), "why_not_swappable", "") or "is not supported by multi-adapter"
            raise UserError(f"adapter '{name}': method '{method}' {why}, so it cannot share a base with other "
                            f"adapters; supported: {', '.join(accepted)} (lora with DoRA/rsLoRA too)")
    check_composition(methods)


# ---------------------------------------------------------------------------- capturing

def _hook_keys(modules: Mapping[str, nn.Module]) -> dict[tuple[str, str], set[int]]:
    """The ids of every forward (pre-)hook on each module, keyed by (module name, kind)."""
    return {(name, kind): set(getattr(m, attrs[0])) for name, m in modules.items()
            for kind, attrs in _HOOK_DICTS.items()}


def _take_new_hooks(modules: Mapping[str, nn.Module], before: dict[tuple[str, str], set[int]]) -> list[HookSpec]:
    """Remove the hooks added since ``before`` from the base modules and describe them."""
    specs: list[HookSpec] = []
    for name, module in modules.items():
        for kind, (hooks_attr, kwargs_attr) in _HOOK_DICTS.items():
            hooks, with_kwargs = getattr(module, hooks_attr), getattr(module, kwargs_attr)
            for key in [k for k in hooks if k not in before[(name, kind)]]:
                specs.append(HookSpec(name, kind, hooks.pop(key), bool(with_kwargs.pop(key, False))))
                getattr(module, "_forward_hooks_always_called", {}).pop(key, None)
    return specs


def _innermost(module: nn.Module) -> nn.Module:
    """Follow ``base_layer`` down to the module a (possibly nested) wrapper wraps."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def _collect_wrappers(model: nn.Module, base: Mapping[str, nn.Module], label: str) -> dict[str, nn.Module]:
    """Modules that replaced a base module (outermost only); anything else new is refused."""
    after = dict(model.named_modules())
    changed = [n for n, m in base.items() if n in after and after[n] is not m]
    tops = [n for n in changed if not any(n.startswith(f"{p}.") for p in changed if p != n)]
    wrappers = {n: after[n] for n in tops}
    for name, wrapper in wrappers.items():
        if _innermost(wrapper) is not base[name]:
            raise UserError(f"adapter '{label}': module {name} was replaced by {type(wrapper).__name__}, "
                            "which does not keep the original as base_layer; it cannot be swapped in and out")
    inside = tuple(f"{n}." for n in wrappers)
    stray = [n for n in after if n not in base and not (inside and n.startswith(inside))]
    if stray:
        raise UserError(f"adapter '{label}': its methods add modules outside the wrapped layers ({stray[0]}); "
                        f"multi-adapter supports {', '.join(supported())}")
    return wrappers


def capture(model: nn.Module, base: Mapping[str, nn.Module], base_param_names: Mapping[int, str],
            methods: list[MethodConfig], label: str) -> Captured:
    """Apply ``methods`` to the bare ``model``, collect what appeared, and restore the bare base."""
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks_before = _hook_keys(base)
    try:
        apply_methods(model, methods)
        finalize(model)  # runs save the finalized form of their modules (a no-op for wrappers today)
        wrappers = _collect_wrappers(model, base, label)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    finally:
        hooks = _take_new_hooks(base, hooks_before)
        restore_modules(model, base)
        for n, p in model.named_parameters():
            p.requires_grad_(grads.get(n, p.requires_grad))
    base_names = {n: base_param_names[id(p)] for n, p in trainable.items() if id(p) in base_param_names}
    return Captured(wrappers, hooks, trainable, base_names)


def restore_modules(model: nn.Module, base: Mapping[str, nn.Module]) -> None:
    """Put back every base module whose name now holds something else (outermost first), and drop
    submodules a method attached under new names (after a refused method, say)."""
    for name in sorted(base, key=lambda n: n.count(".")):
        if name:
            parent_name, _, child = name.rpartition(".")
            parent = base[parent_name]
            if parent._modules.get(child) is not base[name]:
                setattr(parent, child, base[name])
        module = base[name]
        for child, value in list(module._modules.items()):
            if value is not None and (f"{name}.{child}" if name else child) not in base:
                del module._modules[child]


# ---------------------------------------------------------------------------- the adapter's tensors

def fill(name: str, captured: Captured, weights: Mapping[str, torch.Tensor] | None,
         head_names: list[str]) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """The adapter's tensors (filled from ``weights`` when given, frozen) and its own copies of
    the base tensors it trains. Only head tensors may change shape (another label set)."""
    if weights is not None:
        missing = sorted(captured.trainable.keys() - weights.keys())
        extra = sorted(weights.keys() - captured.trainable.keys())
        if missing or extra:
            raise UserError(f"adapter '{name}': the weights do not fit its methods (missing {missing[:3]}, "
                            f"unexpected {extra[:3]})")
    tensors: dict[str, nn.Parameter] = {}
    owned: dict[str, nn.Parameter] = {}
    with torch.no_grad():
        for key, param in captured.trainable.items():
            value = weights[key] if weights is not None else param.detach()
            base_name = captured.base_names.get(key)
            if value.shape != param.shape and base_name not in head_names:
                raise UserError(f"adapter '{name}': tensor {key} has shape {list(value.shape)}, the model "
                                f"expects {list(param.shape)}")
            if base_name is not None:
                copy = nn.Parameter(value.to(param.device, param.dtype).clone(), requires_grad=False)
                tensors[key] = owned[base_name] = copy
            else:
                param.copy_(value)
                tensors[key] = param
                param.requires_grad_(False)
    return tensors, owned


def set_owned(adapter: Adapter, base_name: str, value: torch.Tensor) -> None:
    """Replace the adapter's own copy of base tensor ``base_name`` (any shape, for heads)."""
    old = adapter.owned[base_name]
    new = nn.Parameter(value.to(old.device, old.dtype), requires_grad=False)
    adapter.owned[base_name] = new
    for key, param in adapter.tensors.items():
        if param is old:
            adapter.tensors[key] = new


def follow_device(adapter: Adapter, model: nn.Module) -> None:
    """Move the adapter's tensors to the base's device if the base was moved since it was built."""
    device = next(model.parameters()).device
    for param in adapter.tensors.values():
        if param.device != device:
            param.data = param.data.to(device)

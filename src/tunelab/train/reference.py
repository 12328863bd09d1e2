"""The reference policy of preference and RL training (DPO, PPO, GRPO): the model before training.

DPO's loss (Rafailov et al., 2023, eq. 7) and the KL penalty of RLHF (Ziegler et al., 2019; Ouyang
et al., 2022) compare the policy with a frozen reference, usually the starting model. Keeping a
second copy of the network doubles the weights in memory; when every trained parameter lives in
modules a method *added* (LoRA, DoRA, QLoRA, IA3 and bottleneck-adapter wrappers that keep the
original layer as ``base_layer``; prompt / prefix / P-tuning v2 virtual tokens), the untouched
base is still inside the model and the reference is the same network with those additions
switched off for one forward pass. Methods that change base parameters in place (full fine-tuning,
layer freezing, BitFit) leave no untouched base, so only for them a frozen copy is made before the
first step.

Virtual tokens are the exception to "switched off": they start random, so the starting policy is
the base *with* its initial virtual tokens; those few numbers are kept and swapped in for the
reference pass.

The decision is structural (what trains, and where), so this module names no method: a trainable
parameter outside a ``base_layer`` wrapper and outside a virtual-token module means "in place".
The task's new heads (``model.tunelab_head_params``, e.g. PPO's value head) do not count: the
reference never uses them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _wrappers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, wrapper) for every outermost module that keeps a ``base_layer``."""
    found: list[tuple[nn.Module, str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if hasattr(module, "base_layer") and isinstance(module.base_layer, nn.Module):
            parent_name, _, attr = name.rpartition(".")
            found.append((model.get_submodule(parent_name) if parent_name else model, attr, module))
            inside.append(name)
    return found


def _virtual_token_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(m, "tunelab_virtual_tokens", False)]


def _innermost(module: nn.Module) -> nn.Module:
    while hasattr(module, "base_layer") and isinstance(module.base_layer, nn.Module):
        module = module.base_layer
    return module


def changes_base_in_place(model: nn.Module) -> bool:
    """Whether some trained parameter is a base parameter (so disabling adapters cannot give the base)."""
    head = set(getattr(model, "tunelab_head_params", []) or [])
    added: set[int] = set()
    for _, _, wrapper in _wrappers(model):
        base = {id(p) for p in _innermost(wrapper).parameters()}
        added |= {id(p) for p in wrapper.parameters() if id(p) not in base}
    for module in _virtual_token_modules(model):
        added |= {id(p) for p in module.parameters()}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in added and name not in head and not _is_head(name, head):
            return True
    return False


def _is_head(name: str, head: set[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in head)


@contextmanager
def wrappers_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its ``base_layer`` wrappers replaced by the layers they wrap, for the block."""
    swapped = _wrappers(model)
    try:
        for parent, attr, wrapper in swapped:
            setattr(parent, attr, _innermost(wrapper))
        yield model
    finally:
        for parent, attr, wrapper in swapped:
            setattr(parent, attr, wrapper)


@contextmanager
def initial_values(snapshot: list[tuple[nn.Parameter, torch.Tensor]]) -> Iterator[None]:
    """Parameters set to saved values for the block (no-grad use only), then back."""
    current = [p.data for p, _ in snapshot]
    try:
        for p, value in snapshot:
            p.data = value
        yield
    finally:
        for (p, _), data in zip(snapshot, current):
            p.data = data


class Reference:
    """The frozen reference of a policy: ``with ref.active(policy) as net: net(**batch)``.

    ``kind`` is ``"disabled"`` (the policy itself with its adapters off: no second copy) or
    ``"copy"`` (a frozen deep copy made now, before any training step).
    """

    def __init__(self, policy: nn.Module, *, force_copy: bool = False, frozen: nn.Module | None = None) -> None:
        """``frozen``: a model to use as the reference instead (e.g. the untrained base of a
        loaded full fine-tuning run, whose own weights are no longer the starting point)."""
        self.kind = "copy" if frozen is not None or force_copy or changes_base_in_place(policy) else "disabled"
        self.copy: nn.Module | None = None
        # Virtual tokens start random, not as the identity: the starting policy is the base *with*
        # its initial virtual tokens, kept here (a few thousand numbers) and swapped in per pass.
        self.snapshot: dict[str, nn.Module] = {} if self.kind == "copy" else {
            name: copy.deepcopy(m) for name, m in _unwrap(policy).named_modules()
            if getattr(m, "tunelab_virtual_tokens", False)}
        if frozen is not None:
            self.copy = frozen.eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)
        elif self.kind == "copy":
            self.copy = copy.deepcopy(policy).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)

    @contextmanager
    def active(self, policy: nn.Module) -> Iterator[nn.Module]:
        """The reference network for one no-grad forward (eval mode: no dropout)."""
        net = _unwrap(policy)
        if self.copy is not None:
            if next(self.copy.parameters()).device != next(net.parameters()).device:
                self.copy.to(next(net.parameters()).device)
            with torch.no_grad():
                yield self.copy
            return
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), wrappers_disabled(net), initial_values(self._initial(net)):
                yield net
        finally:
            net.train(was_training)

    def _initial(self, net: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(live parameter, its value before training) for the virtual-token modules. A live module
        finalized since (prefix tuning's MLP folded into its table) gets the same treatment in
        the snapshot first, so the two always have the same parameters."""
        pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, initial in self.snapshot.items():
            live = dict(net.get_submodule(name).named_parameters())
            if set(live) != {n for n, _ in initial.named_parameters()} and hasattr(initial, "tunelab_finalize"):
                initial.tunelab_finalize()
            saved = dict(initial.named_parameters())
            for pname, param in live.items():
                if saved[pname].device != param.device:
                    saved[pname].data = saved[pname].data.to(param.device)
                pairs.append((param, saved[pname].data))
        return pairs

    def __call__(self, policy: nn.Module, fn: Callable[[nn.Module], Any]) -> Any:
        """``fn(reference_network)`` under :meth:`active`."""
        with self.active(policy) as net:
            return fn(net)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP/compile wrapper (its adapters are the policy's)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model

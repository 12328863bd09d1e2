"""Several named adapters on one base model: add, switch, disable, combine, merge, save, load.

An :class:`AdapterSet` holds one *bare* base model and any number of named adapters trained for it.
Exactly one adapter (or none: the untouched base) is installed in the model at a time, so the
model is an ordinary ``nn.Module`` that you call as usual; switching is a matter of swapping a few
modules, not of reloading the base. Usage::

    from tunelab.adapters import AdapterSet

    adapters = AdapterSet.from_runs(["runs/sst", "runs/imdb"])  # base built once; names = folder names
    model = adapters.model                                      # "sst" is active (the first run)
    with adapters.active("imdb"):                               # switch for a block, then switch back
        logits = model(**batch).logits
    with adapters.disable():                                    # the untouched base model
        base_logits = model(**batch).logits
    adapters.add_weighted("mix", {"sst": 0.7, "imdb": 0.3})     # LoRA only; exact, rank r_sst + r_imdb
    adapters.merge("mix")                                       # fold into the base weights (fast inference)
    adapters.unmerge()                                          # base weights back, bit for bit
    adapters.save("adapters/mine")                              # one safetensors per adapter + adapters.json
    again = AdapterSet.load("adapters/mine")                    # same names, same active adapter

Other entry points: ``add(name, [LoRAConfig(...)])`` (fresh adapter from method configs, optional
``weights=``), ``add(name, from_run=RUN_DIR)``, ``set_active(name)`` / ``set_active(None)``,
``delete(name)``, ``predict(texts)`` (label, score, probabilities, like ``tunelab predict``).

**What an adapter is.** The methods of a run are applied to the bare base; the wrapper modules that
appear (LoRA, IA3, bottleneck adapters: each holds the base layer it wraps as ``base_layer``) are
collected by module name, together with the forward hooks they registered on base modules
(parallel adapters read the sublayer input that way), and the base is put back as it was. Base
tensors a run trained in place -- the task head, LayerNorms of serial adapters, BitFit's biases --
become per-adapter copies, swapped in as parameter objects when the adapter is installed, so the
base's own tensors are never written. Supported methods: ``lora`` (with DoRA and rsLoRA), ``ia3``,
``adapter``, ``parallel_adapter`` and ``bitfit``, alone or composed. ``full`` and ``freeze`` retrain
whole base layers, ``qlora`` quantises the base, and the virtual-token methods (``prompt_tuning``,
``prefix_tuning``, ``ptuning_v2``) rewrite the backbone's inputs: keep such runs as separate
models (``tunelab.pipeline.load_run``). Adapter tensors are frozen: a set is for inference.

**Heads.** Each adapter carries the head it trained and its label map; activating it swaps both in
(``config.id2label`` / ``label2id`` / ``num_labels`` follow), so adapters with different label sets
can share a base. ``disable()`` shows the base with its own (untrained) head. A weighted combination
takes the head of one component -- the first listed, or ``head="name"`` -- and never averages heads:
heads trained on different trunks do not live in one space, and label sets may differ.

**Weighted combination** (``add_weighted``): plain LoRA adapters only (no DoRA, no IA3 or bottleneck
adapters, no BitFit). The update of each module is ``sum_i w_i s_i B_i A_i`` (``s_i`` the scaling),
realised exactly as one LoRA of rank ``sum_i r_i`` with scaling 1 by stacking the rows
``w_i s_i A_i`` and the columns ``B_i`` (the "cat" combination of peft's ``add_weighted_adapter``).
Weights may be negative (subtracting a task vector).

**Merging.** ``merge(name)`` activates ``name`` and folds its wrappers into the base weights (LoRA,
DoRA, IA3; bottleneck adapters have no merged form). By default a host-memory copy of the weights it
changes is kept so ``unmerge()`` restores them bit for bit; ``merge(exact=False)`` skips the copy
and undoes the update arithmetically (exact up to rounding). Switching, disabling, deleting or
adding unmerges first, so the base is never left modified under another adapter.

**Saving.** ``save(dir)`` writes ``adapters.json`` (format version, base model and fingerprint, task,
active name, and per adapter its method configs, label map, run config and origin) plus one
``<name>.safetensors`` per adapter holding the same tensor names a run's ``weights.safetensors``
has, the base head, and the tokenizer when known. ``load(dir)`` rebuilds the base from the manifest
(or takes ``model=``, which must have the same fingerprint) and restores every adapter by name.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.errors import UserError, unknown
from tunelab.methods import METHODS, apply_methods, check_composition, get_method
from tunelab.methods.base import MethodConfig
from tunelab.methods.lora import LoRAConfig, LoRALinear
from tunelab.models.layers import head_parameter_names
from tunelab.models.loading import fingerprint
from tunelab.train.checkpoint import finalize

SUPPORTED_METHODS = tuple(sorted((n for n, s in METHODS.items() if s.swappable), key=lambda n: METHODS[n].in_place))
"""Methods whose result can be swapped in and out of a shared base (:attr:`MethodSpec.swappable`):
those that add modules first, then those that train base tensors in place, each in registry order."""

MANIFEST = "adapters.json"
BASE_HEAD = "base_head.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT = "tunelab-adapter-set"
FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_HOOK_DICTS = {  # kind -> (hook dict, with-kwargs flags) on nn.Module
    "forward_pre": ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"),
    "forward": ("_forward_hooks", "_forward_hooks_with_kwargs"),
}


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
class _Captured:
    """What applying an adapter's methods to the bare base produced (before the base is restored)."""

    wrappers: dict[str, nn.Module]
    hooks: list[HookSpec]
    trainable: dict[str, nn.Parameter]
    base_names: dict[str, str] = field(default_factory=dict)
    """Trainable names that are base tensors -> their name in the bare base."""


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
                        f"multi-adapter supports {', '.join(SUPPORTED_METHODS)}")
    return wrappers


def _capture(model: nn.Module, base: Mapping[str, nn.Module], base_param_names: Mapping[int, str],
             methods: list[MethodConfig], label: str) -> _Captured:
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
        _restore_modules(model, base)
        for n, p in model.named_parameters():
            p.requires_grad_(grads.get(n, p.requires_grad))
    base_names = {n: base_param_names[id(p)] for n, p in trainable.items() if id(p) in base_param_names}
    return _Captured(wrappers, hooks, trainable, base_names)


def _restore_modules(model: nn.Module, base: Mapping[str, nn.Module]) -> None:
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


# ---------------------------------------------------------------------------- the set

class _Restore:
    """Returned by :meth:`AdapterSet.active` / :meth:`AdapterSet.disable`: the switch has already
    happened; used as a context manager, leaving the block restores what was active (and merged)."""

    def __init__(self, adapters: AdapterSet, name: str | None, merged: bool, exact: bool) -> None:
        self._adapters, self._name, self._merged, self._exact = adapters, name, merged, exact

    def __enter__(self) -> AdapterSet:
        return self._adapters

    def __exit__(self, *exc: object) -> None:
        adapters = self._adapters
        name = self._name if self._name in adapters else None
        adapters.set_active(name)
        if name is not None and self._merged:
            adapters.merge(exact=self._exact)


class AdapterSet:
    """One bare base model and named adapters for it; at most one installed at a time.

    ``model`` must be the base *before* any method was applied. ``base_model`` (a name or path) and
    ``task`` are recorded in saves; the fingerprint of the base (head excluded, as runs record it)
    guards every adapter loaded from a run or a save.
    """

    def __init__(self, model: nn.Module, *, base_model: str = "", task: str | None = None,
                 tokenizer: Any = None) -> None:
        wrapped = [n for n, m in model.named_modules() if hasattr(m, "base_layer")]
        if wrapped:
            raise UserError(f"AdapterSet needs the bare base model, but {wrapped[0]} is already wrapped "
                            f"({type(model.get_submodule(wrapped[0])).__name__}); pass the model before "
                            "any method was applied")
        self.model = model
        self.base_model = base_model
        self.task = task
        self.tokenizer = tokenizer
        self.head_names = list(head_parameter_names(model))
        self.fingerprint = fingerprint(model, exclude=set(self.head_names))
        self._base_modules = dict(model.named_modules())
        self._base_params = {n: (model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2], p)
                             for n, p in model.named_parameters()}
        self._base_param_names = {id(p): n for n, (_, _, p) in self._base_params.items()}
        self._base_labels = _label_config(model)
        self._adapters: dict[str, Adapter] = {}
        self._active: str | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._merged: list[tuple[nn.Parameter, torch.Tensor]] | None = None
        self._merge_exact = True

    # ------------------------------------------------------------------ inspection
    @property
    def names(self) -> list[str]:
        """Adapter names in the order they were added."""
        return list(self._adapters)

    @property
    def active_name(self) -> str | None:
        """The installed adapter, or None when the model is the bare base."""
        return self._active

    @property
    def is_merged(self) -> bool:
        """Whether the active adapter is folded into the base weights."""
        return self._merged is not None

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    def __getitem__(self, name: str) -> Adapter:
        return self._get(name)

    def __repr__(self) -> str:
        items = ", ".join(f"{n}={'+'.join(a.method_names)}" for n, a in self._adapters.items())
        merged = " (merged)" if self.is_merged else ""
        return f"AdapterSet({type(self.model).__name__}, active={self._active!r}{merged}, adapters: {items or 'none'})"

    def _get(self, name: str) -> Adapter:
        if name not in self._adapters:
            raise unknown("adapter", name, self._adapters) if self._adapters else \
                UserError(f"unknown adapter '{name}': the set has no adapters yet; add one first")
        return self._adapters[name]

    # ------------------------------------------------------------------ adding
    def add(self, name: str, methods: MethodConfig | Sequence[MethodConfig] | None = None, *,
            from_run: str | Path | None = None, weights: Mapping[str, torch.Tensor] | None = None,
            labels: Mapping[str, Any] | None = None) -> Adapter:
        """Add adapter ``name`` from method configs (fresh, or filled from ``weights`` -- a run's
        tensor names) or from a tunelab run directory (``from_run``, its base fingerprint must match).
        The active adapter does not change."""
        if (methods is None) == (from_run is None):
            raise UserError("add() takes either method configs or from_run=RUN_DIR, not both or neither")
        self._check_new_name(name)
        if from_run is not None:
            return self._add_run(name, Path(from_run))
        listed = [methods] if isinstance(methods, MethodConfig) else list(methods or [])
        return self._make(name, listed, weights=weights, labels=dict(labels) if labels else None)

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(f"adapter name {name!r} must start with a letter or digit and hold only "
                            "letters, digits and . _ + -")
        if name in self._adapters:
            raise UserError(f"adapter '{name}' already exists; delete('{name}') first or choose another name")

    def _make(self, name: str, methods: list[MethodConfig], *, weights: Mapping[str, torch.Tensor] | None = None,
              **extra: Any) -> Adapter:
        """Build, fill and register one adapter (the model is made bare meanwhile)."""
        self._check_new_name(name)
        _check_methods(name, methods)
        with self._bare():
            captured = _capture(self.model, self._base_modules, self._base_param_names, methods, name)
        tensors, owned = _fill(name, captured, weights, self.head_names)
        adapter = Adapter(name, list(methods), captured.wrappers, captured.hooks, owned, tensors, **extra)
        self._adapters[name] = adapter
        return adapter

    def _add_run(self, name: str, path: Path) -> Adapter:
        """Add the adapter a finished run trained, after checking it was trained on this base."""
        from tunelab.run import RunDir

        run = RunDir.open(path)
        cfg = run.read_config()
        if not run.fingerprint.is_file():
            raise UserError(f"run {run.path} has no {run.fingerprint.name}; cannot check it was trained on this base")
        theirs = run.read_json(run.fingerprint)
        if theirs["fingerprint"] != self.fingerprint:
            raise UserError(f"run {run.path} was trained on a different base model ('{theirs['name_or_path']}', "
                            f"fingerprint {theirs['fingerprint']}) than this adapter set's ('{self.base_model}', "
                            f"fingerprint {self.fingerprint})")
        task = (cfg.get("task") or {}).get("name")
        if self.task is not None and task != self.task:
            raise UserError(f"run {run.path} is a '{task}' run; this adapter set holds '{self.task}' adapters")
        methods = _run_methods(cfg)
        labels = run.read_json(run.label_map) if run.label_map.is_file() else None
        if self.tokenizer is None and (run.model_dir / "tokenizer_config.json").is_file():
            from tunelab.models.loading import load_tokenizer

            self.tokenizer = load_tokenizer(str(run.model_dir))
        self.task = self.task or task
        return self._make(name, methods, weights=run.load_weights(), labels=labels, run_config=cfg,
                          source=str(run.path))

    @classmethod
    def from_runs(cls, runs: Sequence[str | Path] | Mapping[str, str | Path]) -> AdapterSet:
        """Build the base once from the first run's config and add every run (names: the run
        folder names, or the keys of a mapping). The first run's adapter is active."""
        from tunelab.models.loading import resolve_model
        from tunelab.run import RunDir
        from tunelab.tasks import get_task

        listed = None if isinstance(runs, Mapping) else [Path(r) for r in runs]
        named = dict(runs) if listed is None else {r.name: r for r in listed}  # type: ignore[arg-type]
        if not named:
            raise UserError("from_runs needs at least one run directory")
        if listed is not None and len(named) < len(listed):
            raise UserError("from_runs: two runs share a folder name; pass {name: run_dir} to name them")
        first = RunDir.open(next(iter(named.values())))
        cfg = first.read_config()
        task = get_task(cfg["task"]["name"])
        model = task.build_model(resolve_model(cfg["model"]["name_or_path"]), _label_map(first))
        model.eval()
        adapters = cls(model, base_model=cfg["model"]["name_or_path"], task=task.name)
        for name, path in named.items():
            adapters.add(name, from_run=path)
        adapters.set_active(next(iter(named)))
        return adapters

    def add_weighted(self, name: str, weights: Mapping[str, float], *, head: str | None = None) -> Adapter:
        """Add ``name`` = the exact weighted sum of LoRA adapters' updates (rank: the sum of ranks).

        ``weights`` maps adapter names to (any real) weights. The head and label map are those of
        ``head`` (default: the first adapter listed); heads are never averaged.
        """
        self._check_new_name(name)
        if not weights:
            raise UserError("add_weighted needs at least one adapter and its weight, e.g. {'a': 0.5, 'b': 0.5}")
        parts = {n: self._get(n) for n in weights}
        for n, w in weights.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise UserError(f"add_weighted: the weight of '{n}' must be a finite number, got {w!r}")
        for adapter in parts.values():
            _check_plain_lora(adapter, self.head_names)
        if head is not None and head not in parts:
            raise unknown("head adapter (one of the combined adapters)", head, parts)
        donor = parts[head if head is not None else next(iter(parts))]
        modules = [n for n in self._base_modules if any(n in a.wrappers for a in parts.values())]
        ranks = {n: sum(a.wrappers[n].r for a in parts.values() if n in a.wrappers) for n in modules}
        cfg = LoRAConfig(
            r=max(ranks.values()), alpha=float(max(ranks.values())), target_modules=modules,
            rank_pattern={re.escape(n): r for n, r in ranks.items()},
            alpha_pattern={re.escape(n): float(r) for n, r in ranks.items()},
            train_head=bool(donor.owned),
        )
        adapter = self._make(name, [cfg], labels=donor.labels, run_config=donor.run_config,
                             combined_from={n: float(w) for n, w in weights.items()})
        _fill_concatenated(adapter, parts, weights)
        for base_name, value in donor.owned.items():
            _set_owned(adapter, base_name, value.detach().clone())
        return adapter

    # ------------------------------------------------------------------ switching
    def set_active(self, name: str | None) -> None:
        """Install adapter ``name`` (None: the bare base). A merged adapter is unmerged first."""
        adapter = self._get(name) if name is not None else None
        if name == self._active:
            return
        self._uninstall()
        if adapter is not None:
            self._install(adapter)

    def active(self, name: str) -> _Restore:
        """Switch to ``name`` now; as a context manager, switch back on leaving the block."""
        restore = _Restore(self, self._active, self.is_merged, self._merge_exact)
        self.set_active(name)
        return restore

    def disable(self) -> _Restore:
        """Remove every adapter (the untouched base); as a context manager, restore on leaving."""
        restore = _Restore(self, self._active, self.is_merged, self._merge_exact)
        self.set_active(None)
        return restore

    def delete(self, name: str) -> None:
        """Forget adapter ``name``; deleting the active one leaves the bare base active."""
        self._get(name)
        if name == self._active:
            self.set_active(None)
        del self._adapters[name]

    @contextmanager
    def _bare(self) -> Iterator[None]:
        """The bare base for the duration of the block, then the previous adapter (and merge) again."""
        restore = _Restore(self, self._active, self.is_merged, self._merge_exact)
        self.set_active(None)
        try:
            yield
        finally:
            restore.__exit__(None, None, None)

    def _install(self, adapter: Adapter) -> None:
        """Swap in the adapter's own tensors, wrappers, hooks and label map."""
        from tunelab.methods.targets import replace_module

        _follow_device(adapter, self.model)
        for base_name, value in adapter.owned.items():
            module, leaf, _ = self._base_params[base_name]
            setattr(module, leaf, value)
        for name, wrapper in adapter.wrappers.items():
            wrapper.train(self.model.training)
            replace_module(self.model, name, wrapper)
        for hook in adapter.hooks:
            module = self._base_modules[hook.module]
            register = module.register_forward_pre_hook if hook.kind == "forward_pre" else module.register_forward_hook
            self._handles.append(register(hook.fn, with_kwargs=hook.with_kwargs))
        if adapter.labels is not None:
            _set_label_config(self.model, adapter.labels)
        self._active = adapter.name

    def _uninstall(self) -> None:
        """Unmerge, then put the base's own modules, tensors, hooks and label map back."""
        if self._active is None:
            return
        self.unmerge()
        adapter = self._adapters[self._active]
        for handle in self._handles:
            handle.remove()
        self._handles = []
        _restore_modules(self.model, self._base_modules)
        for base_name in adapter.owned:
            module, leaf, original = self._base_params[base_name]
            setattr(module, leaf, original)
        _set_label_config(self.model, self._base_labels)
        self._active = None

    # ------------------------------------------------------------------ merging
    def merge(self, name: str | None = None, *, exact: bool = True) -> None:
        """Fold adapter ``name`` (default: the active one) into the base weights.

        With ``exact`` a host-memory copy of the changed base weights is kept, so :meth:`unmerge`
        restores them bit for bit. Only wrappers with a merged form (LoRA, DoRA, IA3) can merge.
        """
        if name is not None:
            self.set_active(name)
        if self._active is None:
            raise UserError("nothing to merge: no adapter is active; merge(NAME) or set_active(NAME) first")
        if self._merged is not None:
            return
        adapter = self._adapters[self._active]
        _check_mergeable(adapter)
        backup: list[tuple[nn.Parameter, torch.Tensor]] = []
        if exact:
            seen: set[int] = set()
            for wrapper in adapter.wrappers.values():
                for p in wrapper.base_layer.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        backup.append((p, p.detach().to("cpu", copy=True)))
        for wrapper in adapter.wrappers.values():
            wrapper.merge()
        self._merged, self._merge_exact = backup, exact

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take a merged adapter back out of the base weights (no-op when nothing is merged)."""
        if self._merged is None or self._active is None:
            return
        for wrapper in self._adapters[self._active].wrappers.values():
            wrapper.unmerge()
        for param, saved in self._merged:
            param.copy_(saved.to(param.device))
        self._merged = None

    # ------------------------------------------------------------------ prediction
    def predict(self, texts: Sequence[str], *, adapter: str | None = None, batch_size: int = 64
                ) -> list[dict[str, Any]]:
        """``tunelab predict`` for one adapter (default: the active one): label, score, probabilities."""
        from datasets import Dataset

        from tunelab.config import validate_config
        from tunelab.data.labels import LabelMap
        from tunelab.pipeline import LoadedRun, predict_texts, resolve_columns
        from tunelab.tasks import get_task

        name = adapter or self._active
        if name is None:
            raise UserError("predict: no adapter is active; pass adapter=NAME or call set_active(NAME)")
        entry = self._get(name)
        if entry.run_config is None or self.tokenizer is None:
            raise UserError(f"predict: adapter '{name}' did not come from a run (no run config or tokenizer); "
                            "call the model directly")
        cfg = validate_config(entry.run_config)
        cols = resolve_columns(cfg)
        if cols.text_pair:
            raise UserError(f"predict: adapter '{name}' reads text pairs ({cols.text}, {cols.text_pair}); "
                            "call the model directly")
        labels = LabelMap.from_dict(entry.labels) if entry.labels else None
        with self.active(name):
            task = get_task(cfg.task.name)
            loaded = LoadedRun(None, cfg, task, self.model, self.tokenizer, labels)  # type: ignore[arg-type]
            return predict_texts(loaded, Dataset.from_dict({cols.text: list(texts)}), batch_size)

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the manifest, one safetensors per adapter, the base head and the tokenizer.

        An existing non-empty folder is refused unless ``overwrite``; the folder is written next to
        the target and renamed into place, so a crash never leaves half a save.
        """
        target = Path(path)
        if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
            raise UserError(f"{target} already exists; pass overwrite=True to replace it")
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with self._unmerged():
            for name, adapter in self._adapters.items():
                save_file(adapter.state_dict(), str(tmp / f"{name}.safetensors"),
                          metadata={"format": "pt", "producer": "tunelab", "adapter": name})
            head = {n: self._base_params[n][2].detach().contiguous().cpu() for n in self.head_names}
        save_file(head, str(tmp / BASE_HEAD), metadata={"format": "pt", "producer": "tunelab"})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        (tmp / MANIFEST).write_text(json.dumps(self._manifest(), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
        return target

    @contextmanager
    def _unmerged(self) -> Iterator[None]:
        """Unmerged for the block (adapter tensors hold their trained values), then merged again."""
        merged, exact = self.is_merged, self._merge_exact
        self.unmerge()
        try:
            yield
        finally:
            if merged:
                self.merge(exact=exact)

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "base_model": self.base_model, "base_fingerprint": self.fingerprint, "task": self.task,
            "base_labels": _labels_dict(self._base_labels), "active": self._active,
            "adapters": [{
                "name": a.name, "file": f"{a.name}.safetensors",
                "methods": [m.model_dump(mode="json") for m in a.methods],
                "labels": a.labels, "run_config": a.run_config, "source": a.source,
                "combined_from": a.combined_from,
            } for a in self._adapters.values()],
        }

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> AdapterSet:
        """Restore a saved set: every adapter by name and the active one. Without ``model`` the base
        is rebuilt from the manifest (with its saved head); a given ``model`` must match its fingerprint."""
        folder = Path(path)
        manifest = _read_manifest(folder)
        tokenizer = None
        if (folder / TOKENIZER_DIR).is_dir():
            from tunelab.models.loading import load_tokenizer

            tokenizer = load_tokenizer(str(folder / TOKENIZER_DIR))
        if model is None:
            model = _rebuild_base(manifest, folder)
        adapters = cls(model, base_model=manifest["base_model"], task=manifest["task"], tokenizer=tokenizer)
        if adapters.fingerprint != manifest["base_fingerprint"]:
            raise UserError(f"{folder} holds adapters for a different base model ('{manifest['base_model']}', "
                            f"fingerprint {manifest['base_fingerprint']}) than the one given "
                            f"(fingerprint {adapters.fingerprint})")
        for entry in manifest["adapters"]:
            methods = [get_method(m["name"]).config_cls.model_validate(m) for m in entry["methods"]]
            adapters.add(entry["name"], methods, weights=load_file(str(folder / entry["file"])),
                         labels=entry.get("labels"))
            adapter = adapters[entry["name"]]
            adapter.run_config, adapter.source = entry.get("run_config"), entry.get("source")
            adapter.combined_from = entry.get("combined_from")
        adapters.set_active(manifest.get("active"))
        return adapters


# ---------------------------------------------------------------------------- helpers

def _check_methods(name: str, methods: list[MethodConfig]) -> None:
    """Only wrapping methods (and BitFit) can share a base; refuse the rest with one line."""
    if not methods:
        raise UserError(f"adapter '{name}' needs at least one method config")
    for cfg in methods:
        method = getattr(cfg, "name", type(cfg).__name__)
        if method not in SUPPORTED_METHODS:
            why = getattr(METHODS.get(method), "why_not_swappable", "") or "is not supported by multi-adapter"
            raise UserError(f"adapter '{name}': method '{method}' {why}, so it cannot share a base with other "
                            f"adapters; supported: {', '.join(SUPPORTED_METHODS)} (lora with DoRA/rsLoRA too)")
    check_composition(methods)


def _fill(name: str, captured: _Captured, weights: Mapping[str, torch.Tensor] | None,
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


def _set_owned(adapter: Adapter, base_name: str, value: torch.Tensor) -> None:
    """Replace the adapter's own copy of base tensor ``base_name`` (any shape, for heads)."""
    old = adapter.owned[base_name]
    new = nn.Parameter(value.to(old.device, old.dtype), requires_grad=False)
    adapter.owned[base_name] = new
    for key, param in adapter.tensors.items():
        if param is old:
            adapter.tensors[key] = new


def _check_plain_lora(adapter: Adapter, head_names: list[str]) -> None:
    """A weighted combination takes plain LoRA on linear layers only (plus a head)."""
    why = ""
    if [type(m) for m in adapter.methods] != [LoRAConfig]:
        why = f"uses {'+'.join(adapter.method_names)}"
    elif getattr(adapter.methods[0], "use_dora", False):
        why = "uses DoRA, whose magnitude rescaling is not linear in the update"
    elif any(not isinstance(w, LoRALinear) for w in adapter.wrappers.values()):
        why = "has LoRA on non-linear layers"
    elif any(n not in head_names for n in adapter.owned):
        why = "trains base tensors besides the head"
    if why:
        raise UserError(f"add_weighted combines plain LoRA adapters only; '{adapter.name}' {why}")


@torch.no_grad()
def _fill_concatenated(target: Adapter, parts: Mapping[str, Adapter], weights: Mapping[str, float]) -> None:
    """Set each wrapper of ``target`` to A = [w_i s_i A_i] (rows), B = [B_i] (columns), scaling 1,
    so that B A = sum_i w_i s_i B_i A_i."""
    for name, wrapper in target.wrappers.items():
        found = [(a.wrappers[name], weights[n]) for n, a in parts.items() if name in a.wrappers]
        a_rows = torch.cat([w.lora_A.weight * (weight * w.scaling) for w, weight in found], dim=0)
        b_cols = torch.cat([w.lora_B.weight for w, _ in found], dim=1)
        assert wrapper.scaling == 1.0 and wrapper.lora_A.weight.shape == a_rows.shape
        wrapper.lora_A.weight.copy_(a_rows)
        wrapper.lora_B.weight.copy_(b_cols)


def _check_mergeable(adapter: Adapter) -> None:
    """Every wrapper must fold into its (unwrapped) base layer."""
    for name, wrapper in adapter.wrappers.items():
        if not callable(getattr(wrapper, "merge", None)) or not callable(getattr(wrapper, "unmerge", None)):
            why = f"{name} holds a {type(wrapper).__name__}, which has no merged form"
        elif hasattr(wrapper.base_layer, "base_layer"):
            why = f"{name} holds a {type(wrapper).__name__} around a {type(wrapper.base_layer).__name__}"
        else:
            continue
        raise UserError(f"adapter '{adapter.name}' cannot be merged: {why}; merge works for lora (incl. DoRA) "
                        "and ia3 adapters")


def _follow_device(adapter: Adapter, model: nn.Module) -> None:
    """Move the adapter's tensors to the base's device if the base was moved since it was built."""
    device = next(model.parameters()).device
    for param in adapter.tensors.values():
        if param.device != device:
            param.data = param.data.to(device)


def _label_config(model: nn.Module) -> dict[str, Any] | None:
    """The model's ``id2label`` / ``label2id`` (None without a config)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "id2label"):
        return None
    return {"id2label": dict(config.id2label), "label2id": dict(config.label2id)}


def _labels_dict(labels: dict[str, Any] | None) -> dict[str, Any] | None:
    """JSON-ready label config (string keys)."""
    if labels is None:
        return None
    return {"id2label": {str(k): v for k, v in labels["id2label"].items()}, "label2id": dict(labels["label2id"])}


def _set_label_config(model: nn.Module, labels: Mapping[str, Any] | None) -> None:
    """Point the model's label map (and ``num_labels``, used by the loss) at ``labels``."""
    config = getattr(model, "config", None)
    if labels is None or config is None:
        return
    config.id2label = {int(k): v for k, v in labels["id2label"].items()}
    config.label2id = {k: int(v) for k, v in labels["label2id"].items()}
    if hasattr(model, "num_labels"):
        model.num_labels = len(config.id2label)


def _label_map(run: Any) -> Any:
    """A run's :class:`LabelMap`, or None (regression)."""
    from tunelab.data.labels import LabelMap

    return LabelMap.from_dict(run.read_json(run.label_map)) if run.label_map.is_file() else None


def _run_methods(cfg: Mapping[str, Any]) -> list[MethodConfig]:
    """The validated method configs of a run's ``config.yaml``."""
    from tunelab.config import validate_config

    return validate_config(dict(cfg)).methods()


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a saved set; a missing or foreign one is a UserError."""
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a saved adapter set (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} is not a {FORMAT} manifest of version {FORMAT_VERSION}")
    return manifest


def _rebuild_base(manifest: Mapping[str, Any], folder: Path) -> nn.Module:
    """The base model of a saved set, with the head it was saved with."""
    from tunelab.data.labels import LabelMap
    from tunelab.models.loading import resolve_model
    from tunelab.tasks import get_task

    if not manifest.get("task") or not manifest.get("base_model"):
        raise UserError(f"{folder} does not say which base model and task to build; pass model=")
    task = get_task(manifest["task"])
    known = manifest.get("base_labels") and not task.regression
    labels = LabelMap.from_dict(manifest["base_labels"]) if known else None
    model = task.build_model(resolve_model(manifest["base_model"]), labels)
    head = load_file(str(folder / BASE_HEAD))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in head.items():
            params[name].copy_(value)
    model.eval()
    return model

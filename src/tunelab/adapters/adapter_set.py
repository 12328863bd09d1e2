"""The :class:`AdapterSet`: one bare base model, named adapters, at most one installed at a time.

Exactly one adapter (or none: the untouched base) is installed in the model at a time, so the model
is an ordinary ``nn.Module`` that you call as usual; switching is a matter of swapping a few modules
(:mod:`tunelab.adapters.capture` says what an adapter holds), not of reloading the base. Switching,
disabling, deleting or adding unmerges first, so the base is never left modified under another
adapter. Weighted blends and merging are in :mod:`tunelab.adapters.blend`, saving and loading in
:mod:`tunelab.adapters.storage`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.adapters import blend, mixed, storage
from tunelab.adapters.capture import Adapter, capture, check_methods, fill, follow_device, restore_modules, set_owned
from tunelab.adapters.labels import label_config, run_label_map, set_label_config
from tunelab.errors import UserError, unknown
from tunelab.methods.base import MethodConfig
from tunelab.models.layers import head_parameter_names
from tunelab.models.loading import fingerprint

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


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
        self._base_labels = label_config(model)
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
        check_methods(name, methods)
        with self._bare():
            captured = capture(self.model, self._base_modules, self._base_param_names, methods, name)
        tensors, owned = fill(name, captured, weights, self.head_names)
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
        methods = storage.run_methods(cfg)
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
        model = task.build_model(resolve_model(cfg["model"]["name_or_path"]), run_label_map(first))
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
        parts = blend.components(weights, self._get, self.head_names)
        if head is not None and head not in parts:
            raise unknown("head adapter (one of the combined adapters)", head, parts)
        donor = parts[head if head is not None else next(iter(parts))]
        cfg = blend.concatenated_config(parts, self._base_modules, train_head=bool(donor.owned))
        adapter = self._make(name, [cfg], labels=donor.labels, run_config=donor.run_config,
                             combined_from={n: float(w) for n, w in weights.items()})
        blend.fill_concatenated(adapter, parts, weights)
        for base_name, value in donor.owned.items():
            set_owned(adapter, base_name, value.detach().clone())
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

        follow_device(adapter, self.model)
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
            set_label_config(self.model, adapter.labels)
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
        restore_modules(self.model, self._base_modules)
        for base_name in adapter.owned:
            module, leaf, original = self._base_params[base_name]
            setattr(module, leaf, original)
        set_label_config(self.model, self._base_labels)
        self._active = None

    # ------------------------------------------------------------------ mixed batches
    def why_not_mixable(self, names: Sequence[str | None]) -> str | None:
        """Why rows asking for these adapters (None: the base) cannot share one batch, or None."""
        return mixed.why_not_mixable({n: self._get(n) for n in dict.fromkeys(names) if n is not None})

    @contextmanager
    def mixed(self, rows: Sequence[str | None]) -> Iterator[nn.Module]:
        """For the block, row ``i`` of every batch the model sees runs through adapter ``rows[i]``
        (None: the bare base); see :mod:`tunelab.adapters.mixed`. The batch must have ``len(rows)``
        rows in that order. Afterwards the previously active adapter is back."""
        from tunelab.methods.targets import replace_module

        parts = {n: self._get(n) for n in dict.fromkeys(rows) if n is not None}
        problem = mixed.why_not_mixable(parts)
        if problem:
            raise UserError(f"cannot mix these adapters in one batch: {problem}; run them one adapter at a time")
        with self._bare():
            for adapter in parts.values():
                follow_device(adapter, self.model)
                for wrapper in adapter.wrappers.values():
                    wrapper.train(False)
            try:
                for name, router in mixed.routers(rows, parts, self._base_modules).items():
                    replace_module(self.model, name, router)
                yield self.model
            finally:
                restore_modules(self.model, self._base_modules)

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
        backup = blend.merge_wrappers(self._adapters[self._active], exact)
        self._merged, self._merge_exact = backup, exact

    def unmerge(self) -> None:
        """Take a merged adapter back out of the base weights (no-op when nothing is merged)."""
        if self._merged is None or self._active is None:
            return
        blend.unmerge_wrappers(self._adapters[self._active], self._merged)
        self._merged = None

    # ------------------------------------------------------------------ prediction
    def predict(self, texts: Sequence[str], *, adapter: str | None = None, batch_size: int = 64
                ) -> list[dict[str, Any]]:
        """``tunelab predict`` for one adapter (default: the active one): label, score, probabilities."""
        from datasets import Dataset

        from tunelab.config import validate_config
        from tunelab.data.labels import LabelMap
        from tunelab.pipeline import LoadedRun, predict_texts
        from tunelab.tasks import get_task
        from tunelab.tasks.classification import resolve_columns

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
        with storage.staged_folder(target, overwrite) as tmp:
            with self._unmerged():
                for adapter in self._adapters.values():
                    storage.save_adapter(tmp, adapter)
                head = {n: self._base_params[n][2].detach().contiguous().cpu() for n in self.head_names}
            storage.save_base_head(tmp, head)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / storage.TOKENIZER_DIR)
            storage.write_manifest(tmp, self._manifest())
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
        return storage.manifest(base_model=self.base_model, fingerprint=self.fingerprint, task=self.task,
                                base_labels=self._base_labels, active=self._active, adapters=self._adapters.values())

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> AdapterSet:
        """Restore a saved set: every adapter by name and the active one. Without ``model`` the base
        is rebuilt from the manifest (with its saved head); a given ``model`` must match its fingerprint."""
        folder = Path(path)
        manifest = storage.read_manifest(folder)
        tokenizer = storage.saved_tokenizer(folder)
        if model is None:
            model = storage.rebuild_base(manifest, folder)
        adapters = cls(model, base_model=manifest["base_model"], task=manifest["task"], tokenizer=tokenizer)
        if adapters.fingerprint != manifest["base_fingerprint"]:
            raise UserError(f"{folder} holds adapters for a different base model ('{manifest['base_model']}', "
                            f"fingerprint {manifest['base_fingerprint']}) than the one given "
                            f"(fingerprint {adapters.fingerprint})")
        for entry in manifest["adapters"]:
            adapters.add(entry["name"], storage.entry_methods(entry), weights=storage.entry_weights(folder, entry),
                         labels=entry.get("labels"))
            adapter = adapters[entry["name"]]
            adapter.run_config, adapter.source = entry.get("run_config"), entry.get("source")
            adapter.combined_from = entry.get("combined_from")
        adapters.set_active(manifest.get("active"))
        return adapters

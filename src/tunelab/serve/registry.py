"""The models a server answers for: runs loaded once, bases shared, each request's ``model`` looked up.

Runs whose methods can be swapped in and out of a shared base (:data:`tunelab.adapters.SUPPORTED_METHODS`:
LoRA with DoRA/rsLoRA, IA3, bottleneck adapters, BitFit) and that were trained on the same base for
the same task share one copy of it in an :class:`~tunelab.adapters.AdapterSet` (a :class:`ModelGroup`);
the base itself is then served too, under its own name (``model.name_or_path``, a folder's name),
when it is a causal LM. Runs of the other
methods (full, freeze, QLoRA, virtual tokens) load their own model (``load_run``).

What a model answers follows its task's spec, never its task's name: ``generates_text`` ->
``/v1/chat/completions`` and ``/v1/completions``; ``embeds_text`` -> ``/v1/embeddings``;
``classifies`` -> ``/v1/classify`` (texts, or images when the task's processor reads images).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from tunelab.errors import UserError

CHAT, COMPLETIONS, EMBEDDINGS, CLASSIFY = "chat", "completions", "embeddings", "classify"


@dataclass
class ModelGroup:
    """One model in memory and, when it is shared, the adapter set that swaps runs in and out."""

    key: str
    model: nn.Module
    adapters: Any = None
    """An :class:`~tunelab.adapters.AdapterSet`, or None for a run that has the model to itself."""

    def use(self, rows: Sequence[str | None]) -> contextlib.AbstractContextManager[nn.Module]:
        """The model with row ``i`` of the next batches running through adapter ``rows[i]``
        (None: the bare base); a mixed batch when the rows name different adapters."""
        if self.adapters is None:
            return contextlib.nullcontext(self.model)
        names = list(dict.fromkeys(rows))
        if len(names) == 1:
            return _activated(self.adapters, names[0])
        return self.adapters.mixed(list(rows))

    def why_not_mixable(self, names: Sequence[str | None]) -> str | None:
        """Why rows of these adapters cannot share a batch (None: they can)."""
        if len(set(names)) <= 1:
            return None
        if self.adapters is None:
            return "the model is not shared"
        return self.adapters.why_not_mixable(names)


@contextlib.contextmanager
def _activated(adapters: Any, name: str | None) -> Iterator[nn.Module]:
    with (adapters.active(name) if name is not None else adapters.disable()):
        yield adapters.model


@dataclass
class ServedModel:
    """One entry of ``GET /v1/models`` and what a request naming it runs on."""

    name: str
    source: str
    task: Any
    cfg: Any
    group: ModelGroup
    adapter: str | None
    processor: Any
    labels: Any
    endpoints: tuple[str, ...]
    method: str
    template: Any = None
    system_prompt: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def loaded(self) -> Any:
        """A :class:`~tunelab.pipeline.LoadedRun` view for the task's own predict/embed code (call it
        inside ``group.use([adapter])``)."""
        from tunelab.pipeline import LoadedRun

        return LoadedRun(None, self.cfg, self.task, self.group.model, self.processor, self.labels)  # type: ignore[arg-type]

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for a chat, with the run's template and default system prompt."""
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.template.prompt(messages, self.processor)

    def card(self) -> dict[str, Any]:
        """The model's entry in ``GET /v1/models`` (OpenAI's fields plus what it answers)."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "tunelab",
                "task": self.task.name, "method": self.method, "endpoints": list(self.endpoints),
                "source": self.source, "shared_base": self.group.adapters is not None,
                **({"labels": list(self.labels.names)} if self.labels is not None else {})}


def endpoints_of(spec: Any) -> tuple[str, ...]:
    """What a task's runs answer, from its spec."""
    out: list[str] = []
    if spec.generates_text:
        out += [CHAT, COMPLETIONS]
    if spec.embeds_text:
        out.append(EMBEDDINGS)
    if spec.classifies:
        out.append(CLASSIFY)
    return tuple(out)


def _servable_tasks() -> str:
    from tunelab.tasks import TASK_SPECS

    return ", ".join(n for n, s in TASK_SPECS.items() if endpoints_of(s))


def parse_model_args(items: Sequence[str]) -> list[tuple[str, str]]:
    """``RUN`` or ``ALIAS=RUN`` command-line items -> (name, path); names are unique."""
    out: list[tuple[str, str]] = []
    for item in items:
        alias, sep, path = item.partition("=")
        name, path = (alias, path) if sep and alias and not Path(item).exists() else (Path(item).name, item)
        out.append((name, path))
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"two models would be named '{dupes[0]}'; name them apart with ALIAS=RUN")
    return out


def _open_run(name: str, path: str) -> tuple[Any, Any, Any]:
    """(RunDir, validated config, task) of a finished run, or one clear error."""
    from tunelab.config import validate_config
    from tunelab.run import RunDir
    from tunelab.tasks import get_task

    folder = Path(path)
    if not (folder / "config.yaml").is_file():
        raise UserError(f"serve: '{path}' is not a tunelab run directory (no config.yaml); give the folder "
                        "`tunelab train` wrote (output_dir/name)")
    if not (folder / "results.json").is_file():
        raise UserError(f"serve: run '{path}' is unfinished (no results.json); finish or resume it first")
    run = RunDir.open(folder)
    cfg = validate_config(run.read_config())
    task = get_task(cfg.task)
    if not endpoints_of(task.spec):
        raise UserError(f"serve: run '{path}' is a '{task.name}' run, which has no endpoint; serve answers runs "
                        f"of these tasks: {_servable_tasks()}")
    return run, cfg, task


def _method_label(cfg: Any) -> str:
    return "+".join(m.name for m in cfg.methods()) or "none"


def _shareable(cfg: Any) -> bool:
    """Whether a run's methods can be swapped into a shared base."""
    from tunelab.adapters import storage
    from tunelab.adapters.capture import check_methods

    try:
        check_methods("run", storage.run_methods(cfg))
    except UserError:
        return False
    return True


def _group_key(cfg: Any) -> str:
    return f"{cfg.task.name}|{cfg.model.name_or_path}|{cfg.model.num_layers}|{cfg.model.keep_layers}"


def _new_group(key: str, cfg: Any, task: Any, run: Any) -> ModelGroup:
    """The bare base of ``run``'s config in an adapter set."""
    from tunelab.adapters import AdapterSet
    from tunelab.adapters.labels import run_label_map
    from tunelab.models.shrink import shrink

    model = task.build_model(task.resolve_model(cfg.model.name_or_path), run_label_map(run))
    shrink(model, cfg.model.num_layers, cfg.model.keep_layers)
    model.eval()
    return ModelGroup(key, model, AdapterSet(model, base_model=cfg.model.name_or_path, task=task.name))


def load_models(runs: Sequence[tuple[str, str]], base: str | None = None,
                log: Any = lambda line: None) -> dict[str, ServedModel]:
    """Load every ``(name, run_dir)`` once, sharing bases where the methods allow; ``base`` (a causal
    LM reference) is served as a model of its own, shared with runs trained on it."""
    from tunelab.data.labels import LabelMap
    from tunelab.data.templates import Template
    from tunelab.pipeline import load_run

    served: dict[str, ServedModel] = {}
    groups: dict[str, ModelGroup] = {}
    for name, path in runs:
        run, cfg, task = _open_run(name, path)
        endpoints = endpoints_of(task.spec)
        if _shareable(cfg):
            key = _group_key(cfg)
            group = groups.get(key) or groups.setdefault(key, _new_group(key, cfg, task, run))
            group.adapters.add(name, from_run=run.path)
            adapter = group.adapters[name]
            labels = LabelMap.from_dict(adapter.labels) if adapter.labels else None
            processor = task.load_saved_processor(run.model_dir, task.resolve_model(cfg.model.name_or_path))
            entry = ServedModel(name, str(path), task, cfg, group, name, processor, labels, endpoints,
                                _method_label(cfg))
            log(f"loaded {name} ({entry.method}, {task.name}) on the shared base {cfg.model.name_or_path}")
        else:
            loaded = load_run(str(path))
            group = ModelGroup(f"own|{name}", loaded.model)
            entry = ServedModel(name, str(path), task, cfg, group, None, loaded.processor, loaded.labels, endpoints,
                                _method_label(cfg))
            log(f"loaded {name} ({entry.method}, {task.name}) with a model of its own")
        if task.spec.generates_text:
            entry.template = Template.resolve(cfg.task.template, entry.processor)
            entry.system_prompt = cfg.task.system_prompt
        served[name] = entry
    if base is not None:
        _add_base(served, groups, base, log)
    from tunelab.tasks import TASK_SPECS

    for key in list(groups):  # the shared base of generative runs is a model too
        task_name, ref, layers, keep = key.split("|")
        named = Path(ref).name if Path(ref).exists() else ref
        if TASK_SPECS[task_name].generates_text and (layers, keep) == ("None", "None") and named not in served:
            _add_base(served, groups, ref, log)
    if not served:
        raise UserError("serve: give at least one run directory (or --base MODEL)")
    return served


def _add_base(served: dict[str, ServedModel], groups: dict[str, ModelGroup], base: str, log: Any) -> None:
    """Serve the causal LM ``base`` under its own name (the group of runs trained on it, when there is one)."""
    from tunelab.adapters import AdapterSet
    from tunelab.config import validate_config
    from tunelab.data.templates import Template
    from tunelab.tasks import TASK_SPECS, get_task

    name = Path(base).name if Path(base).exists() else base
    if name in served:
        raise UserError(f"serve: --base {base} is named like a run already served ('{name}'); rename the run "
                        "with ALIAS=RUN")
    generative = [n for n, s in TASK_SPECS.items() if s.generates_text]
    group = next((g for k, g in groups.items() if k.split("|")[1] == base and k.split("|")[2:] == ["None", "None"]
                  and TASK_SPECS[k.split("|")[0]].generates_text), None)
    task = get_task(group.adapters.task if group is not None else generative[0])
    resolved = task.resolve_model(base)
    if group is None:
        model = task.build_model(resolved, None).eval()
        group = ModelGroup(f"{task.name}|{base}|None|None", model, AdapterSet(model, base_model=base, task=task.name))
        groups[group.key] = group
    processor = task.load_processor(resolved)
    cfg = validate_config({"model": {"name_or_path": base}, "task": {"name": task.name}})
    entry = ServedModel(name, base, task, cfg, group, None, processor, None, (CHAT, COMPLETIONS), "none",
                        template=Template.resolve("auto", processor))
    served[name] = entry
    log(f"loaded the base model {name}")

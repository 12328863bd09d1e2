"""peft's adapter folder <-> a tunelab run directory.

Export (:func:`to_peft`) rebuilds the run, lets the method's converter name its tensors and options
the way peft does, adds the task head as ``modules_to_save`` (so peft restores the trained head) and
writes ``adapter_config.json`` + ``adapter_model.safetensors`` (+ tokenizer, ``label_map.json``).
Import (:func:`from_peft`) reads such a folder, works out the label count from the head tensors,
turns the config into the equivalent tunelab method config, checks every tensor against the base
model, and writes a run directory that ``tunelab eval`` / ``predict`` / ``export`` read like any other.

Converters are registered once per peft method in :data:`CONVERTERS`, keyed by ``peft_type`` (see
:class:`tunelab.interop.peft_base.PeftConverter`); a tunelab method exports to peft when its spec
names such a type (:attr:`tunelab.methods.base.MethodSpec.peft_type`). Adding a peft method is one
converter module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.assets import BUILTIN_MODELS
from tunelab.config import RunConfig, apply_override, to_yaml_dict, validate_config
from tunelab.data.builtin import BUILTIN_DATASETS
from tunelab.data.labels import LabelMap
from tunelab.errors import UserError
from tunelab.interop import peft_ia3, peft_lora, peft_prefix, peft_prompt
from tunelab.interop.folders import check_out_dir, input_folders, open_finished_run, staged_dir
from tunelab.interop.peft_base import PeftConverter, head_modules, strip_prefix
from tunelab.methods import METHODS, count_parameters, get_method
from tunelab.models.layers import head_parameter_names
from tunelab.models.loading import resolve_model
from tunelab.run import RunDir

CONVERTERS: dict[str, PeftConverter] = {c.peft_type: c for c in (
    peft_lora.CONVERTER, peft_ia3.CONVERTER, peft_prompt.CONVERTER, peft_prefix.CONVERTER)}
"""peft ``peft_type`` -> its converter. Export finds a run's converter through its method's
:attr:`~tunelab.methods.base.MethodSpec.peft_type` (methods name the type, never import interop);
import goes straight from the adapter's ``peft_type``."""

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TASK_TYPE = "SEQ_CLS"
IMPORT_SETTABLE = ("data", "train", "seed")
"""Config sections an import's ``--set`` may change; method, model, task and name come from the adapter,
``--model`` and ``--out``."""


def exportable_methods() -> list[str]:
    """The methods that export to peft: their spec names a ``peft_type`` tunelab converts."""
    return [name for name, spec in METHODS.items() if spec.peft_type in CONVERTERS]


def supported() -> str:
    """The methods that export to peft, for messages."""
    return ", ".join(sorted(exportable_methods()))


def converter_for_run(cfg: RunConfig, where: Path) -> PeftConverter:
    """The converter of a run's single method; anything else is a one-line error naming what works."""
    names = [m.name for m in cfg.methods()]
    peft_type = get_method(names[0]).peft_type if len(names) == 1 else None
    if peft_type in CONVERTERS:
        return CONVERTERS[peft_type]
    hint = ("; --format merged writes it as a plain transformers model instead"
            if all(get_method(n).mergeable for n in names) else "")
    raise UserError(f"run {where} uses {' + '.join(names)}, which has no peft equivalent; --format peft "
                    f"supports a single method of: {supported()}{hint}")


def converter_for_peft_type(peft_type: Any, where: str) -> PeftConverter:
    """The converter for peft's ``peft_type``; others are refused naming the ones tunelab reads."""
    if isinstance(peft_type, str) and peft_type in CONVERTERS:
        return CONVERTERS[peft_type]
    known = ", ".join(sorted(CONVERTERS))
    raise UserError(f"{where}: peft_type {peft_type!r} has no tunelab equivalent; tunelab imports: {known}")


# ---------------------------------------------------------------------------- export

def base_reference(name_or_path: str) -> str:
    """How ``adapter_config.json`` names the base: an absolute folder, or the hub id as given."""
    resolved = resolve_model(name_or_path)
    return str(Path(resolved).resolve()) if Path(resolved).is_dir() else resolved


def peft_tensors(converter: PeftConverter, model: nn.Module, modules: list[str]) -> dict[str, torch.Tensor]:
    """On-disk tensors: the method's (renamed by its converter) and the whole of each head module."""
    tensors: dict[str, torch.Tensor] = {}
    exported: set[str] = set()
    for name, param in model.named_parameters():
        mapped = converter.to_peft_key(name, param.detach(), model)
        if mapped is not None:
            tensors[mapped[0]] = mapped[1].detach().cpu().clone().contiguous()
            exported.add(name)
    for module in modules:
        for key, value in model.get_submodule(module).state_dict().items():
            tensors[f"{converter.model_prefix}{module}.{key}"] = value.detach().cpu().clone().contiguous()
            exported.add(f"{module}.{key}")
    stray = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in exported)
    if stray:
        raise UserError(f"the run also trains {stray[:3]}, which peft's {converter.peft_type} adapter cannot hold")
    return tensors


def to_peft(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write run ``run`` as a peft adapter folder ``out`` (``PeftModel.from_pretrained`` loads it)."""
    from tunelab.pipeline import load_run

    run_dir = open_finished_run(run)
    cfg = validate_config(run_dir.read_config())
    task_type = peft_task_type(cfg, run_dir.path)
    converter = converter_for_run(cfg, run_dir.path)
    out_path = check_out_dir(out, overwrite=overwrite, protect=input_folders(run_dir, cfg))
    loaded = load_run(str(run_dir.path))
    modules = head_modules(loaded.model)
    config = {
        "peft_type": converter.peft_type, "task_type": task_type,
        "base_model_name_or_path": base_reference(cfg.model.name_or_path), "revision": None,
        "inference_mode": True, "modules_to_save": modules or None,
        **converter.to_peft_config(cfg.method, loaded.model),
    }
    tensors = peft_tensors(converter, loaded.model, modules)
    with staged_dir(out_path) as stage:
        save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": "pt"})
        (stage / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        loaded.tokenizer.save_pretrained(stage)
        if loaded.labels is not None:
            (stage / "label_map.json").write_text(json.dumps(loaded.labels.to_dict(), indent=2) + "\n")
        (stage / "README.md").write_text(_export_card(run_dir.path, config, loaded.model))
    return out_path


def peft_task_type(cfg: RunConfig, where: Path) -> str:
    """peft's ``task_type`` for the run's task (from the task's registry entry)."""
    from tunelab.tasks import get_spec

    spec = get_spec(cfg.task.name)
    if spec.peft_task_type is None:
        raise UserError(f"run {where} is a {spec.name} run, which peft has no task type for; "
                        "use --format merged for a plain model folder")
    return spec.peft_task_type


AUTO_CLASS = {"SEQ_CLS": "AutoModelForSequenceClassification", "CAUSAL_LM": "AutoModelForCausalLM"}
"""The transformers class that loads the base of each peft task type (for the export's card)."""


def _export_card(run: Path, config: dict[str, Any], model: nn.Module) -> str:
    """How to load the exported adapter with peft."""
    auto = AUTO_CLASS.get(config["task_type"], "AutoModel")
    labels = f", num_labels={model.config.num_labels}" if config["task_type"] == "SEQ_CLS" else ""
    head = ", task head in `modules_to_save`" if config.get("modules_to_save") else ""
    return f"""# peft adapter exported by tunelab

From run `{run}` ({config['peft_type']}, task type {config['task_type']}{head}).

```python
from peft import PeftModel
from transformers import {auto}, AutoTokenizer

base = {auto}.from_pretrained("{config['base_model_name_or_path']}"{labels})
model = PeftModel.from_pretrained(base, "<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```
"""


# ---------------------------------------------------------------------------- import: reading

def read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``adapter_config.json`` and the safetensors weights of a peft folder (never a pickle)."""
    if not folder.is_dir():
        raise UserError(f"peft adapter folder {folder} does not exist")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        inner = sorted(p.parent.name for p in folder.glob(f"*/{CONFIG_FILE}"))
        hint = f"; adapters found in subfolders: {', '.join(inner)}" if inner else ""
        raise UserError(f"{folder} has no {CONFIG_FILE}; is it a folder written by peft's save_pretrained?{hint}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} must hold a JSON object")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickled = " (it has a pickled adapter_model.bin, which tunelab never loads; re-save it with " \
                  "safe_serialization=True)" if (folder / "adapter_model.bin").is_file() else ""
        raise UserError(f"{folder} has no {WEIGHTS_FILE}{pickled}")
    try:
        return config, load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {weights}: {e}") from None


def split_tensors(converter: PeftConverter, tensors: dict[str, torch.Tensor]) -> tuple[
        dict[str, torch.Tensor], dict[str, tuple[str, torch.Tensor]], dict[str, tuple[str, torch.Tensor]]]:
    """The method's on-disk tensors; tunelab name -> (on-disk key, tensor) for all tensors; the same
    for the rest (``modules_to_save``, i.e. the head)."""
    method: dict[str, torch.Tensor] = {}
    named: dict[str, tuple[str, torch.Tensor]] = {}
    saved: dict[str, tuple[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        mapped = converter.from_peft_key(key, tensor)
        if mapped is not None:
            method[key] = tensor
            named[mapped[0]] = (key, mapped[1])
        else:
            name = strip_prefix(key, converter.model_prefix)
            named[name] = saved[name] = (key, tensor)
    return method, named, saved


# ---------------------------------------------------------------------------- import: head and labels

def head_label_count(probe: nn.Module, head: dict[str, tuple[str, torch.Tensor]], where: str) -> int:
    """Number of outputs of the adapter's head, found by comparing it with a 2-label probe model."""
    names = head_parameter_names(probe)
    params = dict(probe.named_parameters())
    stray = [key for name, (key, _) in head.items() if name not in names]
    if stray:
        raise UserError(f"{where}: tensor {stray[0]} (modules_to_save) is not part of the task head of "
                        f"{type(probe).__name__} ({', '.join(names)}); tunelab imports only the task head "
                        "in modules_to_save")
    missing = [n for n in names if n not in head]
    if missing:
        raise UserError(f"{where}: the adapter has no trained task head ({', '.join(missing)}), so its "
                        "predictions depend on a random head; save the peft model with task_type='SEQ_CLS' "
                        "or modules_to_save=['classifier']")
    counts = {tensor.shape[0] for name, (_, tensor) in head.items()
              if tensor.dim() and tuple(tensor.shape) != tuple(params[name].shape)}
    if len(counts) > 1:
        raise UserError(f"{where}: the head tensors disagree on the number of labels ({sorted(counts)})")
    return counts.pop() if counts else 2


def label_names(count: int, given: list[str] | None, folder: Path, resolved: str) -> list[str]:
    """Label names: data.label_names, else the folder's label_map.json, else the base config's
    non-default id2label, else ``"0".."K-1"``."""
    candidates: list[tuple[str, list[str]]] = []
    if given is not None:
        candidates.append(("data.label_names", [str(n) for n in given]))
    saved = folder / "label_map.json"
    if saved.is_file():
        candidates.append(("label_map.json", LabelMap.from_dict(json.loads(saved.read_text())).names))
    base_config = Path(resolved) / "config.json"
    if base_config.is_file():
        id2label = json.loads(base_config.read_text()).get("id2label") or {}
        names = [str(v) for _, v in sorted((int(k), v) for k, v in id2label.items())]
        if names != [f"LABEL_{i}" for i in range(len(names))]:
            candidates.append(("the base model's id2label", names))
    for source, names in candidates:
        if len(names) == count:
            return names
        if source == "data.label_names":
            raise UserError(f"data.label_names has {len(names)} names but the adapter's head has {count} outputs")
    return [str(i) for i in range(count)]


# ---------------------------------------------------------------------------- import: config and weights

def import_config(out: Path, model_ref: str, task: str, method: dict[str, Any], data: str | None,
                  overrides: list[str]) -> RunConfig:
    """The run's config: derived model/task/method, ``--data`` as the source, then ``key=value`` overrides."""
    source = data or ""
    if data and data not in BUILTIN_DATASETS and Path(data).expanduser().exists():
        source = str(Path(data).expanduser().resolve())
    raw: dict[str, Any] = {"name": out.name, "output_dir": str(out.resolve().parent),
                           "model": {"name_or_path": model_ref}, "task": {"name": task},
                           "data": {"source": source}, "method": method}
    for override in overrides:
        if override.split("=", 1)[0].strip().split(".")[0] not in IMPORT_SETTABLE:
            raise UserError(f"--set {override}: an import takes method, model, task and name from the adapter, "
                            "--model and --out; only data.*, train.* and seed may be set")
        apply_override(raw, override)
    return validate_config(raw)


def load_adapter_state(model: nn.Module, named: dict[str, tuple[str, torch.Tensor]], base: str) -> None:
    """Copy the adapter's tensors into ``model``: every tensor must fit, every trained parameter be given."""
    params = dict(model.named_parameters())
    for name, (key, tensor) in named.items():
        if name not in params:
            raise UserError(f"adapter tensor {key} has no counterpart in '{base}' adapted by tunelab "
                            f"(no parameter {name}); was the adapter made for another base model, or for a "
                            "layer type tunelab does not adapt?")
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise UserError(f"adapter tensor {key} has shape {tuple(tensor.shape)} but '{base}' needs "
                            f"{tuple(params[name].shape)}; the adapter was made for a different base model")
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in named)
    if missing:
        raise UserError(f"the adapter has no tensor for {missing[0]}, which tunelab's equivalent config adapts "
                        f"on '{base}' ({len(missing)} missing)")
    with torch.no_grad():
        for name, (_, tensor) in named.items():
            params[name].copy_(tensor.to(params[name].dtype))


def model_reference(ref: str) -> str:
    """How the run config names the base: alias or hub id as given, a folder as an absolute path."""
    path = Path(ref).expanduser()
    return ref if ref in BUILTIN_MODELS or not path.is_dir() else str(path.resolve())


def from_peft(peft_dir: str | Path, out: str | Path, *, model: str | None = None, data: str | None = None,
              overrides: list[str] | None = None, overwrite: bool = False) -> Path:
    """Turn a peft adapter folder into a tunelab run directory ``out``; return ``out``.

    ``model`` defaults to the adapter's ``base_model_name_or_path``; ``data`` becomes the run's data
    source (for ``tunelab eval`` without ``--data``); ``overrides`` are ``data.*`` / ``train.*``
    ``key=value`` settings (``data.label_names=[neg,pos]`` names the labels).
    """
    from tunelab.pipeline import build_model
    from tunelab.tasks import get_task

    folder = Path(peft_dir).expanduser()
    where = str(folder / CONFIG_FILE)
    peft_cfg, tensors = read_adapter(folder)
    converter = converter_for_peft_type(peft_cfg.get("peft_type"), where)
    if peft_cfg.get("task_type") not in (None, TASK_TYPE):
        raise UserError(f"{where}: task_type {peft_cfg['task_type']!r} is not supported; tunelab imports "
                        f"sequence classification adapters (task_type {TASK_TYPE!r})")
    ref = model or peft_cfg.get("base_model_name_or_path")
    if not ref:
        raise UserError(f"{where} names no base model (base_model_name_or_path); pass --model")
    resolved = resolve_model(ref)
    protect = [folder] + ([resolved] if Path(resolved).is_dir() else [])
    out_path = check_out_dir(out, overwrite=overwrite, protect=protect)
    method_tensors, named, head = split_tensors(converter, tensors)

    probe = get_task("classification").build_model(resolved, LabelMap(["0", "1"]))
    count = head_label_count(probe, head, where)
    method = converter.from_peft_config(peft_cfg, method_tensors, probe, where)
    del probe
    task = get_task("regression" if count == 1 else "classification")
    cfg = import_config(out_path, model_reference(ref), task.name, method, data, overrides or [])
    labels = None if task.regression else LabelMap(label_names(count, cfg.data.label_names, folder, resolved))
    built, fp = build_model(cfg, task, resolved, labels)
    load_adapter_state(built, named, ref)
    tokenizer_source = str(folder) if (folder / "tokenizer_config.json").is_file() else resolved
    with staged_dir(out_path) as stage:
        _write_run(RunDir(stage), cfg, built, fp, labels, tokenizer_source,
                   {"format": "peft", "path": str(folder.resolve()), "peft_type": peft_cfg.get("peft_type"),
                    "peft_version": peft_cfg.get("peft_version")})
    return out_path


def _write_run(run: RunDir, cfg: RunConfig, model: nn.Module, fp: str, labels: LabelMap | None,
               tokenizer_source: str, origin: dict[str, Any]) -> None:
    """The run directory files ``load_run`` reads, plus a results record and a short card."""
    from tunelab.models.loading import load_tokenizer

    run.write_config(to_yaml_dict(cfg))
    run.save_weights(model)
    load_tokenizer(tokenizer_source).save_pretrained(run.model_dir)
    if labels is not None:
        run.write_json(run.label_map, labels.to_dict())
    run.write_json(run.fingerprint, {"name_or_path": cfg.model.name_or_path, "fingerprint": fp})
    run.write_json(run.results, {
        "task": cfg.task.name, "method": [m.name for m in cfg.methods()], "base_model": cfg.model.name_or_path,
        "base_fingerprint": fp, "imported_from": origin, "params": count_parameters(model), "test": {},
    })
    run.card.write_text(
        f"# {cfg.name}\n\nImported by tunelab from the peft adapter `{origin['path']}` "
        f"({origin['peft_type']}) on base `{cfg.model.name_or_path}`.\n\n"
        f"Evaluate it with `tunelab eval <this folder> --data FILE` or predict with `tunelab predict`.\n")

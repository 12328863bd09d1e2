"""What every peft converter shares: the converter shape and the facts of peft's on-disk format.

peft (0.21) writes an adapter folder as ``adapter_config.json`` (the config's fields) and
``adapter_model.safetensors``. Facts used here, read off files that peft itself saved:

* tensor keys are ``base_model.model.<module path>.<param>`` with the adapter name dropped:
  ``...query.lora_A.weight``, ``...query.lora_B.weight``, DoRA's ``...query.lora_magnitude_vector``
  (no ``.weight``, shape ``(out,)``), IA3's ``...key.ia3_l`` (shape ``(out, 1)``, or ``(1, in)`` for a
  feed-forward module);
* a ``modules_to_save`` module (the task head) is stored under its plain path,
  ``base_model.model.classifier.weight`` (not ``.modules_to_save.default.``);
* for ``task_type="SEQ_CLS"`` peft adds ``classifier`` and ``score`` to ``modules_to_save``, and
  never puts an adapter inside a ``modules_to_save`` module;
* a list ``target_modules`` selects a module whose name equals an entry or ends in ``.<entry>``; a
  string is a regex that must match the whole name; IA3's list ``feedforward_modules`` selects by
  plain ``str.endswith`` (no dot).
* prompt learning methods (``PROMPT_TUNING``, ``PREFIX_TUNING``) keep the transformers model directly
  under the peft model (no tuner in between), so their ``modules_to_save`` keys are
  ``base_model.classifier.weight``, and the method itself is one tensor ``prompt_embeddings`` with
  no prefix at all.

A converter (one per method, :class:`PeftConverter`) translates the method's config and tensors;
the head (``modules_to_save``) and the folder layout are handled once in
:mod:`tunelab.interop.peft_format`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.base import MethodConfig
from tunelab.models.layers import HEAD_MODULE_NAMES, head_parameter_names

PEFT_PREFIX = "base_model.model."
"""Prefix of every tensor key of a model-wrapping peft adapter (LoRA, IA3, modules_to_save)."""

PROMPT_LEARNING_PREFIX = "base_model."
"""Prefix of the model's tensors (the head in ``modules_to_save``) in a prompt learning adapter."""

SEQ_CLS_HEADS = ("classifier", "score")
"""Module names peft adds to ``modules_to_save`` for ``task_type="SEQ_CLS"``."""

COMMON_KEYS = frozenset({
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
    "peft_version", "modules_to_save",
})
"""``adapter_config.json`` fields every converter may ignore (bookkeeping, or handled generically)."""


@dataclass(frozen=True)
class PeftConverter:
    """How one peft method maps onto tunelab (a registry entry, keyed by ``peft_type``).

    Export uses it for every tunelab method whose spec names this ``peft_type`` (prefix tuning and
    P-tuning v2 share ``PREFIX_TUNING``); import turns an adapter of this type into a run of method
    :attr:`imports_as`. Tensor names on the tunelab side are the model's parameter names; on the
    peft side they are full on-disk keys (a converter adds any prefix itself, so methods with
    another layout -- prompt tuning's ``prompt_embeddings`` -- fit the same shape).
    """

    imports_as: str
    """The tunelab method an adapter of this type imports as (``lora``)."""
    peft_type: str
    """peft's ``peft_type`` (``LORA``)."""
    to_peft_config: Callable[[MethodConfig, nn.Module], dict[str, Any]]
    """(method config, adapted model) -> the method's fields of ``adapter_config.json``."""
    from_peft_config: Callable[[dict[str, Any], dict[str, torch.Tensor], nn.Module, str], dict[str, Any]]
    """(adapter_config.json, this method's on-disk tensors, unadapted base model, where for messages)
    -> tunelab method config as plain data; a :class:`UserError` names any option tunelab lacks."""
    to_peft_key: Callable[[str, torch.Tensor, nn.Module], tuple[str, torch.Tensor] | None]
    """(parameter name, tensor, adapted model) -> (on-disk key, tensor), or None when not this method's."""
    from_peft_key: Callable[[str, torch.Tensor], tuple[str, torch.Tensor] | None]
    """(on-disk key, tensor) -> (parameter name, tensor), or None when not this method's key."""
    model_prefix: str = PEFT_PREFIX
    """Prefix of the model's own tensors on disk (the head in ``modules_to_save``): ``base_model.model.``
    for tuner methods, :data:`PROMPT_LEARNING_PREFIX` for prompt learning."""


# ---------------------------------------------------------------------------- heads

def head_modules(model: nn.Module) -> list[str]:
    """Module names to put in ``modules_to_save``: the outermost head module of each head parameter.

    ``classifier.weight`` gives ``classifier``; RoBERTa's ``classifier.dense.weight`` also gives
    ``classifier`` (the first path part that is a known head name), so peft restores the whole head.
    """
    modules: list[str] = []
    for name in head_parameter_names(model):
        parts = name.split(".")[:-1]
        cut = next((i for i, part in enumerate(parts) if part in HEAD_MODULE_NAMES), len(parts) - 1)
        module = ".".join(parts[: cut + 1])
        if module and module not in modules:
            modules.append(module)
    return modules


# ---------------------------------------------------------------------------- peft's matching rules

def peft_excluded(name: str, modules_to_save: Iterable[str]) -> bool:
    """Whether peft keeps adapters off module ``name`` because it lies in a ``modules_to_save`` module."""
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in modules_to_save)


def peft_list_selects(entries: Iterable[str], name: str) -> bool:
    """peft's rule for a list ``target_modules``: equal to an entry or ending in ``.<entry>``."""
    return any(name == e or name.endswith(f".{e}") for e in entries)


def base_module_names(model: nn.Module) -> list[str]:
    """Module names as the unadapted model has them: wrappers count, their insides do not."""
    wrappers = tuple(f"{n}." for n, m in model.named_modules() if n and hasattr(m, "base_layer"))
    return [n for n, _ in model.named_modules() if n and not (wrappers and n.startswith(wrappers))]


def peft_layer_index(name: str, pattern: str | None) -> int | None:
    """The block index peft's ``layers_to_transform`` reads from a module name: the number after
    ``<pattern>.``, or without a pattern the first numbered path segment."""
    if pattern:
        found = re.match(rf"(?:^|.*?\.){re.escape(pattern)}\.(?P<idx>\d+)\.", name)
    else:
        found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    return int(found.group("idx")) if found else None


def peft_selects_same(entries: list[str] | None, chosen: Iterable[str], model: nn.Module,
                      layers: list[int] | None = None, pattern: str | None = None) -> bool:
    """Whether peft, given list ``entries`` (and ``layers_to_transform``), adapts exactly ``chosen``.

    Simulates peft's selection on the unadapted module names, head modules excluded as peft does.
    """
    if not entries:
        return False
    skip = [*head_modules(model), *SEQ_CLS_HEADS]
    selected = sorted(
        n for n in base_module_names(model)
        if peft_list_selects(entries, n) and not peft_excluded(n, skip)
        and (layers is None or peft_layer_index(n, pattern) in layers)
    )
    return selected == sorted(chosen)


def plain_entries(value: list[str] | str | None) -> list[str] | None:
    """tunelab target entries as a peft list when they mean the same there (no ``re:``, no all-linear)."""
    if value is None:
        return None
    entries = [value] if isinstance(value, str) else list(value)
    if any(e.startswith("re:") or e.lower() == "all-linear" for e in entries):
        return None
    return entries


def import_targets(value: Any) -> list[str] | str | None:
    """peft ``target_modules`` / ``feedforward_modules`` in tunelab's terms (a string is a full-name regex)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.lower() == "all-linear" else f"re:{value}"
    return [str(v) for v in value]


def choose_import_targets(candidates: list[Any], fits: Callable[[Any], bool], exact: Any) -> Any:
    """The first candidate spec that reproduces the adapter's modules on this base (``fits``), else ``exact``.

    ``fits`` may raise (a spec matching nothing, an invalid regex): that candidate is skipped.
    """
    for spec in candidates:
        try:
            if fits(spec):
                return spec
        except (UserError, ValueError):
            continue
    return exact


# ---------------------------------------------------------------------------- options

def check_options(peft_cfg: dict[str, Any], handled: Iterable[str], where: str,
                  ignored: Iterable[str] = ()) -> None:
    """Every field neither ``handled``, ``ignored`` nor common bookkeeping must be off (None/False/empty/0).

    A field that is set means a feature tunelab does not have; name it in one line.
    """
    handled = set(handled)
    known = handled | set(ignored) | COMMON_KEYS
    for key, value in peft_cfg.items():
        if key not in known and value not in (None, False, 0, "", [], {}):
            raise UserError(f"{where}: {peft_cfg.get('peft_type', 'peft')} option {key}={value!r} has no "
                            f"tunelab equivalent; tunelab reads: {', '.join(sorted(handled))}")


def number(value: float) -> int | float:
    """An integral float as an int (``16.0`` -> ``16``), as peft writes alphas."""
    return int(value) if float(value).is_integer() else float(value)


def strip_prefix(key: str, prefix: str = PEFT_PREFIX) -> str:
    """An on-disk key without ``prefix`` (``base_model.model.``); a key without it is not a model tensor."""
    if not key.startswith(prefix):
        kind = "LoRA/IA3" if prefix == PEFT_PREFIX else "prompt learning"
        raise UserError(f"adapter tensor {key} does not start with '{prefix}'; "
                        f"this does not look like a {kind} adapter saved by peft")
    return key[len(prefix):]


# ---------------------------------------------------------------------------- prompt learning

PROMPT_KEY = "prompt_embeddings"
"""The on-disk key of a prompt learning method's tensor (no prefix)."""

PROMPT_FIELDS = ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads",
                 "num_layers")
"""Fields every prompt learning config has (peft fills them from the base model's config)."""


def virtual_token_count(peft_cfg: dict[str, Any], where: str) -> int:
    """``num_virtual_tokens`` as a positive int; peft's encoder-decoder layout (two stacks) is refused."""
    stacks = peft_cfg.get("num_transformer_submodules")
    if stacks not in (None, 1):
        raise UserError(f"{where}: {peft_cfg.get('peft_type')} num_transformer_submodules={stacks!r} (virtual "
                        "tokens for an encoder-decoder's two stacks) has no tunelab equivalent; tunelab reads "
                        "num_transformer_submodules=1")
    count = peft_cfg.get("num_virtual_tokens")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise UserError(f"{where}: num_virtual_tokens must be a positive integer, got {count!r}")
    return count


def check_fits_base(peft_cfg: dict[str, Any], field: str, expected: int, meaning: str, where: str) -> None:
    """A config field that describes the base model must equal what this base has (None: peft's default)."""
    value = peft_cfg.get(field)
    if value is not None and value != expected:
        raise UserError(f"{where}: {peft_cfg.get('peft_type')} {field}={value!r} does not fit the base model, "
                        f"whose {meaning} is {expected}; tunelab needs {field}={expected} (was the adapter made "
                        "for another base model? pass --model)")


def prompt_tensor(tensors: dict[str, torch.Tensor], shape: tuple[int, ...], where: str,
                  hint: str = "") -> torch.Tensor:
    """The adapter's ``prompt_embeddings``, which must have ``shape``."""
    if PROMPT_KEY not in tensors:
        raise UserError(f"{where}: the adapter holds no '{PROMPT_KEY}' tensor")
    tensor = tensors[PROMPT_KEY]
    if tuple(tensor.shape) != shape:
        raise UserError(f"{where}: {PROMPT_KEY} has shape {tuple(tensor.shape)} but the config and the base "
                        f"model need {shape}{hint}")
    return tensor

"""Prefix tuning and P-tuning v2 <-> peft ``peft_type="PREFIX_TUNING"`` (one converter for both).

Both tunelab methods end training with a key/value prefix table ``<method>.prefix_table`` of shape
``(n, layers * 2 * d)`` (prefix tuning folds its MLP into it, see :mod:`tunelab.methods.prefix`).
peft's ``prompt_embeddings`` is that same flat table: ``PeftModel.get_prompt`` views each row as
``(layers * 2, heads, d // heads)`` -- column blocks ordered layer by layer, each layer's keys before
its values, then heads, then the position within a head -- and hands layer ``l`` the blocks
``2l`` (keys) and ``2l + 1`` (values) as ``(batch, heads, n, head_dim)``, which is tunelab's order,
so the table goes over unchanged. ``d`` / ``heads`` are the key/value width and head count
(``num_key_value_heads`` under grouped-query attention, as peft provisions them).

Export writes ``prefix_projection: false``: peft then reads the table as it is. Import always gives
``ptuning_v2`` (a directly stored table). An adapter trained with ``prefix_projection: true`` imports
exactly too: peft saves the table its MLP computes (``get_prompt_embedding_to_save``), never the MLP,
and reads that table directly when it loads the adapter for inference. ``prefix_dropout`` acts only
while training and has no peft counterpart; ``encoder_hidden_size`` and ``init_weights`` only matter
for peft's MLP or initialisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunelab.interop.peft_base import (
    PROMPT_FIELDS,
    PROMPT_KEY,
    PROMPT_LEARNING_PREFIX,
    PeftConverter,
    check_fits_base,
    check_options,
    prompt_tensor,
    virtual_token_count,
)
from tunelab.methods.base import MethodConfig
from tunelab.methods.prefix import (
    KeyValuePrefix,
    KVGeometry,
    PrefixTuningConfig,
    PTuningV2Config,
)

HANDLED = (*PROMPT_FIELDS, "prefix_projection")
IGNORED = ("encoder_hidden_size", "init_weights")
"""Fields that only matter for peft's projection MLP (not saved) or at initialisation."""

IMPORTED_AS = "ptuning_v2"
"""The tunelab method a PREFIX_TUNING adapter imports as (a prefix table trained or stored directly)."""

_TABLE = "prefix_table"


# ---------------------------------------------------------------------------- tunelab -> peft

def to_peft_config(cfg: MethodConfig, model: nn.Module) -> dict[str, Any]:
    """The PREFIX_TUNING fields of ``adapter_config.json``: the table's geometry, no projection."""
    assert isinstance(cfg, (PrefixTuningConfig, PTuningV2Config))
    prefix = model.get_submodule(cfg.name)
    assert isinstance(prefix, KeyValuePrefix)
    g = prefix.geometry
    return {
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "token_dim": g.width,
        "num_transformer_submodules": 1,
        "num_attention_heads": g.kv_heads,
        "num_layers": g.layers,
        "prefix_projection": False,
        "encoder_hidden_size": g.width,
        "init_weights": None,
    }


def to_peft_key(param: str, tensor: torch.Tensor, model: nn.Module) -> tuple[str, torch.Tensor] | None:
    """``<method>.prefix_table`` -> ``prompt_embeddings``: the table of the model's key/value prefix,
    whichever prefix method attached it (under its own name, see :meth:`VirtualTokens.attach`)."""
    owner, _, leaf = param.partition(".")
    is_table = leaf == _TABLE and isinstance(getattr(model, owner, None), KeyValuePrefix)
    return (PROMPT_KEY, tensor) if is_table else None


# ---------------------------------------------------------------------------- peft -> tunelab

def from_peft_key(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """``prompt_embeddings`` -> ``ptuning_v2.prefix_table``; other keys belong to the head."""
    return (f"{IMPORTED_AS}.{_TABLE}", tensor) if key == PROMPT_KEY else None


def from_peft_config(peft_cfg: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                     where: str) -> dict[str, Any]:
    """tunelab ``method:`` data (``ptuning_v2``) for a peft PREFIX_TUNING config; the table's geometry
    (layers, key/value heads, width) must be the base model's."""
    check_options(peft_cfg, HANDLED, where, IGNORED)
    count = virtual_token_count(peft_cfg, where)
    g = KVGeometry.of(model, IMPORTED_AS)
    check_fits_base(peft_cfg, "num_layers", g.layers, "number of layers", where)
    check_fits_base(peft_cfg, "num_attention_heads", g.kv_heads, "number of key/value heads", where)
    check_fits_base(peft_cfg, "token_dim", g.width, "key/value width (heads x head size)", where)
    hint = (" (the flat key/value table; with prefix_projection=true peft saves the table its MLP computes, "
            "and tunelab imports only that)") if peft_cfg.get("prefix_projection") else ""
    prompt_tensor(tensors, (count, g.layers * 2 * g.width), where, hint)
    return {"name": IMPORTED_AS, "num_virtual_tokens": count}


CONVERTER = PeftConverter(
    imports_as=IMPORTED_AS,
    peft_type="PREFIX_TUNING",
    to_peft_config=to_peft_config,
    from_peft_config=from_peft_config,
    to_peft_key=to_peft_key,
    from_peft_key=from_peft_key,
    model_prefix=PROMPT_LEARNING_PREFIX,
)
"""One converter for both prefix methods: export takes either one's table, import gives :data:`IMPORTED_AS`."""

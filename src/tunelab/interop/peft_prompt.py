"""Prompt tuning <-> peft ``peft_type="PROMPT_TUNING"``.

Both sides hold one ``(n, hidden)`` matrix of virtual-token embeddings placed before the embedded
input: tunelab's ``prompt_tuning.prompt_embeddings`` is peft's ``prompt_embeddings`` (that key, no
prefix; the head lies under ``base_model.``, see :mod:`tunelab.interop.peft_base`). For a sequence
classifier peft also builds the inputs as tunelab does: ``n`` leading ones in the attention mask,
``n`` leading zeros in ``token_type_ids``, positions numbered by the model over the longer
sequence. Options: ``num_virtual_tokens``; ``token_dim`` (the base's hidden size);
``num_transformer_submodules`` (1: tunelab has no encoder-decoder prompts); ``prompt_tuning_init``
(``random`` / ``vocab`` <-> ``RANDOM`` / ``SAMPLE_VOCAB``; ``text`` exports as ``RANDOM``, since peft's
``TEXT`` would need a tokenizer reference and the saved prompt replaces any initialisation anyway).
``num_layers`` / ``num_attention_heads`` are written for peft but play no part in prompt tuning.
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
from tunelab.methods.prompt import PromptTuningConfig

HANDLED = (*PROMPT_FIELDS, "prompt_tuning_init")
IGNORED = ("prompt_tuning_init_text", "tokenizer_name_or_path", "tokenizer_kwargs")
"""Fields that only matter at initialisation, which the saved prompt replaces."""

INIT_TO_PEFT = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "RANDOM"}
"""tunelab ``init`` -> peft ``prompt_tuning_init`` (informational: saved weights replace the init)."""

_NAME = "prompt_tuning.prompt_embeddings"


def text_config(model: nn.Module) -> Any:
    """The model's (text) config, where layer and head counts live."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


# ---------------------------------------------------------------------------- tunelab -> peft

def to_peft_config(cfg: MethodConfig, model: nn.Module) -> dict[str, Any]:
    """The PROMPT_TUNING fields of ``adapter_config.json`` for a run adapted with ``cfg``."""
    assert isinstance(cfg, PromptTuningConfig)
    config = text_config(model)
    return {
        "num_virtual_tokens": cfg.num_virtual_tokens,
        "token_dim": int(model.get_parameter(_NAME).shape[1]),
        "num_transformer_submodules": 1,
        "num_attention_heads": getattr(config, "num_attention_heads", None),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "prompt_tuning_init": INIT_TO_PEFT[cfg.init],
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }


def to_peft_key(name: str, tensor: torch.Tensor, model: nn.Module) -> tuple[str, torch.Tensor] | None:
    """``prompt_tuning.prompt_embeddings`` -> ``prompt_embeddings``."""
    return (PROMPT_KEY, tensor) if name == _NAME else None


# ---------------------------------------------------------------------------- peft -> tunelab

def from_peft_key(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """``prompt_embeddings`` -> ``prompt_tuning.prompt_embeddings``; other keys belong to the head."""
    return (_NAME, tensor) if key == PROMPT_KEY else None


def from_peft_config(peft_cfg: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                     where: str) -> dict[str, Any]:
    """tunelab ``method:`` data for a peft PROMPT_TUNING config; the prompt must fit the base's embeddings."""
    check_options(peft_cfg, HANDLED, where, IGNORED)
    count = virtual_token_count(peft_cfg, where)
    hidden = int(model.get_input_embeddings().weight.shape[1])
    check_fits_base(peft_cfg, "token_dim", hidden, "hidden size (token embedding width)", where)
    prompt_tensor(tensors, (count, hidden), where)
    init = "vocab" if peft_cfg.get("prompt_tuning_init") == "SAMPLE_VOCAB" else "random"
    return {"name": "prompt_tuning", "num_virtual_tokens": count, "init": init}


CONVERTER = PeftConverter(
    imports_as="prompt_tuning",
    peft_type="PROMPT_TUNING",
    to_peft_config=to_peft_config,
    from_peft_config=from_peft_config,
    to_peft_key=to_peft_key,
    from_peft_key=from_peft_key,
    model_prefix=PROMPT_LEARNING_PREFIX,
)

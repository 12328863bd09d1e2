"""Next-token loss with the LM head run only where a label counts, in chunks.

A causal LM's forward computes ``[batch × length × vocabulary]`` logits, most of them at prompt or
padding positions whose label is ``-100``; for SmolLM2 (49,152 tokens) they dominate training
memory. :class:`LabelledLogitsStep` asks the model for its final hidden states instead (the LM head
is swapped for an identity during the forward, so DDP/FSDP wrappers, adapter hooks and virtual-token
methods all run as usual), keeps the positions that predict a labelled token, and applies the real
head to those rows only. The cross-entropy is computed in chunks of positions;
when the selected logits would exceed :data:`CHUNK_FLOATS`, each chunk runs under activation
checkpointing, so only one chunk's logits exist at a time (in the forward and the backward). The loss
is the mean over labelled tokens, exactly what ``model(**batch).loss`` returns (tested to 1e-6 with
its gradients).

Models whose logits are not ``head(hidden)`` (logit soft-capping, a logit scale) keep the default
step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.train.step import Batch, SupervisedStep, model_inputs

IGNORE = -100
CHUNK_FLOATS = 1 << 23
"""Most logits (floats) one chunk of the loss materialises: 8M, 32 MB in fp32."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP/FSDP-style wrappers (``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def head_slot(model: nn.Module) -> tuple[nn.Module, str] | None:
    """(the module holding the output head, its attribute name), or None when logits are not
    ``head(hidden)`` alone."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1.0):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None
    for name, child in model.named_children():
        if child is head:
            return model, name
    return None


@contextlib.contextmanager
def hidden_instead_of_logits(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: the model's forward returns final hidden states as ``logits``; yields the real head."""
    owner, name = head_slot(model)
    head = getattr(owner, name)
    setattr(owner, name, nn.Identity())
    try:
        yield head
    finally:
        setattr(owner, name, head)


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), target, reduction="sum")


def chunked_cross_entropy(head: nn.Module, hidden: torch.Tensor, target: torch.Tensor,
                          vocab: int, chunk_floats: int = CHUNK_FLOATS) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` [N, V] against ``target`` [N], one chunk of rows at a time."""
    n = hidden.shape[0]
    if n == 0:
        return hidden.sum() * 0.0  # no labelled token: a zero that keeps the graph
    rows = max(1, chunk_floats // max(vocab, 1))
    if n <= rows:
        return _chunk_loss(head, hidden, target) / n
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, rows):
        h, t = hidden[start:start + rows], target[start:start + rows]
        total = total + (checkpoint(_chunk_loss, head, h, t, use_reentrant=False) if torch.is_grad_enabled()
                         else _chunk_loss(head, h, t))
    return total / n


class LabelledLogitsStep(SupervisedStep):
    """SFT's training step: the LM head only at labelled positions, the loss in chunks (see module)."""

    def __init__(self, length_key: str | None = "input_ids", mask_key: str | None = "attention_mask",
                 chunk_floats: int = CHUNK_FLOATS) -> None:
        super().__init__(length_key, mask_key)
        self.chunk_floats = chunk_floats

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        inner = unwrap(model)
        if head_slot(inner) is None:
            return super().loss(model, batch)
        inputs = model_inputs(batch)
        labels = inputs.pop("labels")
        with hidden_instead_of_logits(inner) as head:
            hidden = model(**inputs).logits  # as the default step calls it (use_cache changes packed masks)
        target = labels[:, 1:]
        keep = target != IGNORE
        return chunked_cross_entropy(head, hidden[:, :-1][keep], target[keep], _vocab(head), self.chunk_floats)


def _vocab(head: nn.Module) -> int:
    """Output size of the head (a method's wrapper around it included)."""
    for module in (head, getattr(head, "base_layer", None)):
        out = getattr(module, "out_features", None)
        if out:
            return int(out)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            return int(weight.shape[0])
    return 1

"""Log-probabilities of response tokens under a causal LM (DPO family, PPO, GRPO).

Position ``t`` of the logits predicts token ``t + 1``, so the log-probability of token ``t`` is read
from position ``t - 1``; a response mask marks which tokens count. Only the gathered values and the
log-normaliser are kept: ``logp = logit[token] - logsumexp(logits)``, never a full log-softmax copy.

:func:`response_token_logps` goes further: the model returns its final hidden states (its LM head
swapped for an identity, as :mod:`tunelab.tasks.lm_loss` does for SFT), the head runs only on the
positions that predict a response token, in chunks of at most :data:`~tunelab.tasks.lm_loss.CHUNK_FLOATS`
logits, each chunk under activation checkpointing when there are several, so the
``[batch × length × vocabulary]`` logits of prompts and padding are never made. Values equal
:func:`token_logps` at response positions (tested to 1e-6 with gradients); other positions hold 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.tasks.lm_loss import CHUNK_FLOATS, _vocab, head_slot, hidden_instead_of_logits, unwrap
from tunelab.tasks.rl_math import entropy_from_logits


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]``: log p(input_ids[:, t+1] | ...) from logits ``[B, T, V]`` (at least fp32)."""
    logits = logits[:, :-1]
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    target = input_ids[:, 1:].unsqueeze(-1)
    return logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def forward_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal LM's logits for a batch's ``input_ids``/``attention_mask``."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


@dataclass
class ResponseLogps:
    """What :func:`response_token_logps` returns."""

    logps: torch.Tensor
    """``[B, T-1]`` log-probability of each response token (0 where the response mask is 0)."""
    hidden: torch.Tensor | None = None
    """``[B, T, H]`` final hidden states (the LM head's input), when asked."""
    entropy: torch.Tensor | None = None
    """``[B, T-1]`` entropy of the next-token distribution at response positions (no gradient), when asked."""


@contextmanager
def captured_hidden(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The LM head's input (the last hidden states, one per input token) of the forwards in the block."""
    seen: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def response_token_logps(model: nn.Module, batch: dict[str, torch.Tensor], *, hidden: bool = False,
                         entropy: bool = False, chunk_floats: int = CHUNK_FLOATS) -> ResponseLogps:
    """Response-token log-probabilities of one forward, the LM head only where the response mask is set."""
    inner = unwrap(model)
    if head_slot(inner) is None:  # logits are not head(hidden): the full logits, as before
        with captured_hidden(inner) as seen:
            logits = forward_logits(model, batch)
        mask = batch["response_mask"][:, 1:].bool()
        logps = token_logps(logits, batch["input_ids"]).masked_fill(~mask, 0.0)
        ent = entropy_from_logits(logits[:, :-1].detach()).masked_fill(~mask, 0.0) if entropy else None
        return ResponseLogps(logps, seen[-1] if hidden else None, ent)
    with hidden_instead_of_logits(inner) as head:
        states = forward_logits(model, batch)
    keep = batch["response_mask"][:, 1:].bool()
    picked, target = states[:, :-1][keep], batch["input_ids"][:, 1:][keep]
    values, ent = selected_logps(head, picked, target, chunk_floats, entropy)
    logps = states.new_zeros(keep.shape, dtype=values.dtype).masked_scatter(keep, values)
    ents = states.new_zeros(keep.shape, dtype=ent.dtype).masked_scatter(keep, ent) if ent is not None else None
    return ResponseLogps(logps, states if hidden else None, ents)


def _chunk(head: nn.Module, hidden: torch.Tensor, target: torch.Tensor, entropy: bool
           ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    logp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    ent = entropy_from_logits(logits.detach()) if entropy else logp.new_zeros(0)
    return logp, ent


def selected_logps(head: nn.Module, hidden: torch.Tensor, target: torch.Tensor, chunk_floats: int = CHUNK_FLOATS,
                   entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(target) ``[N]``, entropies ``[N]`` or None) of ``head(hidden)`` for ``hidden`` ``[N, H]``,
    at most ``chunk_floats`` logits at a time."""
    rows = max(1, chunk_floats // _vocab(head))
    if hidden.shape[0] <= rows:
        logp, ent = _chunk(head, hidden, target, entropy)
        return logp, ent if entropy else None
    parts = []
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start:start + rows], target[start:start + rows]
        parts.append(checkpoint(_chunk, head, h, t, entropy, use_reentrant=False) if torch.is_grad_enabled()
                     else _chunk(head, h, t, entropy))
    logp = torch.cat([p[0] for p in parts])
    return logp, torch.cat([p[1] for p in parts]) if entropy else None

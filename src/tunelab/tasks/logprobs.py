"""Log-probabilities of response tokens under a causal LM (DPO family, PPO, GRPO).

Position ``t`` of the logits predicts token ``t + 1``, so the log-probability of token ``t`` is read
from position ``t - 1``; a response mask marks which tokens count. Only the gathered values and the
log-normaliser are kept: ``logp = logit[token] - logsumexp(logits)``, never a full log-softmax copy.
"""

from __future__ import annotations

import torch
from torch import nn


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


def response_logps(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probabilities of the response tokens ``[B]``, their count ``[B]``)."""
    mask = response_mask[:, 1:].to(logits.dtype if logits.is_floating_point() else torch.float32)
    per_token = token_logps(logits, input_ids)
    return (per_token * mask).sum(-1), mask.sum(-1)


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_logps` of one forward pass over the batch."""
    return response_logps(forward_logits(model, batch), batch["input_ids"], batch["response_mask"])

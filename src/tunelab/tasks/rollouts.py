"""Rollouts for RL fine-tuning (PPO, GRPO) and judged generation: sample responses to prompts,
lay prompt + response out as right-padded training sequences, and score them.

Sampling runs ``generate()`` (KV cache, every method's hooks) in eval mode, seeded from the task's
own :class:`torch.Generator`: each rollout batch draws one seed from it, so the responses depend
only on that generator's state, which is saved with every checkpoint -- a resumed run samples
exactly what the uninterrupted one would have.

A response ends at its first end-of-turn token (kept: it is scored and trained on, so the policy
learns where to stop) or after ``max_new_tokens``; ``ended`` says which. Sequences are laid out
like preference pairs (:mod:`tunelab.data.preference_tokens`): prompt tokens without their left
padding, then response tokens, right-padded, with ``response_mask`` 1 on response tokens -- so the
same log-probability code serves DPO, PPO and GRPO, and positions are numbered from 0 as when
generating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunelab.generation import GenerationOptions, _run_generate, _seeded, eos_token_ids

Message = dict[str, str]


@dataclass(frozen=True)
class Sampling:
    """How responses are sampled (training rollouts and judged evaluation alike)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float

    def options(self, seed: int) -> GenerationOptions:
        return GenerationOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                 top_k=self.top_k, top_p=self.top_p, seed=seed)


@dataclass
class Rollout:
    """A batch of sampled responses: right-padded sequences plus their texts."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    ended: torch.Tensor
    """``[B]`` bool: the response ends with the end-of-turn token (not cut at ``max_new_tokens``)."""
    prompts: list[tuple[Message, ...]]
    responses: list[str]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "response_mask": self.response_mask}

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


def draw_seed(generator: torch.Generator) -> int:
    """The next sampling seed from the task's generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def sample(model: nn.Module, tokenizer: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
           prompts: Sequence[Sequence[Message]], sampling: Sampling, seed: int) -> Rollout:
    """Sample one response per (left-padded) prompt row; see the module docstring."""
    eos = eos_token_ids(model, tokenizer)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0])
    device = next(model.parameters()).device
    inputs = {"input_ids": prompt_ids.to(device), "attention_mask": prompt_mask.to(device)}
    with _seeded(model, seed):
        out = _run_generate(model, inputs, sampling.options(seed), [], eos_token_id=eos, pad_token_id=pad)
    new = out[:, prompt_ids.shape[1]:].clone()  # a normal tensor (not an inference-mode one)
    is_eos = torch.isin(new, torch.tensor(eos, device=new.device))
    # keep tokens up to and including the first end-of-turn token
    before_end = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    ended = is_eos.any(-1)
    rows, masks = [], []
    for i in range(new.shape[0]):
        p = prompt_ids[i][prompt_mask[i].bool()].tolist()
        r = new[i][before_end[i]].tolist()
        rows.append(p + r)
        masks.append([0] * len(p) + [1] * len(r))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
        resp[i, : len(row)] = torch.tensor(mask)
    texts = [tokenizer.decode(new[i][before_end[i] & ~is_eos[i]].tolist(), skip_special_tokens=True).strip()
             for i in range(new.shape[0])]
    return Rollout(ids, attn, resp, ended.cpu(), [tuple(p) for p in prompts], texts)


"""Preference pairs and RL prompts -> token rows and batches (reward models, DPO family, PPO/GRPO).

A pair's prompt is rendered with the task's template (:mod:`tunelab.data.templates`, as in SFT,
generation prompt included) and each response follows it as the assistant's turn **including its
end-of-turn token** (the chat template's, or EOS for alpaca/user templates), which is always
present and always scored: a model that learns to prefer a response learns where it ends. Text the
template writes *after* the end-of-turn token (ChatML's newline) is not part of the response.

Over-long pairs never lose a response's end: the prompt is cut from the left first (its end, the
generation prompt, stays), down to half of ``max_length``; responses still too long keep their
first tokens and their last one (the end-of-turn token).

A row holds, for ``side`` in ``chosen``/``rejected``: ``input_ids_<side>`` (prompt + response) and
``response_mask_<side>`` (1 on response tokens), plus ``margin``. :class:`PairCollator` stacks a
batch as ``2B`` sequences -- the ``B`` chosen ones first, then the ``B`` rejected ones, right-padded
-- so one forward pass scores both sides (what TRL's "concatenated forward" does too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tunelab.data.conversations import Conversation
from tunelab.data.templates import Template, adds_bos

SIDES = ("chosen", "rejected")
Message = dict[str, str]


def render_response(template: Template, tokenizer: Any, prompt: Sequence[Message], response: str
                    ) -> tuple[str, str]:
    """(prompt text ending with the generation prompt, response text ending with its end-of-turn token)."""
    conv = Conversation(messages=[*map(dict, prompt), {"role": "assistant", "content": response}])
    rendered = template.render(conv, tokenizer)
    start, end = rendered.spans[-1]
    text = rendered.text[start:end]
    end_token = end_of_turn(tokenizer)
    if end_token and end_token in text:  # drop what the template writes after the end token
        text = text[: text.rindex(end_token) + len(end_token)]
    return rendered.text[:start], text


def end_of_turn(tokenizer: Any) -> str | None:
    """The token that ends an assistant turn: the tokenizer's EOS (ChatML's ``<|im_end|>`` for SmolLM2)."""
    return tokenizer.eos_token


def prompt_ids(tokenizer: Any, template: Template, prompt_text: str, bos: bool | None = None) -> list[int]:
    """Token ids of a rendered prompt (a BOS in front where the tokenizer adds one and the template does not)."""
    ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    if template.kind != "chat" and (adds_bos(tokenizer) if bos is None else bos) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def response_ids(tokenizer: Any, response_text: str) -> list[int]:
    return list(tokenizer(response_text, add_special_tokens=False)["input_ids"])


def fit(prompt: list[int], responses: Sequence[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Cut a prompt (from the left) and its responses (in the middle, keeping the last token) to
    ``max_length`` tokens per sequence; see the module docstring."""
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= max_length:
        return prompt, [list(r) for r in responses]
    keep = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt = prompt[len(prompt) - keep:]
    budget = max_length - len(prompt)
    return prompt, [list(r) if len(r) <= budget else [*r[: budget - 1], r[-1]] for r in responses]


def encode_pair(prompt_text: str, chosen_text: str, rejected_text: str, tokenizer: Any, template: Template,
                max_length: int, margin: float = 0.0, bos: bool | None = None) -> dict[str, Any]:
    """One training row of a causal-LM preference task (see the module docstring)."""
    p = prompt_ids(tokenizer, template, prompt_text, bos)
    p, (c, r) = fit(p, [response_ids(tokenizer, chosen_text), response_ids(tokenizer, rejected_text)], max_length)
    row: dict[str, Any] = {"margin": float(margin)}
    for side, resp in zip(SIDES, (c, r)):
        row[f"input_ids_{side}"] = p + resp
        row[f"response_mask_{side}"] = [0] * len(p) + [1] * len(resp)
    return row


def encode_prompt(prompt_text: str, tokenizer: Any, template: Template, max_length: int,
                  bos: bool | None = None) -> dict[str, Any]:
    """One RL row: the rendered prompt's ids, cut from the left to ``max_length``."""
    ids = prompt_ids(tokenizer, template, prompt_text, bos)
    return {"prompt_ids": ids[max(0, len(ids) - max_length):]}


def pair_length(row: dict[str, Any]) -> int:
    """The longer side of a pair (what batching by length groups)."""
    return max(len(row[f"input_ids_{s}"]) for s in SIDES)


class PairCollator:
    """Stacks pairs as ``2B`` right-padded sequences: chosen rows, then rejected rows.

    Gives ``input_ids``, ``attention_mask``, ``response_mask`` (and ``token_type_ids`` when rows
    carry them), ``margin`` ``[B]``, and any precomputed per-side float (``ref_logp_chosen`` /
    ``ref_logp_rejected`` -> ``ref_logp`` ``[2B]``). The pad id only fills; every consumer finds
    real tokens through ``attention_mask`` (a pad token equal to the end-of-turn token is fine).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [(row, side) for side in SIDES for row in rows]
        width = max(len(row[f"input_ids_{side}"]) for row, side in seqs)

        def padded(key: str, fill: int) -> torch.Tensor:
            return torch.tensor([list(row[f"{key}_{side}"]) + [fill] * (width - len(row[f"{key}_{side}"]))
                                 for row, side in seqs], dtype=torch.long)

        batch = {"input_ids": padded("input_ids", self.pad_token_id),
                 "attention_mask": torch.tensor([[1] * len(row[f"input_ids_{side}"]) +
                                                 [0] * (width - len(row[f"input_ids_{side}"]))
                                                 for row, side in seqs], dtype=torch.long),
                 "response_mask": padded("response_mask", 0),
                 "margin": torch.tensor([float(row.get("margin", 0.0)) for row in rows])}
        if "token_type_ids_chosen" in rows[0]:
            batch["token_type_ids"] = padded("token_type_ids", 0)
        if "ref_logp_chosen" in rows[0]:
            batch["ref_logp"] = torch.tensor([float(row[f"ref_logp_{side}"]) for row, side in seqs],
                                             dtype=torch.float64)
        if "row_index" in rows[0]:
            batch["row_index"] = torch.tensor([row["row_index"] for row in rows])
        return batch


class PromptCollator:
    """Left-padded prompt batches for rollouts: ``prompt_ids`` and ``prompt_mask`` ``[B, P]``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["prompt_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["prompt_ids"])
            ids[i, width - n:] = torch.tensor(row["prompt_ids"], dtype=torch.long)
            mask[i, width - n:] = 1
        batch = {"prompt_ids": ids, "prompt_mask": mask}
        if "row_index" in rows[0]:
            batch["row_index"] = torch.tensor([row["row_index"] for row in rows])
        return batch


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask 1) position of each row, for right- or left-padded rows.

    Found from the mask, never from ``input_ids != pad``: with SmolLM2 the pad token *is* the
    end-of-turn token that ends every response.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)

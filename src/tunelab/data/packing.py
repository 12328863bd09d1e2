"""Sequence packing for causal LMs, with no attention or position leakage between examples.

Packing puts several tokenised examples into one row of at most ``max_length`` tokens, so a batch
carries almost no padding (Krell et al., 2021, "Efficient Sequence Packing without
Cross-contamination", arXiv:2107.02027). What tunelab guarantees, and tests:

* **attention**: each token attends only to earlier tokens *of its own example* -- the collator
  builds a block-diagonal causal 4D mask (``0`` = attend, dtype minimum = blocked), which
  transformers' models use as given;
* **positions**: ``position_ids`` restart at 0 for each example, so rotary/learned positions are
  exactly those of the example alone;
* **loss**: an example's first token gets label ``-100``, so the last token of the previous example
  is never trained to predict it.

Hence every example's logits in a packed row equal its logits alone (checked to 1e-5 in the tests),
and the loss is the same per-token loss, only batched differently. Examples are packed greedily in
data order (first fit into the current row); an example is never split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tunelab.data.templates import IGNORE


def pack(examples: Sequence[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Concatenate examples (each at most ``max_length`` tokens) into rows of at most ``max_length``.

    Each row has ``input_ids``, ``labels``, ``position_ids`` and ``seq_ids`` (the example index
    within the row, used by :class:`PackedCollator` to build the mask).
    """
    rows: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = _empty()
    for ex in examples:
        n = len(ex["input_ids"])
        if n > max_length:
            raise ValueError(f"an example of {n} tokens exceeds max_length={max_length}; truncate first")
        if current["input_ids"] and len(current["input_ids"]) + n > max_length:
            rows.append(current)
            current = _empty()
        seq = current["seq_ids"][-1] + 1 if current["seq_ids"] else 0
        current["input_ids"] += ex["input_ids"]
        current["labels"] += [IGNORE, *ex["labels"][1:]]
        current["position_ids"] += list(range(n))
        current["seq_ids"] += [seq] * n
    if current["input_ids"]:
        rows.append(current)
    return rows


def _empty() -> dict[str, list[int]]:
    return {"input_ids": [], "labels": [], "position_ids": [], "seq_ids": []}


def block_causal_mask(seq_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(batch, 1, L, L)`` mask: token i sees token j iff same example and j <= i.

    ``dtype=torch.bool`` gives True = attend (what SDPA takes, whatever the compute dtype under
    autocast); a float dtype gives an additive mask (0 or the dtype's minimum) for eager attention.
    Padding has ``seq_id`` -1; it sees itself only, so no attention row is empty (no NaN)."""
    length = seq_ids.shape[1]
    same = seq_ids.unsqueeze(2) == seq_ids.unsqueeze(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=seq_ids.device).tril()
    allowed = same & causal
    allowed |= torch.eye(length, dtype=torch.bool, device=seq_ids.device)
    if dtype == torch.bool:
        return allowed.unsqueeze(1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seq_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


class PackedCollator:
    """Pads packed rows to the longest in the batch and adds the block-diagonal causal mask
    (``mask_dtype``: see :func:`block_causal_mask`)."""

    def __init__(self, pad_token_id: int, mask_dtype: torch.dtype = torch.bool) -> None:
        self.pad_token_id = pad_token_id
        self.dtype = mask_dtype

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)

        def padded(key: str, fill: int) -> torch.Tensor:
            return torch.tensor([list(r[key]) + [fill] * (length - len(r[key])) for r in rows])

        seq_ids = padded("seq_ids", -1)
        return {
            "input_ids": padded("input_ids", self.pad_token_id),
            "labels": padded("labels", IGNORE),
            "position_ids": padded("position_ids", 0),
            "attention_mask": block_causal_mask(seq_ids, self.dtype),
            "num_tokens": (seq_ids >= 0).sum(),
        }

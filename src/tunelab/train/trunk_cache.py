"""Cache the output of a frozen lower trunk across epochs.

When nothing in the embeddings or the first ``k`` transformer blocks trains, their output for a
given example never changes if they run deterministically (eval mode, no dropout). We compute it
once per training example, then every training step skips those blocks: block 0 emits the cached
hidden states and blocks 1..k-1 pass them through. Only the trainable top of the network runs.
This is the "frozen feature" trick of feature-based transfer (Devlin et al., 2019, BERT, Sec. 5.3),
applied to partial fine-tuning. The cost: the frozen blocks see no dropout during training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.methods import VIRTUAL_TOKEN_METHODS
from tunelab.methods.prompt import prompt_modules
from tunelab.models.layers import find_layer_list


class _Stop(Exception):
    def __init__(self, output: Any):
        self.output = output


def _hidden(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def frozen_prefix(model: nn.Module) -> int:
    """Number of leading transformer blocks that are frozen, with frozen embeddings below them.

    Raises a UserError naming the reason when no block can be cached.
    """
    if prompt_modules(model):
        *others, last = VIRTUAL_TOKEN_METHODS
        raise UserError(f"train.cache_frozen_trunk=true cannot be used with {', '.join(others)} or {last}: "
                        "their trainable virtual tokens enter every layer, so no layer's output is fixed; "
                        "set it to false")
    _, layers = find_layer_list(model)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and any(p.requires_grad for p in emb.parameters()):
        raise UserError("train.cache_frozen_trunk=true needs frozen embeddings, but they train")
    k = next((i for i, block in enumerate(layers) if any(p.requires_grad for p in block.parameters())),
             len(layers))
    if k == 0:
        raise UserError("train.cache_frozen_trunk=true needs frozen lower layers, but layer 0 trains; "
                        "use method freeze with top_layers < the number of layers")
    return k


class FrozenTrunkCache:
    """Hidden states after the first ``k`` frozen blocks, one tensor per training row."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.k = frozen_prefix(model)
        self.layers = find_layer_list(model)[1]
        self.states: list[torch.Tensor] = []
        self.tuple_output = False

    @torch.inference_mode()
    def build(self, rows: Sequence[dict], collate, batch_size: int = 64) -> None:
        """Run the frozen trunk once over ``rows`` (eval mode), longest first to limit padding."""
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
        self.states = [torch.empty(0)] * len(rows)

        def stop(module, args, output):
            raise _Stop(output)

        handle = self.layers[self.k - 1].register_forward_hook(stop)
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = collate([{k: v for k, v in rows[i].items() if k not in ("labels", "row_index")}
                                 for i in idx])
                batch = {k: v.to(next(self.model.parameters()).device) for k, v in batch.items()}
                try:
                    self.model(**batch)
                except _Stop as s:
                    self.tuple_output = not isinstance(s.output, torch.Tensor)
                    hidden, mask = _hidden(s.output), batch["attention_mask"].bool()
                    for j, i in enumerate(idx):
                        self.states[i] = hidden[j][mask[j]].clone()
        finally:
            handle.remove()
            self.model.train(was_training)

    def _padded(self, indices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cached states placed at the attention mask's positions (either padding side)."""
        first = self.states[int(indices[0])]
        out = first.new_zeros(mask.shape[0], mask.shape[1], first.shape[-1])
        for j, i in enumerate(indices.tolist()):
            out[j][mask[j].bool()] = self.states[i]
        return out

    @contextmanager
    def active(self, indices: torch.Tensor, attention_mask: torch.Tensor) -> Iterator[None]:
        """Within this context the first ``k`` blocks are replaced by the cached states."""
        cached = self._padded(indices, attention_mask)
        wrap = (lambda h: (h,)) if self.tuple_output else (lambda h: h)

        def first_block(hidden_states, *args, **kwargs):
            return wrap(cached)

        def pass_through(hidden_states, *args, **kwargs):
            return wrap(_hidden(hidden_states))

        patched = [self.layers[0]] + list(self.layers[1:self.k])
        self.layers[0].forward = first_block
        for block in patched[1:]:
            block.forward = pass_through
        try:
            yield
        finally:
            for block in patched:
                del block.forward  # back to the class's forward

"""Cache the output of a frozen lower trunk across epochs.

When nothing in the embeddings or the first ``k`` transformer blocks trains, their output for a
given example never changes if they run deterministically (eval mode, no dropout). We compute it
once per training example, then every training step skips those blocks: block 0 emits the cached
hidden states and blocks 1..k-1 pass them through. Only the trainable top of the network runs.
This is the "frozen feature" trick of feature-based transfer (Devlin et al., 2019, BERT, Sec. 5.3),
applied to partial fine-tuning. The cost: the frozen blocks see no dropout during training.

It works for any network whose blocks sit in one list (transformer layers, a CNN's ``features``):
with a mask of real positions (``mask_key``, text) each row keeps only those positions; without
one (images) it keeps the whole block output. :class:`CachedTrunkStep` plugs it into the engine as a training step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.models.layers import find_layer_list
from tunelab.train.step import WrappedStep


class _Stop(Exception):
    def __init__(self, output: Any):
        self.output = output


def _hidden(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def frozen_prefix(model: nn.Module) -> int:
    """Number of leading transformer blocks that are frozen, with frozen embeddings below them.

    Raises a UserError naming the reason when no block can be cached.
    """
    virtual = [m for m in model.modules() if getattr(m, "tunelab_virtual_tokens", False)]
    if virtual:
        raise UserError(f"train.cache_frozen_trunk=true cannot be used with {getattr(virtual[0], 'method', 'a')}: "
                        "its trainable virtual tokens enter every layer, so no layer's output is fixed; "
                        "set it to false")
    try:
        _, layers = find_layer_list(model)
    except ValueError:
        raise UserError(f"train.cache_frozen_trunk=true: {type(model).__name__} has no list of blocks to cache") from None
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

    def __init__(self, model: nn.Module, mask_key: str | None = None,
                 row_length: Callable[[dict], int | None] | None = None):
        """``mask_key``: the batch's mask of real positions (None: rows have none); ``row_length``
        orders the rows longest first so the build's batches pad little (None: keep the order)."""
        self.model, self.mask_key = model, mask_key
        self.row_length = row_length or (lambda row: None)
        self.k = frozen_prefix(model)
        self.layers = find_layer_list(model)[1]
        self.states: list[torch.Tensor] = []
        self.tuple_output = False
        self.masked = True

    @torch.inference_mode()
    def build(self, rows: Sequence[dict], collate, batch_size: int = 64,
              forward: Callable[[nn.Module, dict], Any] | None = None) -> None:
        """Run the frozen trunk once over ``rows`` (eval mode), longest first to limit padding.

        ``forward(model, batch)`` calls the model (default ``model(**batch)``)."""
        forward = forward or (lambda model, batch: model(**batch))
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(rows)), key=lambda i: -(self.row_length(rows[i]) or 0))
        self.states = [torch.empty(0)] * len(rows)

        def stop(module, args, output):
            raise _Stop(output)

        handle = self.layers[self.k - 1].register_forward_hook(stop)
        device = next(self.model.parameters()).device
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = collate([{k: v for k, v in rows[i].items() if k not in ("labels", "row_index")}
                                 for i in idx])
                batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                try:
                    forward(self.model, batch)
                except _Stop as s:
                    self._store(idx, s.output, batch.get(self.mask_key) if self.mask_key else None)
        finally:
            handle.remove()
            self.model.train(was_training)

    def _store(self, idx: list[int], output: Any, mask: torch.Tensor | None) -> None:
        self.tuple_output = not isinstance(output, torch.Tensor)
        hidden = _hidden(output)
        self.masked = mask is not None
        for j, i in enumerate(idx):
            self.states[i] = (hidden[j][mask[j].bool()] if mask is not None else hidden[j]).clone()

    def _padded(self, indices: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Cached states placed at the attention mask's positions (either padding side), or stacked."""
        if mask is None or not self.masked:
            return torch.stack([self.states[i] for i in indices.tolist()])
        first = self.states[int(indices[0])]
        out = first.new_zeros(mask.shape[0], mask.shape[1], first.shape[-1])
        for j, i in enumerate(indices.tolist()):
            out[j][mask[j].bool()] = self.states[i]
        return out

    @contextmanager
    def active(self, indices: torch.Tensor, mask: torch.Tensor | None = None) -> Iterator[None]:
        """Within this context the first ``k`` blocks are replaced by the cached states (placed at
        ``mask``'s real positions when the cache keeps positions)."""
        cached = self._padded(indices.cpu(), mask).to(mask.device if mask is not None else indices.device)
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


class CachedTrunkStep(WrappedStep):
    """A training step that runs only the trainable top: wraps another step (default behaviour
    for everything but the forward pass, which sees the cached trunk).

    ``forward(model, batch)`` is how the inner step calls the model; rows gain a ``row_index``.
    """

    def __init__(self, inner: Any, collate, batch_size: int, *, log: Callable[[str], None] = print) -> None:
        super().__init__(inner)
        self.collate, self.batch_size, self.log = collate, batch_size, log
        self.cache: FrozenTrunkCache | None = None

    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]:
        t0 = time.perf_counter()
        self.mask_key = getattr(self.inner, "mask_key", None)
        self.cache = FrozenTrunkCache(model, self.mask_key, self.inner.row_length)
        self.cache.build(rows, self.collate, self.batch_size, forward=getattr(self.inner, "forward", None))
        self.log(f"cached the frozen trunk (layers 0-{self.cache.k - 1}) for {len(rows)} rows "
                 f"in {time.perf_counter() - t0:.1f} s")
        return [dict(r, row_index=i) for i, r in enumerate(self.inner.prepare(model, rows))]

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        assert self.cache is not None, "prepare() builds the cache before the first step"
        with self.cache.active(batch["row_index"], batch.get(self.mask_key) if self.mask_key else None):
            return self.inner.loss(model, batch)

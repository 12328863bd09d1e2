"""Mixed-adapter batches: every row of one batch runs through its own adapter of a shared base.

A server holding several LoRA adapters over one base would otherwise run one batch per adapter.
Here each wrapped base module is replaced, for the duration of a batch, by a :class:`RowRouter`
that splits the batch by rows and sends each group of rows through the wrapper of the adapter
that row asked for (or through the bare base module for rows that asked for the base, or whose
adapter does not wrap that module). The outputs are put back in row order, so the result of a
row equals what a batch of that adapter alone gives (up to float rounding of the smaller matmuls).
This is the same idea as multi-LoRA serving (S-LoRA, Sheng et al., 2023; Punica, Chen et al.,
2023), done with plain indexing instead of custom kernels.

Only adapters made of nothing but wrapper modules can mix (LoRA with DoRA/rsLoRA, IA3): forward
hooks (parallel adapters) and base tensors trained in place (BitFit's biases, the LayerNorms of
serial adapters, trained heads) act on the whole batch. Two mixed adapters may not wrap nested
modules (one a submodule of the other's), since an inner router would see only the rows the outer
one passed down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tunelab.adapters.capture import Adapter


class RowRouter(nn.Module):
    """Stands in for one base module: rows ``rows[k]`` of the batch go through ``branches[k]``.

    The branches are kept in a plain list (not registered as submodules), so the model's module
    tree keeps the base's names while the router is in place.
    """

    def __init__(self, branches: Sequence[nn.Module], rows: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self._branches = list(branches)
        self._rows = list(rows)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out: torch.Tensor | None = None
        for branch, rows in zip(self._branches, self._rows):
            if rows.device != x.device:
                rows = rows.to(x.device)
            y = branch(x.index_select(0, rows), *args, **kwargs)
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out.index_copy_(0, rows, y)
        assert out is not None, "a RowRouter needs at least one branch"
        return out


def why_not_mixable(adapters: Mapping[str, Adapter]) -> str | None:
    """Why these adapters cannot share one batch, or None when they can."""
    for name, adapter in adapters.items():
        if adapter.hooks:
            return f"adapter '{name}' ({'+'.join(adapter.method_names)}) acts through forward hooks"
        if adapter.owned:
            return f"adapter '{name}' ({'+'.join(adapter.method_names)}) trains base tensors in place"
    names = sorted({m for a in adapters.values() for m in a.wrappers})
    for outer, inner in zip(names, names[1:]):
        if inner.startswith(outer + "."):
            return f"modules {outer} and {inner} are both wrapped (nested)"
    return None


def routers(rows: Sequence[str | None], adapters: Mapping[str, Adapter],
            base_modules: Mapping[str, nn.Module]) -> dict[str, RowRouter]:
    """One router per wrapped module name for a batch whose row ``i`` asked for ``rows[i]``
    (an adapter name, or None for the bare base)."""
    groups: dict[str | None, torch.Tensor] = {}
    for key in dict.fromkeys(rows):
        groups[key] = torch.tensor([i for i, r in enumerate(rows) if r == key], dtype=torch.long)
    out: dict[str, RowRouter] = {}
    for module in sorted({m for a in adapters.values() for m in a.wrappers}):
        base = base_modules[module]
        branches, indices = [], []
        for key, index in groups.items():
            wrapper = adapters[key].wrappers.get(module) if key is not None else None
            branches.append(wrapper if wrapper is not None else base)
            indices.append(index)
        out[module] = RowRouter(branches, indices)
    return out

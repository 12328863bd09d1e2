"""Sentence embeddings from a transformer trunk: pooling, normalisation, and GradCache.

A text's embedding is its trunk's last hidden states pooled over the real (unpadded) tokens:

* ``mean`` -- the average of the token states (Reimers & Gurevych, 2019, Sentence-BERT, sec. 3;
  what all-MiniLM-L6-v2 uses);
* ``cls`` -- the first token's state (BERT's ``[CLS]``; Devlin et al., 2019);
* ``last`` -- the last real token's state, for causal trunks where only the last position has
  read the whole text (Neelakantan et al., 2022; Wang et al., 2024, E5-mistral).

and, with ``normalize``, scaled to unit L2 norm (cosine similarity is then a dot product).
Virtual-token methods (prompt/prefix tuning, P-tuning v2) drop their virtual positions from
``last_hidden_state`` before pooling sees it (:mod:`tunelab.methods.prompt`), so the mask of the
real tokens stays the right one.

A sentence-transformers folder (``modules.json`` + ``1_Pooling/config.json``, like the built-in
``minilm``) says its own pooling and whether it normalises; :func:`st_settings` reads both so such a
folder loads as a base that embeds exactly as sentence-transformers does.

GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", sec. 3.2): a contrastive loss couples every row of a batch, so its memory grows with the
batch -- and the batch is the number of negatives. :func:`cached_backward` splits the work: (1)
embed every chunk of ``chunk`` texts without a graph, (2) compute the loss on those embeddings as
leaf tensors and get ``d loss / d embedding``, (3) embed each chunk again with a graph and
back-propagate ``embedding . grad`` -- by the chain rule the same parameter gradient as one
backward through the whole batch, with the activations of one chunk alive at a time. The RNG
state of each chunk's first pass is replayed in the second so dropout masks agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tunelab.data.preference_tokens import last_real_index
from tunelab.errors import UserError

POOLINGS = ("mean", "cls", "last")

#: sentence-transformers pooling flags -> our pooling names.
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
               "pooling_mode_lasttoken": "last"}
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING_TYPE = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[B, L, H]`` token states -> ``[B, H]`` over the real positions of a right-padded ``mask``."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_real_index(mask)]
    raise ValueError(f"unknown pooling {pooling!r}; accepted: {', '.join(POOLINGS)}")


def embed(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, pooling: str,
          normalize: bool, causal: bool) -> torch.Tensor:
    """Pooled (and optionally unit-norm) embeddings of one padded batch of texts."""
    extra = {"use_cache": False} if causal else {}
    hidden = model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
    out = pool(hidden, attention_mask, pooling)
    return F.normalize(out, p=2, dim=-1) if normalize else out


# ---------------------------------------------------------------------------- sentence-transformers folders

def st_modules(folder: str | Path) -> list[dict[str, Any]] | None:
    """The ``modules.json`` entries of a sentence-transformers folder (None: not such a folder)."""
    path = Path(folder) / "modules.json"
    if not path.is_file():
        return None
    try:
        modules = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(modules, list):
        raise UserError(f"{path} is not a list of sentence-transformers modules")
    return modules


def st_transformer_dir(folder: str | Path) -> Path:
    """Where the Hugging Face model of a sentence-transformers folder is (its Transformer module)."""
    modules = st_modules(folder) or []
    for module in modules:
        if module.get("type") == _ST_TRANSFORMER:
            return Path(folder) / module.get("path", "")
    return Path(folder)


def st_root(model_dir: str | Path) -> Path | None:
    """The sentence-transformers folder a model folder belongs to: itself, or its parent when the
    parent's Transformer module lives in it (the older ``0_Transformer/`` layout); else None."""
    here = Path(model_dir)
    if (here / "modules.json").is_file():
        return here
    parent = here.parent
    if st_modules(parent) is not None and st_transformer_dir(parent).resolve() == here.resolve():
        return parent
    return None


def st_settings(folder: str | Path) -> tuple[str | None, bool | None]:
    """(pooling, normalize) a sentence-transformers folder declares; (None, None) for a plain model.

    Modules other than Transformer, Pooling and Normalize (Dense projections, ...) are refused in
    one line: an embedding without them would not be the folder's embedding.
    """
    root = st_root(folder)
    if root is None:
        return None, None
    folder, modules = root, st_modules(root) or []
    pooling, normalize = None, False
    for module in modules:
        kind = module.get("type", "")
        if kind == _ST_POOLING_TYPE:
            pooling = _st_pooling(Path(folder) / module.get("path", ""))
        elif kind == _ST_NORMALIZE:
            normalize = True
        elif kind != _ST_TRANSFORMER:
            raise UserError(f"sentence-transformers folder {folder} has a {kind.rsplit('.', 1)[-1]} module; "
                            "tunelab reads folders made of Transformer, Pooling and Normalize modules")
    return pooling, normalize


def _st_pooling(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the pooling config {folder / 'config.json'}: {e}") from None
    on = [name for name, value in config.items() if name.startswith("pooling_mode") and value]
    if len(on) != 1 or on[0] not in _ST_POOLING:
        raise UserError(f"{folder / 'config.json'} pools with {', '.join(on) or 'nothing'}; tunelab pools with "
                        f"one of {', '.join(_ST_POOLING)}")
    return _ST_POOLING[on[0]]


def st_pooling_config(pooling: str, dimension: int) -> dict[str, Any]:
    """The ``1_Pooling/config.json`` of a sentence-transformers export."""
    config = {"word_embedding_dimension": dimension, "pooling_mode_cls_token": False,
              "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
              "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
              "pooling_mode_lasttoken": False, "include_prompt": True}
    flag = next(k for k, v in _ST_POOLING.items() if v == pooling)
    config[flag] = True
    return config


# ---------------------------------------------------------------------------- GradCache

def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk cut from a padded batch without its all-padding columns (less work, same states)."""
    width = max(int(mask.sum(1).max()), 1)
    return ids[:, :width], mask[:, :width]


def cached_backward(embed_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    columns: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    loss_fn: Callable[[list[torch.Tensor]], torch.Tensor], chunk: int,
                    backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """GradCache (module docstring): the loss of ``loss_fn(embeddings per column)``, back-propagated
    through ``embed_fn`` one chunk of ``chunk`` rows at a time via ``backward``; returns the loss."""
    states, reps = [], []
    with torch.no_grad():
        for ids, mask in columns:
            parts = []
            for piece in chunks(ids.shape[0], chunk):
                states.append(_rng_state(ids.device))
                parts.append(embed_fn(*_trim(ids[piece], mask[piece])))
            reps.append(torch.cat(parts).detach().requires_grad_())
    loss = loss_fn(reps)
    grads = torch.autograd.grad(loss, reps)
    at = 0
    for (ids, mask), grad in zip(columns, grads):
        for piece in chunks(ids.shape[0], chunk):
            with _replayed(states[at], ids.device):
                out = embed_fn(*_trim(ids[piece], mask[piece]))
            backward((out * grad[piece]).sum())
            at += 1
    return loss.detach()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


class _replayed:
    """Run a block with the RNG as it was (``state``), leaving the RNG as it was before the block."""

    def __init__(self, state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
        self.state, self.device = state, device

    def __enter__(self) -> None:
        self.saved = _rng_state(self.device)
        torch.set_rng_state(self.state[0])
        if self.state[1] is not None:
            torch.cuda.set_rng_state(self.state[1], self.device)

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.saved[0])
        if self.saved[1] is not None:
            torch.cuda.set_rng_state(self.saved[1], self.device)

"""Key/value prefixes in every attention layer: prefix tuning and P-tuning v2 (two registry entries).

Both prepend ``n`` trainable key and value vectors to every self-attention layer, so each token
attends over ``[P_k; K]`` / ``[P_v; V]`` (Li & Liang, 2021, sec. 4.2: ``h_i = P_theta[i, :]`` for
prefix positions). The frozen model never sees prefix *tokens*: only their activations.

**Prefix tuning** -- Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"
(ACL 2021, arXiv:2101.00190). Optimising ``P_theta`` directly was unstable (sec. 4.3), so it is
reparametrised by a small MLP applied to a smaller matrix ``P'_theta``::

    P_theta[i, :] = MLP_theta(P'_theta[i, :]),  MLP = Linear(d, projection_size) -> tanh ->
                                                      Linear(projection_size, layers * 2 * d)

with ``d`` the width of one layer's keys (``hidden_size``; ``num_key_value_heads * head_dim`` under
grouped-query attention, as peft does). After training only ``P_theta`` is needed (sec. 4.3: "the
reparametrization can be dropped"): :meth:`KeyValuePrefix.tunelab_finalize` computes it once and
replaces the MLP and ``P'`` by the table, which is what the run directory saves.

**P-tuning v2** -- Liu et al., 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning
Universally Across Scales and Tasks" (ACL 2022, arXiv:2110.07602): the same deep prompts in every
layer, trained directly without the reparametrisation (sec. 3.3: it helps some tasks and hurts
others), initialised like their code, ``N(0, 1)``.

The prefix table ``prefix_table`` has shape ``(n, layers * 2 * d)``: row ``i`` is virtual token
``i``; columns are ordered (layer, key/value, head, head_dim) -- peft's layout, so a table exports
as peft's ``prompt_embeddings`` unchanged. ``prefix_dropout`` (the P-tuning v2 code applies dropout
to the prefix; 0 disables it) drops prefix entries independently per example while training.

The prefixes enter through the attention cache (a transformers ``Cache``; see
:mod:`tunelab.methods.prompt` for the hooks, masks and positions): a fresh forward call gets a
``DynamicCache`` already holding ``n`` keys/values per layer (or, under ``generate()``, the empty
cache it passes is filled), so BERT's encoder and Llama's decoder concatenate the prefix with
their own keys/values, and a growing generation cache keeps it at the front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.base import MethodConfig, MethodSpec
from tunelab.methods.prompt import VIRTUAL_TOKENS_NOT_SWAPPABLE, VirtualTokenOptions, VirtualTokens, backbone_of
from tunelab.models.layers import find_layer_list


class _PrefixOptions(VirtualTokenOptions):
    prefix_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on the prefix keys/values while training (0 disables it)."
    )


class PrefixTuningConfig(_PrefixOptions):
    """Li & Liang (2021): per-layer key/value prefixes produced by an MLP from a small embedding.

    Learning rate: Adam moves every weight of the MLP's output layer by about ``lr`` per step, so a
    prefix entry can move by up to ``projection_size * lr`` -- hundreds of times faster than a
    directly trained table. Keep ``train.lr`` near 1e-3 or below (Li & Liang use 5e-5 with GPT-2);
    at 5e-3 the prefix grows until attention sees only it and every input gets the same output.
    The task head then wants its own, larger ``train.head_lr``.
    """

    name: Literal["prefix_tuning"] = Field(
        "prefix_tuning", description="Method name: MLP-reparametrised key/value prefixes in every layer."
    )
    projection_size: int = Field(
        512, ge=1, description="Hidden width of the reparametrisation MLP (Li & Liang's code uses 512)."
    )


class PTuningV2Config(_PrefixOptions):
    """Liu et al. (2022): per-layer key/value prefixes trained directly (no reparametrisation)."""

    name: Literal["ptuning_v2"] = Field(
        "ptuning_v2", description="Method name: deep prompts, a trainable key/value prefix table in every layer."
    )


@dataclass(frozen=True)
class KVGeometry:
    """Shape of one layer's keys: ``layers`` x (``kv_heads`` x ``head_dim``)."""

    layers: int
    kv_heads: int
    head_dim: int

    @property
    def width(self) -> int:
        """``d``: the width of one layer's keys (= values)."""
        return self.kv_heads * self.head_dim

    @classmethod
    def of(cls, model: nn.Module, method: str) -> KVGeometry:
        """Read layers, key/value heads and head size from the model config (GQA aware)."""
        config = getattr(model, "config", None)
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        try:
            layers, heads, hidden = config.num_hidden_layers, config.num_attention_heads, config.hidden_size
        except AttributeError:
            raise UserError(f"{method}: cannot read num_hidden_layers / num_attention_heads / hidden_size "
                            f"from the config of {type(model).__name__}") from None
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        try:
            found = len(find_layer_list(model)[1])
        except ValueError:
            found = layers
        if found != layers:
            raise UserError(f"{method}: config says {layers} layers but {type(model).__name__} has {found}")
        return cls(layers, kv_heads, head_dim)


class KeyValuePrefix(VirtualTokens):
    """Per-layer key/value prefixes, from ``prefix_table`` or from ``prefix_mlp(prefix_latent)``.

    ``projection_size=None`` gives P-tuning v2's direct table; an int gives Li & Liang's MLP, which
    :meth:`tunelab_finalize` folds into a table.
    """

    needs = "past_key_values"

    def __init__(self, method: str, num_virtual_tokens: int, geometry: KVGeometry,
                 projection_size: int | None, dropout: float, *, device=None, dtype=None) -> None:
        super().__init__(num_virtual_tokens)
        self.method = method
        self.geometry = geometry
        self.prefix_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        n, d, out = num_virtual_tokens, geometry.width, geometry.layers * 2 * geometry.width
        factory = {"device": device, "dtype": dtype}
        self.prefix_table: nn.Parameter | None = None
        self.prefix_latent: nn.Parameter | None = None
        self.prefix_mlp: nn.Sequential | None = None
        if projection_size is None:
            # Deep prompts trained directly, N(0, 1) like the P-tuning v2 code's nn.Embedding.
            self.prefix_table = nn.Parameter(torch.randn(n, out, **factory))
        else:
            # P'_theta, N(0, 1) like an nn.Embedding; the MLP has PyTorch's default Linear init.
            self.prefix_latent = nn.Parameter(torch.randn(n, d, **factory))
            self.prefix_mlp = nn.Sequential(
                nn.Linear(d, projection_size, **factory), nn.Tanh(), nn.Linear(projection_size, out, **factory)
            )

    def table(self) -> torch.Tensor:
        """``P_theta``: ``(n, layers * 2 * d)``, computed through the MLP until finalized."""
        if self.prefix_mlp is not None:
            return self.prefix_mlp(self.prefix_latent)
        assert self.prefix_table is not None
        return self.prefix_table

    def key_values(self, batch: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, keys and values of shape ``(batch, kv_heads, n, head_dim)``."""
        g, n = self.geometry, self.num_virtual_tokens
        table = self.table().to(dtype).unsqueeze(0).expand(batch, -1, -1)
        table = self.prefix_dropout(table)  # after expanding: an independent mask per example
        kv = table.view(batch, n, g.layers, 2, g.kv_heads, g.head_dim).permute(2, 3, 0, 4, 1, 5)
        return [(kv[layer, 0], kv[layer, 1]) for layer in range(g.layers)]

    def inject(self, backbone: nn.Module, kwargs: dict[str, Any], batch: int) -> None:
        from transformers import DynamicCache

        cache = kwargs.get("past_key_values")
        if cache is None:
            cache = DynamicCache()
        weight = backbone.get_input_embeddings().weight
        dtype = weight.dtype
        if torch.is_autocast_enabled(weight.device.type):  # keys/values come out of autocast linears
            dtype = torch.get_autocast_dtype(weight.device.type)
        for layer, (keys, values) in enumerate(self.key_values(batch, dtype)):
            cache.update(keys, values, layer)
        kwargs["past_key_values"] = cache

    @torch.no_grad()
    def tunelab_finalize(self) -> None:
        """Replace the reparametrisation by the prefix table it computes (Li & Liang, sec. 4.3).

        The table stays trainable so that it is what ``trainable_state`` saves; a second call (or a
        P-tuning v2 prefix) does nothing.
        """
        if self.prefix_mlp is None:
            return
        table = self.prefix_mlp(self.prefix_latent).detach().clone()
        self.prefix_mlp = None
        self.prefix_latent = None
        self.prefix_table = nn.Parameter(table, requires_grad=True)

    def extra_repr(self) -> str:
        g = self.geometry
        kind = "table" if self.prefix_mlp is None else f"mlp(projection={self.prefix_mlp[0].out_features})"
        return (f"num_virtual_tokens={self.num_virtual_tokens}, layers={g.layers}, kv_heads={g.kv_heads}, "
                f"head_dim={g.head_dim}, {kind}")


def _apply(model: nn.Module, cfg: PrefixTuningConfig | PTuningV2Config, projection_size: int | None) -> None:
    """Build the prefix on the embedding weight's device and dtype, attach it, train all of it."""
    weight = backbone_of(model).get_input_embeddings().weight
    geometry = KVGeometry.of(model, cfg.name)
    prefix = KeyValuePrefix(cfg.name, cfg.num_virtual_tokens, geometry, projection_size, cfg.prefix_dropout,
                            device=weight.device, dtype=weight.dtype)
    prefix.attach(model)
    for p in prefix.parameters():
        p.requires_grad_(True)


def apply_prefix_tuning(model: nn.Module, cfg: MethodConfig) -> None:
    """Prefix tuning: an MLP-reparametrised prefix; only the prefix latent and MLP train."""
    assert isinstance(cfg, PrefixTuningConfig)
    _apply(model, cfg, cfg.projection_size)


def apply_ptuning_v2(model: nn.Module, cfg: MethodConfig) -> None:
    """P-tuning v2: a directly trained prefix table; only the table trains."""
    assert isinstance(cfg, PTuningV2Config)
    _apply(model, cfg, None)


SPEC_PREFIX = MethodSpec(
    name="prefix_tuning",
    config_cls=PrefixTuningConfig,
    apply=apply_prefix_tuning,
    description="Prefix tuning: key/value prefixes in every layer from an MLP, folded into a table after training.",
    paper="Li & Liang, 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation, arXiv:2101.00190",
    virtual_tokens=True,
    why_not_swappable=VIRTUAL_TOKENS_NOT_SWAPPABLE,
    peft_type="PREFIX_TUNING",
)

SPEC_PTUNING_V2 = MethodSpec(
    name="ptuning_v2",
    config_cls=PTuningV2Config,
    apply=apply_ptuning_v2,
    description="P-tuning v2: deep prompts, a directly trained key/value prefix table in every layer.",
    paper="Liu et al., 2022, P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally "
          "Across Scales and Tasks, arXiv:2110.07602",
    virtual_tokens=True,
    why_not_swappable=VIRTUAL_TOKENS_NOT_SWAPPABLE,
    peft_type="PREFIX_TUNING",
)

SPECS = [SPEC_PREFIX, SPEC_PTUNING_V2]

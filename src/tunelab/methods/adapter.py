"""Bottleneck adapters: serial (Houlsby) and parallel (He et al.), two registry entries.

**Serial** -- Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP" (ICML 2019,
arXiv:1902.00751). A small bottleneck MLP with an internal skip connection is inserted after the
output projection of a sublayer, before the block's residual add (and LayerNorm), as in Fig. 2::

    z = proj(x)
    y = z + s * W_up act(W_down z + b_down) + s * b_up        # adapter(z), sec. 2.1

**Parallel** -- He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning"
(ICLR 2022, arXiv:2110.04366), eq. 10 / Fig. 3b ("parallel adapter"): the adapter reads the
*input* ``x`` of the sublayer and its scaled output is added to the sublayer's output ``f(x)``::

    h = f(x) + s * W_up act(W_down x + b_down) + s * b_up      # s = 4 is the paper's choice

Both start as the unadapted model: ``W_down`` is drawn from ``N(0, init_std^2)``, ``W_up`` and both
biases are zero (Houlsby's near-identity initialisation; a zero ``W_up`` makes it exact).

Placement, per transformer block (:func:`tunelab.models.layers.find_layer_list`); the modules are
found by name, the first matching architecture pattern wins (:data:`SUBLAYER_PATTERNS`):

========== ====================================== ====================== ======================
placement  projection wrapped (serial & parallel)  sublayer input (par.)  architecture
========== ====================================== ====================== ======================
attention  ``attention.output.dense``              input of ``attention`` BERT / RoBERTa family
ffn        ``output.dense``                        input of ``intermediate``
attention  ``self_attn.o_proj``                    input of ``self_attn`` Llama / Mistral / Qwen
ffn        ``mlp.down_proj``                       input of ``mlp``
attention  ``attention.out_lin``                   input of ``attention`` DistilBERT
ffn        ``ffn.lin2``                            input of ``ffn``
========== ====================================== ====================== ======================

Both kinds wrap the output projection in place (its own parameters move to ``<proj>.base_layer``;
the adapter's are ``<proj>.adapter_down`` / ``<proj>.adapter_up``). The serial wrapper feeds the
projection's output ``z`` through the adapter; the parallel wrapper adds ``s * adapter(x)`` to it,
where ``x`` -- the hidden states entering the sublayer (residual-stream width, equal to the
projection's output width) -- is captured by a forward pre-hook on the
sublayer's entry module (for BERT's FFN, whose sublayer is the ``intermediate`` + ``output.dense``
pair, that is the tensor entering ``intermediate``; for BERT attention the tensor entering
``attention``). In post-LN encoders (BERT) the projection is followed by dropout and then
``LayerNorm(h + residual)``, so the adapter output enters the block *before* that dropout (identical
in eval mode; Houlsby's reference code applies the adapter after the dropout). In pre-LN decoders
(Llama) the projection's output is the sublayer output that is added to the residual stream.

``train_layer_norm`` (Houlsby sec. 2.1 also trains the layer-normalisation parameters) marks every
LayerNorm / RMSNorm *inside the transformer blocks* trainable (BERT: ``attention.output.LayerNorm``
and ``output.LayerNorm``; Llama: ``input_layernorm`` and ``post_attention_layernorm``); embedding and
final norms stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.base import MethodConfig, MethodSpec
from tunelab.methods.targets import replace_module
from tunelab.models.layers import find_layer_list

Placement = Literal["both", "attention", "ffn"]
Activation = Literal["relu", "gelu", "tanh", "silu"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


DEFAULT_REDUCTION_FACTOR = 16.0
"""Houlsby et al. and He et al. report bottlenecks of hidden/16 and smaller as competitive."""


class _BottleneckOptions(MethodConfig):
    """Options both adapter kinds share: size, activation, scaling, initialisation."""

    bottleneck: int | None = Field(
        None, ge=1, description="Bottleneck width (adapter hidden size); overrides reduction_factor."
    )
    reduction_factor: float | None = Field(
        None, gt=0, description="Bottleneck = hidden size // reduction_factor (default 16 when bottleneck is unset)."
    )
    activation: Activation = Field("relu", description="Non-linearity between down- and up-projection.")
    init_std: float = Field(
        1e-3, ge=0, description="Std of the normal init of the down-projection (up-projection starts at zero)."
    )

    @model_validator(mode="after")
    def _one_size(self) -> _BottleneckOptions:
        """Exactly one of ``bottleneck`` / ``reduction_factor`` may be given."""
        # Both None means the default factor; a saved config round-trips because unset stays None.
        if self.bottleneck is not None and self.reduction_factor is not None:
            raise ValueError("give either bottleneck or reduction_factor, not both")
        return self

    def bottleneck_for(self, hidden: int) -> int:
        """The effective bottleneck width for a sublayer of width ``hidden``."""
        if self.bottleneck is not None:
            return self.bottleneck
        factor = self.reduction_factor or DEFAULT_REDUCTION_FACTOR
        width = int(hidden // factor)
        if width < 1:
            raise UserError(
                f"{self.name}.reduction_factor {factor} leaves no bottleneck for hidden "  # type: ignore[attr-defined]
                f"size {hidden}; use a factor <= {hidden} or set bottleneck"
            )
        return width


class AdapterConfig(_BottleneckOptions):
    """Serial (Houlsby) bottleneck adapters after the attention and/or FFN output projection."""

    name: Literal["adapter"] = Field("adapter", description="Method name: serial bottleneck adapters (Houlsby).")
    placement: Placement = Field(
        "both", description="Where to insert adapters: after the attention output, the FFN output, or both."
    )
    scaling: float = Field(1.0, description="Multiplier s of the adapter branch: y = z + s * adapter(z).")
    train_layer_norm: bool = Field(
        True, description="Also train the LayerNorms inside the transformer blocks (as Houlsby et al. do)."
    )


class ParallelAdapterConfig(_BottleneckOptions):
    """Parallel (He et al.) bottleneck adapters reading the sublayer input, added to its output."""

    name: Literal["parallel_adapter"] = Field(
        "parallel_adapter", description="Method name: parallel bottleneck adapters (He et al., 2022)."
    )
    placement: Placement = Field(
        "ffn", description="Sublayers that get a parallel adapter: attention, ffn (default, as in the paper) or both."
    )
    scaling: float = Field(4.0, description="Multiplier s: h = f(x) + s * adapter(x) (the paper uses 4).")
    train_layer_norm: bool = Field(False, description="Also train the LayerNorms inside the transformer blocks.")


@dataclass(frozen=True)
class SublayerPattern:
    """Where one sublayer lives inside a transformer block (paths relative to the block)."""

    projection: str
    """The output projection (wrapped by both adapter kinds)."""
    entry: str
    """The module whose first input (or ``hidden_states``) is the sublayer input (parallel adapters)."""


SUBLAYER_PATTERNS: dict[str, tuple[SublayerPattern, ...]] = {
    "attention": (
        SublayerPattern("attention.output.dense", "attention"),
        SublayerPattern("self_attn.o_proj", "self_attn"),
        SublayerPattern("attention.out_lin", "attention"),
    ),
    "ffn": (
        SublayerPattern("output.dense", "intermediate"),
        SublayerPattern("mlp.down_proj", "mlp"),
        SublayerPattern("ffn.lin2", "ffn"),
    ),
}


class _AdapterWrapper(nn.Module):
    """A projection ``base_layer`` plus a bottleneck ``adapter_up(act(adapter_down(.)))``.

    The bottleneck has near-identity init (down ~ N(0, init_std^2), up and biases 0), so it outputs
    exactly zero until trained; it is created on the base weight's device and dtype (float32 over a
    4-bit base).
    """

    def __init__(self, base_layer: nn.Module, bottleneck: int, activation: str, init_std: float,
                 scaling: float) -> None:
        super().__init__()
        weight = next(base_layer.parameters())
        # float32 over a 4-bit (QLoRA) base, whose packed weight is uint8
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        width = _features(base_layer, "out_features")
        self.base_layer = base_layer
        self.adapter_down = nn.Linear(width, bottleneck, device=weight.device, dtype=dtype)
        self.adapter_act = ACTIVATIONS[activation]()
        self.adapter_up = nn.Linear(bottleneck, width, device=weight.device, dtype=dtype)
        self.scaling = scaling
        self.reset_adapter_parameters(init_std)

    def reset_adapter_parameters(self, init_std: float) -> None:
        """Down-projection small normal, everything else zero: the branch outputs exactly 0."""
        nn.init.normal_(self.adapter_down.weight, std=init_std)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck branch ``adapter_up(act(adapter_down(x)))`` (unscaled)."""
        return self.adapter_up(self.adapter_act(self.adapter_down(x)))

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable adapter weights and biases."""
        return [*self.adapter_down.parameters(), *self.adapter_up.parameters()]

    @property
    def in_features(self) -> int:
        return _features(self.base_layer, "in_features")

    @property
    def out_features(self) -> int:
        return _features(self.base_layer, "out_features")

    def extra_repr(self) -> str:
        return f"bottleneck={self.adapter_down.out_features}, scaling={self.scaling}"


class SerialAdapter(_AdapterWrapper):
    """Projection followed by a Houlsby adapter: ``z + s * adapter(z)`` with ``z = base_layer(x)``."""

    def __init__(self, base_layer: nn.Module, bottleneck: int, activation: str = "relu",
                 init_std: float = 1e-3, scaling: float = 1.0) -> None:
        super().__init__(base_layer, bottleneck, activation, init_std, scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base_layer(x)
        return z + self.scaling * self.adapter(z)


class ParallelAdapter(_AdapterWrapper):
    """Projection plus a parallel adapter on the *sublayer input*: ``base_layer(x') + s * adapter(x)``.

    ``x`` is handed over by :meth:`capture`, registered as a forward pre-hook on the sublayer's entry
    module; the captured tensor is used by the next call and then dropped.
    """

    def __init__(self, base_layer: nn.Module, bottleneck: int, activation: str = "relu",
                 init_std: float = 1e-3, scaling: float = 4.0) -> None:
        super().__init__(base_layer, bottleneck, activation, init_std, scaling)
        self._sublayer_input: torch.Tensor | None = None

    def capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on the sublayer entry: remember the hidden states entering it."""
        self._sublayer_input = args[0] if args else kwargs.get("hidden_states")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sublayer_input, self._sublayer_input = self._sublayer_input, None
        if sublayer_input is None:
            raise RuntimeError("parallel adapter called without its sublayer input (entry pre-hook did not run)")
        return self.base_layer(x) + self.scaling * self.adapter(sublayer_input)


def _features(module: nn.Module, attr: str) -> int:
    """``in_features`` / ``out_features`` of a linear layer (or of a wrapper exposing them)."""
    value = getattr(module, attr, None)
    if not isinstance(value, int):
        raise UserError(f"adapter: cannot wrap {type(module).__name__}, it has no integer {attr}")
    return value


def _placements(placement: str) -> list[str]:
    return ["attention", "ffn"] if placement == "both" else [placement]


def _has(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
    except AttributeError:
        return False
    return True


def find_sublayer(block: nn.Module, placement: str, method: str = "adapter") -> SublayerPattern:
    """The first :data:`SUBLAYER_PATTERNS` entry for ``placement`` present in ``block``, else a UserError."""
    for pattern in SUBLAYER_PATTERNS[placement]:
        if _has(block, pattern.projection) and _has(block, pattern.entry):
            return pattern
    known = ", ".join(p.projection for p in SUBLAYER_PATTERNS[placement])
    names = [n for n, _ in block.named_modules() if n]
    raise UserError(
        f"{method}: cannot find the {placement} output projection in {type(block).__name__} (looked for "
        f"{known}); its submodules are: {', '.join(names) or '(none)'}"
    )


def _blocks(model: nn.Module, method: str) -> tuple[str, nn.ModuleList]:
    try:
        return find_layer_list(model)
    except ValueError as exc:
        raise UserError(f"{method}: {exc}; bottleneck adapters need a transformer layer list") from exc


def _norm_modules(block: nn.Module) -> list[nn.Module]:
    """LayerNorm / RMSNorm modules inside ``block`` (by type, or a class name ending in ``Norm``)."""
    return [
        m for _, m in block.named_modules()
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or type(m).__name__.lower().endswith(("layernorm", "rmsnorm"))
    ]


def _train(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(True)


def _wrap_blocks(model: nn.Module, cfg: AdapterConfig | ParallelAdapterConfig, wrapper: type[_AdapterWrapper],
                 hook_entry: bool) -> None:
    """Wrap the chosen projection of every block; with ``hook_entry`` the wrapper also reads the
    sublayer's input (parallel adapters). Trains the adapters, plus block norms if asked."""
    _, blocks = _blocks(model, cfg.name)
    for block in blocks:
        patterns = [find_sublayer(block, where, cfg.name) for where in _placements(cfg.placement)]
        for pattern in patterns:  # all found before any is wrapped
            base = block.get_submodule(pattern.projection)
            wrapped = wrapper(base, cfg.bottleneck_for(_features(base, "out_features")),
                              cfg.activation, cfg.init_std, cfg.scaling)
            replace_module(block, pattern.projection, wrapped)
            if hook_entry:
                block.get_submodule(pattern.entry).register_forward_pre_hook(wrapped.capture, with_kwargs=True)
            for p in wrapped.adapter_parameters():
                p.requires_grad_(True)
        if cfg.train_layer_norm:
            for norm in _norm_modules(block):
                _train(norm)


def apply_serial(model: nn.Module, cfg: MethodConfig) -> None:
    """Wrap each chosen output projection in a :class:`SerialAdapter`; train adapters (+ norms)."""
    assert isinstance(cfg, AdapterConfig)
    _wrap_blocks(model, cfg, SerialAdapter, hook_entry=False)


def apply_parallel(model: nn.Module, cfg: MethodConfig) -> None:
    """Wrap each chosen output projection in a :class:`ParallelAdapter` fed by the sublayer input."""
    assert isinstance(cfg, ParallelAdapterConfig)
    _wrap_blocks(model, cfg, ParallelAdapter, hook_entry=True)


def adapter_modules(model: nn.Module) -> dict[str, _AdapterWrapper]:
    """Every serial or parallel adapter wrapper in ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _AdapterWrapper)}


SPEC_SERIAL = MethodSpec(
    name="adapter",
    config_cls=AdapterConfig,
    apply=apply_serial,
    description="Houlsby adapters: bottleneck MLPs with a skip after the attention/FFN output projections.",
    paper="Houlsby et al., 2019, Parameter-Efficient Transfer Learning for NLP, arXiv:1902.00751",
    swappable=True,
    why_not_mergeable="serial bottleneck adapters add a nonlinear module to the forward pass",
)

SPEC_PARALLEL = MethodSpec(
    name="parallel_adapter",
    config_cls=ParallelAdapterConfig,
    apply=apply_parallel,
    description="Parallel adapters: a scaled bottleneck MLP on the sublayer input added to its output.",
    paper="He et al., 2022, Towards a Unified View of Parameter-Efficient Transfer Learning, arXiv:2110.04366",
    swappable=True,
    why_not_mergeable="parallel bottleneck adapters add a nonlinear module to the forward pass",
)

SPECS = [SPEC_SERIAL, SPEC_PARALLEL]

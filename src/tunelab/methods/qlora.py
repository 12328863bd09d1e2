"""QLoRA: LoRA over a frozen base whose linear weights are stored in 4 bits.

Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (NeurIPS 2023,
arXiv:2305.14314). Each selected base weight ``W`` is stored as 4-bit codes, quantised block-wise:
every ``blocksize`` consecutive values share one absmax constant ``c`` and ``W ~= c * q`` with ``q``
from a 16-value table (sec. 3): NormalFloat4 (``nf4``, quantiles of a standard normal, suited to
normally distributed weights) or a 4-bit float (``fp4``). Double quantisation (sec. 3) stores the
absmax constants themselves in 8 bits, in blocks of 256 with one fp32 constant each (about 0.37
bits per parameter saved at block size 64). With LoRA factors ``L1``, ``L2`` on top, the layer
computes (eq. 5)::

    Y = X doubleDequant(c1, c2, W_4bit) + s X L1 L2

in ``compute_dtype``: the paper uses bfloat16 on GPUs; the default here is float32 because bf16
and fp16 matmuls are very slow on most CPUs. Gradients flow through the dequantised weight into
the LoRA factors (and the input); the 4-bit codes never train. The task head stays in full
precision and trains, as in the paper.

What this module does on top of :mod:`tunelab.methods.lora`:

* :func:`apply` replaces each selected ``nn.Linear`` by a bitsandbytes ``Linear4bit`` whose
  ``Params4bit`` holds the packed codes (``uint8``, two codes per byte) plus the quantisation
  state; the bias stays the same full-precision, frozen parameter, and the fp32 weight is
  released (with a bf16/fp16 ``compute_dtype``, bitsandbytes casts that bias to it on the first
  forward). Then LoRA wraps its targets as usual (:class:`~tunelab.methods.lora.LoRALinear`
  calls the 4-bit layer's forward; DoRA reads its dequantised weight).
* Loading: for tasks whose model the pipeline can stream (causal LMs from a local safetensors
  checkpoint), :func:`load_transforms` hands the pipeline one quantisation per selected linear and
  each is quantised the moment its fp32 weight is read (:mod:`tunelab.models.streamed`), so the
  fp32 weights of the whole model never sit in memory together; :func:`apply` then finds them in
  4 bits and only adds LoRA. Other models are loaded whole and quantised here.
* Quantisation is deterministic, so a run directory stays adapter-only: loading a run rebuilds
  the base, quantises it again to the same codes, then loads the trained tensors.
* Merging into 4-bit weights is refused (it would requantise ``W + dW`` and change the model);
  :func:`unwrap_qlora` dequantises every 4-bit layer to float and merges there exactly, which is
  the export path.

Devices: weights are quantised where they are when the method is applied (tunelab builds models
on the CPU; the engine then moves them, and bitsandbytes moves the packed codes and their state
as they are). Only the CPU path is tested here; the CUDA path (bitsandbytes' CUDA kernels, device
taken from each base weight) is written to the same API but untested, for lack of a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from tunelab.errors import UserError
from tunelab.methods import lora
from tunelab.methods.base import MethodConfig, MethodSpec
from tunelab.methods.lora import ALL_LINEAR, LoRAConfig, check_target_entries, dense_weight, unwrap_lora
from tunelab.methods.targets import excluded_module_names, matches, replace_module

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Block sizes bitsandbytes' 4-bit quantisation accepts."""
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class QLoRAConfig(LoRAConfig):
    """Every LoRA option, plus how the frozen base linears are quantised."""

    name: Literal["qlora"] = Field(  # type: ignore[assignment]
        "qlora", description="Method name: LoRA over a base whose linear weights are stored in 4 bits."
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4",
        description="4-bit data type: 'nf4' NormalFloat (QLoRA sec. 3; quantiles of a normal "
        "distribution, the paper's choice) or 'fp4' (a 4-bit float).",
    )
    double_quant: bool = Field(
        True,
        description="Double quantisation (QLoRA sec. 3): store the per-block absmax constants in 8 bits "
        "too, about 0.37 bits per parameter less.",
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="dtype the 4-bit weights are dequantised to for each matmul. The paper uses "
        "bfloat16 on GPUs; float32 is the default because bf16/fp16 matmuls are very slow on most CPUs.",
    )
    blocksize: int = Field(
        64,
        description="Weights per quantisation block, which share one absmax constant (bitsandbytes' "
        f"and the paper's default 64); one of {', '.join(map(str, BLOCKSIZES))}.",
    )
    quantize_modules: list[str] | str = Field(
        "all-linear",
        description="Linear layers whose weights are stored in 4 bits: 'all-linear' (default; every "
        "linear layer outside the task head and lm_head, as in the paper), or last-name components / "
        "'re:<regex>' entries matched like target_modules. Only nn.Linear layers can be quantised.",
    )

    @field_validator("blocksize")
    @classmethod
    def _check_blocksize(cls, value: int) -> int:
        """Only the block sizes bitsandbytes implements."""
        if value not in BLOCKSIZES:
            raise ValueError(f"blocksize must be one of {', '.join(map(str, BLOCKSIZES))}, got {value}")
        return value

    @field_validator("quantize_modules")
    @classmethod
    def _check_quantize_modules(cls, value: list[str] | str) -> list[str] | str:
        """Reject an empty list and ``re:`` entries that do not compile."""
        return check_target_entries(value, "quantize_modules")

    def quantize_list(self) -> list[str]:
        """``quantize_modules`` as a list (a single string becomes one entry)."""
        return [self.quantize_modules] if isinstance(self.quantize_modules, str) else list(self.quantize_modules)


def _bitsandbytes() -> Any:
    """Import bitsandbytes on first use: it takes seconds, and only this method needs it."""
    # On AVX512-bf16 CPUs, bitsandbytes 0.50 logs at import that an optional hub kernel for its
    # bf16 inference path is missing; quantize_linear switches that path off, so it is noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as exc:
        raise UserError(f"method qlora needs bitsandbytes (pip install 'bitsandbytes>=0.45'): {exc}") from None
    return bitsandbytes


def quantize_linear(
    linear: nn.Linear, *, quant_type: str, double_quant: bool, blocksize: int, compute_dtype: torch.dtype
) -> nn.Linear:
    """A bitsandbytes ``Linear4bit`` holding ``linear``'s weight in 4 bits, on the weight's device.

    The weight is quantised with ``bitsandbytes.functional.quantize_4bit`` (its CUDA kernel for a
    CUDA weight, untested here; its CPU kernel otherwise); the new layer is built on the meta
    device so no throw-away fp32 weight is allocated. The bias is the very same full-precision
    parameter (frozen as it was). Nothing keeps the fp32 weight alive once ``linear`` is dropped.
    """
    bnb = _bitsandbytes()
    packed, state = bnb.functional.quantize_4bit(
        linear.weight.detach().contiguous(), blocksize=blocksize, compress_statistics=double_quant,
        quant_type=quant_type,
    )
    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=False, compute_dtype=compute_dtype,
        compress_statistics=double_quant, quant_type=quant_type, device="meta",
    )
    layer.weight = bnb.nn.Params4bit(
        packed, requires_grad=False, quant_state=state, blocksize=blocksize, compress_statistics=double_quant,
        quant_type=quant_type, bnb_quantized=True, module=layer,
    )
    layer.quant_state = state
    layer.bias = linear.bias
    # On AVX512-bf16 CPUs bitsandbytes would repack the codes into a CPU-only layout on the first
    # eval-mode forward and from then on multiply in bfloat16 whatever compute_dtype says. Keeping
    # the standard layout keeps compute_dtype honoured, evaluation numerically equal to training,
    # and the codes valid for dequantize_4bit (DoRA norms, unwrap_qlora).
    layer.support_avx512bf16_for_cpu = False
    layer.train(linear.training)
    return layer


def dequantize_linear(layer: nn.Linear) -> nn.Linear:
    """A plain ``nn.Linear`` with the dequantised weight (the matrix the 4-bit layer multiplies by)."""
    weight = dense_weight(layer).detach()
    linear = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.bias = layer.bias
    return linear.train(layer.training)


def quantized_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every bitsandbytes ``Linear4bit`` in ``model`` by qualified name (inside LoRA wrappers too)."""
    bnb = _bitsandbytes()
    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def dequantized_lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """For a merged export: turn every 4-bit base linear back into a float32 ``nn.Linear`` (in
    place), so the LoRA wrappers merge into float weights exactly; the merged model is a plain fp32
    model. Returns the LoRA wrappers, as :func:`tunelab.methods.lora.lora_modules`."""
    for name, module in quantized_linears(model).items():
        replace_module(model, name, dequantize_linear(module).float())
    return lora.lora_modules(model)


def quantized_bytes(layer: nn.Linear) -> int:
    """Bytes a 4-bit linear holds for its weight: the packed codes, the per-block absmax (8-bit
    with double quantisation) and the rest of its quantisation state (second-level absmax and
    offset, both code tables). The bias is not counted."""
    state = layer.weight.quant_state
    tensors = [layer.weight.data, state.absmax, state.code]
    if state.nested:
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    return sum(t.numel() * t.element_size() for t in tensors)


def find_quantize_targets(model: nn.Module, cfg: QLoRAConfig) -> list[str]:
    """Names of the Linear modules ``cfg.quantize_modules`` selects (never the head).

    A selected module that is not an ``nn.Linear``, or a selection of nothing, is a :class:`UserError`.
    """
    excluded = excluded_module_names(model)
    modules = {n: m for n, m in model.named_modules() if n and n not in excluded}
    entries = cfg.quantize_list()
    if [e.lower() for e in entries] == [ALL_LINEAR]:
        chosen = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    else:
        chosen = [n for n in modules if matches(n, entries)]
    for name in chosen:
        if not isinstance(modules[name], nn.Linear):
            raise UserError(
                f"qlora.quantize_modules: '{name}' ({type(modules[name]).__name__}) is not a Linear layer; "
                "only nn.Linear weights can be stored in 4 bits"
            )
    if not chosen:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, nn.Linear)})
        raise UserError(
            f"qlora.quantize_modules {entries} match no Linear module of {type(model).__name__} "
            f"(the task head is never quantised); Linear module names: {', '.join(leaves)}"
        )
    return chosen


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Quantise the selected linears to 4 bits (frozen), then add LoRA on ``target_modules``.

    Both selections are checked before anything changes, so a user error leaves the model intact.
    Trains what LoRA trains (the ``lora_*`` parameters); the head is left to ``apply_methods``.
    """
    assert isinstance(cfg, QLoRAConfig)
    bnb = _bitsandbytes()
    for name, quantize in load_transforms(model, cfg).items():
        if not isinstance(model.get_submodule(name), bnb.nn.Linear4bit):  # not quantised while loading
            replace_module(model, name, quantize(model.get_submodule(name)))
    lora.apply(model, cfg)


def load_transforms(model: nn.Module, cfg: MethodConfig) -> dict[str, Callable[[nn.Module], nn.Module]]:
    """Each linear ``cfg.quantize_modules`` selects -> its quantisation; usable on a model whose weights
    are still on the meta device (the pipeline then quantises each one as soon as it is loaded).
    Both selections are checked first: a user error leaves the model intact."""
    assert isinstance(cfg, QLoRAConfig)
    names = find_quantize_targets(model, cfg)
    lora.find_lora_targets(model, cfg)  # raises on a target that matches nothing, before quantising
    quantize = partial(quantize_linear, quant_type=cfg.quant_type, double_quant=cfg.double_quant,
                       blocksize=cfg.blocksize, compute_dtype=COMPUTE_DTYPES[cfg.compute_dtype])
    return dict.fromkeys(names, quantize)


def unwrap_qlora(model: nn.Module) -> nn.Module:
    """Dequantise every 4-bit linear to a float ``nn.Linear``, then merge and remove the LoRA
    wrappers: a plain model (original parameter names) that computes what the trained QLoRA
    model computes, up to float rounding. This is how a QLoRA result is exported."""
    for name, module in quantized_linears(model).items():
        replace_module(model, name, dequantize_linear(module))
    return unwrap_lora(model)


SPEC = MethodSpec(
    name="qlora",
    config_cls=QLoRAConfig,
    apply=apply,
    description="QLoRA: LoRA over a frozen base whose linear weights are stored in 4-bit NF4 (bitsandbytes).",
    paper="Dettmers et al., 2023, QLoRA: Efficient Finetuning of Quantized LLMs, arXiv:2305.14314",
    wraps_linear=True,
    merge_modules=dequantized_lora_modules,
    load_transforms=load_transforms,
    why_not_swappable="quantises the base weights in place",
)

"""Merged export: fold a run's adapters into the base and save a plain transformers model.

LoRA/DoRA updates and (IA)^3 vectors are linear in the weights, so they fold into the layers they
wrap (:meth:`LoRALinear.merge`, :meth:`IA3Linear.merge`) and the wrappers are removed, leaving the
original module names; ``full``, ``freeze`` and ``bitfit`` already changed the base parameters in
place, so their model is saved as it is. Bottleneck adapters (serial or parallel) put a nonlinear
module in the forward pass, which no weight change reproduces, so they are refused.

The result is a ``save_pretrained`` folder (safetensors weights, ``config.json`` with the label
names in ``id2label``, tokenizer) that ``AutoModelForSequenceClassification.from_pretrained`` loads
without tunelab.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from tunelab.config import RunConfig, validate_config
from tunelab.errors import UserError
from tunelab.interop.folders import check_out_dir, input_folders, open_finished_run, staged_dir
from tunelab.methods.ia3 import ia3_modules
from tunelab.methods.lora import lora_modules
from tunelab.methods.qlora import dequantize_linear, quantized_linears
from tunelab.methods.targets import replace_module, unwrap_all


def _no_wrappers(model: nn.Module) -> dict[str, nn.Module]:
    """Methods that train base parameters directly leave nothing to fold."""
    return {}


def _dequantized_lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """QLoRA: turn every 4-bit base linear back into a float32 ``nn.Linear`` (in place), so its LoRA
    wrappers merge into float weights exactly; the merged model is a plain fp32 model."""
    for name, module in quantized_linears(model).items():
        replace_module(model, name, dequantize_linear(module).float())
    return lora_modules(model)


MERGEABLE: dict[str, Callable[[nn.Module], dict[str, nn.Module]]] = {
    "full": _no_wrappers,
    "freeze": _no_wrappers,
    "bitfit": _no_wrappers,
    "lora": lora_modules,
    "qlora": _dequantized_lora_modules,
    "ia3": ia3_modules,
}
"""Method name -> the wrapper modules it injected (each with ``merge()`` and ``base_layer``)."""

WHY_NOT: dict[str, str] = {
    "adapter": "serial bottleneck adapters add a nonlinear module to the forward pass",
    "parallel_adapter": "parallel bottleneck adapters add a nonlinear module to the forward pass",
}


def check_mergeable(cfg: RunConfig, where: Path) -> None:
    """Refuse, in one line, a run using any method that cannot be folded into the base weights."""
    for method in cfg.methods():
        if method.name not in MERGEABLE:
            why = WHY_NOT.get(method.name, "it does not fold into the base weights")
            raise UserError(f"run {where} uses method '{method.name}', which cannot be merged: {why}; "
                            f"--format merged supports {', '.join(sorted(MERGEABLE))}; the run directory "
                            "itself still works with tunelab eval/predict")


def merge_into_base(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """Fold every wrapper of the run's methods into its base layer and remove it (innermost first)."""
    wrappers: dict[str, nn.Module] = {}
    for method in cfg.methods():
        wrappers.update(MERGEABLE[method.name](model))
    innermost_first = dict(sorted(wrappers.items(), key=lambda item: -item[0].count(".")))
    unwrap_all(model, innermost_first)
    left = [name for name, module in model.named_modules() if hasattr(module, "base_layer")]
    if left:
        raise RuntimeError(f"wrapped modules left after merging: {left[:5]}")
    return model


def export_merged(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write run ``run`` as a plain transformers model folder ``out``; return ``out``."""
    from tunelab.pipeline import load_run

    run_dir = open_finished_run(run)
    cfg = validate_config(run_dir.read_config())
    check_mergeable(cfg, run_dir.path)
    out_path = check_out_dir(out, overwrite=overwrite, protect=input_folders(run_dir, cfg))
    loaded = load_run(str(run_dir.path))
    model = merge_into_base(loaded.model, cfg)
    if loaded.labels is not None:
        model.config.id2label = loaded.labels.id2label
        model.config.label2id = loaded.labels.label2id
    with staged_dir(out_path) as stage:
        model.save_pretrained(stage)
        loaded.tokenizer.save_pretrained(stage)
    return out_path

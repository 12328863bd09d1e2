"""Merged export: fold a run's adapters into the base and save a plain transformers model.

LoRA/DoRA updates and (IA)^3 vectors are linear in the weights, so they fold into the layers they
wrap (:meth:`LoRALinear.merge`, :meth:`IA3Linear.merge`) and the wrappers are removed, leaving the
original module names; ``full``, ``freeze`` and ``bitfit`` already changed the base parameters in
place, so their model is saved as it is. Bottleneck adapters (serial or parallel) put a nonlinear
module in the forward pass, which no weight change reproduces, so they are refused.

Which method is which is read off its spec: :attr:`~tunelab.methods.base.MethodSpec.merge_modules`
lists the wrappers to fold, :attr:`~tunelab.methods.base.MethodSpec.in_place` says there is nothing
to fold, and :attr:`~tunelab.methods.base.MethodSpec.why_not_mergeable` words a refusal.

The result is a ``save_pretrained`` folder (safetensors weights, ``config.json`` with the label
names in ``id2label``, tokenizer) that ``AutoModelForSequenceClassification.from_pretrained`` loads
without tunelab.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tunelab.config import RunConfig, validate_config
from tunelab.errors import UserError
from tunelab.interop.folders import check_out_dir, input_folders, open_finished_run, staged_dir
from tunelab.methods import METHODS, get_method
from tunelab.methods.targets import unwrap_all


def mergeable_methods() -> list[str]:
    """The methods whose runs ``--format merged`` writes (:attr:`MethodSpec.mergeable`), sorted."""
    return sorted(name for name, spec in METHODS.items() if spec.mergeable)


def check_mergeable(cfg: RunConfig, where: Path) -> None:
    """Refuse, in one line, a run using any method that cannot be folded into the base weights."""
    for method in cfg.methods():
        spec = get_method(method.name)
        if not spec.mergeable:
            why = spec.why_not_mergeable or "it does not fold into the base weights"
            raise UserError(f"run {where} uses method '{method.name}', which cannot be merged: {why}; "
                            f"--format merged supports {', '.join(mergeable_methods())}; the run directory "
                            "itself still works with tunelab eval/predict")


def merge_into_base(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """Fold every wrapper of the run's methods into its base layer and remove it (innermost first)."""
    wrappers: dict[str, nn.Module] = {}
    for method in cfg.methods():
        found = get_method(method.name).merge_modules  # None: trained in place, nothing to fold
        if found is not None:
            wrappers.update(found(model))
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


def merged_run_model(run: str | Path, field: str = "model.name_or_path") -> str:
    """A finished causal-LM run (SFT, DPO, PPO, ...) as a plain model folder to start from: its
    merged export, written once into tunelab's cache (``$TUNELAB_CACHE/merged-runs``) and reused
    while the run's ``results.json`` is unchanged. ``field`` names the option in errors."""
    import hashlib

    from tunelab.models.gguf import cache_root
    from tunelab.tasks import TASK_SPECS

    run_dir = open_finished_run(run)
    cfg = validate_config(run_dir.read_config())
    spec = TASK_SPECS[cfg.task.name]
    if not spec.generates_text:
        lms = ", ".join(name for name, s in TASK_SPECS.items() if s.generates_text)
        raise UserError(f"{field}: run {run_dir.path} is a task.name={cfg.task.name} run; a policy to start from "
                        f"must be a causal-LM run (task.name={lms}) or a model")
    check_mergeable(cfg, run_dir.path)
    key = hashlib.sha256(f"{run_dir.path.resolve()}\n{run_dir.results.read_text()}".encode()).hexdigest()[:16]
    out = cache_root() / "merged-runs" / f"{run_dir.path.name}-{key}"
    if not (out / "config.json").is_file():
        export_merged(run_dir.path, out, overwrite=True)
    return str(out)

"""sentence-transformers export: a contrastive run as a folder ``SentenceTransformer(path)`` loads.

The folder is what the sentence-transformers library itself saves (its "modules" layout): the
Hugging Face trunk with the run's adapters merged in (``save_pretrained``: config, safetensors,
tokenizer) at the root as the ``Transformer`` module, ``1_Pooling/config.json`` with the run's
pooling, a ``Normalize`` module when the run normalises, ``sentence_bert_config.json`` with the
run's ``data.max_length`` as ``max_seq_length`` (so texts are truncated the same way) and
``config_sentence_transformers.json`` with the similarity function. Loading it with the library
gives the embeddings ``tunelab embed`` gives (tested to 1e-5).

Methods are merged as for ``--format merged`` (LoRA, DoRA, IA3, full, freeze, BitFit); methods that
do not fold into the weights (bottleneck adapters, virtual tokens) are refused in one line.
The other direction needs no converter: a sentence-transformers folder is a valid
``model.name_or_path`` whose pooling and normalisation the contrastive task reads
(:func:`tunelab.tasks.embedding.st_settings`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.config import validate_config
from tunelab.errors import UserError
from tunelab.interop.folders import check_out_dir, input_folders, open_finished_run, staged_dir
from tunelab.interop.merged import check_mergeable, merge_into_base


def export_sentence_transformers(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write contrastive run ``run`` as a sentence-transformers folder ``out``; return ``out``."""
    from tunelab.pipeline import load_run
    from tunelab.tasks import TASK_SPECS
    from tunelab.tasks.embedding import st_pooling_config

    run_dir = open_finished_run(run)
    cfg = validate_config(run_dir.read_config())
    if not TASK_SPECS[cfg.task.name].embeds_text:
        embedders = ", ".join(name for name, spec in TASK_SPECS.items() if spec.embeds_text)
        raise UserError(f"run {run_dir.path} is a task.name={cfg.task.name} run; --format sentence-transformers "
                        f"writes embedding runs (task.name={embedders})")
    check_mergeable(cfg, run_dir.path)
    out_path = check_out_dir(out, overwrite=overwrite, protect=input_folders(run_dir, cfg))
    loaded = load_run(str(run_dir.path))
    model = merge_into_base(loaded.model, cfg)
    restore_pooler(model, loaded.task.resolve_model(cfg.model.name_or_path))
    dimension = int(model.get_input_embeddings().weight.shape[1])
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if model.tunelab_normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    similarity = getattr(cfg.task, "similarity", "cosine")
    with staged_dir(out_path) as stage:
        model.save_pretrained(stage)
        loaded.processor.save_pretrained(stage)
        _write_json(stage / "modules.json", modules)
        _write_json(stage / "1_Pooling" / "config.json", st_pooling_config(model.tunelab_pooling, dimension))
        if model.tunelab_normalize:
            (stage / "2_Normalize").mkdir()
        _write_json(stage / "sentence_bert_config.json", {"max_seq_length": cfg.data.max_length,
                                                           "do_lower_case": False})
        _write_json(stage / "config_sentence_transformers.json",
                    {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                     "similarity_fn_name": "dot" if similarity == "dot" else "cosine"})
        (stage / "README.md").write_text(
            f"# {run_dir.path.name}\n\nA sentence-transformers model exported by tunelab from the contrastive run "
            f"`{run_dir.path.name}` (base `{cfg.model.name_or_path}`, method "
            f"{', '.join(m.name for m in cfg.methods())}, pooling {model.tunelab_pooling}"
            f"{', normalised' if model.tunelab_normalize else ''}).\n\n```python\nfrom sentence_transformers import "
            "SentenceTransformer\nmodel = SentenceTransformer(\"PATH\")\n"
            "vectors = model.encode([\"some text\"])\n```\n")
    return out_path


def restore_pooler(model, resolved: str) -> None:
    """Put the base's BERT pooler back (training drops it; a sentence embedding never reads it), so the
    folder is complete and loads without "newly initialised weights" warnings."""
    if not hasattr(model, "pooler") or model.pooler is not None:
        return
    from transformers import AutoModel

    from tunelab.models.loading import hub_kwargs

    model.pooler = AutoModel.from_pretrained(resolved, **hub_kwargs(resolved)).pooler


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")

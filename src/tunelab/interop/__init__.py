"""Interoperability: a run directory to and from formats other tools load.

* :func:`to_peft` -- a peft adapter folder (``PeftModel.from_pretrained`` loads it); LoRA (rsLoRA,
  DoRA, rank/alpha patterns), IA3, prompt tuning, prefix tuning and P-tuning v2, the task head in
  ``modules_to_save``.
* :func:`from_peft` -- a peft LoRA/DoRA/IA3/PROMPT_TUNING/PREFIX_TUNING adapter folder becomes a
  tunelab run directory.
* :func:`export_merged` -- adapters folded into the base, saved as a plain transformers model.
* :func:`export_sentence_transformers` -- a contrastive run as a sentence-transformers folder.

peft converters are registered by ``peft_type`` in :data:`tunelab.interop.peft_format.CONVERTERS`;
a method exports to peft when its spec names one (:attr:`tunelab.methods.base.MethodSpec.peft_type`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tunelab.errors import unknown
from tunelab.interop.merged import export_merged
from tunelab.interop.peft_format import CONVERTERS, from_peft, to_peft
from tunelab.interop.sentence_transformers import export_sentence_transformers

EXPORT_FORMATS: dict[str, Callable[..., Path]] = {"peft": to_peft, "merged": export_merged,
                                                  "sentence-transformers": export_sentence_transformers}
"""``tunelab export --format`` name -> writer ``(run, out, *, overwrite) -> out``."""


def export_run(run: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Export run ``run`` in format ``fmt`` to ``out``; an unknown format is a one-line error."""
    if fmt not in EXPORT_FORMATS:
        raise unknown("export format", fmt, EXPORT_FORMATS)
    return EXPORT_FORMATS[fmt](run, out, overwrite=overwrite)


__all__ = ["CONVERTERS", "EXPORT_FORMATS", "export_merged", "export_run", "export_sentence_transformers", "from_peft",
           "to_peft"]

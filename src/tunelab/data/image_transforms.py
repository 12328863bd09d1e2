"""Image preprocessing, augmentation and batching with ``torchvision.transforms.v2``.

* :class:`ImagePreprocessing` is what a model expects (input side, resize, normalisation); it is
  saved next to the weights so ``eval``/``predict`` reproduce training's inputs exactly.
* :class:`ImageAugmentConfig` is the ``augment:`` config section (train only).
* :func:`eval_transform` / :func:`train_transform` build the per-image pipelines.
* :class:`ImageCollator` turns rows into ``pixel_values``/``labels`` and applies MixUp/CutMix.
* :func:`soft_target_loss` is cross-entropy for integer or soft (mixed) targets.

All randomness comes from torch's global RNG (torchvision's v2 transforms draw from it), so the
engine's saved and restored RNG state makes a resumed run see the same augmentations.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from tunelab.data.images import load_image
from tunelab.errors import UserError

#: File name of the saved preprocessing inside a run / model folder.
PREPROCESSING_FILE = "image_preprocessing.json"

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The usual ImageNet evaluation crop ratio: resize the shorter side to size / 0.875, crop size.
CROP_RATIO = 0.875


@dataclass(frozen=True)
class ImagePreprocessing:
    """How images are shaped and normalised for a model.

    ``size`` is the square input side; ``resize`` the shorter side before the centre crop
    (default ``round(size / 0.875)``, the ImageNet convention: 224 -> 256); ``mean``/``std`` are
    per-channel statistics for pixels scaled to [0, 1].
    """

    size: int
    resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise UserError(f"image size must be a positive integer, got {self.size!r}")
        if self.resize is None:
            object.__setattr__(self, "resize", round(self.size / CROP_RATIO))
        if not isinstance(self.resize, int) or self.resize < self.size:
            raise UserError(
                f"image resize ({self.resize!r}) must be an integer >= size ({self.size})"
            )
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if min(self.std) <= 0:
            raise UserError(f"image std values must be > 0, got {list(self.std)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        return {**data, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImagePreprocessing:
        """Build from :meth:`to_dict` output; unknown or missing keys raise :class:`UserError`."""
        known = {"size", "resize", "mean", "std"}
        if not isinstance(data, dict) or "size" not in data or set(data) - known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else []
            raise UserError(
                f"image preprocessing must be an object with keys {sorted(known)} ('size' "
                f"required); got {data!r}" + (f" (unknown: {', '.join(extra)})" if extra else "")
            )
        return cls(**data)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/image_preprocessing.json`` and return its path."""
        path = Path(folder) / PREPROCESSING_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ImagePreprocessing:
        """Read ``folder/image_preprocessing.json``; a missing or malformed file is a UserError."""
        path = Path(folder) / PREPROCESSING_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UserError(f"{path} does not exist; was this folder written by tunelab?") from exc
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(data)


def _triple(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    """Check that ``values`` holds three finite numbers (one per RGB channel)."""
    if (
        isinstance(values, (str, bytes))
        or not isinstance(values, Sequence)
        or len(values) != 3
        or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values)
    ):
        raise UserError(f"image {name} must be three numbers (R, G, B), got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


#: Torchvision's ImageNet models: 224 crop of a 256 resize, ImageNet statistics.
IMAGENET = ImagePreprocessing(224, 256, IMAGENET_MEAN, IMAGENET_STD)


class ImageAugmentConfig(BaseModel):
    """Training-time augmentation of images (applied to the train split only)."""

    model_config = ConfigDict(extra="forbid")

    random_resized_crop: bool = Field(
        False, description="Crop a random area and aspect ratio, then resize to the input size "
        "(Szegedy et al., 2015); off: resize + centre crop as at evaluation."
    )
    crop_scale_min: float = Field(
        0.6, gt=0.0, le=1.0,
        description="Smallest fraction of the image area a random resized crop keeps (max 1.0).",
    )
    horizontal_flip: bool = Field(False, description="Mirror images left-right with p = 0.5.")
    auto_augment: Literal["none", "trivial", "rand"] = Field(
        "none", description="Automatic augmentation policy: 'trivial' = TrivialAugmentWide "
        "(Muller & Hutter, 2021), 'rand' = RandAugment (Cubuk et al., 2020), or 'none'."
    )
    color_jitter: float = Field(
        0.0, ge=0.0, description="Strength of random brightness, contrast and saturation changes "
        "(each factor drawn from [1 - x, 1 + x]); 0 disables."
    )
    random_erasing: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability of erasing a random rectangle after "
        "normalisation (Zhong et al., 2020); 0 disables."
    )
    mixup_alpha: float = Field(
        0.0, ge=0.0, description="MixUp Beta(alpha, alpha) parameter (Zhang et al., 2018): blends "
        "pairs of images and their labels; 0 disables."
    )
    cutmix_alpha: float = Field(
        0.0, ge=0.0, description="CutMix Beta(alpha, alpha) parameter (Yun et al., 2019): pastes "
        "a patch of one image into another, labels mixed by area; 0 disables."
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="Label smoothing epsilon (Szegedy et al., 2016): targets "
        "become (1 - eps) * one_hot + eps / K; 0 <= eps < 1."
    )

    @property
    def batch_mixing(self) -> bool:
        """True when MixUp or CutMix mixes the images of a batch."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def enabled(self) -> bool:
        """True when any augmentation besides label smoothing is on."""
        return (
            self.random_resized_crop
            or self.horizontal_flip
            or self.auto_augment != "none"
            or self.color_jitter > 0
            or self.random_erasing > 0
            or self.batch_mixing
        )


Transform = Callable[[Any], torch.Tensor]


def _v2():
    """torchvision's transforms v2, imported on first use (importing torchvision costs ~170 MB of memory,
    which text runs should not pay)."""
    from torchvision.transforms import v2

    return v2


def _to_float(pre: ImagePreprocessing) -> list[Any]:
    """uint8 [0, 255] -> float32 [0, 1] -> per-channel normalised."""
    v2 = _v2()
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]


def _resize_crop(pre: ImagePreprocessing) -> list[Any]:
    """Resize the shorter side to ``pre.resize``, then crop the centre ``size`` x ``size``."""
    v2 = _v2()
    return [v2.Resize(pre.resize, antialias=True), v2.CenterCrop(pre.size)]


def eval_transform(pre: ImagePreprocessing) -> Transform:
    """Deterministic pipeline: RGB image -> resized, centre-cropped, normalised [3, S, S] float.

    Images smaller than the input (28x28 Fashion-MNIST for a 224 model) are upsampled.
    """
    v2 = _v2()
    return v2.Compose([v2.ToImage(), *_resize_crop(pre), *_to_float(pre)])


def train_transform(pre: ImagePreprocessing, aug: ImageAugmentConfig) -> Transform:
    """Random pipeline for training; equals :func:`eval_transform` when nothing is enabled.

    Geometry and auto-augment run on uint8 tensors (the policies' magnitudes are defined for
    0..255 pixels), colour jitter next, then float conversion, normalisation and random erasing
    last (it fills with zeros = the mean colour once normalised).
    """
    v2 = _v2()
    steps: list[Any] = [v2.ToImage()]
    if aug.random_resized_crop:
        steps.append(
            v2.RandomResizedCrop(pre.size, scale=(aug.crop_scale_min, 1.0), antialias=True)
        )
    else:
        steps.extend(_resize_crop(pre))
    if aug.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.auto_augment == "trivial":
        steps.append(v2.TrivialAugmentWide())
    elif aug.auto_augment == "rand":
        steps.append(v2.RandAugment())
    if aug.color_jitter > 0:
        s = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    steps.extend(_to_float(pre))
    if aug.random_erasing > 0:
        steps.append(v2.RandomErasing(p=aug.random_erasing))
    return v2.Compose(steps)


def batch_mixer(aug: ImageAugmentConfig, num_classes: int) -> Callable[..., Any] | None:
    """MixUp, CutMix, or a random choice of the two per batch; ``None`` when both are off."""
    v2 = _v2()
    mixers: list[Any] = []
    if aug.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
    if aug.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class ImageCollator:
    """Turn rows ``{"image", "label", ...}`` into a batch of tensors.

    ``pixel_values`` is float32 [B, 3, S, S]; ``labels`` is int64 [B] of the rows' encoded ids,
    or float [B, num_classes] soft targets when ``batch_mixing`` turns on MixUp/CutMix (train
    only). Other integer keys (``row_index``) pass through as int64 [B], float keys as float32;
    keys of other types cannot be stacked and are left out.

    ``decode=False`` skips reading the images (``pixel_values`` becomes a [B, 3, 1, 1] placeholder):
    for training steps whose frozen trunk is cached from the first layer on, so the pixels would
    never be looked at.
    """

    def __init__(
        self,
        transform: Transform,
        num_classes: int,
        *,
        batch_mixing: ImageAugmentConfig | None = None,
        with_labels: bool = True,
        decode: bool = True,
    ) -> None:
        self.transform = transform
        self.decode = decode
        self.num_classes = num_classes
        self.with_labels = with_labels
        # mixing needs labels to mix; a label-free (predict) collator never mixes
        mixing = batch_mixing if with_labels else None
        self.mixer = batch_mixer(mixing, num_classes) if mixing is not None else None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = (torch.stack([self.transform(load_image(row["image"])) for row in rows]) if self.decode
                  else torch.zeros(len(rows), 3, 1, 1))
        batch: dict[str, torch.Tensor] = {"pixel_values": pixels.as_subclass(torch.Tensor)}
        if self.with_labels:
            labels = torch.tensor([_label_id(row["label"]) for row in rows], dtype=torch.long)
            if self.mixer is not None:
                mixed, labels = self.mixer(batch["pixel_values"], labels)
                batch["pixel_values"] = mixed.as_subclass(torch.Tensor)
            batch["labels"] = labels
        batch.update(_extra_columns(rows))
        return batch


def _label_id(value: Any) -> int:
    """The encoded integer label of a row (labels are mapped to ids before batching)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"ImageCollator needs integer label ids, got {value!r}; encode labels first"
        )
    return int(value)


def _extra_columns(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the numeric keys besides image/label that every row carries (e.g. ``row_index``)."""
    extras: dict[str, torch.Tensor] = {}
    for key, first in rows[0].items():
        if key in ("image", "label") or not all(key in row for row in rows):
            continue
        if isinstance(first, numbers.Integral):
            extras[key] = torch.tensor([int(row[key]) for row in rows], dtype=torch.long)
        elif isinstance(first, numbers.Real):
            extras[key] = torch.tensor([float(row[key]) for row in rows], dtype=torch.float32)
    return extras


def soft_target_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy for integer labels [B] or soft targets [B, K].

    For soft targets (MixUp/CutMix) smoothing is applied as ``t' = (1 - eps) * t + eps / K``, which
    on one-hot targets is exactly ``F.cross_entropy(..., label_smoothing=eps)`` (Szegedy et al.,
    2016, eq. in sec. 7). The loss is computed in float32 so half-precision logits stay stable.
    """
    logits = logits.float()
    if not labels.is_floating_point():
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if labels.shape != logits.shape:
        raise ValueError(
            f"soft targets {tuple(labels.shape)} must match logits {tuple(logits.shape)}"
        )
    targets = labels.float()
    if label_smoothing > 0:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[-1]
    return F.cross_entropy(logits, targets)

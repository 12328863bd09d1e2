"""Image classification: transfer learning of pretrained CNNs (and Hugging Face image models).

Models: the built-in ``mobilenet-v2`` (torchvision's ImageNet MobileNetV2), any torchvision
classification architecture with a local weights file (``model.name_or_path: weights.pth`` +
``task.architecture: resnet18``), or a Hugging Face image model folder
(``AutoModelForImageClassification``). The classifier's last linear layer is replaced by a fresh
one sized to the classes (Yosinski et al., 2014, "How transferable are features in deep neural
networks?"; Kornblith et al., 2019, "Do Better ImageNet Models Transfer Better?").

Data (:mod:`tunelab.data.images`): a folder of class folders, a csv/jsonl of image paths and
labels, or the built-ins ``fashion_mnist`` and ``digits``. Images become RGB, are resized and
normalised with the model's statistics (saved with the run, so ``predict`` needs nothing else);
training images may be augmented (:mod:`tunelab.data.image_transforms`), with MixUp/CutMix
trained on soft targets.

BatchNorm: a BatchNorm layer whose parameters do not train keeps its running statistics frozen
(eval mode) during training, because only trained tensors are saved with a run; a BatchNorm whose
affine parameters train (full, BitFit, unfrozen blocks) updates and saves its statistics.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tunelab.data.image_transforms import (
    IMAGENET,
    ImageAugmentConfig,
    ImageCollator,
    ImagePreprocessing,
    eval_transform,
    soft_target_loss,
    train_transform,
)
from tunelab.data.images import ImageSplits, load_image_source
from tunelab.data.labels import LabelMap
from tunelab.data.loaders import eval_loader
from tunelab.errors import UserError
from tunelab.models.layers import head_inputs
from tunelab.row_scores import ROWS_KEY, hits
from tunelab.tasks.base import TaskSpec
from tunelab.tasks.common import inference_accelerator, predict_logits
from tunelab.train.step import SupervisedStep
from tunelab.train.trunk_cache import CachedTrunkStep

TORCHVISION_PREFIX = "torchvision:"


class ImageClassificationTaskConfig(BaseModel):
    """``task:`` options of image classification (``task.name: image_classification``)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["image_classification"] = Field(
        "image_classification", description="Image classification with a pretrained CNN or image model.")
    architecture: str | None = Field(
        None, description="torchvision architecture of a weights file in model.name_or_path (e.g. resnet18); "
                          "built-ins know theirs.")
    image_size: int | None = Field(
        None, ge=16, description="Square input side (default: the model's, 224 for ImageNet CNNs).")
    augment: ImageAugmentConfig = Field(
        default_factory=ImageAugmentConfig, description="Training-time augmentation (train split only).")
    confusion_matrix_png: bool = Field(True, description="Save the test confusion matrix as a PNG in the run.")


# ---------------------------------------------------------------------------- models

def torchvision_reference(architecture: str, weights: Path) -> str:
    """The resolved form of a torchvision model: ``torchvision:<arch>:<weights file>``."""
    return f"{TORCHVISION_PREFIX}{architecture}:{weights}"


def build_torchvision(reference: str, num_classes: int) -> nn.Module:
    """A torchvision classifier with its pretrained weights and a fresh ``num_classes`` head."""
    import torchvision

    arch, _, weights = reference[len(TORCHVISION_PREFIX):].partition(":")
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"task.architecture '{arch}' is not a torchvision classification model; accepted: "
                        f"{', '.join(torchvision.models.list_models(module=torchvision.models))}")
    model = torchvision.models.get_model(arch, weights=None)
    try:
        model.load_state_dict(_read_state_dict(Path(weights)), strict=True)
    except RuntimeError as e:  # the file holds another architecture's tensors
        raise UserError(f"weights file {weights} does not fit torchvision's {arch}: "
                        f"{str(e).splitlines()[0]}; set task.architecture to the file's architecture") from None
    name, old = _last_linear(model)
    head = nn.Linear(old.in_features, num_classes)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, head)
    model.tunelab_head_params = [f"{name}.weight", f"{name}.bias"]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        model.tunelab_layer_list = "features"  # the block list freeze / LLRD / the trunk cache use
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"model weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)  # never a pickle of objects
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear line
        raise UserError(f"cannot read weights file {path}: {str(e).splitlines()[0]}") from None


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no linear classifier layer to resize")
    return linears[-1]


def build_hf_image_model(folder: str, labels: LabelMap) -> nn.Module:
    """A Hugging Face image classifier from a local folder with a fresh head for ``labels``."""
    from transformers import AutoModelForImageClassification

    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            folder, num_labels=labels.num_labels, id2label=dict(enumerate(labels.names)),
            label2id={n: i for i, n in enumerate(labels.names)}, ignore_mismatched_sizes=True,
            output_loading_info=True, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load an image classification model from '{folder}': "
                        f"{str(e).splitlines()[0]}") from None
    fresh = set(info["missing_keys"]) | {k for k, *_ in info.get("mismatched_keys", [])}
    model.tunelab_head_params = sorted(fresh)
    return model


def hf_preprocessing(folder: str) -> ImagePreprocessing:
    """Size and normalisation from a Hugging Face folder's image processor config."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError):
        return IMAGENET
    side = _side(getattr(proc, "size", None))
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    return ImagePreprocessing(int(side), None, tuple(mean or IMAGENET.mean), tuple(std or IMAGENET.std))


def _side(size: Any) -> int:
    """The square input side of an image processor's ``size`` (an int, a dict or a SizeDict)."""
    if isinstance(size, int):
        return size
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    return int(get("height") or get("shortest_edge") or 224)


# ---------------------------------------------------------------------------- data

@dataclass
class ImageData:
    """Prepared image data: rows ``{"image", "label": id}`` per split and the label map."""

    rows: dict[str, list[dict[str, Any]]]
    labels: LabelMap
    skipped: dict[str, int] = field(default_factory=dict)


def split_rows(splits: dict[str, list[dict]], validation_ratio: float, test_ratio: float, seed: int
               ) -> dict[str, list[dict]]:
    """Carve missing validation/test splits out of train, stratified by label, seeded."""
    from sklearn.model_selection import train_test_split

    out = dict(splits)
    for name, ratio in (("test", test_ratio), ("validation", validation_ratio)):
        if name in out or ratio <= 0:
            continue
        train = out["train"]
        share = ratio / (1 - (test_ratio if name == "validation" and "test" not in splits else 0))
        labels = [str(r["label"]) for r in train]
        counts = np.unique(labels, return_counts=True)[1]
        stratify = labels if counts.min() >= 2 and int(len(train) * share) >= len(counts) else None
        keep, held = train_test_split(train, test_size=share, random_state=seed, stratify=stratify)
        out["train"], out[name] = keep, held
    return out


# ---------------------------------------------------------------------------- the step

def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers none of whose parameters train: their statistics must stay as loaded."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


class ImageStep(SupervisedStep):
    """Soft-target cross-entropy on the model's logits; frozen BatchNorms stay in eval mode.

    Everything else is the default step's: one micro-batch per batch, images counted, no tokens,
    no length grouping, no extra state."""

    def __init__(self, forward, label_smoothing: float) -> None:
        super().__init__()
        self.forward, self.label_smoothing = forward, label_smoothing
        self.frozen_bn: list[nn.Module] = []

    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]:
        self.frozen_bn = frozen_batchnorms(model)
        return rows

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        for bn in self.frozen_bn:  # model.train() switched them back on; the list is fixed at prepare
            bn.eval()
        return soft_target_loss(self.forward(model, batch), batch["labels"], self.label_smoothing)


def torchvision_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["pixel_values"])


def hf_image_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(pixel_values=batch["pixel_values"]).logits


def logits_fn(model: nn.Module):
    """How to get logits from ``model`` (unwrapped from DDP first): Hugging Face models carry a config."""
    inner = getattr(model, "module", model)
    return hf_image_logits if hasattr(getattr(inner, "config", None), "model_type") else torchvision_logits


# ---------------------------------------------------------------------------- the task

@dataclass
class ImageClassificationTask:
    """See the module docstring."""

    cfg: ImageClassificationTaskConfig

    @property
    def spec(self) -> TaskSpec:
        return IMAGE_CLASSIFICATION

    @property
    def name(self) -> str:
        return self.spec.name

    # ------------------------------------------------------------------ model and inputs
    def resolve_model(self, ref: str) -> str:
        """A built-in alias, a torchvision weights file (+ task.architecture), or an HF folder."""
        from tunelab.assets import builtin_model_path
        from tunelab.models.registry import BUILTIN_MODELS

        entry = BUILTIN_MODELS.get(ref)
        if entry is not None and entry.architecture:
            return torchvision_reference(self.cfg.architecture or entry.architecture, builtin_model_path(ref))
        path = Path(ref).expanduser()
        if path.is_file():
            if not self.cfg.architecture:
                raise UserError(f"model.name_or_path {ref} is a weights file; name its torchvision architecture "
                                "with task.architecture (e.g. resnet18, mobilenet_v2)")
            return torchvision_reference(self.cfg.architecture, path)
        if path.is_dir() and (path / "config.json").is_file():
            return str(path)
        images = ", ".join(a for a, e in BUILTIN_MODELS.items() if e.architecture)
        raise UserError(f"model '{ref}' is not an image model: use a built-in ({images}), a torchvision weights "
                        "file with task.architecture, or a Hugging Face image model folder")

    def load_processor(self, resolved: str) -> ImagePreprocessing:
        base = hf_preprocessing(resolved) if not resolved.startswith(TORCHVISION_PREFIX) else IMAGENET
        if self.cfg.image_size and self.cfg.image_size != base.size:
            return ImagePreprocessing(self.cfg.image_size, None, base.mean, base.std)
        return base

    def build_model(self, resolved: str, labels: LabelMap | None) -> nn.Module:
        if labels is None:
            raise UserError("image classification needs the label map of the run (label_map.json)")
        if resolved.startswith(TORCHVISION_PREFIX):
            return build_torchvision(resolved, labels.num_labels)
        return build_hf_image_model(resolved, labels)

    # ------------------------------------------------------------------ data
    def prepare(self, cfg: Any, processor: ImagePreprocessing) -> ImageData:
        d = cfg.data
        source = read_images(cfg, d.source, d.validation_file, d.test_file)
        splits = split_rows(source.splits, d.validation_ratio, d.test_ratio, d.split_seed)
        if d.max_train_samples:
            splits["train"] = splits["train"][: d.max_train_samples]
        if getattr(d, "max_eval_samples", None):
            splits = {k: (v if k == "train" else v[: d.max_eval_samples]) for k, v in splits.items()}
        names = d.label_names or source.label_names
        labels = LabelMap.from_values([r["label"] for r in splits["train"]], names)
        rows = {split: encode_rows(items, labels, split) for split, items in splits.items()}
        if any(source.skipped.values()):
            counts = ", ".join(f"{n} {s}" for s, n in source.skipped.items() if n)
            print(f"tunelab: skipped {counts} unreadable image(s) (data.skip_bad_images=true)", file=sys.stderr)
        return ImageData(rows, labels, source.skipped)

    def check_methods(self, cfg: Any, methods: Sequence[Any]) -> None:
        virtual = [m.name for m in methods if m.virtual_tokens]
        if virtual:
            raise UserError(f"method '{virtual[0]}' adds virtual tokens to a token sequence; image classification "
                            "has none: use full, freeze, bitfit or lora")

    def collators(self, cfg: Any, processor: ImagePreprocessing, model: nn.Module) -> tuple[Any, Any]:
        k = _num_classes(model)
        aug = self.cfg.augment
        evaluation = ImageCollator(eval_transform(processor), k)
        if self._trunk_cached(cfg) and getattr(model, "tunelab_layer_list", None) == "features":
            # the cached blocks start at the model's first layer: training batches need no pixels
            return ImageCollator(eval_transform(processor), k, decode=False), evaluation
        train = ImageCollator(train_transform(processor, aug), k, batch_mixing=aug if aug.batch_mixing else None)
        return train, evaluation

    def _trunk_cached(self, cfg: Any) -> bool:
        return bool(cfg.train.cache_frozen_trunk) and not self.cfg.augment.enabled

    # ------------------------------------------------------------------ training
    def train_step(self, cfg: Any, model: nn.Module, processor: ImagePreprocessing, log=print) -> Any:
        step = ImageStep(logits_fn(model), self.cfg.augment.label_smoothing)
        if not cfg.train.cache_frozen_trunk:
            return step
        if self.cfg.augment.enabled:
            log("note: train.cache_frozen_trunk is off because augmentation is on (augmented images change "
                "every epoch, so the frozen trunk's outputs cannot be reused)")
            return step
        build = ImageCollator(eval_transform(processor), _num_classes(model))
        return CachedTrunkStep(step, build, cfg.train.eval_batch_size, log=log)

    def distill_outputs(self, model: nn.Module, batch: dict[str, Any], features: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits [B, C], the soft-target cross-entropy ImageStep trains with, the head's input
        features [B, H] when asked); frozen BatchNorms stay in eval mode, as in :class:`ImageStep`."""
        if model.training:
            for bn in frozen_batchnorms(model):
                bn.eval()
        with head_inputs(model, features) as seen:
            logits = logits_fn(model)(model, batch)
        loss = soft_target_loss(logits, batch["labels"], self.cfg.augment.label_smoothing)
        return logits, loss, seen[0] if features else None

    def distill_cacheable(self, cfg: Any) -> bool:
        """Without augmentation a training image is the same tensor every epoch."""
        return not self.cfg.augment.enabled

    def evaluate(self, model: nn.Module, loader, accelerator) -> dict[str, Any]:
        logits, labels = predict_logits(model, loader, accelerator, forward=logits_fn(model))
        return image_metrics(logits, labels.astype(int))

    def baseline(self, *args: Any, **kwargs: Any) -> None:
        """The head starts random: there is no meaningful before-training score."""

    def test_metrics(self, model: nn.Module, data: ImageData, processor: ImagePreprocessing, accelerator, cfg: Any
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        rows = data.rows.get("test")
        if not rows:
            return {}, []
        _, collate = self.collators(cfg, processor, model)
        logits, labels = predict_logits(model, eval_loader(rows, cfg.train.eval_batch_size, collate, accelerator),
                                        accelerator, forward=logits_fn(model))
        metrics = image_metrics(logits, labels.astype(int))
        metrics["label_names"] = list(data.labels.names)
        metrics[ROWS_KEY] = {"accuracy": hits(logits.argmax(-1) == labels.astype(int))}
        return metrics, []

    # ------------------------------------------------------------------ the run directory
    def save_artifacts(self, folder: Path, model: nn.Module, processor: ImagePreprocessing, data: Any,
                       test: dict) -> None:
        processor.save(Path(folder) / "model")
        if self.cfg.confusion_matrix_png and test.get("confusion_matrix"):
            save_confusion_png(np.asarray(test["confusion_matrix"]), test.get("label_names") or [],
                               Path(folder) / "confusion_matrix.png")

    def load_saved_processor(self, model_dir: Path, resolved: str) -> ImagePreprocessing:
        saved = Path(model_dir) / "image_preprocessing.json"
        return ImagePreprocessing.load(model_dir) if saved.is_file() else self.load_processor(resolved)

    # ------------------------------------------------------------------ using a trained run
    def predict(self, loaded: Any, inputs: Sequence[str] | None, file: str | None) -> list[dict[str, Any]]:
        """Class probabilities for image files, or for the rows of a csv/jsonl with an image column."""
        if file:
            column = loaded.cfg.data.image_column or "image"
            rows = read_prediction_file(file, column)
        else:
            rows = [{"image": str(Path(p))} for p in inputs or []]
        from tunelab.data.images import check_images

        check_images(rows, "input", False)
        collate = ImageCollator(eval_transform(loaded.processor), loaded.labels.num_labels, with_labels=False)
        acc = inference_accelerator()
        loader = eval_loader(rows, loaded.cfg.train.eval_batch_size, collate, acc)
        logits, _ = predict_logits(acc.prepare(loaded.model), loader, acc, forward=logits_fn(loaded.model))
        return [{**row, **pred} for row, pred in zip(rows, predictions(logits, loaded.labels))]

    def classify(self, loaded: Any, images: Sequence[Any], batch_size: int = 64) -> list[dict[str, Any]]:
        """Class probabilities for decoded images (PIL images, arrays or paths)."""
        collate = ImageCollator(eval_transform(loaded.processor), loaded.labels.num_labels, with_labels=False)
        acc = inference_accelerator()
        loader = eval_loader([{"image": im} for im in images], batch_size, collate, acc)
        logits, _ = predict_logits(acc.prepare(loaded.model), loader, acc, forward=logits_fn(loaded.model))
        return predictions(logits, loaded.labels)

    def evaluate_source(self, loaded: Any, data: str | None, split: str) -> dict[str, Any]:
        cfg = loaded.cfg
        if data:
            source = read_images(cfg, data, None, None)
            part = split if split in source.splits else "test" if "test" in source.splits else "train"
            rows = encode_rows(source.splits[part], loaded.labels, part)
        else:
            prepared = self.prepare(cfg, loaded.processor)
            if split not in prepared.rows:
                raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prepared.rows)}")
            names = prepared.labels.names  # re-encode with the run's saved map (robust to a re-fitted order)
            rows = encode_rows([dict(r, label=names[r["label"]]) for r in prepared.rows[split]], loaded.labels, split)
        acc = inference_accelerator()
        loader = eval_loader(rows, cfg.train.eval_batch_size, ImageCollator(eval_transform(loaded.processor),
                                                                            loaded.labels.num_labels), acc)
        logits, labels = predict_logits(acc.prepare(loaded.model), loader, acc, forward=logits_fn(loaded.model))
        return image_metrics(logits, labels.astype(int))


def _num_classes(model: nn.Module) -> int:
    head = getattr(model, "tunelab_head_params", None) or []
    params = dict(model.named_parameters())
    weights = [params[n] for n in head if n.endswith("weight") and n in params and params[n].dim() == 2]
    if not weights:
        raise UserError("cannot tell the number of classes from the model's head")
    return int(weights[-1].shape[0])


def read_images(cfg: Any, source: str, validation_file: str | None, test_file: str | None) -> ImageSplits:
    d = cfg.data
    return load_image_source(source, image_column=d.image_column or "image", label_column=d.label_column or "label",
                             validation_file=validation_file, test_file=test_file,
                             skip_bad_images=d.skip_bad_images)


def encode_rows(rows: list[dict], labels: LabelMap, split: str) -> list[dict[str, Any]]:
    ids = labels.encode([r["label"] for r in rows], split)
    return [{"image": r["image"], "label": i} for r, i in zip(rows, ids)]


def read_prediction_file(file: str, column: str) -> list[dict[str, Any]]:
    """Rows of a csv/jsonl naming images; relative paths resolve against the file's folder."""
    from tunelab.data.readers import read_file

    table = read_file(file)
    if column not in table.column_names:
        raise UserError(f"{file} has no image column '{column}' (data.image_column); columns: "
                        f"{', '.join(table.column_names)}")
    base = Path(file).resolve().parent
    return [{**row, "image": str((base / str(row[column])).resolve()) if not Path(str(row[column])).is_absolute()
             else str(row[column])} for row in table]


# ---------------------------------------------------------------------------- metrics and outputs

def image_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, top-5 accuracy (6+ classes), macro precision/recall/F1, per-class precision and
    recall, and the confusion matrix (rows: true class, columns: predicted), with scikit-learn."""
    from sklearn import metrics as skm

    k = logits.shape[-1]
    classes = list(range(k))
    pred = logits.argmax(-1)
    out: dict[str, Any] = {"accuracy": float(skm.accuracy_score(y, pred))}
    if k >= 6:
        out["top5_accuracy"] = float(skm.top_k_accuracy_score(y, logits, k=5, labels=classes))
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average="macro", labels=classes, zero_division=0)
    out.update(precision_macro=float(p), recall_macro=float(r), f1_macro=float(f))
    p, r, _, _ = skm.precision_recall_fscore_support(y, pred, average=None, labels=classes, zero_division=0)
    out["per_class_precision"] = [float(v) for v in p]
    out["per_class_recall"] = [float(v) for v in r]
    out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=classes).tolist()
    return out


def predictions(logits: np.ndarray, labels: LabelMap) -> list[dict[str, Any]]:
    from tunelab.tasks.classification import softmax

    out = []
    for p in softmax(logits):
        best = int(p.argmax())
        out.append({"label": labels.names[best], "score": float(p[best]),
                    "probabilities": {n: float(x) for n, x in zip(labels.names, p)}})
    return out


def save_confusion_png(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """The confusion matrix as a labelled heat map (counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = matrix.shape[0]
    names = names if len(names) == k else [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 1.0 + 0.55 * k), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


IMAGE_CLASSIFICATION = TaskSpec(
    name="image_classification", config_cls=ImageClassificationTaskConfig,
    build=lambda cfg: ImageClassificationTask(cfg),
    description="Image classification: pretrained CNN (torchvision) or HF image model, fresh head, augmentation.",
    metrics={"accuracy": True, "top5_accuracy": True, "f1_macro": True, "precision_macro": True,
             "recall_macro": True},
    validation_metric=("accuracy", True), headline="accuracy", processor="image",
    summary_metrics=("accuracy", "top5_accuracy", "f1_macro"), can_cache_trunk=True, peft_task_type=None,
    predict_example="image.png", comparable_options=("augment",), can_distill=True, classifies=True,
)
SPECS = (IMAGE_CLASSIFICATION,)

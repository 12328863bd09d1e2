"""Sequence classification (binary, multi-class, text pairs) and regression.

Rows become ``input_ids``/``attention_mask`` (+ ``token_type_ids``) and ``labels``; the model is
``AutoModelForSequenceClassification`` with a head sized from the data (``num_labels`` classes, or
one output with MSE loss for regression). Metrics are computed with scikit-learn.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from tunelab.data.builtin import BUILTIN_DATASETS
from tunelab.data.columns import refuse_or_drop_empty, require_columns
from tunelab.data.labels import LabelMap, check_label_values
from tunelab.data.loaders import eval_loader, make_loader
from tunelab.data.readers import Splits, load_source
from tunelab.data.splits import make_splits
from tunelab.errors import UserError
from tunelab.models.layers import head_inputs
from tunelab.models.loading import hub_kwargs, load_tokenizer, resolve_model
from tunelab.row_scores import ROWS_KEY, RowScores, hits
from tunelab.tasks.base import TaskSpec
from tunelab.tasks.common import inference_accelerator, predict_logits, tokenizer_source
from tunelab.train.step import SupervisedStep, model_inputs
from tunelab.train.trunk_cache import CachedTrunkStep


class ClassificationTaskConfig(BaseModel):
    """``task:`` options of sequence classification and regression (none besides the name)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["classification", "regression"] = Field(
        "classification", description="The task: classification (single label), regression (one float), sft "
                                      "(instruction tuning of a causal LM) or image_classification; each task's "
                                      "own task.* keys are listed below.")


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    text_pair: str | None = None

    def required(self) -> dict[str, str | None]:
        return {"data.text_column": self.text, "data.text_pair_column": self.text_pair,
                "data.label_column": self.label}


@dataclass
class Prepared:
    """Classification data: splits (rows as read), the columns used, the fitted label map, and the
    encoded rows per split (filled by :meth:`ClassificationTask.prepare`)."""

    splits: dict[str, Dataset]
    columns: Columns
    labels: LabelMap | None
    rows: dict[str, list[dict[str, Any]]] | None = None


def resolve_columns(cfg: Any) -> Columns:
    """The run's text/label columns: the config's, else the built-in dataset's, else text/label."""
    builtin = BUILTIN_DATASETS.get(cfg.data.source)
    return Columns(
        text=cfg.data.text_column or (builtin.text_column if builtin else "text"),
        label=cfg.data.label_column or (builtin.label_column if builtin else "label"),
        text_pair=cfg.data.text_pair_column or (builtin.text_pair_column if builtin else None),
    )


def prepare_data(cfg: Any, task: ClassificationTask) -> Prepared:
    """Read the source, check columns, split, and fit the label map on the training split."""
    d = cfg.data
    builtin = BUILTIN_DATASETS.get(d.source)
    if builtin is not None and builtin.task not in ("classification", "regression"):
        raise UserError(f"built-in dataset '{d.source}' is made for task.name={builtin.task}, not {task.name}")
    read = load_source(d.source, validation_file=d.validation_file, test_file=d.test_file, encoding=d.encoding)
    cols = resolve_columns(cfg)
    splits = checked_splits(read, cols, regression=task.regression, drop_empty=d.drop_empty)
    splits = make_splits(splits, validation_ratio=d.validation_ratio, test_ratio=d.test_ratio,
                         seed=d.split_seed, stratify_column=None if task.regression else cols.label)
    if d.max_train_samples:
        splits["train"] = splits["train"].select(range(min(d.max_train_samples, len(splits["train"]))))
    names = d.label_names or (builtin.label_names if builtin else None)
    labels = task.fit_labels(splits["train"], cols, names)
    if labels is not None:  # an unknown label is named by its place in the file, not in a carved split
        context = "training" if names is None or not d.label_names else "data.label_names"
        for name, ds in read.items():
            labels.encode(ds.with_format(None)[cols.label], name, context=context, place=read.place)
    return Prepared(splits, cols, labels)


def checked_splits(read: Splits, cols: Columns, *, regression: bool, drop_empty: bool) -> dict[str, Dataset]:
    """The splits as read, after the checks every row must pass before anything trains: the columns
    exist; every label (or regression target) is present and finite; every text is non-empty, or,
    with ``data.drop_empty``, rows with an empty text are dropped and counted on stderr. A bad row is
    named by its place in the file (:meth:`Splits.place`)."""
    place = read.place
    splits, dropped = {}, {}
    for name, ds in read.items():
        require_columns(ds, cols.required(), name)
        check_label_values(ds.with_format(None)[cols.label], name, place, cols.label, numeric=regression)
        splits[name], dropped[name] = refuse_or_drop_empty(ds, [cols.text, cols.text_pair], name, place,
                                                           drop_empty)
        if len(splits[name]) == 0:
            raise UserError(f"every row of the {name} split has an empty text (columns {cols.text}"
                            f"{', ' + cols.text_pair if cols.text_pair else ''}); nothing is left to train on")
    if any(dropped.values()):
        counts = ", ".join(f"{n} {split}" for split, n in dropped.items() if n)
        print(f"tunelab: dropped {counts} row(s) with an empty text (data.drop_empty)", file=sys.stderr)
    return splits


def padding_collator(tokenizer):
    """Pads each batch to its longest row (dynamic padding)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, return_tensors="pt")


@dataclass
class ClassificationTask:
    """Single-label classification; ``regression=True`` predicts one float with an MSE loss."""

    regression: bool = False

    @property
    def spec(self) -> TaskSpec:
        return REGRESSION if self.regression else CLASSIFICATION

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def best_metric(self) -> tuple[str, bool]:
        """Default validation metric for the best checkpoint and whether larger is better."""
        return self.spec.validation_metric

    # ------------------------------------------------------------------ the task protocol
    def resolve_model(self, ref: str) -> str:
        return resolve_model(ref)

    def load_processor(self, resolved: str) -> Any:
        return load_tokenizer(resolved)

    def prepare(self, cfg: Any, tokenizer: Any) -> Prepared:
        """Read, check, split and encode the data (every user error happens here)."""
        prep = prepare_data(cfg, self)
        augment = getattr(cfg.data, "augment", None)
        if augment is not None and augment.enabled:
            prep.splits["train"] = augment_split(prep.splits["train"], prep.columns, augment, cfg.seed)
        prep.rows = {name: self.encode(tokenizer, ds, prep.columns, cfg.data.max_length, prep.labels, name)
                     for name, ds in prep.splits.items()}
        return prep

    def check_methods(self, cfg: Any, methods: Sequence[Any]) -> None:
        """Every method works on sequence classifiers."""

    def train_step(self, cfg: Any, model: nn.Module, tokenizer: Any, log=print) -> Any:
        """``model(**batch).loss``; with ``train.cache_frozen_trunk`` only the unfrozen top runs."""
        step = SupervisedStep(length_key="input_ids", mask_key="attention_mask")
        if cfg.train.cache_frozen_trunk:
            return CachedTrunkStep(step, padding_collator(tokenizer), cfg.train.eval_batch_size, log=log)
        return step

    def distill_outputs(self, model: nn.Module, batch: dict[str, Any], features: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits [B, C], cross-entropy, the head's input features [B, H] when asked) for distillation."""
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
        with head_inputs(model, features) as seen:
            logits = model(**inputs).logits
        return logits, F.cross_entropy(logits, batch["labels"]), seen[0] if features else None

    def distill_cacheable(self, cfg: Any) -> bool:
        """Rows are encoded once (augmentation too), so a frozen teacher's logits are fixed per row."""
        return True

    def collators(self, cfg: Any, tokenizer: Any, model: nn.Module) -> tuple[Any, Any]:
        """(training collator, evaluation collator)."""
        collate = padding_collator(tokenizer)
        return collate, collate

    def evaluate(self, model: nn.Module, loader, accelerator) -> dict[str, Any]:
        """Metrics of the model's logits over a prepared loader."""
        logits, labels = predict_logits(model, loader, accelerator)
        return self.metrics(logits, labels)

    def test_metrics(self, model: nn.Module, data: Prepared, tokenizer: Any, accelerator, cfg: Any
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Metrics on the test split ({} without one); classification logs no samples."""
        rows = (data.rows or {}).get("test")
        if not rows:
            return {}, []
        _, collate = self.collators(cfg, tokenizer, model)
        logits, labels = predict_logits(model, eval_loader(rows, cfg.train.eval_batch_size, collate, accelerator),
                                        accelerator)
        return {**self.metrics(logits, labels), ROWS_KEY: self.row_scores(logits, labels)}, []

    def row_scores(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, RowScores]:
        """Per-row test scores (see :mod:`tunelab.row_scores`): hits for accuracy; errors for MAE/MSE/RMSE."""
        if self.regression:
            err = logits.reshape(-1) - labels.astype(np.float64)
            return {"mae": RowScores(np.abs(err)), "mse": RowScores(err ** 2),
                    "rmse": RowScores(err ** 2, "root_mean")}
        return {"accuracy": hits(logits.argmax(-1) == labels.astype(int))}

    def baseline(self, *args: Any, **kwargs: Any) -> None:
        """Classification heads start random, so there is no meaningful before-training score."""
        return None

    # ------------------------------------------------------------------ the run directory
    def save_artifacts(self, folder: Path, model: nn.Module, tokenizer: Any, data: Any, test: dict) -> None:
        tokenizer.save_pretrained(Path(folder) / "model")

    def load_saved_processor(self, model_dir: Path, resolved: str) -> Any:
        return load_tokenizer(tokenizer_source(model_dir, resolved))

    # ------------------------------------------------------------------ using a trained run
    def predict(self, loaded: Any, inputs: Sequence[str] | None, file: str | None) -> list[dict[str, Any]]:
        """Label (or value) predictions for texts, or for the rows of a file with the run's text column."""
        cols = resolve_columns(loaded.cfg)
        if file:
            read = load_source(file, encoding=loaded.cfg.data.encoding)
            require_columns(read["train"], {"data.text_column": cols.text, "data.text_pair_column": cols.text_pair},
                            "input")
            rows, _ = refuse_or_drop_empty(read["train"], [cols.text, cols.text_pair], "train", read.place,
                                           loaded.cfg.data.drop_empty)
        else:
            rows = Dataset.from_dict({cols.text: list(inputs or [])})
        preds = self.predict_rows(loaded, rows)
        return [{**row, **pred} for row, pred in zip(rows, preds)]

    def predict_rows(self, loaded: Any, rows: Dataset, batch_size: int = 64) -> list[dict[str, Any]]:
        """Predictions for rows holding the run's text column(s)."""
        cols = resolve_columns(loaded.cfg)
        require_columns(rows, {"data.text_column": cols.text, "data.text_pair_column": cols.text_pair}, "input")
        enc = self.encode(loaded.processor, rows, cols, loaded.cfg.data.max_length, loaded.labels, "input",
                          with_labels=False)
        loader, _ = make_loader(enc, batch_size, padding_collator(loaded.processor), train=False, seed=0,
                                group_by_length=False)
        acc = inference_accelerator()
        logits, _ = predict_logits(acc.prepare(loaded.model), acc.prepare(loader), acc)
        return self.predictions(logits, loaded.labels)

    def classify(self, loaded: Any, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """``predict_rows`` for bare texts (runs that read one text per row)."""
        cols = resolve_columns(loaded.cfg)
        if cols.text_pair:
            raise UserError(f"this run reads text pairs ({cols.text}, {cols.text_pair}); classify takes one text "
                            "per input")
        return self.predict_rows(loaded, Dataset.from_dict({cols.text: [str(t) for t in texts]}), batch_size)

    def score(self, loaded: Any, prompts: Sequence[Sequence[dict[str, str]]], responses: Sequence[str],
              batch_size: int = 32, label: str | None = None, output: str = "probability",
              allow_empty: bool = False) -> list[float]:
        """A classifier as a reward or judge: the probability (or logit) of ``label`` for each
        response's text, which the classifier reads alone (as it was trained: one text per row);
        with a text-pair run, the prompt's last user turn is the first text. Regression runs give
        their prediction. ``label`` defaults to the second of two labels (``positive`` for
        rotten_tomatoes); with more labels it must be given."""
        if len(prompts) != len(responses):
            raise UserError(f"got {len(prompts)} prompt(s) but {len(responses)} response(s); give one response "
                            "per prompt")
        column = self.score_column(loaded, label)
        cols = resolve_columns(loaded.cfg)
        texts = [str(r) if str(r).strip() or not allow_empty else " " for r in responses]
        table = {cols.text: texts}
        if cols.text_pair:
            table = {cols.text: [next((t["content"] for t in reversed(p) if t["role"] == "user"), "")
                                 for p in prompts], cols.text_pair: texts}
        enc = self.encode(loaded.processor, Dataset.from_dict(table), cols, loaded.cfg.data.max_length,
                          loaded.labels, "input", with_labels=False)
        loader, _ = make_loader(enc, batch_size, padding_collator(loaded.processor), train=False, seed=0,
                                group_by_length=False)
        acc = inference_accelerator()
        logits, _ = predict_logits(acc.prepare(loaded.model), acc.prepare(loader), acc)
        if column is None:
            return [float(v) for v in logits.reshape(-1)]
        values = logits if output == "logit" else softmax(logits)
        return [float(v) for v in values[:, column]]

    def score_column(self, loaded: Any, label: str | None) -> int | None:
        """The output column a score reads (None: the regression value)."""
        if self.regression:
            if label is not None:
                raise UserError(f"run {loaded.run.path} is a regression run with one output; a label applies "
                                "to classification runs")
            return None
        names = loaded.labels.names
        if label is None:
            if len(names) != 2:
                raise UserError(f"run {loaded.run.path} has {len(names)} labels ({', '.join(names)}); say which "
                                "one's probability is the score with task.reward_label / task.judge_label")
            return 1
        if str(label) not in names:
            raise UserError(f"label {label!r} is not one of run {loaded.run.path}'s labels: {', '.join(names)}")
        return names.index(str(label))

    def evaluate_source(self, loaded: Any, data: str | None, split: str) -> dict[str, Any]:
        """Metrics of a trained run on its own split, or on another labelled file/folder."""
        cfg = loaded.cfg
        if data:
            read = load_source(data, encoding=cfg.data.encoding)
            chosen = split if split in read else "test" if "test" in read else "train"
            checked = checked_splits(Splits({chosen: read[chosen]}, read.origins), resolve_columns(cfg),
                                     regression=self.regression, drop_empty=cfg.data.drop_empty)
            prep = Prepared({"eval": checked[chosen]}, resolve_columns(cfg), loaded.labels)
            name = "eval"
        else:
            prep = prepare_data(cfg, self)
            prep.labels = loaded.labels
            if split not in prep.splits:
                raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prep.splits)}")
            name = split
        rows = self.encode(loaded.processor, prep.splits[name], prep.columns, cfg.data.max_length, loaded.labels,
                           name)
        acc = inference_accelerator()
        loader = eval_loader(rows, cfg.train.eval_batch_size, padding_collator(loaded.processor), acc)
        logits, labels = predict_logits(acc.prepare(loaded.model), loader, acc)
        return self.metrics(logits, np.asarray(labels))

    # ------------------------------------------------------------------ labels
    def fit_labels(self, train: Dataset, cols: Columns, names: list[str] | None) -> LabelMap | None:
        if self.regression:
            return None
        return LabelMap.from_values(list(train[cols.label]), names)

    def label_ids(self, ds: Dataset, cols: Columns, labels: LabelMap | None, split: str) -> list[Any]:
        values = list(ds[cols.label])
        if labels is not None:
            return labels.encode(values, split)
        out = []
        for i, v in enumerate(values):
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                raise UserError(
                    f"regression label {v!r} in row {i} of the {split} split is not a number "
                    f"(column '{cols.label}')"
                ) from None
        return out

    # ------------------------------------------------------------------ model
    def build_model(self, resolved: str, labels: LabelMap | None) -> nn.Module:
        """Load the pretrained trunk with a fresh head; record the head parameter names."""
        from transformers import AutoModelForSequenceClassification

        kwargs: dict[str, Any] = {"num_labels": 1, "problem_type": "regression"} if self.regression else {
            "num_labels": labels.num_labels, "id2label": dict(enumerate(labels.names)),
            "label2id": {n: i for i, n in enumerate(labels.names)},
            "problem_type": "single_label_classification",
        }
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                resolved, output_loading_info=True, **kwargs, **hub_kwargs(resolved))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a classification model from '{resolved}': "
                            f"{str(e).splitlines()[0]}") from None
        model.tunelab_head_params = sorted(info["missing_keys"])  # a head is what the checkpoint lacked
        return model

    # ------------------------------------------------------------------ rows -> features
    def encode(self, tokenizer, ds: Dataset, cols: Columns, max_length: int,
               labels: LabelMap | None, split: str, with_labels: bool = True) -> list[dict[str, Any]]:
        """Tokenise with truncation and no padding (the collator pads per batch)."""
        texts = [str(t) for t in ds[cols.text]]
        pairs = [str(t) for t in ds[cols.text_pair]] if cols.text_pair else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        rows = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
        if with_labels:
            for row, y in zip(rows, self.label_ids(ds, cols, labels, split)):
                row["labels"] = y
        return rows

    # ------------------------------------------------------------------ outputs
    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        return regression_metrics(logits.reshape(-1), labels) if self.regression else \
            classification_metrics(logits, labels.astype(int))

    def predictions(self, logits: np.ndarray, labels: LabelMap | None) -> list[dict[str, Any]]:
        if self.regression:
            return [{"prediction": float(v)} for v in logits.reshape(-1)]
        probs = softmax(logits)
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append({"label": labels.names[k], "score": float(p[k]),
                        "probabilities": {n: float(x) for n, x in zip(labels.names, p)}})
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 (binary and macro), AUC-ROC, confusion matrix."""
    from sklearn import metrics as skm

    k = logits.shape[-1]
    pred = logits.argmax(-1)
    probs = softmax(logits)
    out: dict[str, Any] = {"accuracy": float(skm.accuracy_score(y, pred))}
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average="macro", labels=list(range(k)),
                                                     zero_division=0)
    out.update(precision_macro=float(p), recall_macro=float(r), f1_macro=float(f))
    if k == 2:
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
        out.update(precision=float(p), recall=float(r), f1=float(f))
    out["auc_roc"] = _auc(y, probs, k)
    out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    return out


def _auc(y: np.ndarray, probs: np.ndarray, k: int) -> float | None:
    """Binary AUC, or one-vs-rest macro AUC; None when a class is absent from ``y``."""
    from sklearn import metrics as skm

    try:
        if k == 2:
            return float(skm.roc_auc_score(y, probs[:, 1]))
        return float(skm.roc_auc_score(y, probs, multi_class="ovr", labels=list(range(k))))
    except ValueError:
        return None


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    mse = float(skm.mean_squared_error(y, pred))
    return {"mae": float(skm.mean_absolute_error(y, pred)), "mse": mse, "rmse": mse ** 0.5,
            "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan")}


def augment_split(train: Dataset, cols: Columns, augment: Any, seed: int) -> Dataset:
    """EDA copies of the training rows (text column only; pairs keep their second text)."""
    from tunelab.data.augment import augment_rows

    if cols.text_pair:
        raise UserError("data.augment works on single-text rows; this run reads text pairs "
                        f"({cols.text}, {cols.text_pair}); drop data.augment")
    texts, labels = augment_rows([str(t) for t in train[cols.text]], list(train[cols.label]), augment,
                                 augment.seed if augment.seed is not None else seed)
    print(f"tunelab: data.augment added {len(texts) - len(train)} augmented training rows to {len(train)}",
          file=sys.stderr)
    return Dataset.from_dict({cols.text: texts, cols.label: labels})


CLASSIFICATION_METRICS = {"accuracy": True, "f1_macro": True, "precision_macro": True, "recall_macro": True,
                          "f1": True, "precision": True, "recall": True, "auc_roc": True}
REGRESSION_METRICS = {"rmse": False, "mae": False, "mse": False, "r2": True}

CLASSIFICATION = TaskSpec(
    name="classification", config_cls=ClassificationTaskConfig,
    build=lambda cfg: ClassificationTask(regression=False),
    description="Sequence classification (single label; text or text pairs) with a fresh head.",
    metrics=CLASSIFICATION_METRICS, validation_metric=("accuracy", True), headline="accuracy",
    summary_metrics=("accuracy", "f1", "f1_macro", "auc_roc"), can_cache_trunk=True, peft_task_type="SEQ_CLS",
    scores_responses=True, can_distill=True, classifies=True,
)
REGRESSION = TaskSpec(
    name="regression", config_cls=ClassificationTaskConfig,
    build=lambda cfg: ClassificationTask(regression=True),
    description="Sequence regression: one float per text, MSE loss.",
    metrics=REGRESSION_METRICS, validation_metric=("rmse", False), headline="rmse", has_labels=True,
    summary_metrics=("rmse", "mae", "r2"), can_cache_trunk=True, peft_task_type="SEQ_CLS",
    scores_responses=True, classifies=True,
)
SPECS = (CLASSIFICATION, REGRESSION)

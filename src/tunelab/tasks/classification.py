"""Sequence classification (binary, multi-class, text pairs) and regression.

Rows become ``input_ids``/``attention_mask`` (+ ``token_type_ids``) and ``labels``; the model is
``AutoModelForSequenceClassification`` with a head sized from the data (``num_labels`` classes, or
one output with MSE loss for regression). Metrics are computed with scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import Dataset
from sklearn import metrics as skm
from torch import nn

from tunelab.data.labels import LabelMap
from tunelab.errors import UserError
from tunelab.models.loading import hub_kwargs


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    text_pair: str | None = None

    def required(self) -> dict[str, str | None]:
        return {"data.text_column": self.text, "data.text_pair_column": self.text_pair,
                "data.label_column": self.label}


@dataclass
class ClassificationTask:
    """Single-label classification; ``regression=True`` predicts one float with an MSE loss."""

    regression: bool = False

    @property
    def name(self) -> str:
        return "regression" if self.regression else "classification"

    @property
    def best_metric(self) -> tuple[str, bool]:
        """Default validation metric for the best checkpoint and whether larger is better."""
        return ("rmse", False) if self.regression else ("accuracy", True)

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
    try:
        if k == 2:
            return float(skm.roc_auc_score(y, probs[:, 1]))
        return float(skm.roc_auc_score(y, probs, multi_class="ovr", labels=list(range(k))))
    except ValueError:
        return None


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    mse = float(skm.mean_squared_error(y, pred))
    return {"mae": float(skm.mean_absolute_error(y, pred)), "mse": mse, "rmse": mse ** 0.5,
            "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan")}

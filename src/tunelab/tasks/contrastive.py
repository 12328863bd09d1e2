"""Contrastive embedding learning: a text encoder whose pooled states are sentence embeddings.

The model is the bare trunk (``AutoModel``: ``BertModel``, ``LlamaModel``, ...; BERT's unused
pooler is dropped) with no head: every method adapts the trunk itself. Rows come in three shapes
(:mod:`tunelab.tasks.contrastive_data`), each with its loss (:mod:`tunelab.tasks.contrastive_losses`):

* pairs -> multiple-negatives ranking (InfoNCE over in-batch negatives and hard negatives; Henderson
  et al., 2017; van den Oord et al., 2018) with ``task.scale`` = 1/temperature (default 20, i.e.
  tau = 0.05, sentence-transformers' default), or its symmetric variant (both directions);
* labelled rows -> supervised contrastive (Khosla et al., 2020, eq. 2);
* scored pairs -> CoSENT (Su, 2022).

Training batches of pairs keep duplicate texts apart (:class:`~tunelab.data.batching.DistinctTextBatches`):
a repeated text in one batch would be a false negative. ``task.grad_cache_chunk`` turns on
GradCache (:func:`~tunelab.tasks.embedding.cached_backward`): the batch -- the number of negatives --
is no longer limited by activation memory, and the gradient is the uncached one.

Metrics on held-out rows: pairs retrieve their positive among *all* the split's unique positive
and negative texts (recall@1/5/10, MRR over the full ranking, nDCG@10); labelled rows retrieve
rows of their own label among all other rows (1-NN accuracy ``knn_accuracy``, MRR, nDCG@10);
scored pairs give the Spearman (and Pearson) correlation of cosine similarity and score. The
before-training test metrics are logged as the baseline (a pretrained encoder already embeds).

``tunelab embed RUN "text" ...`` writes vectors; ``tunelab export RUN --format sentence-transformers``
writes a folder the sentence-transformers library loads (:mod:`tunelab.interop.sentence_transformers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from tunelab.data.batching import DistinctTextBatches
from tunelab.data.builtin import BUILTIN_DATASETS
from tunelab.data.loaders import eval_loader
from tunelab.data.readers import load_source
from tunelab.data.splits import make_splits
from tunelab.errors import UserError
from tunelab.models.loading import ensure_pad_token, hub_kwargs, load_tokenizer, resolve_model
from tunelab.row_scores import ROWS_KEY, RowScores, hits
from tunelab.tasks.base import TaskSpec
from tunelab.tasks.common import config_for_source, inference_accelerator, tokenizer_source
from tunelab.tasks.contrastive_data import (
    FORMATS,
    ColumnCollator,
    ContrastiveColumns,
    ContrastiveData,
    check_contrast,
    check_rows,
    clean,
    column_count,
    detect_columns,
    encode_split,
    row_length,
)
from tunelab.tasks.contrastive_losses import (
    cosent_loss,
    mnrl_loss,
    similarity_matrix,
    supcon_loss,
    symmetric_mnrl_loss,
)
from tunelab.tasks.embedding import cached_backward, embed, st_settings, st_transformer_dir
from tunelab.tasks.retrieval import retrieval_means, retrieval_rows, spearman
from tunelab.tasks.reward import has_causal_trunk
from tunelab.train.step import SupervisedStep

LOSS_FOR_FORMAT = {"pairs": ("mnrl", "symmetric_mnrl"), "scored": ("cosent",), "labelled": ("supcon",)}
"""Which losses each row shape trains with; the first is ``task.loss: auto``'s choice."""

EMBEDDING_FILE = "embedding.json"
"""In a run's ``model/`` folder: pooling, normalisation, similarity and max length of its embeddings."""


class ContrastiveTaskConfig(BaseModel):
    """``task:`` options of contrastive embedding learning (``task.name: contrastive``)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["contrastive"] = Field("contrastive", description="Contrastive embedding learning.")
    loss: Literal["auto", "mnrl", "symmetric_mnrl", "supcon", "cosent"] = Field(
        "auto", description="auto (pairs: mnrl; labelled rows: supcon; scored pairs: cosent), mnrl (multiple-"
                            "negatives ranking / InfoNCE), symmetric_mnrl (both directions), supcon, cosent.")
    scale: float = Field(20.0, gt=0, description="Similarity scale = 1 / temperature (20: tau = 0.05).")
    similarity: Literal["cosine", "dot"] = Field("cosine", description="Similarity of two embeddings.")
    pooling: Literal["auto", "mean", "cls", "last"] = Field(
        "auto", description="auto (a sentence-transformers folder's own pooling, else last for causal LMs, "
                            "else mean), mean, cls or last (last real token).")
    normalize: bool | None = Field(
        None, description="Scale embeddings to unit length (null: as a sentence-transformers base says, else true).")
    anchor_column: str = Field("anchor", description="Pairs: the query/anchor text column (scored: first text).")
    positive_column: str = Field("positive", description="Pairs: the matching text column (scored: second text).")
    negative_columns: list[str] | None = Field(
        None, description="Pairs: hard-negative columns (null: every column named negative*).")
    score_column: str = Field("score", description="Scored pairs: the similarity score column (CoSENT).")
    dedup_batches: bool = Field(
        True, description="Pairs: keep duplicate texts out of a training batch (they would be false negatives).")
    grad_cache_chunk: int | None = Field(
        None, ge=1, description="GradCache: embed this many texts at a time with a cached gradient, so the "
                                "batch (the number of negatives) is not limited by memory (null: off).")


# ---------------------------------------------------------------------------- the step

@dataclass(frozen=True)
class Embedder:
    """How a model embeds: pooling, normalisation, causal trunk (read off the built model)."""

    pooling: str
    normalize: bool
    causal: bool

    @classmethod
    def of(cls, model: nn.Module) -> Embedder:
        core = getattr(model, "module", model)
        return cls(core.tunelab_pooling, core.tunelab_normalize, core.tunelab_causal)

    def __call__(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return embed(model, ids, mask, pooling=self.pooling, normalize=self.normalize, causal=self.causal)


class ContrastiveStep(SupervisedStep):
    """Embeds every column of a batch and applies the loss; GradCache when ``chunk`` is set."""

    def __init__(self, loss: str, scale: float, similarity: str, dedup: bool, chunk: int | None,
                 group_by_length: bool = False) -> None:
        super().__init__(length_key=None, mask_key=None)
        self.loss_name, self.scale, self.similarity = loss, scale, similarity
        self.dedup, self.chunk, self.group_by_length = dedup, chunk, group_by_length
        if chunk is not None:
            self.backward = self._cached_backward

    def order(self, rows: Sequence[dict], batch_size: int, seed: int) -> Any:
        """Batches without duplicate texts for the in-batch-negative losses (None: default order)."""
        if self.dedup and self.loss_name in LOSS_FOR_FORMAT["pairs"]:
            lengths = [column_lengths(r) for r in rows] if self.group_by_length else None
            return DistinctTextBatches([r["keys"] for r in rows], batch_size, seed, lengths)
        return None

    def row_length(self, row: dict) -> int | None:
        return row_length(row)

    def columns(self, batch: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(batch[f"input_ids_{c}"], batch[f"attention_mask_{c}"]) for c in range(column_count(batch))]

    def objective(self, embeddings: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """The configured loss of one batch's embeddings (one tensor per text column)."""
        opts = {"scale": self.scale, "similarity": self.similarity}
        if self.loss_name in ("mnrl", "symmetric_mnrl"):
            negatives = torch.cat(embeddings[2:]) if len(embeddings) > 2 else None
            fn = mnrl_loss if self.loss_name == "mnrl" else symmetric_mnrl_loss
            return fn(embeddings[0], embeddings[1], negatives, **opts)
        if self.loss_name == "cosent":
            return cosent_loss(embeddings[0], embeddings[1], batch["score"], **opts)
        return supcon_loss(embeddings[0], batch["label"], **opts)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        embedder = Embedder.of(model)
        return self.objective([embedder(model, ids, mask) for ids, mask in self.columns(batch)], batch)

    def _cached_backward(self, model: nn.Module, batch: dict[str, Any], backward) -> torch.Tensor:
        embedder = Embedder.of(model)
        return cached_backward(lambda ids, mask: embedder(model, ids, mask), self.columns(batch),
                               lambda reps: self.objective(reps, batch), self.chunk, backward)


def column_lengths(row: dict[str, Any]) -> tuple[int, ...]:
    """A row's text lengths, longest column first: what length-grouped batches sort by."""
    return tuple(sorted((len(v) for k, v in row.items() if k.startswith("input_ids_")), reverse=True))


# ---------------------------------------------------------------------------- evaluation

@torch.inference_mode()
def column_embeddings(model: nn.Module, loader, accelerator) -> dict[str, torch.Tensor]:
    """Every column's embeddings (``emb_<c>``) and the batch's ``ids_<c>``/``label``/``score`` over
    a prepared loader, gathered across processes, on the CPU."""
    model.eval()
    embedder = Embedder.of(model)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        out = {f"emb_{c}": embedder(model, batch[f"input_ids_{c}"], batch[f"attention_mask_{c}"]).float()
               for c in range(column_count(batch))}
        out.update({k: v for k, v in batch.items() if k in ("label", "score") or k.startswith("ids_")})
        for key, value in out.items():
            parts.setdefault(key, []).append(accelerator.gather_for_metrics(value).cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def pair_retrieval(got: dict[str, torch.Tensor], similarity: str, per_row: bool = False) -> dict[str, Any]:
    """Each anchor retrieves among the split's unique positives and negatives (``ids_<c>``); with
    ``per_row``, each anchor's scores too (:data:`~tunelab.row_scores.ROWS_KEY`: one positive per
    anchor, so recall@k is a 0/1 hit)."""
    corpus_cols = sorted(int(k[len("emb_"):]) for k in got if k.startswith("emb_") and k != "emb_0")
    size = int(max(got[f"ids_{c}"].max() for c in corpus_cols)) + 1
    corpus = torch.zeros(size, got["emb_1"].shape[1])
    for c in corpus_cols:  # a text that occurs twice lands on its one corpus slot twice (same vector)
        corpus[got[f"ids_{c}"]] = got[f"emb_{c}"]
    relevant = [{int(i)} for i in got["ids_1"]]
    rows = retrieval_rows(got["emb_0"], corpus, relevant, similarity=similarity)
    metrics: dict[str, Any] = {**retrieval_means(rows), "corpus": size}
    if per_row:
        metrics[ROWS_KEY] = {name: hits(values) if name.startswith("recall_at") else RowScores(values)
                             for name, values in rows.items()}
    return metrics


def label_retrieval(got: dict[str, torch.Tensor], similarity: str, per_row: bool = False) -> dict[str, Any]:
    """Each row retrieves among all other rows; the ones with its label are relevant. With
    ``per_row``, each row's 1-NN hit, MRR and nDCG (rows alone in their label have no MRR/nDCG)."""
    emb, labels = got["emb_0"], got["label"].tolist()
    by_label: dict[int, set[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, set()).add(i)
    relevant = [by_label[y] - {i} for i, y in enumerate(labels)]
    rows = retrieval_rows(emb, emb, relevant, exclude=list(range(len(labels))), similarity=similarity)
    rows = {k: v for k, v in rows.items() if not k.startswith("recall_at")}  # recall of a class: not useful
    metrics: dict[str, Any] = retrieval_means(rows)
    sims = similarity_matrix(emb, emb, similarity)
    sims.fill_diagonal_(float("-inf"))
    top = sims.argmax(1).tolist()
    nearest = [labels[j] == y for j, y in zip(top, labels)]
    metrics["knn_accuracy"] = float(np.mean(nearest))
    metrics["corpus"] = len(labels)
    if per_row:
        metrics[ROWS_KEY] = {"knn_accuracy": hits(nearest), **{name: RowScores(v) for name, v in rows.items() if v}}
    return metrics


def scored_correlation(got: dict[str, torch.Tensor], similarity: str, per_row: bool = False) -> dict[str, float]:
    """Spearman (and Pearson) correlation of the pairs' similarity with their scores (a correlation
    is no aggregate of per-row numbers: ``per_row`` adds nothing)."""
    a, b, gold = got["emb_0"].double(), got["emb_1"].double(), got["score"].double().numpy()
    if similarity == "cosine":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    pred = (a * b).sum(-1).numpy()
    pearson = float(np.corrcoef(pred, gold)[0, 1]) if pred.std() > 0 and gold.std() > 0 else float("nan")
    return {"spearman": spearman(pred.tolist(), gold.tolist()), "pearson": pearson, "pairs": len(gold)}


EVALUATORS = {"pairs": pair_retrieval, "labelled": label_retrieval, "scored": scored_correlation}
VALIDATION = {"pairs": ("recall_at_1", True), "labelled": ("knn_accuracy", True), "scored": ("spearman", True)}


# ---------------------------------------------------------------------------- the task

class ContrastiveTask:
    """Contrastive embedding learning (module docstring)."""

    spec: TaskSpec

    def __init__(self, cfg: ContrastiveTaskConfig) -> None:
        self.cfg, self.spec = cfg, CONTRASTIVE
        self.format: str | None = None  # set by prepare (the data decides)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def validation_metric(self) -> tuple[str, bool]:
        """The metric of the data's shape (recall@1 for pairs, 1-NN accuracy, Spearman)."""
        return VALIDATION[self.format or "pairs"]

    def loss_name(self, fmt: str) -> str:
        """``task.loss`` (or auto's choice) for a data shape; a loss that cannot read it is refused."""
        accepted = LOSS_FOR_FORMAT[fmt]
        if self.cfg.loss == "auto":
            return accepted[0]
        if self.cfg.loss not in accepted:
            shapes = ", ".join(f"{f}: {'/'.join(ls)}" for f, ls in LOSS_FOR_FORMAT.items())
            raise UserError(f"task.loss={self.cfg.loss} does not fit {fmt} data; losses by data shape: {shapes}")
        return self.cfg.loss

    # ------------------------------------------------------------------ model and inputs
    def resolve_model(self, ref: str) -> str:
        """A model folder; a sentence-transformers folder whose model sits in a subfolder resolves to it."""
        path = Path(ref).expanduser()
        if path.is_dir() and not (path / "config.json").is_file() and (path / "modules.json").is_file():
            return resolve_model(str(st_transformer_dir(path)))
        return resolve_model(ref)

    def load_processor(self, resolved: str) -> Any:
        tokenizer = load_tokenizer(resolved)
        ensure_pad_token(tokenizer)
        return tokenizer

    def embedding_settings(self, resolved: str, causal: bool) -> tuple[str, bool]:
        """(pooling, normalize): the config's, else a sentence-transformers base's, else the defaults."""
        st_pool, st_norm = st_settings(resolved) if Path(resolved).is_dir() else (None, None)
        pooling = self.cfg.pooling if self.cfg.pooling != "auto" else st_pool or ("last" if causal else "mean")
        normalize = self.cfg.normalize if self.cfg.normalize is not None else (True if st_norm is None else st_norm)
        return pooling, normalize

    def build_model(self, resolved: str, labels: Any) -> nn.Module:
        """The bare trunk; records its pooling/normalisation and that it has no head."""
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(resolved, **hub_kwargs(resolved))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a text encoder from '{resolved}': {str(e).splitlines()[0]}") from None
        if not hasattr(model, "embed_tokens") and getattr(model, "get_input_embeddings", None) is None:
            raise UserError(f"'{resolved}' is not a text model (no token embeddings)")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's [CLS] pooler is not part of a sentence embedding
        causal = has_causal_trunk(model)
        model.tunelab_pooling, model.tunelab_normalize = self.embedding_settings(resolved, causal)
        model.tunelab_causal = causal
        model.tunelab_head_params = []
        return model

    # ------------------------------------------------------------------ data
    def prepare(self, cfg: Any, tokenizer: Any) -> ContrastiveData:
        """Read, check, split and encode the rows (every user error about the data is here)."""
        d = cfg.data
        builtin = BUILTIN_DATASETS.get(d.source)
        if builtin is not None and builtin.task not in ("pairs", "classification"):
            pairs = ", ".join(n for n, b in BUILTIN_DATASETS.items() if b.task == "pairs")
            raise UserError(f"built-in dataset '{d.source}' is made for task.name={builtin.task}; contrastive "
                            f"learning reads pairs ({pairs}) or labelled rows (rotten_tomatoes)")
        splits = load_source(d.source, validation_file=d.validation_file, test_file=d.test_file, encoding=d.encoding)
        text_col = d.text_column or (builtin.text_column if builtin and builtin.task == "classification" else None)
        label_col = d.label_column or (builtin.label_column if builtin and builtin.task == "classification" else None)
        cols = detect_columns(splits["train"], self.cfg, text_col, label_col)
        self.format = cols.format
        self.loss_name(cols.format)
        for name, ds in splits.items():
            check_rows(ds, cols, name)
        splits = make_splits(splits, validation_ratio=d.validation_ratio, test_ratio=d.test_ratio, seed=d.split_seed,
                             stratify_column=cols.label)
        if d.max_train_samples:
            splits["train"] = splits["train"].select(range(min(d.max_train_samples, len(splits["train"]))))
        check_contrast(splits["train"], cols, "train")
        rows, sizes = {}, {}
        for name, ds in splits.items():
            rows[name], sizes[name] = encode_split(tokenizer, ds, cols, d.max_length)
        return ContrastiveData(cols, rows, sizes)

    def check_methods(self, cfg: Any, methods: Sequence[Any]) -> None:
        """Every method adapts the trunk (virtual tokens are trimmed before pooling)."""

    def collators(self, cfg: Any, tokenizer: Any, model: nn.Module) -> tuple[Any, Any]:
        collate = ColumnCollator(tokenizer.pad_token_id)
        return collate, collate

    # ------------------------------------------------------------------ training and evaluation
    def train_step(self, cfg: Any, model: nn.Module, tokenizer: Any, log=print) -> ContrastiveStep:
        c = self.cfg
        return ContrastiveStep(self.loss_name(self.format or "pairs"), c.scale, c.similarity, c.dedup_batches,
                               c.grad_cache_chunk, group_by_length=cfg.data.group_by_length)

    def evaluate(self, model: nn.Module, loader, accelerator, per_row: bool = False) -> dict[str, Any]:
        """The data shape's metrics (module docstring) over a prepared loader; with ``per_row`` (the
        test split only), their per-query scores under :data:`~tunelab.row_scores.ROWS_KEY` too."""
        got = column_embeddings(model, loader, accelerator)
        if not got:
            return {}
        fmt = self.format or ("scored" if "score" in got else "labelled" if "label" in got else "pairs")
        return EVALUATORS[fmt](got, self.cfg.similarity, per_row=per_row)

    def _split_metrics(self, model: nn.Module, data: ContrastiveData, tokenizer: Any, accelerator, cfg: Any,
                       per_row: bool = False) -> dict[str, Any]:
        split = "test" if data.rows.get("test") else "validation" if data.rows.get("validation") else None
        if split is None:
            return {}
        loader = eval_loader(data.rows[split], cfg.train.eval_batch_size, ColumnCollator(tokenizer.pad_token_id),
                             accelerator)
        return {"split": split, **self.evaluate(model, loader, accelerator, per_row=per_row)}

    def baseline(self, model: nn.Module, data: ContrastiveData, tokenizer: Any, accelerator, cfg: Any
                 ) -> tuple[dict[str, Any], list] | None:
        """The pretrained encoder's test metrics: what training has to beat."""
        metrics = self._split_metrics(model, data, tokenizer, accelerator, cfg)
        return (metrics, []) if metrics else None

    def test_metrics(self, model: nn.Module, data: ContrastiveData, tokenizer: Any, accelerator, cfg: Any
                     ) -> tuple[dict[str, Any], list]:
        """The split's metrics with their per-query scores (:mod:`tunelab.row_scores`; not Spearman's)."""
        return self._split_metrics(model, data, tokenizer, accelerator, cfg, per_row=True), []

    # ------------------------------------------------------------------ the run directory
    def save_artifacts(self, folder: Path, model: nn.Module, tokenizer: Any, data: Any, test: dict) -> None:
        import json

        tokenizer.save_pretrained(Path(folder) / "model")
        settings = {"pooling": model.tunelab_pooling, "normalize": model.tunelab_normalize,
                    "similarity": self.cfg.similarity, "causal": model.tunelab_causal,
                    "dimension": int(model.get_input_embeddings().weight.shape[1])}
        (Path(folder) / "model" / EMBEDDING_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    def load_saved_processor(self, model_dir: Path, resolved: str) -> Any:
        return self.load_processor(tokenizer_source(model_dir, resolved))

    # ------------------------------------------------------------------ using a trained run
    @torch.inference_mode()
    def embed(self, loaded: Any, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embeddings ``[N, d]`` of ``texts``, tokenised and pooled as in training (float32, CPU)."""
        for i, text in enumerate(texts):
            if not str(text).strip():
                raise UserError(f"text {i + 1} is empty; give a text to embed")
        model, tokenizer = loaded.model, loaded.processor
        model.eval()
        device = next(model.parameters()).device
        embedder = Embedder.of(model)
        max_length = loaded.cfg.data.max_length
        rows = [tokenizer(clean(t), truncation=True, max_length=max_length)["input_ids"] for t in texts]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # less padding
        out = torch.zeros(len(rows), int(model.get_input_embeddings().weight.shape[1]))
        collate = ColumnCollator(tokenizer.pad_token_id)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate([{"input_ids_0": rows[i]} for i in chunk])
            vectors = embedder(model, batch["input_ids_0"].to(device), batch["attention_mask_0"].to(device))
            out[chunk] = vectors.float().cpu()
        return out

    def predict(self, loaded: Any, inputs: Sequence[str] | None, file: str | None) -> list[dict[str, Any]]:
        """Embeddings of texts, or of a file's text column (``data.text_column``, else text/anchor)."""
        if file:
            ds = load_source(file)["train"]
            column = next((c for c in (loaded.cfg.data.text_column, "text", self.cfg.anchor_column)
                           if c and c in ds.column_names), None)
            if column is None:
                raise UserError(f"{file} has no text column (looked for text, {self.cfg.anchor_column}); columns: "
                                f"{', '.join(ds.column_names)}")
            rows = [dict(r) for r in ds]
            texts = [str(r[column]) for r in rows]
        else:
            texts = list(inputs or [])
            rows = [{"text": t} for t in texts]
        vectors = self.embed(loaded, texts)
        return [{**row, "embedding": [float(x) for x in v]} for row, v in zip(rows, vectors)]

    def evaluate_source(self, loaded: Any, data: str | None, split: str) -> dict[str, Any]:
        """Metrics of a trained run on its own split, or on another file/folder of the same shape."""
        cfg = config_for_source(loaded.cfg, data)
        prepared = self.prepare(cfg, loaded.processor)
        name = split
        if data and split not in prepared.rows:
            name = "test" if "test" in prepared.rows else "train"
        if name not in prepared.rows:
            raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prepared.rows)}")
        acc = inference_accelerator()
        collate = ColumnCollator(loaded.processor.pad_token_id)
        loader = eval_loader(prepared.rows[name], cfg.train.eval_batch_size, collate, acc)
        return {"split": "eval" if data else split, **self.evaluate(acc.prepare(loaded.model), loader, acc)}


def _headline(test: dict[str, float]) -> str:
    return "spearman" if "spearman" in test else "knn_accuracy" if "knn_accuracy" in test else "recall_at_1"


CONTRASTIVE_METRICS = {"recall_at_1": True, "recall_at_5": True, "recall_at_10": True, "mrr": True,
                       "ndcg_at_10": True, "knn_accuracy": True, "spearman": True, "pearson": True}

CONTRASTIVE = TaskSpec(
    name="contrastive", config_cls=ContrastiveTaskConfig, build=lambda cfg: ContrastiveTask(cfg),
    description="Contrastive embedding learning: pairs (MNRL/InfoNCE), labelled rows (SupCon), scored pairs "
                "(CoSENT); tunelab embed writes vectors.",
    metrics=CONTRASTIVE_METRICS, validation_metric=("recall_at_1", True), headline=_headline,
    summary_metrics=("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10", "knn_accuracy", "spearman"),
    has_labels=False, peft_task_type=None, embeds_text=True,
    predict_example='"some text"  (or tunelab embed RUN "some text")',
)
SPECS = (CONTRASTIVE,)

__all__ = ["CONTRASTIVE", "ContrastiveTask", "ContrastiveTaskConfig", "FORMATS", "ContrastiveColumns", "SPECS"]

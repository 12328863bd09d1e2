"""Instruction tuning (supervised fine-tuning, SFT) of causal language models.

Rows in any supported format (:mod:`tunelab.data.conversations`) are rendered through a template
(:mod:`tunelab.data.templates`) and tokenised so that, by default, only the response tokens carry a
loss (Ouyang et al., 2022; Zhou et al., 2023 mask the prompt the same way). Training rows may be
packed without cross-contamination (:mod:`tunelab.data.packing`). The model is
``AutoModelForCausalLM``; its language-model head is pretrained, so there is no new head.

Evaluation: token-level cross-entropy on held-out rows (``loss``) and ``perplexity = exp(loss)``
during training; on the test split additionally generation metrics (exact match, ROUGE-L, BLEU) on
``task.eval_generate`` examples, greedy, with a few generations written to the run. The same test
evaluation runs once *before* training (``task.eval_baseline``), so a run shows what training
changed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.nn import functional as F

from tunelab.data.conversations import FORMATS, Conversation, detect_format, required_columns, to_conversation
from tunelab.data.loaders import eval_loader
from tunelab.data.packing import PackedCollator, pack
from tunelab.data.templates import IGNORE, Template, adds_bos, tokenize, truncate
from tunelab.errors import UserError
from tunelab.models.layers import head_inputs
from tunelab.models.loading import ensure_pad_token, hub_kwargs, load_tokenizer, resolve_model
from tunelab.row_scores import ROWS_KEY, RowScores, hits, split_rows
from tunelab.tasks.base import TaskSpec
from tunelab.tasks.common import config_for_source, inference_accelerator, tokenizer_source
from tunelab.tasks.lm_loss import LabelledLogitsStep, head_slot, hidden_instead_of_logits, unwrap
from tunelab.tasks.logprobs import selected_logps
from tunelab.train.step import SupervisedStep, model_inputs


class SFTTaskConfig(BaseModel):
    """``task:`` options of instruction tuning (``task.name: sft``)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["sft"] = Field("sft", description="Instruction tuning of a causal LM.")
    format: Literal["auto", "alpaca", "messages", "prompt_completion", "text"] = Field(
        "auto", description="Row format: alpaca, messages (role/content or ShareGPT), prompt_completion, "
                            "text (continued pretraining), or auto (from the columns).")
    template: str = Field(
        "auto", description="auto (the tokenizer's chat template, else alpaca), chat, alpaca, or a template "
                            "string with {prompt} (and optionally {system}).")
    system_prompt: str | None = Field(None, description="System turn added to conversations that have none.")
    train_on_prompt: bool = Field(False, description="Also train on prompt tokens (default: responses only).")
    packing: bool = Field(False, description="Pack training examples into full rows (no cross-example attention).")
    truncation: Literal["right", "left", "drop"] = Field(
        "right", description="Over-long examples: right keeps the start, left keeps the end, drop skips them.")
    eval_generate: int = Field(
        32, ge=0, description="Test examples to generate for exact match / ROUGE-L / BLEU (0: none).")
    max_new_tokens: int = Field(64, ge=1, description="Generation length limit for the generation metrics.")
    log_generations: int = Field(
        3, ge=0, description="Generations written to metrics.jsonl (all go to generations.jsonl).")
    eval_baseline: bool = Field(True, description="Evaluate the test split before training too.")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value not in ("auto", "chat", "alpaca") and "{prompt}" not in value:
            raise ValueError("must be auto, chat, alpaca, or a template string containing {prompt}")
        return value


@dataclass
class SFTData:
    """Prepared SFT data: conversations per split, encoded rows per split, what was dropped."""

    conversations: dict[str, list[Conversation]]
    rows: dict[str, list[dict[str, Any]]]
    template: Template
    fmt: str
    dropped: dict[str, int] = field(default_factory=dict)
    labels: None = None


@dataclass
class SFTTask:
    """Instruction tuning; see the module docstring."""

    cfg: SFTTaskConfig
    name: str = "sft"
    best_metric: tuple[str, bool] = ("loss", False)

    @property
    def spec(self) -> TaskSpec:
        return SFT

    # ------------------------------------------------------------------ the task protocol
    def resolve_model(self, ref: str) -> str:
        """A model reference, or a finished causal-LM run to continue from (merged into a plain
        model folder once, see :func:`tunelab.interop.merged.merged_run_model`)."""
        from tunelab.inference import is_run_dir

        if is_run_dir(ref):
            from tunelab.interop.merged import merged_run_model

            return merged_run_model(ref)
        return resolve_model(ref)

    def load_processor(self, resolved: str) -> Any:
        tokenizer = load_tokenizer(resolved)
        ensure_pad_token(tokenizer)
        return tokenizer

    def check_methods(self, cfg: Any, methods: Sequence[Any]) -> None:
        """Packing needs a 2-D attention mask per row, which virtual-token methods cannot share."""
        virtual = [m.name for m in methods if m.virtual_tokens]
        if self.cfg.packing and virtual:
            raise UserError(f"task.packing cannot be used with method '{virtual[0]}': its virtual tokens need "
                            "one example per row (a 2-D attention mask); set task.packing=false")

    def train_step(self, cfg: Any, model: nn.Module, tokenizer: Any, log=print) -> SupervisedStep:
        """The causal LM's next-token loss over the labelled tokens, with the LM head run only at those
        positions and the cross-entropy in chunks (:mod:`tunelab.tasks.lm_loss`: the same loss as the
        model's own, without the full [tokens x vocabulary] logits)."""
        return LabelledLogitsStep(length_key="input_ids", mask_key="attention_mask")

    def distill_outputs(self, model: nn.Module, batch: dict[str, Any], features: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Distillation: the logits [N, V] that predict the N labelled tokens (shifted by one, as the
        LM loss reads them), their mean cross-entropy (the model's own loss), and the final hidden
        states at those positions when asked."""
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        inner = unwrap(model)
        if head_slot(inner) is None:  # logits are not head(hidden): every position's logits, then picked
            with head_inputs(model, features) as seen:
                logits = model(**inputs, use_cache=False).logits
            picked = logits[:, :-1][keep]
            hidden = seen[0][:, :-1][keep] if features else None
        else:  # the LM head only on the labelled positions
            with hidden_instead_of_logits(inner) as head:
                states = model(**inputs, use_cache=False).logits[:, :-1][keep]
            picked = head(states)
            hidden = states if features else None
        return picked, F.cross_entropy(picked.float(), labels[keep]), hidden

    def distill_cacheable(self, cfg: Any) -> bool:
        """A distribution over the whole vocabulary per token is too large to keep: the teacher runs live."""
        return False

    def save_artifacts(self, folder: Path, model: nn.Module, tokenizer: Any, data: Any, test: dict) -> None:
        tokenizer.save_pretrained(Path(folder) / "model")

    def load_saved_processor(self, model_dir: Path, resolved: str) -> Any:
        return self.load_processor(tokenizer_source(model_dir, resolved))

    def predict(self, loaded: Any, inputs: Sequence[str] | None, file: str | None) -> list[dict[str, Any]]:
        raise UserError(f"run {loaded.run.path} is an instruction-tuning run; use tunelab generate {loaded.run.path} "
                        "--prompt ... (or --file prompts.jsonl --out out.jsonl)")

    def evaluate_source(self, loaded: Any, data: str | None, split: str) -> dict[str, Any]:
        """Loss, perplexity and generation metrics of an instruction-tuned run on a split or a file."""
        cfg = config_for_source(loaded.cfg, data)
        cfg.task.packing = False  # evaluation scores one example per row
        prepared = self.prepare(cfg, loaded.processor)
        name = "train" if data else split
        if name not in prepared.rows:
            raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prepared.rows)}")
        prepared.rows = {"test": prepared.rows[name]}
        prepared.conversations = {"test": prepared.conversations[name]}
        acc = inference_accelerator()
        metrics, samples = self.test_metrics(acc.prepare(loaded.model), prepared, loaded.processor, acc, cfg)
        metrics = split_rows(metrics)[0]  # printed as JSON: no per-row scores
        metrics["split"] = "eval" if data else split
        return {**metrics, "samples": samples[: self.cfg.log_generations]}

    def prepare(self, cfg: Any, tokenizer: Any) -> SFTData:
        """Read and split the data, render and tokenise it (every user error happens here)."""
        from tunelab.data.readers import load_source
        from tunelab.data.splits import make_splits

        d = cfg.data
        ensure_pad_token(tokenizer)
        template = Template.resolve(self.cfg.template, tokenizer)
        splits = load_source(d.source, validation_file=d.validation_file, test_file=d.test_file, encoding=d.encoding)
        self.read_conversations(splits, d.text_column or "text")  # bad rows named by their place in the file
        splits = make_splits(splits, validation_ratio=d.validation_ratio, test_ratio=d.test_ratio,
                             seed=d.split_seed)
        if d.max_train_samples:
            splits["train"] = splits["train"].select(range(min(d.max_train_samples, len(splits["train"]))))
        fmt, convs = self.read_conversations(splits, d.text_column or "text")
        rows, dropped = self.prepare_rows(convs, tokenizer, template, d.max_length)
        if any(dropped.values()):
            counts = ", ".join(f"{n} {split}" for split, n in dropped.items() if n)
            print(f"tunelab: left out {counts} example(s) that do not fit data.max_length={d.max_length} "
                  f"(task.truncation={self.cfg.truncation}) or have no response tokens left", file=sys.stderr)
        return SFTData(convs, rows, template, fmt, dropped)

    def collators(self, cfg: Any, tokenizer: Any, model: nn.Module) -> tuple[Any, Any]:
        """(training collator, evaluation collator): only training rows are packed."""
        return self.collator(tokenizer, model, packed=self.cfg.packing), self.collator(tokenizer, model, packed=False)

    def test_metrics(self, model: nn.Module, data: SFTData, tokenizer: Any, accelerator, cfg: Any
                     ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Loss/perplexity on the test split (else validation) and generation metrics on a sample,
        with per-row scores (:mod:`tunelab.row_scores`): each row's summed token loss and token count
        for ``loss``, each generation's ``rouge_l`` and ``exact_match`` (not corpus BLEU)."""
        split = "test" if data.rows.get("test") else "validation" if data.rows.get("validation") else None
        if split is None:
            return {}, []
        _, collate = self.collators(cfg, tokenizer, model)
        loss, rows = self.loss_pass(model, eval_loader(data.rows[split], cfg.train.eval_batch_size, collate,
                                                       accelerator), accelerator, per_row=True)
        metrics: dict[str, Any] = {"split": split, **loss}
        per_row: dict[str, RowScores] = {"loss": rows} if rows is not None and len(rows) else {}
        samples: list[dict[str, str]] = []
        convs = [c for c in data.conversations[split] if not c.is_text][: self.cfg.eval_generate]
        if convs:
            samples = self.generate_samples(accelerator.unwrap_model(model), tokenizer, data.template, convs,
                                            cfg.train.eval_batch_size)  # a DDP wrapper has no generate()
            from tunelab.tasks.text_metrics import exact_match, generation_metrics, rouge_l

            generations, references = [s["generation"] for s in samples], [s["reference"] for s in samples]
            metrics.update(generation_metrics(generations, references))
            pairs = list(zip(generations, references))
            per_row["rouge_l"] = RowScores([rouge_l([g], [r]) for g, r in pairs])
            per_row["exact_match"] = hits([exact_match([g], [r]) == 1.0 for g, r in pairs])
        if per_row:
            metrics[ROWS_KEY] = per_row
        return metrics, samples

    def generate_samples(self, model: nn.Module, tokenizer: Any, template: Template, convs: list[Conversation],
                         batch_size: int) -> list[dict[str, str]]:
        """Greedy generations for the last assistant turn of each conversation, with references."""
        from tunelab.generation import GenerationOptions, generate_texts

        prompts, refs = [], []
        for conv in convs:
            messages, reference = conv.prompt_and_reference()
            prompts.append(template.prompt(messages, tokenizer))
            refs.append(reference)
        opts = GenerationOptions(max_new_tokens=self.cfg.max_new_tokens, batch_size=min(batch_size, 16))
        outs = generate_texts(model, tokenizer, prompts, opts)
        return [{"prompt": p, "reference": r, "generation": o} for p, r, o in zip(prompts, refs, outs)]

    def baseline(self, model: nn.Module, data: SFTData, tokenizer: Any, accelerator, cfg: Any
                 ) -> tuple[dict[str, Any], list[dict[str, str]]] | None:
        """The test evaluation before any training step (``task.eval_baseline``)."""
        if not self.cfg.eval_baseline:
            return None
        return self.test_metrics(model, data, tokenizer, accelerator, cfg)

    # ------------------------------------------------------------------ data
    def read_conversations(self, splits: dict[str, Any], text_column: str) -> tuple[str, dict[str, list[Conversation]]]:
        """Rows of every split as conversations, in the configured (or detected) format."""
        first = next(iter(splits.values()))
        fmt = self.cfg.format if self.cfg.format != "auto" else detect_format(first.column_names, text_column)
        place = getattr(splits, "place", lambda split, i: f"{split} row {i + 1}")  # as read: file and line
        out: dict[str, list[Conversation]] = {}
        for split, ds in splits.items():
            required_columns(fmt, ds.column_names, text_column)
            out[split] = [to_conversation(row, fmt, place(split, i), text_column, self.cfg.system_prompt)
                          for i, row in enumerate(ds)]
        return fmt, out

    def encode(self, convs: list[Conversation], tokenizer: Any, template: Template, max_length: int,
               *, packed: bool) -> tuple[list[dict[str, Any]], int]:
        """Token rows of one split (packed when asked) and how many examples were dropped."""
        rows, dropped = [], 0
        bos = adds_bos(tokenizer)  # once, not per row
        for conv in convs:
            example = tokenize(template.render(conv, tokenizer), tokenizer,
                               train_on_prompt=self.cfg.train_on_prompt or conv.is_text, template=template,
                               add_bos=bos)
            fitted = truncate(example, max_length, self.cfg.truncation)
            if fitted is None:
                dropped += 1
            else:
                rows.append(fitted)
        return (pack(rows, max_length) if packed else rows), dropped

    def prepare_rows(self, convs: dict[str, list[Conversation]], tokenizer: Any, template: Template,
                     max_length: int) -> tuple[dict[str, list[dict]], dict[str, int]]:
        """Encode every split; only training rows are packed (evaluation stays per example)."""
        rows, dropped = {}, {}
        for split, items in convs.items():
            rows[split], dropped[split] = self.encode(items, tokenizer, template, max_length,
                                                      packed=self.cfg.packing and split == "train")
        if not rows.get("train"):
            raise UserError(f"no training example fits data.max_length={max_length} with task.truncation="
                            f"{self.cfg.truncation} (or none has response tokens); raise data.max_length")
        return rows, dropped

    # ------------------------------------------------------------------ model
    def build_model(self, resolved: str, labels: Any = None) -> nn.Module:
        """The pretrained causal LM in fp32; its LM head is pretrained, so no head is new."""
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32, **hub_kwargs(resolved))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a causal language model from '{resolved}': "
                            f"{str(e).splitlines()[0]}") from None
        model.tunelab_head_params = []
        return model

    def build_model_streamed(self, resolved: str, transforms_for) -> tuple[nn.Module, str] | None:
        """(the causal LM loaded tensor by tensor with ``transforms_for(empty model)`` applied as modules
        arrive, its base fingerprint), or None for a checkpoint that cannot be streamed
        (:mod:`tunelab.models.streamed`)."""
        from transformers import AutoModelForCausalLM

        from tunelab.models.streamed import load_streamed

        def plan(model: nn.Module):
            model.tunelab_head_params = []
            return transforms_for(model)

        loaded = load_streamed(AutoModelForCausalLM, resolved, plan, **hub_kwargs(resolved))
        if loaded is not None:
            loaded[0].tunelab_head_params = []
        return loaded

    def collator(self, tokenizer: Any, model: nn.Module, *, packed: bool):
        """Right-padding collator (labels padded with -100), or the packed one with its 4D mask."""
        if packed:
            attn = getattr(model.config, "_attn_implementation", "sdpa")
            return PackedCollator(tokenizer.pad_token_id, torch.bool if attn == "sdpa" else torch.float32)
        return PaddingCollator(tokenizer.pad_token_id)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, loader, accelerator) -> dict[str, float]:
        """Mean next-token cross-entropy over the labelled tokens, and perplexity (see :meth:`loss_pass`)."""
        return self.loss_pass(model, loader, accelerator)[0]

    @torch.inference_mode()
    def loss_pass(self, model: nn.Module, loader, accelerator, per_row: bool = False
                  ) -> tuple[dict[str, float], RowScores | None]:
        """(loss, perplexity and token count; with ``per_row``, each row's summed loss and token count
        as a ``ratio`` :class:`RowScores`).

        Rows go through the model in chunks of at most :data:`LOGITS_BUDGET` logits, so a large
        ``train.eval_batch_size`` never materialises batch x length x vocabulary floats at once.
        With ``per_row`` the rows are gathered across processes (``gather_for_metrics``, which drops
        the rows a process repeats to even out the shards) and the loss is theirs: the float64 sum
        of the rows' sums over the sum of their counts.
        """
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        parts: list[torch.Tensor] = []
        head = accelerator.unwrap_model(model).get_output_embeddings()  # a DDP wrapper has no such method
        vocab = head.weight.shape[0] if head is not None else 1
        for batch in loader:
            batch = {k: v for k, v in batch.items() if k != "num_tokens"}
            rows = max(1, LOGITS_BUDGET // (batch["input_ids"].shape[1] * vocab))
            chunks = [{k: v[start:start + rows] for k, v in batch.items()}
                      for start in range(0, batch["input_ids"].shape[0], rows)]
            if per_row:  # one gather per loader batch: gather_for_metrics trims the last batch's repeats
                parts.append(accelerator.gather_for_metrics(torch.cat([token_loss_rows(model, c) for c in chunks])))
            else:
                for chunk in chunks:
                    totals += token_loss_sum(model, chunk)
        scores = None
        if per_row:
            table = torch.cat(parts).double().cpu() if parts else torch.zeros(0, 2, dtype=torch.float64)
            scores = RowScores(table[:, 0].numpy(), "ratio", table[:, 1].numpy())
            totals = table.sum(0)
        else:
            totals = accelerator.reduce(totals, reduction="sum")
        mean = (totals[0] / totals[1].clamp(min=1)).item()
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": int(totals[1].item())}, scores


LOGITS_BUDGET = 1 << 25
"""Most logits (floats) one evaluation forward may produce: 32M, 128 MB in fp32."""


def labelled_token_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the next-token cross-entropy of each labelled token ``[N]`` in fp32, the ``[B, T-1]`` mask of
    where they are); pops ``labels``. The LM head runs only on the labelled positions, a chunk of
    :data:`~tunelab.tasks.lm_loss.CHUNK_FLOATS` logits at a time (models whose logits are not
    ``head(hidden)`` compute them all)."""
    labels = batch.pop("labels")
    target = labels[:, 1:]
    keep = target != IGNORE
    inner = unwrap(model)
    if head_slot(inner) is None:
        logits = model(**batch).logits[:, :-1].float()
        return F.cross_entropy(logits[keep], target[keep], reduction="none"), keep
    with hidden_instead_of_logits(inner) as head:
        hidden = model(**batch).logits[:, :-1][keep]
    logp, _ = selected_logps(head, hidden, target[keep])  # chunked, as the response log-probabilities are
    return -logp, keep


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(summed next-token cross-entropy over labelled tokens, their count), as float64."""
    losses, keep = labelled_token_losses(model, batch)
    return torch.stack([losses.sum().double(), keep.sum().double()])


def token_loss_rows(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`token_loss_sum` row by row: ``[B, 2]`` (each row's summed loss, its labelled tokens), float64."""
    losses, keep = labelled_token_losses(model, batch)
    per_row = torch.zeros_like(keep, dtype=losses.dtype).masked_scatter(keep, losses).double().sum(-1)
    return torch.stack([per_row, keep.sum(-1).double()], dim=-1)


class PaddingCollator:
    """Pads ``input_ids`` (pad token), ``attention_mask`` (0) and ``labels`` (-100) on the right."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)

        def padded(key: str, fill: int) -> torch.Tensor:
            return torch.tensor([list(r[key]) + [fill] * (length - len(r[key])) for r in rows])

        batch = {"input_ids": padded("input_ids", self.pad_token_id),
                 "attention_mask": padded("attention_mask", 0)}
        if "labels" in rows[0]:
            batch["labels"] = padded("labels", IGNORE)
        return batch


FORMAT_NAMES = ("auto", *FORMATS)

GENERATION_METRICS = ("rouge_l", "exact_match", "bleu")


def _headline(test: Mapping[str, float]) -> str:
    """rouge_l when generations were scored, else the held-out loss."""
    return "rouge_l" if "rouge_l" in test else "loss"


def _metric_problem(task_cfg: Any, metric: str) -> str | None:
    if metric in GENERATION_METRICS and not getattr(task_cfg, "eval_generate", 0):
        return f"'{metric}' scores generations; set base task.eval_generate to the number of test prompts to generate for"
    return None


SFT = TaskSpec(
    name="sft", config_cls=SFTTaskConfig, build=lambda cfg: SFTTask(cfg),
    description="Instruction tuning of a causal LM (response-only loss, packing, generation metrics).",
    metrics={"loss": False, "perplexity": False, "rouge_l": True, "exact_match": True, "bleu": True},
    validation_metric=("loss", False), headline=_headline,
    summary_metrics=("loss", "perplexity", "exact_match", "rouge_l", "bleu"),
    generates_text=True, has_labels=False, can_pack=True, peft_task_type="CAUSAL_LM",
    extra_metric_checks=_metric_problem, can_distill=True,
)
SPECS = (SFT,)

"""Direct preference optimisation and its relatives (``task.name: dpo``): a causal LM learns from
(prompt, chosen, rejected) pairs without a reward model or sampling.

``task.loss`` picks the objective (:mod:`tunelab.tasks.dpo_losses`): ``sigmoid`` (DPO, Rafailov
et al., 2023; with ``task.label_smoothing`` the conservative cDPO), ``ipo``, ``hinge`` (SLiC),
``robust`` (rDPO), and the reference-free ``simpo`` and ``orpo``. ``task.sft_weight`` adds the
chosen responses' NLL (ORPO always has it).

The reference model (:mod:`tunelab.train.reference`) is the policy itself with its adapters
switched off for methods that add modules (LoRA, DoRA, QLoRA, IA3, adapters, virtual tokens): no
second copy in memory. Methods that train base weights in place (full, freeze, BitFit) get a frozen
copy made before the first step (``task.reference: copy`` forces one, for comparison).
``task.precompute_reference`` scores every training pair under the reference once before training
(so no reference pass runs per step, and a copy can be dropped afterwards).

A batch holds each pair's chosen and rejected sequences together (2B rows, one forward); response
tokens, including the end-of-turn token, are the ones scored. At step 0 the policy equals the
reference, every log-ratio is 0 and the sigmoid loss is exactly ln 2.

Metrics: ``loss``, ``reward_accuracy`` (chosen reward > rejected reward), ``chosen_reward``,
``rejected_reward``, ``reward_margin``, ``logp_chosen``, ``logp_rejected`` (summed response
log-probabilities under the policy).

With ``task.judge`` (a reward or classification run, or a function; :mod:`tunelab.tasks.rl_rewards`)
the test split's distinct prompts (or the test split of ``task.judge_prompts``, e.g. ``rt_prompts``
to judge on the same prompts as a PPO run) are also answered by sampling (``task.max_new_tokens``,
``task.temperature``, ... and ``task.eval_seed``, as in PPO) before and after training, and the
judge's scores are reported as ``judge_mean``/``judge_median`` with ``kl`` to the reference,
``response_length`` and ``ended_fraction`` (:func:`tunelab.tasks.rl.judged_generation`): what the
policy *does*, not only how it ranks fixed pairs. The judge never takes part in training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, field_validator
from torch import nn

from tunelab.data.loaders import eval_loader, make_loader
from tunelab.data.preference_tokens import PairCollator, encode_pair, pair_length, render_response
from tunelab.data.preferences import PreferencePair
from tunelab.data.templates import Template, adds_bos
from tunelab.errors import UserError
from tunelab.models.loading import ensure_pad_token
from tunelab.row_scores import ROWS_KEY, RowScores, hits
from tunelab.tasks.base import TaskSpec
from tunelab.tasks.common import config_for_source, inference_accelerator
from tunelab.tasks.dpo_losses import LOSSES, REFERENCE_FREE, chosen_nll, preference_loss
from tunelab.tasks.logprobs import response_token_logps
from tunelab.tasks.preference_data import load_pair_splits
from tunelab.tasks.rl import JudgeOptions, check_generation_budget, judged_rows, prompt_row
from tunelab.tasks.rl_rewards import Scorer, load_scorer
from tunelab.tasks.sft import SFTTask, SFTTaskConfig
from tunelab.train.reference import Reference
from tunelab.train.step import batch_size_of

PAIR_METRICS = ("loss", "reward_accuracy", "chosen_reward", "rejected_reward", "reward_margin",
                "logp_chosen", "logp_rejected")
PAIR_COLUMNS = ("pair_loss", "chosen_reward", "rejected_reward", "logp_chosen", "logp_rejected")
"""What :func:`pair_outputs` gives per pair (the per-row test scores are made from these)."""


class DPOTaskConfig(JudgeOptions):
    """``task:`` options of the DPO family (``task.name: dpo``); the sampling options and
    ``judge*`` apply to judged evaluation only (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["dpo"] = Field("dpo", description="Preference optimisation of a causal LM (DPO and relatives).")
    loss: Literal[LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid", description="sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO), simpo, orpo (the last two "
                               "need no reference model).")
    beta: float = Field(0.1, gt=0, description="DPO's beta: strength of the KL constraint (ORPO: its lambda).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed fraction of flipped labels (cDPO for sigmoid/simpo, rDPO for robust).")
    sft_weight: float = Field(0.0, ge=0, description="Weight of an added NLL term on the chosen responses.")
    simpo_gamma: float = Field(0.5, description="SimPO's target reward margin gamma.")
    reference: Literal["auto", "copy"] = Field(
        "auto", description="auto: the policy with adapters off (a frozen copy only for in-place methods); "
                            "copy: always a frozen copy.")
    precompute_reference: bool = Field(
        False, description="Score the training pairs under the reference once before training.")
    template: str = Field("auto", description="auto, chat, alpaca, or a template string with {prompt}.")
    system_prompt: str | None = Field(None, description="System turn added to prompts that have none.")
    judge_prompts: str | None = Field(
        None, description="Judge answers to this prompt source's splits (a prompt file or rt_prompts) instead of "
                          "the pairs' own prompts, e.g. to compare with a PPO run on the same prompts.")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return SFTTaskConfig._template(value)


@dataclass
class PairData:
    """Prepared preference data: pairs and encoded rows per split."""

    pairs: dict[str, list[PreferencePair]]
    rows: dict[str, list[dict[str, Any]]]
    template: Template
    labels: None = None
    prompt_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Each split's distinct prompts encoded for sampling (only with ``task.judge``)."""


# ---------------------------------------------------------------------------- the computation

def pair_outputs(model: nn.Module, batch: dict[str, torch.Tensor], cfg: DPOTaskConfig,
                 reference: Reference | None) -> dict[str, torch.Tensor]:
    """Loss (scalar) and per-pair rewards / log-probabilities of one batch of pairs."""
    per_token = response_token_logps(model, batch).logps  # 0 outside the responses
    mask = batch["response_mask"][:, 1:].to(per_token.dtype)
    logps, counts = (per_token * mask).sum(-1), mask.sum(-1)
    n = batch_size_of(batch) // 2
    ref_c = ref_r = None
    if cfg.loss not in REFERENCE_FREE:
        ref = batch.get("ref_logp")
        if ref is None:
            if reference is None:
                raise ValueError("this loss needs a reference model")
            ref = reference(model, lambda net: reference_logps(net, batch))
        ref = ref.to(logps.dtype)
        ref_c, ref_r = ref[:n], ref[n:]
    losses, reward_c, reward_r = preference_loss(
        cfg.loss, cfg.beta, logps[:n], logps[n:], counts[:n], counts[n:], ref_c, ref_r,
        label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma)
    loss = losses.mean()
    nll_weight = 1.0 if cfg.loss == "orpo" else cfg.sft_weight
    if nll_weight:
        loss = loss + nll_weight * chosen_nll(per_token[:n], mask[:n])
    return {"loss": loss, "pair_loss": losses.detach(), "chosen_reward": reward_c, "rejected_reward": reward_r,
            "logp_chosen": logps[:n].detach(), "logp_rejected": logps[n:].detach()}


@torch.no_grad()
def reference_logps(net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed response log-probabilities ``[2B]`` under ``net`` (the reference)."""
    return response_token_logps(net, batch).logps.sum(-1)


class PairStats:
    """Sums of the pair metrics over batches (for log lines and evaluation)."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(PAIR_METRICS, 0.0)
        self.pairs = 0
        self.batches = 0

    def add(self, out: dict[str, torch.Tensor]) -> None:
        c, r = out["chosen_reward"].double(), out["rejected_reward"].double()
        n = int(c.numel())
        self.pairs += n
        self.batches += 1
        self.sums["loss"] += float(out["loss"].detach()) * n
        self.sums["reward_accuracy"] += float((c > r).double().sum())
        self.sums["chosen_reward"] += float(c.sum())
        self.sums["rejected_reward"] += float(r.sum())
        self.sums["reward_margin"] += float((c - r).sum())
        self.sums["logp_chosen"] += float(out["logp_chosen"].double().sum())
        self.sums["logp_rejected"] += float(out["logp_rejected"].double().sum())

    def means(self) -> dict[str, float]:
        return {k: v / self.pairs for k, v in self.sums.items()} if self.pairs else {}


class DPOStep:
    """The DPO family's training step: one forward over chosen + rejected, a reference pass (or
    precomputed reference log-probabilities), the configured loss."""

    def __init__(self, task: DPOTask, cfg: Any, collate: PairCollator, log=print) -> None:
        self.task, self.cfg, self.collate, self.log = task, task.cfg, collate, log
        self.eval_batch_size = cfg.train.eval_batch_size
        self.stats = PairStats()

    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]:
        """Make the reference (before any update); optionally score the pairs under it once."""
        reference = self.task.make_reference(model)
        if reference is None or not self.cfg.precompute_reference:
            return rows
        rows = [dict(row) for row in rows]
        loader, _ = make_loader(rows, self.eval_batch_size, self.collate, train=False, seed=0, group_by_length=False)
        device = next(model.parameters()).device
        scores: list[torch.Tensor] = []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            scores.append(reference(model, lambda net: reference_logps(net, batch)).cpu())
        for start, ref in zip(range(0, len(rows), self.eval_batch_size), scores):
            chunk = rows[start:start + self.eval_batch_size]
            for i, row in enumerate(chunk):
                row["ref_logp_chosen"], row["ref_logp_rejected"] = float(ref[i]), float(ref[len(chunk) + i])
        self.log(f"reference log-probabilities of {len(rows)} training pairs computed once "
                 f"({reference.kind} reference)")
        return rows

    def micro_batches(self, model: nn.Module, batch: dict) -> list[dict]:
        return [batch]

    def micro_per_batch(self) -> int:
        return 1

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        out = pair_outputs(model, batch, self.cfg, self.task.reference)
        self.stats.add(out)
        return out["loss"]

    def count(self, batch: dict) -> tuple[int, int]:
        return batch_size_of(batch) // 2, int(batch["attention_mask"].sum())

    def row_length(self, row: dict) -> int | None:
        return pair_length(row)

    def log_metrics(self) -> dict[str, float]:
        """Pair metrics of the batches since the previous train log line."""
        means, self.stats = self.stats.means(), PairStats()
        return {k: round(v, 6) for k, v in means.items() if k != "loss"}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# ---------------------------------------------------------------------------- the task

@dataclass
class DPOTask:
    """The DPO family; see the module docstring."""

    cfg: DPOTaskConfig
    name: str = "dpo"
    reference: Reference | None = field(default=None, repr=False)
    judge: Scorer | None = field(default=None, repr=False)

    @property
    def spec(self) -> TaskSpec:
        return DPO

    @property
    def lm(self) -> SFTTask:
        """The causal-LM side shared with instruction tuning (model, tokenizer, generation)."""
        return SFTTask(SFTTaskConfig(template=self.cfg.template, system_prompt=self.cfg.system_prompt))

    # ------------------------------------------------------------------ model and inputs
    def resolve_model(self, ref: str) -> str:
        return self.lm.resolve_model(ref)

    def load_processor(self, resolved: str) -> Any:
        return self.lm.load_processor(resolved)

    def build_model(self, resolved: str, labels: Any = None) -> nn.Module:
        return self.lm.build_model(resolved)

    def build_model_streamed(self, resolved: str, transforms_for) -> tuple[nn.Module, str] | None:
        return self.lm.build_model_streamed(resolved, transforms_for)

    def make_reference(self, model: nn.Module, frozen: nn.Module | None = None) -> Reference | None:
        """The reference for this run's loss (None for the reference-free losses)."""
        if self.cfg.loss in REFERENCE_FREE:
            self.reference = None
        else:
            self.reference = Reference(model, force_copy=self.cfg.reference == "copy", frozen=frozen)
        return self.reference

    # ------------------------------------------------------------------ data
    def prepare(self, cfg: Any, tokenizer: Any) -> PairData:
        """Read, split and encode the pairs (every user error about the data happens here)."""
        ensure_pad_token(tokenizer)
        template = Template.resolve(self.cfg.template, tokenizer)
        pairs, _ = load_pair_splits(cfg, self.name)
        bos = adds_bos(tokenizer)
        rows = {split: [self.encode(p, tokenizer, template, cfg.data.max_length, bos) for p in items]
                for split, items in pairs.items()}
        data = PairData(pairs, rows, template)
        if self.cfg.judge:
            check_generation_budget(self.cfg, cfg)
            if self.judge is None:
                self.judge = load_scorer(self.cfg.judge, "task.judge", self.cfg.judge_label, self.cfg.judge_output)
            budget = cfg.data.max_length - self.cfg.max_new_tokens
            for split, prompts in self.judged_prompts(cfg, pairs).items():
                data.prompt_rows[split] = [prompt_row(p, tokenizer, template, budget, bos, self.cfg.system_prompt)
                                           for p in prompts]
        return data

    def judged_prompts(self, cfg: Any, pairs: dict[str, list[PreferencePair]]) -> dict[str, list[tuple]]:
        """Each split's distinct prompts to judge: the pairs' own, or ``task.judge_prompts``'s."""
        if self.cfg.judge_prompts:
            from tunelab.tasks.rl import load_prompt_splits

            other = cfg.model_copy(deep=True)
            other.data.source, other.data.validation_file, other.data.test_file = self.cfg.judge_prompts, None, None
            other.data.max_train_samples = 1  # only validation/test are judged
            return load_prompt_splits(other, "dpo (task.judge_prompts)")
        return {split: list({json.dumps(p.prompt, sort_keys=True): p.prompt for p in items}.values())
                for split, items in pairs.items()}

    def encode(self, pair: PreferencePair, tokenizer: Any, template: Template, max_length: int,
               bos: bool | None = None) -> dict[str, Any]:
        prompt = self.with_system(pair.prompt)
        prompt_text, chosen = render_response(template, tokenizer, prompt, pair.chosen)
        _, rejected = render_response(template, tokenizer, prompt, pair.rejected)
        return encode_pair(prompt_text, chosen, rejected, tokenizer, template, max_length, pair.margin, bos)

    def with_system(self, prompt: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        messages = [dict(m) for m in prompt]
        if self.cfg.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return messages

    def check_methods(self, cfg: Any, methods: Sequence[Any]) -> None:
        """Every method works: the reference is the policy with its adapters off, or a frozen copy."""

    def collators(self, cfg: Any, tokenizer: Any, model: nn.Module) -> tuple[Any, Any]:
        collate = PairCollator(tokenizer.pad_token_id)
        return collate, collate

    # ------------------------------------------------------------------ training
    def train_step(self, cfg: Any, model: nn.Module, tokenizer: Any, log=print) -> DPOStep:
        return DPOStep(self, cfg, PairCollator(tokenizer.pad_token_id), log)

    def evaluate(self, model: nn.Module, loader, accelerator, per_row: bool = False) -> dict[str, Any]:
        """The pair metrics over a loader of pairs (mean per pair); with ``per_row`` (the test split
        only), each pair's numbers under :data:`ROWS_KEY` too (:meth:`pair_rows`)."""
        return self.pair_pass(model, loader, accelerator, per_row)

    @torch.inference_mode()
    def pair_pass(self, model: nn.Module, loader, accelerator, per_row: bool) -> dict[str, Any]:
        """:meth:`evaluate`: one policy (and reference) pass over the loader."""
        if self.reference is None and self.cfg.loss not in REFERENCE_FREE:
            self.make_reference(accelerator.unwrap_model(model))
        model.eval()
        stats = PairStats()
        parts: list[torch.Tensor] = []
        for batch in loader:
            out = pair_outputs(model, batch, self.cfg, self.reference)
            stats.add(out)
            if per_row:
                columns = [out[k].detach().double() for k in PAIR_COLUMNS]
                parts.append(accelerator.gather_for_metrics(torch.stack(columns, dim=1)).cpu())
        totals = torch.tensor([stats.sums[k] for k in PAIR_METRICS] + [stats.pairs], dtype=torch.float64,
                              device=accelerator.device)
        totals = accelerator.reduce(totals, reduction="sum")
        pairs = max(float(totals[-1]), 1.0)
        metrics = {k: float(v) / pairs for k, v in zip(PAIR_METRICS, totals[:-1])} | {"pairs": int(totals[-1])}
        if not per_row:
            return metrics
        rows = self.pair_rows(torch.cat(parts) if parts else torch.zeros(0, len(PAIR_COLUMNS), dtype=torch.float64))
        if len(rows["reward_margin"]):
            # The rows' means (float64 over pairs; the sums above add float32 batch means, and across
            # processes also the rows a shard repeats): so the per-row scores give the reported metric.
            metrics.update({name: scores.value() for name, scores in rows.items()}, pairs=len(rows["reward_margin"]))
        return {**metrics, ROWS_KEY: rows}

    def pair_rows(self, table: torch.Tensor) -> dict[str, RowScores]:
        """Per-pair scores (:mod:`tunelab.row_scores`) from a ``[pairs, PAIR_COLUMNS]`` table; ``loss``
        only when it is a plain mean over pairs (no NLL term, which is a token mean over each batch)."""
        col = dict(zip(PAIR_COLUMNS, table.unbind(dim=1)))
        c, r = col["chosen_reward"], col["rejected_reward"]
        rows = {"reward_accuracy": hits((c > r).numpy()), "chosen_reward": RowScores(c.numpy()),
                "rejected_reward": RowScores(r.numpy()), "reward_margin": RowScores((c - r).numpy()),
                "logp_chosen": RowScores(col["logp_chosen"].numpy()),
                "logp_rejected": RowScores(col["logp_rejected"].numpy())}
        if not (self.cfg.loss == "orpo" or self.cfg.sft_weight):
            rows = {"loss": RowScores(col["pair_loss"].numpy()), **rows}
        return rows

    def baseline(self, model: nn.Module, data: PairData, tokenizer: Any, accelerator, cfg: Any):
        """Before training the policy is the reference, so the pair metrics are known (loss ln 2 for
        sigmoid); with a judge, the starting policy's judged generations (KL 0 by construction)."""
        split = _eval_split(data)
        if not self.cfg.judge or split is None:
            return None
        metrics, samples = self.judged(model, data, tokenizer, cfg, split, reference=None)
        return {"split": split, **metrics, **({"kl": 0.0} if self.cfg.loss not in REFERENCE_FREE else {})}, samples

    def test_metrics(self, model: nn.Module, data: PairData, tokenizer: Any, accelerator, cfg: Any
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        split = _eval_split(data)
        if split is None:
            return {}, []
        loader = eval_loader(data.rows[split], cfg.train.eval_batch_size, PairCollator(tokenizer.pad_token_id),
                             accelerator)
        metrics = {"split": split, **self.evaluate(model, loader, accelerator, per_row=True)}
        judged, samples = self.judged(model, data, tokenizer, cfg, split, self.reference, per_row=True)
        rows = {**metrics.pop(ROWS_KEY, {}), **judged.pop(ROWS_KEY, {})}  # per pair, then per judged prompt
        return {**metrics, **judged, **({ROWS_KEY: rows} if rows else {})}, samples

    def judged(self, model: nn.Module, data: PairData, tokenizer: Any, cfg: Any, split: str,
               reference: Reference | None, per_row: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Judged generation on the split's distinct prompts (nothing without ``task.judge``); with
        ``per_row``, each prompt's scores under :data:`ROWS_KEY` too."""
        if self.judge is None or not data.prompt_rows.get(split):
            return {}, []
        metrics, samples = judged_rows(model, tokenizer, data.prompt_rows[split], self.cfg, {"judge": self.judge},
                                       reference, cfg.train.eval_batch_size, per_row=per_row)
        return {k: v for k, v in metrics.items() if k != "prompts"} | {"judged_prompts": metrics["prompts"]}, samples

    # ------------------------------------------------------------------ the run directory
    def save_artifacts(self, folder: Path, model: nn.Module, tokenizer: Any, data: Any, test: dict) -> None:
        tokenizer.save_pretrained(Path(folder) / "model")

    def load_saved_processor(self, model_dir: Path, resolved: str) -> Any:
        return self.lm.load_saved_processor(model_dir, resolved)

    # ------------------------------------------------------------------ using a trained run
    def predict(self, loaded: Any, inputs: Sequence[str] | None, file: str | None) -> list[dict[str, Any]]:
        raise UserError(f"run {loaded.run.path} is a preference-tuned language model; use tunelab generate "
                        f"{loaded.run.path} --prompt ... (or tunelab chat {loaded.run.path})")

    def evaluate_source(self, loaded: Any, data: str | None, split: str) -> dict[str, Any]:
        """Pair metrics of a trained run on one of its splits, or on another preference file."""
        cfg = config_for_source(loaded.cfg, data)
        prepared = self.prepare(cfg, loaded.processor)
        name = "train" if data else split
        if name not in prepared.rows:
            raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prepared.rows)}")
        frozen = None
        if self.cfg.loss not in REFERENCE_FREE and (self.cfg.reference == "copy" or _not_disableable(loaded.model)):
            frozen = initial_policy(loaded.cfg, self)
        self.make_reference(loaded.model, frozen=frozen)
        acc = inference_accelerator()
        loader = eval_loader(prepared.rows[name], cfg.train.eval_batch_size,
                             PairCollator(loaded.processor.pad_token_id), acc)
        model = acc.prepare(loaded.model)
        metrics = {"split": "eval" if data else split, **self.evaluate(model, loader, acc)}
        judged, _ = self.judged(model, prepared, loaded.processor, cfg, name, self.reference)
        return metrics | judged


def _not_disableable(model: nn.Module) -> bool:
    """Whether switching the trained run's adapters off does not give its starting policy (in-place
    methods; virtual tokens, which start random)."""
    from tunelab.train.reference import changes_base_in_place

    return changes_base_in_place(model) or any(getattr(m, "tunelab_virtual_tokens", False) for m in model.modules())


def initial_policy(cfg: Any, task: Any) -> nn.Module:
    """The policy as it was before the run's first step: rebuilt with the run's seed (training
    seeds the same way before it builds the model), for evaluating a finished run."""
    from accelerate.utils import set_seed

    from tunelab.pipeline import build_model

    set_seed(cfg.seed)
    model, _ = build_model(cfg, task, task.resolve_model(cfg.model.name_or_path), None)
    return model


def _eval_split(data: PairData) -> str | None:
    return "test" if data.rows.get("test") else "validation" if data.rows.get("validation") else None


def _headline(test: dict[str, float]) -> str:
    return "judge_mean" if "judge_mean" in test else "reward_accuracy"


DPO = TaskSpec(
    name="dpo", config_cls=DPOTaskConfig, build=lambda cfg: DPOTask(cfg),
    description="Preference optimisation of a causal LM: DPO, IPO, hinge, robust DPO, SimPO, ORPO.",
    metrics={"loss": False, "reward_accuracy": True, "chosen_reward": True, "rejected_reward": False,
             "reward_margin": True, "logp_chosen": True, "logp_rejected": False, "judge_mean": True,
             "judge_median": True, "kl": False, "response_length": True, "ended_fraction": True},
    validation_metric=("loss", False), headline=_headline,
    summary_metrics=("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"),
    generates_text=True, has_labels=False, peft_task_type="CAUSAL_LM",
)
SPECS = (DPO,)


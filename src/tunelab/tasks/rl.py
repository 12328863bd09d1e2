"""What PPO and GRPO share (``task.name: ppo`` / ``grpo``): prompt data, the policy model, the
rollout step on the engine's seam, judged evaluation, and the run directory.

The loop is the engine's (:mod:`tunelab.train.engine`). One loader batch is ``train.batch_size``
prompts; :meth:`RolloutStep.micro_batches` turns it into a rollout batch -- sample responses
(:mod:`tunelab.tasks.rollouts`), score them (:mod:`tunelab.tasks.rl_rewards`), take the old and
reference log-probabilities (and values) without gradients, compute advantages -- and returns
``ppo_epochs x minibatches`` shuffled minibatches, each one backward pass (one optimizer step with
``train.grad_accum: 1``). Evaluation, checkpoints and early stopping fall between rollout batches.
The step's state (its rollout :class:`torch.Generator`, the KL coefficient) is checkpointed, so a
resumed run continues bit for bit.

Dropout is switched off in the policy while it trains (as TRL does): the rollout's log-probabilities
and the first update's are then the same function, and the first PPO ratio is exactly 1.

Evaluation samples responses to held-out prompts with the training sampling settings and a fixed
seed (``task.eval_seed``), so "before" (the baseline, ``task.eval_baseline``) and "after" use the
same randomness, and reports ``reward_mean``/``reward_median`` (the training reward),
``judge_mean``/``judge_median`` (``task.judge``: a separate scorer, e.g. a sentiment classifier the
policy never trained against), ``kl`` (mean summed per-token KL to the reference of the sampled
responses), ``response_length`` and ``ended_fraction``.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from tunelab.data.preference_tokens import PromptCollator, encode_prompt
from tunelab.data.preferences import read_prompts
from tunelab.data.templates import Template, adds_bos
from tunelab.errors import UserError
from tunelab.models.loading import ensure_pad_token
from tunelab.row_scores import ROWS_KEY, RowScores, hits
from tunelab.tasks.common import config_for_source, inference_accelerator
from tunelab.tasks.logprobs import response_token_logps
from tunelab.tasks.rl_rewards import Scorer, load_scorer
from tunelab.tasks.rollouts import Rollout, Sampling, draw_seed, sample
from tunelab.tasks.sft import SFTTask, SFTTaskConfig
from tunelab.train.reference import Reference

Message = dict[str, str]


class JudgeOptions(BaseModel):
    """Judged generation: a scorer of sampled responses to held-out prompts (RL and DPO runs)."""

    model_config = ConfigDict(extra="forbid")

    judge: str | None = Field(
        None, description="A finished reward or classification run, or 'module:function', that scores test "
                          "generations (judge_mean); never used for training.")
    judge_label: str | None = Field(None, description="Label whose probability/logit a classification judge reports.")

    @field_validator("judge_label", "reward_label", mode="before", check_fields=False)
    @classmethod
    def _label_text(cls, value: Any) -> Any:
        """Labels are names (a label written as a number on the command line means its text)."""
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    judge_output: Literal["probability", "logit"] = Field("probability",
                                                          description="What a classification judge reports.")
    max_new_tokens: int = Field(48, ge=1, description="Most tokens sampled per response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts and judged evaluation.")
    top_k: int = Field(0, ge=0, description="Sample among the top_k tokens only (0: off).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold (1.0: off).")
    eval_seed: int = Field(0, description="Seed of evaluation sampling (the same before and after training).")
    log_generations: int = Field(4, ge=0, description="Test generations written to metrics.jsonl.")

    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p)


class RLOptions(JudgeOptions):
    """``task:`` options PPO and GRPO share."""

    reward: str = Field(..., description="A finished reward-model or classification run, or 'module:function'.")
    reward_label: str | None = Field(
        None, description="Classification reward: the label whose probability/logit is the reward (default: the "
                          "second of two labels).")
    reward_output: Literal["probability", "logit"] = Field("probability", description="Classification reward: "
                                                                                   "probability or logit.")
    missing_eos_penalty: float | None = Field(
        None, description="Subtracted from the reward of a response that hit max_new_tokens without ending.")
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout batch.")
    minibatches: int = Field(1, ge=1, description="Minibatches per pass (each one optimizer step at grad_accum 1).")
    clip_range: float = Field(0.2, gt=0, description="Clipping of the policy ratio (PPO's epsilon).")
    template: str = Field("auto", description="auto, chat, alpaca, or a template string with {prompt}.")
    system_prompt: str | None = Field(None, description="System turn added to prompts that have none.")
    eval_baseline: bool = Field(True, description="Evaluate the starting policy on the test prompts first.")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return SFTTaskConfig._template(value)


@dataclass
class PromptData:
    """Prepared RL data: prompts (as turns) and encoded rows per split."""

    prompts: dict[str, list[tuple[Message, ...]]]
    rows: dict[str, list[dict[str, Any]]]
    template: Template
    labels: None = None


class PromptBatches(PromptCollator):
    """Left-padded prompt batches (:class:`PromptCollator`) plus the prompts' turns (``prompts``),
    which the scorers read."""

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {**super().__call__(rows), "prompts": [row["prompt"] for row in rows]}


# ---------------------------------------------------------------------------- shared computations

@torch.no_grad()
def sequence_logps(net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token log-probabilities ``[B, T-1]`` of a rollout batch's responses under ``net`` (no gradient;
    0 outside the responses)."""
    return response_token_logps(net, batch).logps


def chunked(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def trimmed(batch: dict[str, torch.Tensor], rows: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    """The batch's ``rows``, cut to their longest real sequence (``[B, T]`` and ``[B, T-1]`` tensors)."""
    picked = {k: v[rows] for k, v in batch.items()}
    width = int(picked["attention_mask"].sum(-1).max())
    full = batch["attention_mask"].shape[1]
    return {k: v[:, :width] if v.dim() == 2 and v.shape[1] == full else
            v[:, : width - 1] if v.dim() == 2 and v.shape[1] == full - 1 else v for k, v in picked.items()}


def reference_logps(reference: Reference, policy: nn.Module, batch: dict[str, torch.Tensor], size: int
                    ) -> torch.Tensor:
    """Per-token reference log-probabilities of a rollout batch, ``size`` rows per forward."""
    parts = []
    for rows in chunked(batch["input_ids"].shape[0], size):
        part = trimmed(batch, rows)
        lp = reference(policy, lambda net: sequence_logps(net, part))
        parts.append(_pad_to(lp, batch["input_ids"].shape[1] - 1))
    return torch.cat(parts)


def _pad_to(values: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere in the policy (modules and attention probabilities); see the module docstring."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout"):
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)


class RolloutStats:
    """Running sums of the step's numbers between two train log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.scores: list[float] = []

    def add(self, name: str, value: float, n: int = 1) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * n
        self.counts[name] = self.counts.get(name, 0) + n

    def means(self) -> dict[str, float]:
        out = {k: round(self.sums[k] / self.counts[k], 6) for k in self.sums if self.counts[k]}
        if self.scores:
            out["reward_median"] = round(statistics.median(self.scores), 6)
        return out


class RolloutStep:
    """The training step of an RL task (see the module docstring). Subclasses supply
    :meth:`expand` (prompts -> rollout rows), :meth:`process` (advantages and what the loss reads)
    and :meth:`loss`."""

    def __init__(self, task: RLTask, cfg: Any, tokenizer: Any, log=print) -> None:
        self.task, self.opts, self.tokenizer, self.log = task, task.cfg, tokenizer, log
        self.chunk = cfg.train.eval_batch_size
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.stats = RolloutStats()

    # ------------------------------------------------------------------ the seam
    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]:
        disable_dropout(model)
        self.task.make_reference(model)
        return rows

    def micro_per_batch(self) -> int:
        return self.opts.ppo_epochs * self.opts.minibatches

    def micro_batches(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        policy = _unwrap(model)
        ids, mask, prompts = self.expand(batch["prompt_ids"], batch["prompt_mask"], batch["prompts"])
        rollout = sample(policy, self.tokenizer, ids, mask, prompts, self.opts.sampling(), draw_seed(self.generator))
        scores = self.task.scorers()["reward"](rollout.prompts, rollout.responses)
        device = next(policy.parameters()).device
        data = {k: v.to(device) for k, v in rollout.tensors().items()}
        self.record(rollout, scores)
        penalty = self.opts.missing_eos_penalty
        if penalty:
            scores = scores - penalty * (~rollout.ended).double()
            self.stats.add("penalised_reward_mean", float(scores.mean()), len(rollout.responses))
        data = self.process(model, data, scores.to(device))
        return self.shuffled(data)

    def shuffled(self, data: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """``ppo_epochs`` passes over the rollout batch, each in ``minibatches`` shuffled parts."""
        n = data["input_ids"].shape[0]
        out = []
        for epoch in range(self.opts.ppo_epochs):
            order = torch.randperm(n, generator=self.generator)
            for part in torch.tensor_split(order, self.opts.minibatches):
                if len(part):
                    micro = trimmed(data, part.to(data["input_ids"].device))
                    micro["first_pass"] = epoch == 0
                    out.append(micro)
        return out

    def record(self, rollout: Rollout, scores: torch.Tensor) -> None:
        n = len(rollout.responses)
        self.stats.add("reward_mean", float(scores.mean()), n)
        self.stats.scores.extend(scores.tolist())
        self.stats.add("response_length", float(rollout.lengths.double().mean()), n)
        self.stats.add("ended_fraction", float(rollout.ended.double().mean()), n)

    def count(self, batch: dict[str, Any]) -> tuple[int, int]:
        """Rollouts and their tokens, counted on the first pass over a rollout batch only."""
        if not batch.get("first_pass", True):
            return 0, 0
        return int(batch["input_ids"].shape[0]), int(batch["attention_mask"].sum())

    def row_length(self, row: dict) -> int | None:
        return len(row["prompt_ids"])

    def log_metrics(self) -> dict[str, float]:
        means, self.stats = self.stats.means(), RolloutStats()
        return means | self.extra_log()

    def extra_log(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        state = self.generator.get_state().numpy().tobytes()
        return {"generator": base64.b64encode(state).decode("ascii")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            raw = bytearray(base64.b64decode(state["generator"]))
            self.generator.set_state(torch.frombuffer(raw, dtype=torch.uint8).clone())

    # ------------------------------------------------------------------ for subclasses
    def expand(self, ids: torch.Tensor, mask: torch.Tensor, prompts: list) -> tuple[torch.Tensor, torch.Tensor, list]:
        return ids, mask, list(prompts)

    def process(self, model: nn.Module, data: dict[str, torch.Tensor], scores: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


# ---------------------------------------------------------------------------- judged evaluation

@torch.no_grad()
def judged_generation(model: nn.Module, tokenizer: Any, loader, sampling: Sampling, seed: int,
                      scorers: dict[str, Scorer], reference: Reference | None, per_row: bool = False
                      ) -> tuple[dict[str, Any], list[dict]]:
    """Sample one response per prompt (seed ``seed + batch index``), score it with every scorer,
    and measure its KL to the reference; see the module docstring for the metrics. With ``per_row``
    (test metrics), each prompt's numbers for the means go under :data:`ROWS_KEY` too (medians have
    none)."""
    policy = _unwrap(model)
    was_training = policy.training
    policy.eval()
    values: dict[str, list[float]] = {name: [] for name in scorers}
    kls, lengths, ended, samples = [], [], [], []
    for index, batch in enumerate(loader):
        rollout = sample(policy, tokenizer, batch["prompt_ids"], batch["prompt_mask"], batch["prompts"],
                         sampling, seed + index)
        row_scores = {name: scorer(rollout.prompts, rollout.responses).tolist() for name, scorer in scorers.items()}
        for name, v in row_scores.items():
            values[name].extend(v)
        if reference is not None:
            device = next(policy.parameters()).device
            data = {k: v.to(device) for k, v in rollout.tensors().items()}
            m = data["response_mask"][:, 1:].double()
            logp = sequence_logps(policy, data).double()
            ref = reference(policy, lambda net: sequence_logps(net, data)).double()
            kls.extend(((logp - ref) * m).sum(-1).cpu().tolist())
        lengths.extend(rollout.lengths.tolist())
        ended.extend(rollout.ended.tolist())
        for i, (prompt, response) in enumerate(zip(rollout.prompts, rollout.responses)):
            samples.append({"prompt": prompt[-1]["content"], "response": response,
                            **{name: round(v[i], 6) for name, v in row_scores.items()}})
    policy.train(was_training)
    metrics: dict[str, Any] = {}
    for name, v in values.items():
        if v:
            metrics[f"{name}_mean"], metrics[f"{name}_median"] = statistics.fmean(v), statistics.median(v)
    if reference is not None:
        metrics["kl"] = statistics.fmean(kls) if kls else 0.0
    metrics["response_length"] = statistics.fmean(lengths) if lengths else 0.0
    metrics["ended_fraction"] = statistics.fmean(float(e) for e in ended) if ended else 0.0
    metrics["prompts"] = len(lengths)
    if per_row and lengths:
        rows = {f"{name}_mean": RowScores(v) for name, v in values.items() if v}
        if reference is not None and kls:
            rows["kl"] = RowScores(kls)
        rows["response_length"] = RowScores(lengths)
        rows["ended_fraction"] = hits(ended)
        metrics[ROWS_KEY] = rows
    return metrics, samples


def judged_rows(model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, Any]], opts: JudgeOptions,
                scorers: dict[str, Scorer], reference: Reference | None, batch_size: int, per_row: bool = False
                ) -> tuple[dict[str, Any], list[dict]]:
    """:func:`judged_generation` over encoded prompt rows (:func:`prompt_row`), in their order."""
    from tunelab.data.loaders import make_loader

    loader, _ = make_loader(list(rows), batch_size, PromptBatches(tokenizer.pad_token_id), train=False, seed=0,
                            group_by_length=False)
    return judged_generation(model, tokenizer, loader, opts.sampling(), opts.eval_seed, scorers, reference, per_row)


def prompt_row(prompt: Sequence[Message], tokenizer: Any, template: Template, budget: int, bos: bool | None,
               system_prompt: str | None) -> dict[str, Any]:
    """One prompt encoded for sampling (at most ``budget`` tokens, cut from the left), with its turns."""
    messages = [dict(m) for m in prompt]
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    row = encode_prompt(template.prompt(messages, tokenizer), tokenizer, template, budget, bos)
    return {**row, "prompt": tuple(prompt)}


def check_generation_budget(opts: JudgeOptions, cfg: Any) -> None:
    if opts.max_new_tokens >= cfg.data.max_length:
        raise UserError(f"task.max_new_tokens={opts.max_new_tokens} leaves no room for the prompt in "
                        f"data.max_length={cfg.data.max_length}; raise data.max_length or lower max_new_tokens")


# ---------------------------------------------------------------------------- the task

@dataclass
class RLTask:
    """The shared half of PPO and GRPO (see the module docstring); subclasses set ``spec``,
    ``step_cls`` and may add a value head in :meth:`build_model`."""

    cfg: Any
    name: str = "rl"
    reference: Reference | None = field(default=None, repr=False)
    _scorers: dict[str, Scorer] | None = field(default=None, repr=False)
    step_cls: type = RolloutStep

    @property
    def lm(self) -> SFTTask:
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
        self.reference = Reference(model, frozen=frozen) if self.needs_reference() else None
        return self.reference

    def needs_reference(self) -> bool:
        return True

    def scorers(self, judge: bool = False) -> dict[str, Scorer]:
        """The reward scorer (and the judge when asked for and configured), loaded once."""
        if self._scorers is None:
            c = self.cfg
            self._scorers = {"reward": load_scorer(c.reward, "task.reward", c.reward_label, c.reward_output)}
            if c.judge:
                self._scorers["judge"] = load_scorer(c.judge, "task.judge", c.judge_label, c.judge_output)
        return self._scorers if judge else {"reward": self._scorers["reward"]}

    # ------------------------------------------------------------------ data
    def prepare(self, cfg: Any, tokenizer: Any) -> PromptData:
        """Read, split and encode the prompts; load the scorers (every user error happens here)."""
        ensure_pad_token(tokenizer)
        check_generation_budget(self.cfg, cfg)
        template = Template.resolve(self.cfg.template, tokenizer)
        prompts = load_prompt_splits(cfg, self.name)
        budget, bos = cfg.data.max_length - self.cfg.max_new_tokens, adds_bos(tokenizer)
        rows = {split: [self.encode(p, tokenizer, template, budget, bos) for p in items]
                for split, items in prompts.items()}
        self.scorers(judge=True)
        return PromptData(prompts, rows, template)

    def encode(self, prompt: Sequence[Message], tokenizer: Any, template: Template, budget: int,
               bos: bool | None) -> dict[str, Any]:
        return prompt_row(prompt, tokenizer, template, budget, bos, self.cfg.system_prompt)

    def check_methods(self, cfg: Any, methods: Sequence[Any]) -> None:
        """Every method works: the reference is the policy with its adapters off, or a frozen copy."""

    def collators(self, cfg: Any, tokenizer: Any, model: nn.Module) -> tuple[Any, Any]:
        collate = PromptBatches(tokenizer.pad_token_id)
        return collate, collate

    # ------------------------------------------------------------------ training
    def train_step(self, cfg: Any, model: nn.Module, tokenizer: Any, log=print) -> RolloutStep:
        self.tokenizer = tokenizer
        return self.step_cls(self, cfg, tokenizer, log)

    def evaluate(self, model: nn.Module, loader, accelerator) -> dict[str, Any]:
        metrics, _ = judged_generation(model, self.tokenizer, loader, self.cfg.sampling(), self.cfg.eval_seed,
                                       self.scorers(), self.reference)
        return metrics

    def _split_metrics(self, model: nn.Module, data: PromptData, tokenizer: Any, accelerator, cfg: Any,
                       reference: Reference | None, per_row: bool = False) -> tuple[dict[str, Any], list[dict]]:
        split = "test" if data.rows.get("test") else "validation" if data.rows.get("validation") else None
        if split is None:
            return {}, []
        metrics, samples = judged_rows(model, tokenizer, data.rows[split], self.cfg, self.scorers(judge=True),
                                       reference, cfg.train.eval_batch_size, per_row=per_row)
        return {"split": split, **metrics}, samples

    def baseline(self, model: nn.Module, data: PromptData, tokenizer: Any, accelerator, cfg: Any):
        """The starting policy's test metrics (same prompts and sampling seed as after training);
        its KL to the reference is 0 by construction (the reference *is* the starting policy)."""
        if not self.cfg.eval_baseline:
            return None
        metrics, samples = self._split_metrics(model, data, tokenizer, accelerator, cfg, reference=None)
        if metrics and self.needs_reference():
            metrics["kl"] = 0.0
        return metrics, samples

    def test_metrics(self, model: nn.Module, data: PromptData, tokenizer: Any, accelerator, cfg: Any):
        """Judged generation on the test prompts, with each prompt's scores (:mod:`tunelab.row_scores`)."""
        return self._split_metrics(model, data, tokenizer, accelerator, cfg, self.reference, per_row=True)

    # ------------------------------------------------------------------ the run directory
    def save_artifacts(self, folder: Path, model: nn.Module, tokenizer: Any, data: Any, test: dict) -> None:
        self.lm.save_artifacts(folder, model, tokenizer, data, test)

    def load_saved_processor(self, model_dir: Path, resolved: str) -> Any:
        return self.lm.load_saved_processor(model_dir, resolved)

    # ------------------------------------------------------------------ using a trained run
    def predict(self, loaded: Any, inputs: Sequence[str] | None, file: str | None) -> list[dict[str, Any]]:
        raise UserError(f"run {loaded.run.path} is an RL-tuned language model; use tunelab generate "
                        f"{loaded.run.path} --prompt ... (or tunelab chat {loaded.run.path})")

    def evaluate_source(self, loaded: Any, data: str | None, split: str) -> dict[str, Any]:
        """Judged generation of a trained run on one of its splits, or on another prompt file."""
        from tunelab.tasks.dpo import _not_disableable, initial_policy

        cfg = config_for_source(loaded.cfg, data)
        prepared = self.prepare(cfg, loaded.processor)
        name = "train" if data else split
        if name not in prepared.rows:
            raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prepared.rows)}")
        frozen = initial_policy(loaded.cfg, self) if _not_disableable(loaded.model) else None
        reference = Reference(loaded.model, frozen=frozen)
        acc = inference_accelerator()
        model = acc.prepare(loaded.model)
        prepared.rows = {"test": prepared.rows[name]}
        metrics, _ = self._split_metrics(model, prepared, loaded.processor, acc, cfg, reference)
        return {**metrics, "split": "eval" if data else split}


def load_prompt_splits(cfg: Any, task_name: str) -> dict[str, list[tuple[Message, ...]]]:
    """Every split of ``data.source`` as prompts (validation/test carved from train when absent)."""
    from tunelab.data.builtin import BUILTIN_DATASETS
    from tunelab.tasks.preference_data import limited_splits

    d = cfg.data
    builtin = BUILTIN_DATASETS.get(d.source)
    if builtin is not None and builtin.task not in ("prompts", "preference"):
        raise UserError(f"built-in dataset '{d.source}' is made for task.name={builtin.task}, not {task_name}; "
                        "RL tasks read prompts (built-in: rt_prompts)")
    splits = limited_splits(cfg, read_prompts)
    return {name: read_prompts(ds, name) for name, ds in splits.items()}


__all__ = ["JudgeOptions", "PromptData", "RLOptions", "RLTask", "RolloutStep", "judged_generation", "judged_rows",
           "prompt_row"]

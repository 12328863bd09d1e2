"""Reward modelling: a scalar score per (prompt, response), learned from preference pairs.

The model is ``AutoModelForSequenceClassification`` with one output on the base; it is trained
with the pairwise (Bradley--Terry) loss of Stiennon et al. (2020, eq. 1) and Ouyang et al. (2022,
InstructGPT sec. 3.5)::

    loss = -log sigmoid(r(x, y_c) - r(x, y_r) - m) + c * (r(x, y_c) + r(x, y_r))^2

averaged over pairs, where ``m`` is the row's ``margin`` (``task.use_margin``; Touvron et al.,
2023, Llama 2 sec. 3.2.2) and ``c`` is ``task.center_rewards``, the reward-centring term of
Eisenstein et al. (2023), which pins the scores' mean near zero (TRL's ``center_rewards_coefficient``
has the same form). The reward is identified only up to a constant without it.

Where the reward is read
------------------------
* **Causal LMs** (a trunk whose attention is causal -- any of its modules says ``is_causal=True``,
  and the model is not encoder-decoder): only the last position has seen the whole sequence, so
  the head is read at the **last real token**, found from the attention mask
  (:func:`~tunelab.data.preference_tokens.last_real_index`). That token is the response's
  end-of-turn token. Hugging Face's own pooling takes "the last token that is not the pad token";
  with SmolLM2 pad == eos == ``<|im_end|>``, so it would score the token *before* the end. We
  therefore capture the head's per-position output with a forward hook (the call still goes
  through the model -- and any DDP wrapper -- as usual) and gather it ourselves. Prompt and
  responses are rendered with ``task.template`` exactly as :mod:`tunelab.data.preference_tokens`
  describes (the same encoding as the DPO family).
* **Encoders** (BERT, MiniLM, ...): the prompt (its user turns' text joined by newlines; system
  turns are not used) and the response are encoded as a text pair ``[CLS] prompt [SEP] response
  [SEP]`` (with ``token_type_ids``), and the model's own forward scores it (pooled ``[CLS]`` ->
  head). Over-long pairs lose prompt tokens first, from the left (the prompt's end stays); only a
  response that alone overflows ``data.max_length`` is cut, keeping its beginning (and one prompt
  token).

``tunelab score RUN --prompt ... --response ...`` (or ``--file``) calls :meth:`RewardTask.score`,
which PPO/GRPO also use as their reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.nn import functional as F

from tunelab.data.loaders import eval_loader
from tunelab.data.preference_tokens import PairCollator, encode_pair, last_real_index, pair_length, render_response
from tunelab.data.preferences import Message, PreferencePair
from tunelab.data.templates import Template, adds_bos
from tunelab.errors import UserError
from tunelab.models.loading import ensure_pad_token, hub_kwargs, load_tokenizer, resolve_model
from tunelab.row_scores import ROWS_KEY, RowScores
from tunelab.tasks.base import TaskSpec
from tunelab.tasks.common import config_for_source, inference_accelerator, tokenizer_source
from tunelab.tasks.preference_data import load_pair_splits
from tunelab.tasks.sft import SFTTaskConfig
from tunelab.train.step import SupervisedStep

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
"""Batch entries the reward model's forward reads (not ``response_mask`` / ``margin``)."""


class RewardTaskConfig(BaseModel):
    """``task:`` options of reward modelling (``task.name: reward``)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["reward"] = Field("reward", description="Reward model trained on preference pairs.")
    template: str = Field(
        "auto", description="auto (the tokenizer's chat template, else alpaca), chat, alpaca, or a template "
                            "string with {prompt} (and optionally {system}).")
    system_prompt: str | None = Field(None, description="System turn added to conversations that have none.")
    center_rewards: float = Field(
        0.0, ge=0, description="Reward model: coefficient c of the centring term c * mean((r_chosen + "
                               "r_rejected)^2) (Eisenstein et al., 2023); 0 = off.")
    use_margin: bool = Field(
        True, description="Reward model: subtract the data's 'margin' column from r_chosen - r_rejected "
                          "in the loss (when the column exists).")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return SFTTaskConfig._template(value)


@dataclass
class RewardData:
    """Prepared reward data: pairs and encoded rows per split, identical pairs skipped per split."""

    pairs: dict[str, list[PreferencePair]]
    rows: dict[str, list[dict[str, Any]]]
    skipped: dict[str, int] = field(default_factory=dict)
    labels: None = None


# ---------------------------------------------------------------------------- the model

def core_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP/accelerate wrapper (for finding modules, not for calling)."""
    return getattr(model, "module", model)


def has_causal_trunk(model: nn.Module) -> bool:
    """True for a decoder-only trunk: some attention module declares ``is_causal=True``.

    This is structural: ``config.is_decoder`` is False for Llama, and the model type's presence in
    the causal-LM mapping does not tell (BERT has a causal-LM head class too).
    """
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    trunk = getattr(model, "base_model", model)
    return any(getattr(m, "is_causal", None) is True for m in trunk.modules())


def last_token_pooling(model: nn.Module) -> bool:
    """Whether the reward is read at the last real token (causal trunks); cached on the model."""
    core = core_model(model)
    if not hasattr(core, "tunelab_last_token"):
        core.tunelab_last_token = has_causal_trunk(core)
    return core.tunelab_last_token


def causal_checkpoint(resolved: str) -> bool:
    """:func:`has_causal_trunk` of a checkpoint, from its config alone (a weightless meta model)."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(resolved, **hub_kwargs(resolved))
        if getattr(config, "is_encoder_decoder", False):
            return False
        with torch.device("meta"):
            return has_causal_trunk(AutoModel.from_config(config))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the model config of '{resolved}': {str(e).splitlines()[0]}") from None


def head_module(model: nn.Module) -> nn.Module:
    """The score head: the module owning the head parameters the checkpoint lacked."""
    core = core_model(model)
    names = getattr(core, "tunelab_head_params", None) or ["score.weight"]
    return core.get_submodule(names[0].rsplit(".", 1)[0])


@contextmanager
def captured_output(module: nn.Module):
    """Collect ``module``'s forward outputs while the block runs."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, args, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def sequence_rewards(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """One reward per sequence of ``batch`` (``[N]``); see the module docstring for where it is read."""
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    if not last_token_pooling(model):
        return model(**inputs).logits[:, 0]
    with captured_output(head_module(model)) as outputs:
        pooled = model(**inputs, use_cache=False).logits
    values = outputs[-1]
    if values.dim() != 3:  # an architecture that pools before its head: its own choice stands
        return pooled[:, 0]
    index = last_real_index(batch["attention_mask"])
    return values[torch.arange(values.shape[0], device=values.device), index, 0]


def pair_rewards(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards ``[B]``, rejected rewards ``[B]``) of a :class:`PairCollator` batch."""
    rewards = sequence_rewards(model, batch)
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


# ---------------------------------------------------------------------------- loss and metrics

def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                  center: float = 0.0) -> torch.Tensor:
    """``-logsigmoid(r_c - r_r - m).mean() + center * ((r_c + r_r)^2).mean()`` (module docstring)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff)
    loss = -F.logsigmoid(diff).mean()
    if center:
        loss = loss + center * ((chosen + rejected) ** 2).mean()
    return loss


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None,
                 center: float) -> dict[str, float]:
    """Loss and reward statistics over all pairs; a tie counts half a correct pair."""
    chosen, rejected = chosen.double(), rejected.double()
    diff = chosen - rejected
    both = torch.cat([chosen, rejected])
    return {
        "loss": float(pairwise_loss(chosen, rejected, margin, center)),
        "pairwise_accuracy": float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean()),
        "mean_margin": float(diff.mean()),
        "reward_mean": float(both.mean()),
        "reward_std": float(both.std(unbiased=False)),  # population std over both sides
        "chosen_reward_mean": float(chosen.mean()),
        "rejected_reward_mean": float(rejected.mean()),
        "pairs": int(chosen.numel()),
    }


def pair_rows(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None,
              center: float) -> dict[str, RowScores]:
    """:func:`pair_metrics` pair by pair (:mod:`tunelab.row_scores`): each one's mean over the pairs is the
    metric (``reward_mean``: the pair's mean reward; ``loss``: the pair's term of both sums). A pair's
    accuracy is a 0/1 hit unless some pair ties (a tie counts half)."""
    chosen, rejected = chosen.double(), rejected.double()
    diff = chosen - rejected
    shifted = diff - margin.to(diff) if margin is not None else diff
    loss = -F.logsigmoid(shifted)
    if center:
        loss = loss + center * (chosen + rejected) ** 2
    ties = diff == 0
    accuracy = (diff > 0).double() + 0.5 * ties.double()
    return {
        "loss": RowScores(loss.numpy()),
        "pairwise_accuracy": RowScores(accuracy.numpy(), binary=not bool(ties.any())),
        "mean_margin": RowScores(diff.numpy()),
        "reward_mean": RowScores(((chosen + rejected) / 2).numpy()),
        "chosen_reward_mean": RowScores(chosen.numpy()),
        "rejected_reward_mean": RowScores(rejected.numpy()),
    }


class RewardStep(SupervisedStep):
    """The pairwise loss on one forward pass over chosen + rejected sequences; counts pairs and tokens."""

    def __init__(self, center: float = 0.0, use_margin: bool = True) -> None:
        super().__init__(length_key=None, mask_key="attention_mask")
        self.center, self.use_margin = center, use_margin

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        chosen, rejected = pair_rewards(model, batch)
        return pairwise_loss(chosen, rejected, batch["margin"] if self.use_margin else None, self.center)

    def count(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["margin"].shape[0]), int(batch["attention_mask"].sum())

    def row_length(self, row: dict) -> int | None:
        return pair_length(row)


# ---------------------------------------------------------------------------- encoding

def prompt_text_for_encoder(prompt: Sequence[Message]) -> str:
    """An encoder's first segment: the user turns' text, one per line."""
    return "\n".join(t["content"] for t in prompt if t["role"] == "user")


def clip_text(tokenizer: Any, text: str, budget: int) -> str:
    """``text`` cut after its first ``budget`` tokens (at a token boundary), or unchanged if it fits."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= budget:
        return text
    return text[: enc["offset_mapping"][max(budget, 1) - 1][1]]


def encode_text_pair(tokenizer: Any, prompt_text: str, response: str, max_length: int) -> dict[str, list[int]]:
    """``[CLS] prompt [SEP] response [SEP]``: prompt cut from the left; see the module docstring."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True) - 1  # one prompt token stays
    response = clip_text(tokenizer, response, budget)
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        enc = tokenizer(prompt_text, response, truncation="only_first", max_length=max_length)
    except Exception:  # noqa: BLE001 -- the clipped text re-tokenised longer (rare): cut both
        enc = tokenizer(prompt_text, response, truncation="longest_first", max_length=max_length)
    finally:
        tokenizer.truncation_side = side
    row = {"input_ids": list(enc["input_ids"]),
           "response_mask": [1 if s == 1 else 0 for s in enc.sequence_ids()]}
    if "token_type_ids" in enc:
        row["token_type_ids"] = list(enc["token_type_ids"])
    return row


@dataclass
class Encoder:
    """Turns (prompt, response) pairs into token rows the way a run trains on them."""

    causal: bool
    tokenizer: Any
    max_length: int
    template: Template | None = None
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        self.bos = adds_bos(self.tokenizer) if self.causal else False

    def prompt(self, prompt: Sequence[Message]) -> list[Message]:
        turns = [dict(t) for t in prompt]
        if self.system_prompt and not (turns and turns[0]["role"] == "system"):
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def pair(self, prompt: Sequence[Message], chosen: str, rejected: str, margin: float) -> dict[str, Any]:
        """One training row: ``input_ids_<side>``, ``response_mask_<side>`` (+ token types), ``margin``."""
        if self.causal:
            turns = self.prompt(prompt)
            prompt_text, chosen_text = render_response(self.template, self.tokenizer, turns, chosen)
            _, rejected_text = render_response(self.template, self.tokenizer, turns, rejected)
            return encode_pair(prompt_text, chosen_text, rejected_text, self.tokenizer, self.template,
                               self.max_length, margin, self.bos)
        text = prompt_text_for_encoder(prompt)
        row: dict[str, Any] = {"margin": float(margin)}
        for side, response in (("chosen", chosen), ("rejected", rejected)):
            for key, value in encode_text_pair(self.tokenizer, text, response, self.max_length).items():
                row[f"{key}_{side}"] = value
        return row

    def single(self, prompt: Sequence[Message], response: str) -> dict[str, list[int]]:
        """One scored sequence (``input_ids`` [+ ``token_type_ids``]), encoded as in training."""
        row = self.pair(prompt, response, response, 0.0)
        return {k[: -len("_chosen")]: v for k, v in row.items() if k.endswith("_chosen")}


def pad_sequences(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` (+ ``token_type_ids``) of single sequences."""
    width = max(len(r["input_ids"]) for r in rows)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in rows], dtype=torch.long)

    batch = {"input_ids": padded("input_ids", pad_id),
             "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                             for r in rows], dtype=torch.long)}
    if "token_type_ids" in rows[0]:
        batch["token_type_ids"] = padded("token_type_ids", 0)
    return batch


# ---------------------------------------------------------------------------- the task

@dataclass
class RewardTask:
    """Reward modelling; see the module docstring."""

    cfg: RewardTaskConfig
    name: str = "reward"
    best_metric: tuple[str, bool] = ("pairwise_accuracy", True)
    _causal: dict[str, bool] = field(default_factory=dict, repr=False)

    @property
    def spec(self) -> TaskSpec:
        return REWARD

    def is_causal(self, resolved: str) -> bool:
        if resolved not in self._causal:
            self._causal[resolved] = causal_checkpoint(resolved)
        return self._causal[resolved]

    # ------------------------------------------------------------------ model and inputs
    def resolve_model(self, ref: str) -> str:
        return resolve_model(ref)

    def load_processor(self, resolved: str) -> Any:
        tokenizer = load_tokenizer(resolved)
        ensure_pad_token(tokenizer)
        return tokenizer

    def build_model(self, resolved: str, labels: Any = None) -> nn.Module:
        """The base with a fresh one-output head (fp32); the head is what the checkpoint lacked."""
        from transformers import AutoModelForSequenceClassification

        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                resolved, num_labels=1, id2label={0: "reward"}, label2id={"reward": 0}, dtype=torch.float32,
                output_loading_info=True, **hub_kwargs(resolved))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a reward (sequence-scoring) model from '{resolved}': "
                            f"{str(e).splitlines()[0]}") from None
        model.tunelab_head_params = sorted(info["missing_keys"])
        if model.config.pad_token_id is None:  # HF's forward refuses batches without one
            model.config.pad_token_id = self.load_processor(resolved).pad_token_id
        model.tunelab_last_token = has_causal_trunk(model)
        return model

    # ------------------------------------------------------------------ data
    def encoder(self, causal: bool, tokenizer: Any, max_length: int) -> Encoder:
        template = Template.resolve(self.cfg.template, tokenizer) if causal else None
        return Encoder(causal, tokenizer, max_length, template, self.cfg.system_prompt)

    def prepare(self, cfg: Any, tokenizer: Any) -> RewardData:
        """Read and split the data, read every split's pairs, encode them (every user error is here)."""
        d = cfg.data
        ensure_pad_token(tokenizer)
        pairs, skipped = load_pair_splits(cfg, self.name)
        enc = self.encoder(self.is_causal(self.resolve_model(cfg.model.name_or_path)), tokenizer, d.max_length)
        rows = {name: [enc.pair(p.prompt, p.chosen, p.rejected, p.margin if self.cfg.use_margin else 0.0)
                       for p in items] for name, items in pairs.items()}
        return RewardData(pairs, rows, skipped)

    def check_methods(self, cfg: Any, methods: Sequence[Any]) -> None:
        """Every method works: virtual tokens are trimmed from the trunk's output before the head
        reads the last real token (tested for prompt tuning, prefix tuning and P-tuning v2)."""

    def collators(self, cfg: Any, tokenizer: Any, model: nn.Module) -> tuple[Any, Any]:
        collate = PairCollator(tokenizer.pad_token_id)
        return collate, collate

    # ------------------------------------------------------------------ training and evaluation
    def train_step(self, cfg: Any, model: nn.Module, tokenizer: Any, log=print) -> RewardStep:
        return RewardStep(self.cfg.center_rewards, self.cfg.use_margin)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader, accelerator, per_row: bool = False) -> dict[str, Any]:
        """Loss, pairwise accuracy and reward statistics over a prepared loader of pairs; with
        ``per_row`` (the test split only) their per-pair scores under :data:`ROWS_KEY` too."""
        model.eval()
        parts = []
        for batch in loader:
            chosen, rejected = pair_rewards(model, batch)
            triple = torch.stack([chosen.float(), rejected.float(), batch["margin"].to(chosen).float()], dim=1)
            parts.append(accelerator.gather_for_metrics(triple).cpu())
        if not parts:
            return {}
        c, r, m = torch.cat(parts).unbind(dim=1)
        margin, center = m if self.cfg.use_margin else None, self.cfg.center_rewards
        metrics: dict[str, Any] = pair_metrics(c, r, margin, center)
        if per_row:
            metrics[ROWS_KEY] = pair_rows(c, r, margin, center)
        return metrics

    def baseline(self, *args: Any, **kwargs: Any) -> None:
        """The head starts random, so there is no meaningful before-training score."""
        return None

    def test_metrics(self, model: nn.Module, data: RewardData, tokenizer: Any, accelerator, cfg: Any
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Metrics on the test split (else validation; {} without either) with their per-pair scores
        (:mod:`tunelab.row_scores`; not ``reward_std``); no samples."""
        split = "test" if data.rows.get("test") else "validation" if data.rows.get("validation") else None
        if split is None:
            return {}, []
        _, collate = self.collators(cfg, tokenizer, model)
        loader = eval_loader(data.rows[split], cfg.train.eval_batch_size, collate, accelerator)
        return {"split": split, **self.evaluate(model, loader, accelerator, per_row=True)}, []

    # ------------------------------------------------------------------ the run directory
    def save_artifacts(self, folder: Path, model: nn.Module, tokenizer: Any, data: Any, test: dict) -> None:
        tokenizer.save_pretrained(Path(folder) / "model")

    def load_saved_processor(self, model_dir: Path, resolved: str) -> Any:
        return self.load_processor(tokenizer_source(model_dir, resolved))

    # ------------------------------------------------------------------ using a trained run
    def predict(self, loaded: Any, inputs: Sequence[str] | None, file: str | None) -> list[dict[str, Any]]:
        raise UserError(f"run {loaded.run.path} is a reward model; score responses with tunelab score "
                        f"{loaded.run.path} --prompt TEXT --response TEXT (or --file rows.jsonl --out scored.jsonl)")

    def evaluate_source(self, loaded: Any, data: str | None, split: str) -> dict[str, Any]:
        """Pair metrics of a trained run on its own split, or on another preference file/folder."""
        cfg = config_for_source(loaded.cfg, data)
        prepared = self.prepare(cfg, loaded.processor)
        name = split
        if data and split not in prepared.rows:  # another file: its own split of that name, else test, else train
            name = "test" if "test" in prepared.rows else "train"
        if name not in prepared.rows:
            raise UserError(f"run {loaded.run.path} has no '{split}' split; available: {', '.join(prepared.rows)}")
        acc = inference_accelerator()
        collate = PairCollator(loaded.processor.pad_token_id)
        loader = eval_loader(prepared.rows[name], cfg.train.eval_batch_size, collate, acc)
        metrics = self.evaluate(acc.prepare(loaded.model), loader, acc)
        return {"split": "eval" if data else split, **metrics}

    @torch.inference_mode()
    def score(self, loaded: Any, prompts: Sequence[Sequence[Message]], responses: Sequence[str],
              batch_size: int = 32, label: str | None = None, output: str = "probability",
              allow_empty: bool = False) -> list[float]:
        """The reward of each response after its prompt (a list of turns ending with a user turn),
        encoded exactly as in training; in the input order. ``label``/``output`` are a classifier's
        options (a reward model has one output: a label is refused); ``allow_empty`` scores empty
        responses (RL rollouts may end at once) instead of refusing them."""
        if label is not None:
            raise UserError(f"run {loaded.run.path} is a reward model with one scalar output; a label "
                            "(task.reward_label / task.judge_label) applies to classification runs")
        if len(prompts) != len(responses):
            raise UserError(f"got {len(prompts)} prompt(s) but {len(responses)} response(s); give one response "
                            "per prompt")
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            if not str(response).strip() and not allow_empty:
                raise UserError(f"response {i + 1} is empty; a reward model scores a non-empty response")
            if not any(t["role"] == "user" and t["content"].strip() for t in prompt):
                raise UserError(f"prompt {i + 1} has no user turn with text")
        model, tokenizer = loaded.model, loaded.processor
        if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
            model.to("cuda")
        model.eval()
        device = next(model.parameters()).device
        enc = self.encoder(last_token_pooling(model), tokenizer, loaded.cfg.data.max_length)
        rows = [enc.single(p, str(r)) for p, r in zip(prompts, responses)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # less padding
        out = [0.0] * len(rows)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in pad_sequences([rows[i] for i in chunk],
                                                                tokenizer.pad_token_id).items()}
            for i, value in zip(chunk, sequence_rewards(model, batch).float().cpu().tolist()):
                out[i] = value
        return out


REWARD_METRICS = {"loss": False, "pairwise_accuracy": True, "mean_margin": True, "reward_mean": True,
                  "reward_std": True, "chosen_reward_mean": True, "rejected_reward_mean": False}
"""Directions: larger accuracy and chosen-rejected margin are better. ``reward_mean`` and
``reward_std`` have no better direction (centring pulls the mean to 0); they are marked larger-is-
better only because a direction is required, and nothing should rank by them."""

REWARD = TaskSpec(
    name="reward", config_cls=RewardTaskConfig, build=lambda cfg: RewardTask(cfg),
    description="Reward model from preference pairs (pairwise loss, margin, centring); tunelab score scores "
                "responses.",
    metrics=REWARD_METRICS, validation_metric=("pairwise_accuracy", True), headline="pairwise_accuracy",
    summary_metrics=("pairwise_accuracy", "mean_margin", "reward_mean", "reward_std", "loss"),
    has_labels=False, peft_task_type=None, scores_responses=True,
    predict_example='(use tunelab score RUN --prompt TEXT --response TEXT)',
)
SPECS = (REWARD,)

"""PPO with a KL penalty (``task.name: ppo``): the RLHF stage of Ziegler et al., 2019
("Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593) and Ouyang et al., 2022
(InstructGPT, arXiv:2203.02155), on the engine's step seam (:mod:`tunelab.tasks.rl`).

Per rollout batch: sample responses; score them (``task.reward``; ``task.missing_eos_penalty``
for responses cut at ``max_new_tokens``); take the policy's log-probabilities ``log pi_old``, the
reference's ``log pi_ref`` and the value head's ``V`` without gradients; per-token rewards
``r_t = -kl_coef * KL_t`` plus the score at the last token (``task.kl_estimator`` k1 or k3);
advantages by GAE (``task.gamma``, ``task.lam``), whitened (``task.whiten_advantages``); then
``ppo_epochs x minibatches`` updates of ``L = L_clip + vf_coef * L_V`` (clipped surrogate and
clipped value loss, :mod:`tunelab.tasks.rl_math`). With ``task.kl_target`` set the KL coefficient
adapts towards it (Ziegler et al., sec. 2.2) and is saved with each checkpoint.

The value head is a linear layer on the policy's last hidden state (the LM head's input), so it
shares the trunk and whatever adapters the method put there; it is a task head
(``tunelab_head_params``): trainable under every method, saved with the run, never part of the
reference.

Logged per train line: ``reward_mean``, ``reward_median``, ``kl`` (summed per sequence),
``kl_coef``, ``entropy``, ``clip_fraction``, ``value_clip_fraction``, ``policy_loss``,
``value_loss``, ``approx_kl``, ``response_length``, ``ended_fraction`` (and, with
``task.missing_eos_penalty``, ``penalised_reward_mean``: the reward the update saw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from tunelab.tasks.base import TaskSpec
from tunelab.tasks.logprobs import ResponseLogps, response_token_logps
from tunelab.tasks.rl import RLOptions, RLTask, RolloutStep, _unwrap, chunked, reference_logps, trimmed
from tunelab.tasks.rl_math import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_per_token,
    masked_mean,
    token_rewards,
    whiten,
)

VALUE_HEAD = "tunelab_value_head"


class PPOTaskConfig(RLOptions):
    """``task:`` options of PPO (``task.name: ppo``)."""

    name: Literal["ppo"] = Field("ppo", description="PPO with a KL penalty against the reference policy.")
    kl_coef: float = Field(0.05, ge=0, description="Initial coefficient of the per-token KL penalty.")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="Per-token KL estimate: k1 (log-ratio) or k3.")
    kl_target: float | None = Field(None, gt=0, description="Adapt kl_coef towards this KL per sequence (None: fixed).")
    kl_horizon: int = Field(10000, ge=1, description="Horizon of the adaptive KL controller (in sequences).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    clip_range_value: float = Field(0.2, gt=0, description="Clipping of the value prediction's change.")
    whiten_advantages: bool = Field(True, description="Scale advantages to zero mean, unit variance per batch.")


# ---------------------------------------------------------------------------- the value head

def add_value_head(model: nn.Module) -> nn.Module:
    """A zero-initialised ``hidden -> 1`` linear layer on the policy (values start at 0)."""
    hidden = model.get_output_embeddings().in_features
    head = nn.Linear(hidden, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    setattr(model, VALUE_HEAD, head)
    model.tunelab_head_params = [f"{VALUE_HEAD}.weight", f"{VALUE_HEAD}.bias"]
    return model


def logps_and_values(model: nn.Module, batch: dict[str, torch.Tensor], entropy: bool = False
                     ) -> tuple[ResponseLogps, torch.Tensor]:
    """Response-token log-probabilities (the LM head only on response positions) and the value of each
    state ``[B, T-1]`` (the state before token t+1)."""
    out = response_token_logps(model, batch, hidden=True, entropy=entropy)
    head = getattr(_unwrap(model), VALUE_HEAD)
    values = head(out.hidden.to(head.weight.dtype)).squeeze(-1)
    return out, values[:, :-1]


# ---------------------------------------------------------------------------- the step

class PPOStep(RolloutStep):
    """PPO's rollout processing and loss (see the module docstring)."""

    def __init__(self, task: RLTask, cfg: Any, tokenizer: Any, log=print) -> None:
        super().__init__(task, cfg, tokenizer, log)
        self.kl = KLController(self.opts.kl_coef, self.opts.kl_target, self.opts.kl_horizon)

    @torch.no_grad()
    def process(self, model: nn.Module, data: dict[str, torch.Tensor], scores: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.opts
        n, width = data["input_ids"].shape[0], data["input_ids"].shape[1] - 1
        old_logp, old_values = [], []
        for rows in chunked(n, self.chunk):
            part = trimmed(data, rows)
            out, values = logps_and_values(model, part)
            old_logp.append(_pad(out.logps, width))
            old_values.append(_pad(values.float(), width))
        logp, values = torch.cat(old_logp), torch.cat(old_values)
        ref = reference_logps(self.task.reference, model, data, self.chunk)
        mask = data["response_mask"][:, 1:].to(logp.dtype)
        kl = kl_per_token(logp, ref, o.kl_estimator) * mask
        rewards = token_rewards(scores.to(logp.dtype), kl, mask, self.kl.coef)
        advantages, returns = gae(rewards, values.to(logp.dtype), mask, o.gamma, o.lam)
        if o.whiten_advantages:
            advantages = whiten(advantages, mask)
        seq_kl = kl.sum(-1)
        self.stats.add("kl", float(seq_kl.mean()), n)
        self.stats.add("kl_coef", self.kl.coef, n)
        self.kl.update(float(seq_kl.mean()), n)
        return {**data, "old_logp": logp, "old_values": values.to(logp.dtype), "advantages": advantages,
                "returns": returns}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        o = self.opts
        out, values = logps_and_values(model, batch, entropy=True)
        logp = out.logps
        mask = batch["response_mask"][:, 1:].to(logp.dtype)
        pg, clipped = clipped_policy_loss(logp, batch["old_logp"], batch["advantages"], o.clip_range)
        vf, v_clipped = clipped_value_loss(values.to(logp.dtype), batch["old_values"], batch["returns"],
                                           o.clip_range_value)
        policy_loss, value_loss = masked_mean(pg, mask), masked_mean(vf, mask)
        with torch.no_grad():
            n = int(batch["input_ids"].shape[0])
            self.stats.add("policy_loss", float(policy_loss), n)
            self.stats.add("value_loss", float(value_loss), n)
            self.stats.add("clip_fraction", float(masked_mean(clipped.to(logp.dtype), mask)), n)
            self.stats.add("value_clip_fraction", float(masked_mean(v_clipped.to(logp.dtype), mask)), n)
            self.stats.add("approx_kl", float(masked_mean(0.5 * (logp - batch["old_logp"]) ** 2, mask)), n)
            self.stats.add("entropy", float(masked_mean(out.entropy, mask)), n)
        return policy_loss + o.vf_coef * value_loss

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "kl" in state:
            self.kl.load_state_dict(state["kl"])


def _pad(values: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


# ---------------------------------------------------------------------------- the task

@dataclass
class PPOTask(RLTask):
    """PPO; see the module docstring."""

    name: str = "ppo"
    step_cls: type = PPOStep

    @property
    def spec(self) -> TaskSpec:
        return PPO

    def build_model(self, resolved: str, labels: Any = None) -> nn.Module:
        return add_value_head(self.lm.build_model(resolved))

    def build_model_streamed(self, resolved: str, transforms_for) -> tuple[nn.Module, str] | None:
        """The streamed policy (its fingerprint is the base's) with the value head added, as in :meth:`build_model`."""
        loaded = self.lm.build_model_streamed(resolved, transforms_for)
        return None if loaded is None else (add_value_head(loaded[0]), loaded[1])


RL_METRICS = {"reward_mean": True, "reward_median": True, "judge_mean": True, "judge_median": True, "kl": False,
              "response_length": True, "ended_fraction": True}
"""Directions: more reward and judge score is better, less KL is better. ``response_length`` and
``ended_fraction`` have no better direction (they are marked only because one is required)."""


def rl_headline(test: dict[str, float]) -> str:
    return "judge_mean" if "judge_mean" in test else "reward_mean"


PPO = TaskSpec(
    name="ppo", config_cls=PPOTaskConfig, build=lambda cfg: PPOTask(cfg),
    description="PPO with a KL penalty: rollouts scored by a reward run or function, GAE, clipped losses, value head.",
    metrics=RL_METRICS, validation_metric=("reward_mean", True), headline=rl_headline,
    summary_metrics=("reward_mean", "judge_mean", "kl", "response_length", "ended_fraction"),
    generates_text=True, has_labels=False, peft_task_type="CAUSAL_LM",
)
SPECS = (PPO,)

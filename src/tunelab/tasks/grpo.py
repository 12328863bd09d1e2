"""GRPO, group relative policy optimisation (``task.name: grpo``): Shao et al., 2024, "DeepSeekMath"
(arXiv:2402.03300), sec. 4.1, eq. 3, on the engine's step seam (:mod:`tunelab.tasks.rl`).

Each prompt is sampled ``task.group_size`` (G) times; a response's advantage is its score minus its
group's mean, divided by the group's standard deviation (``task.scale_rewards: false`` keeps only
the mean shift, as Dr. GRPO proposes), the same for every token of the response. No value head.
The loss per token is the clipped surrogate plus ``beta`` times the k3 estimate of KL(policy ||
reference) (eq. 4), averaged over each response's tokens and then over responses. ``beta: 0``
drops the reference entirely (no reference pass).

It shares rollouts, scorers, judged evaluation and logging with PPO (:mod:`tunelab.tasks.rl`).
Logged per train line: ``reward_mean``, ``reward_median``, ``reward_std_in_group``, ``kl``,
``clip_fraction``, ``policy_loss``, ``entropy``, ``response_length``, ``ended_fraction``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from tunelab.tasks.base import TaskSpec
from tunelab.tasks.logprobs import response_token_logps
from tunelab.tasks.ppo import RL_METRICS, rl_headline
from tunelab.tasks.rl import RLOptions, RLTask, RolloutStep, chunked, reference_logps, sequence_logps, trimmed
from tunelab.tasks.rl_math import clipped_policy_loss, group_advantages, kl_per_token, masked_mean


class GRPOTaskConfig(RLOptions):
    """``task:`` options of GRPO (``task.name: grpo``)."""

    name: Literal["grpo"] = Field("grpo", description="Group relative policy optimisation (no value head).")
    group_size: int = Field(4, ge=2, description="Responses sampled per prompt (G).")
    beta: float = Field(0.04, ge=0, description="Weight of the k3 KL term to the reference (0: no reference).")
    scale_rewards: bool = Field(True, description="Divide advantages by the group's standard deviation.")


class GRPOStep(RolloutStep):
    """GRPO's rollout processing and loss (see the module docstring)."""

    def expand(self, ids: torch.Tensor, mask: torch.Tensor, prompts: list) -> tuple[torch.Tensor, torch.Tensor, list]:
        g = self.opts.group_size
        return (ids.repeat_interleave(g, 0), mask.repeat_interleave(g, 0),
                [p for p in prompts for _ in range(g)])

    @torch.no_grad()
    def process(self, model: nn.Module, data: dict[str, torch.Tensor], scores: torch.Tensor) -> dict[str, torch.Tensor]:
        n, width = data["input_ids"].shape[0], data["input_ids"].shape[1] - 1
        parts = [sequence_logps(model, trimmed(data, rows)) for rows in chunked(n, self.chunk)]
        logp = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
        out = {**data, "old_logp": logp,
               "advantages": group_advantages(scores.to(logp.dtype), self.opts.group_size, self.opts.scale_rewards)}
        mask = data["response_mask"][:, 1:].to(logp.dtype)
        self.stats.add("reward_std_in_group", float(scores.view(-1, self.opts.group_size).std(-1).mean()), n)
        if self.opts.beta:
            out["ref_logp"] = reference_logps(self.task.reference, model, data, self.chunk)
            self.stats.add("kl", float((kl_per_token(logp, out["ref_logp"], "k1") * mask).sum(-1).mean()), n)
        return out

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        o = self.opts
        out = response_token_logps(model, batch, entropy=True)
        logp = out.logps
        mask = batch["response_mask"][:, 1:].to(logp.dtype)
        per_token, clipped = clipped_policy_loss(logp, batch["old_logp"], batch["advantages"].unsqueeze(-1),
                                                 o.clip_range)
        if o.beta:
            per_token = per_token + o.beta * kl_per_token(logp, batch["ref_logp"], "k3")
        loss = masked_mean(per_token, mask, dim=-1).mean()
        with torch.no_grad():
            n = int(batch["input_ids"].shape[0])
            self.stats.add("policy_loss", float(loss), n)
            self.stats.add("clip_fraction", float(masked_mean(clipped.to(logp.dtype), mask)), n)
            self.stats.add("entropy", float(masked_mean(out.entropy, mask)), n)
        return loss


@dataclass
class GRPOTask(RLTask):
    """GRPO; see the module docstring."""

    name: str = "grpo"
    step_cls: type = GRPOStep

    @property
    def spec(self) -> TaskSpec:
        return GRPO

    def needs_reference(self) -> bool:
        return self.cfg.beta > 0


GRPO = TaskSpec(
    name="grpo", config_cls=GRPOTaskConfig, build=lambda cfg: GRPOTask(cfg),
    description="GRPO: G samples per prompt, group-normalised advantages, clipped objective with a k3 KL term.",
    metrics=RL_METRICS, validation_metric=("reward_mean", True), headline=rl_headline,
    summary_metrics=("reward_mean", "judge_mean", "kl", "response_length", "ended_fraction"),
    generates_text=True, has_labels=False, peft_task_type="CAUSAL_LM",
)
SPECS = (GRPO,)

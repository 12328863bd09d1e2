"""The step seam: a loop of another shape (rollouts -> score -> several updates, as PPO/GRPO will
have) runs on the same engine, with its extra state checkpointed and restored on resume."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from torch import nn

from tunelab.config import TrainConfig
from tunelab.train.checkpoint import latest_checkpoint
from tunelab.train.engine import Trainer
from tunelab.train.step import SupervisedStep

ACTIONS = 4
GOOD = 2  # the action the reward favours


class Policy(nn.Module):
    """A contextual bandit policy: logits over ACTIONS from a 3-feature context."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, ACTIONS)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.linear(context)


class RolloutStep:
    """REINFORCE with a running-mean baseline: each loader batch of contexts becomes one rollout
    (sample actions, score them) and ``updates`` minibatches to learn from."""

    def __init__(self, updates: int = 2) -> None:
        self.updates = updates
        self.baseline, self.rollouts, self.seen_micro = 0.0, 0, 0

    def prepare(self, model: nn.Module, rows: Sequence[dict]) -> Sequence[dict]:
        return rows

    def micro_per_batch(self) -> int:
        return self.updates

    @torch.no_grad()
    def micro_batches(self, model: nn.Module, batch: dict) -> list[dict]:
        probs = torch.softmax(model(batch["context"]), -1)
        actions = torch.multinomial(probs, 1).squeeze(-1)
        reward = (actions == GOOD).float()
        advantage = reward - self.baseline
        self.baseline = 0.9 * self.baseline + 0.1 * float(reward.mean())
        self.rollouts += 1
        size = len(actions) // self.updates
        return [{"context": batch["context"][i:i + size], "actions": actions[i:i + size],
                 "advantage": advantage[i:i + size]} for i in range(0, size * self.updates, size)]

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        self.seen_micro += 1
        logp = torch.log_softmax(model(batch["context"]), -1)
        chosen = logp.gather(1, batch["actions"][:, None]).squeeze(1)
        return -(batch["advantage"] * chosen).mean()

    def count(self, batch: dict) -> tuple[int, int]:
        return len(batch["actions"]), 0

    def row_length(self, row: dict) -> None:
        return None

    def state_dict(self) -> dict:
        return {"baseline": self.baseline, "rollouts": self.rollouts}

    def load_state_dict(self, state: dict) -> None:
        self.baseline, self.rollouts = state["baseline"], state["rollouts"]


def _rows(n: int = 64) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"context": torch.randn(3, generator=g).tolist()} for _ in range(n)]


def _collate(rows: list[dict]) -> dict:
    return {"context": torch.tensor([r["context"] for r in rows])}


def _evaluate(model, loader, accelerator) -> dict:
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(b["context"]), -1)[:, GOOD] for b in loader])
    return {"p_good": float(probs.mean())}


def _trainer(tmp_path, step, **train) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=16, lr=0.1, warmup_ratio=0.0, scheduler="constant", max_grad_norm=None, **train)
    return Trainer(Policy(), cfg, Accelerator(cpu=True), seed=0, collate=_collate, evaluate_fn=_evaluate,
                   best_metric=("p_good", True), log=lambda e: None, run_dir=tmp_path, step=step)


def test_rollout_step_reuses_the_engine(tmp_path):
    step = RolloutStep(updates=2)
    trainer = _trainer(tmp_path, step, epochs=10)
    before = _evaluate(trainer.model, [_collate(_rows())], None)["p_good"]
    result = trainer.fit(_rows(), _rows(16))
    # 64 rows / 16 = 4 rollouts per epoch, 2 updates each: 8 optimizer steps per epoch
    assert step.rollouts == 40 and step.seen_micro == 80 and result.global_step == 80
    assert result.train_samples == 640  # counted by the step, per micro-batch
    assert result.last_eval["p_good"] > max(0.6, before + 0.3), (before, result.last_eval)
    saved = latest_checkpoint(tmp_path / "checkpoints")
    assert saved is not None


def test_rollout_step_accumulates_micro_batches(tmp_path):
    step = RolloutStep(updates=2)
    result = _trainer(tmp_path, step, epochs=1, grad_accum=2, eval_strategy="no").fit(_rows(), None)
    assert step.seen_micro == 8 and result.global_step == 4


def test_step_state_is_checkpointed_and_restored(tmp_path):
    one = RolloutStep()
    _trainer(tmp_path / "one", one, epochs=1, eval_strategy="no").fit(_rows(), None)
    first = RolloutStep()
    _trainer(tmp_path / "a", first, epochs=2, eval_strategy="no").fit(_rows(), None)
    # the epoch-1 checkpoint (the finished run writes none after its last step) holds the step's state
    state = json.loads((latest_checkpoint(tmp_path / "a" / "checkpoints") / "state.json").read_text())
    assert state["global_step"] == 8 and state["step_state"] == {"baseline": one.baseline, "rollouts": 4}
    # a longer run resumes from there: the step gets its state back, and ends where an
    # uninterrupted run of the same length ends (same rollouts, same baseline, same weights)
    resumed, straight = RolloutStep(), RolloutStep()
    r = _trainer(tmp_path / "a", resumed, epochs=3, eval_strategy="no")
    result = r.fit(_rows(), None)
    s = _trainer(tmp_path / "b", straight, epochs=3, eval_strategy="no")
    s.fit(_rows(), None)
    assert resumed.rollouts == straight.rollouts == 12 and result.global_step == 24
    assert resumed.baseline == straight.baseline
    assert torch.equal(r.model.linear.weight, s.model.linear.weight)


def test_supervised_step_counts_without_input_ids():
    step = SupervisedStep()
    batch = {"pixel_values": torch.zeros(5, 3, 8, 8), "labels": torch.zeros(5)}
    assert step.count(batch) == (5, 0) and step.row_length({"pixel_values": 1}) is None
    text = {"input_ids": torch.ones(2, 4), "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])}
    assert step.count(text) == (2, 0)  # the default step assumes no token mask
    text_step = SupervisedStep(length_key="input_ids", mask_key="attention_mask")  # what text tasks use
    assert text_step.count(text) == (2, 5) and text_step.count({**text, "num_tokens": torch.tensor(9)}) == (2, 9)
    assert text_step.row_length({"input_ids": [1, 2, 3]}) == 3

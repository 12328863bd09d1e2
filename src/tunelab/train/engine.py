"""The training loop, on ``accelerate``: the same code on CPU, one GPU, or several processes.

It owns optimizer groups, schedules, gradient accumulation, clipping, evaluation cadence, early
stopping, best-checkpoint selection, exact resume, NaN/inf detection and logging. What a training
step computes comes from the task as a :class:`~tunelab.train.step.TrainStep` (default:
``model(**batch).loss``); the engine knows nothing of tokens, logits or images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tunelab.data.loaders import eval_loader, make_loader
from tunelab.errors import TrainingDiverged
from tunelab.train import checkpoint as ckpt
from tunelab.train.optim import build_optimizer, build_scheduler
from tunelab.train.step import SupervisedStep, TrainStep

if TYPE_CHECKING:
    from tunelab.config import TrainConfig

__all__ = ["FitResult", "LoopState", "Trainer", "eval_loader", "make_loader"]

EvaluateFn = Callable[[nn.Module, DataLoader, Accelerator], dict[str, Any]]
LogFn = Callable[[dict[str, Any]], None]


@dataclass
class FitResult:
    global_step: int = 0
    epochs_completed: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    last_eval: dict[str, Any] = field(default_factory=dict)
    train_tokens: int = 0
    time_budget_reached: bool = False
    """Training stopped at ``train.max_seconds`` before its last step."""

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Non-padding input tokens per second of training."""
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0


@dataclass
class LoopState:
    """Everything besides tensors that exact resume needs."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0
    train_tokens: int = 0


class Trainer:
    """Fit a model with one config; see :func:`Trainer.fit`."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, accelerator: Accelerator, *, seed: int,
                 collate, best_metric: tuple[str, bool], log: LogFn, run_dir: Path,
                 evaluate_fn: EvaluateFn, eval_collate=None, group_by_length: bool = True,
                 step: TrainStep | None = None):
        """``evaluate_fn(model, loader, accelerator)`` scores the validation loader;
        ``eval_collate`` defaults to ``collate``; ``step`` defaults to :class:`SupervisedStep`."""
        self.cfg, self.acc, self.seed = cfg, accelerator, seed
        self.collate, self.evaluate_fn, self.log = collate, evaluate_fn, log
        self.eval_collate = eval_collate or collate
        self.step = step or SupervisedStep()
        self.metric_name = cfg.metric_for_best or best_metric[0]
        self.greater = best_metric[1] if cfg.metric_for_best is None else _greater_is_better(self.metric_name)
        self.ckpt_dir, self.best_dir = run_dir / "checkpoints", run_dir / "best"
        self.group_by_length = group_by_length
        self.model = model

    # ------------------------------------------------------------------ setup
    def _setup(self, train_rows: Sequence[dict], eval_rows: Sequence[dict] | None):
        cfg, acc = self.cfg, self.acc
        t0 = time.perf_counter()
        train_rows = self.step.prepare(self.model, train_rows)  # e.g. a frozen-trunk cache
        self.prepare_seconds = time.perf_counter() - t0  # counted as training time (honest cost)
        # The train loader is not handed to accelerate: our batch sampler shards by process and
        # skips on resume, so data order never depends on a wrapper's iteration counter.
        self.train_loader, self.batches = make_loader(
            train_rows, cfg.batch_size, self.collate, train=True, seed=self.seed,
            group_by_length=self.group_by_length, rank=acc.process_index, world=acc.num_processes,
            row_length=self.step.row_length, order=getattr(self.step, "order", None))
        micro_per_epoch = self.batches.batches_per_epoch() * self.step.micro_per_batch()
        steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
        total = cfg.max_steps or steps_per_epoch * cfg.epochs
        self.total_steps = total
        self.n_epochs = math.ceil(total / steps_per_epoch)
        optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.head_lr, cfg.layer_lr_decay)
        warmup = int(round(cfg.warmup_ratio * total))
        scheduler = build_scheduler(optimizer, cfg.scheduler, warmup, total)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        self.scheduler = scheduler  # stepped by us once per optimizer step (not prepared: no scaling)
        self.eval_loader = None
        if eval_rows:
            self.eval_loader = eval_loader(eval_rows, cfg.eval_batch_size, self.eval_collate, acc)

    # ------------------------------------------------------------------ resume
    def _resume(self) -> LoopState:
        self._restore_rng: Callable[[], None] | None = None
        if self.acc.is_main_process:  # what a kill -9 may have left: half-written folders, best/ mid-swap
            ckpt.remove_partial(self.ckpt_dir)
            ckpt.recover_atomic(self.best_dir)
        self.acc.wait_for_everyone()
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            return LoopState()
        saved, self._restore_rng = ckpt.load_checkpoint(path, self.acc.unwrap_model(self.model),
                                                        self.optimizer)
        self.scheduler.load_state_dict(saved.pop("scheduler"))
        self.step.load_state_dict(saved.pop("step_state", {}))
        self.acc.print(f"resuming from {path} (step {saved['global_step']})")
        return LoopState(**saved)

    def _checkpoint(self, st: LoopState) -> None:
        if self.acc.is_main_process:
            ckpt.save_checkpoint(self.ckpt_dir, st.global_step, self.acc.unwrap_model(self.model),
                                 self.optimizer, {**st.__dict__, "scheduler": self.scheduler.state_dict(),
                                  "step_state": self.step.state_dict()},
                                 self.cfg.save_total_limit)
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        metrics = self.evaluate_fn(self.model, self.eval_loader, self.acc)
        self.model.train()
        return metrics

    def _after_eval(self, st: LoopState, metrics: dict[str, Any]) -> bool:
        """Track the best checkpoint; return True when early stopping says stop."""
        value = metrics.get(self.metric_name)
        if value is None:
            raise ValueError(f"metric_for_best '{self.metric_name}' not among {sorted(metrics)}")
        improved = st.best_metric is None or (value > st.best_metric if self.greater else value < st.best_metric)
        if improved:
            st.best_metric, st.best_step, st.evals_without_improvement = float(value), st.global_step, 0
            if self.cfg.keep_best and self.acc.is_main_process:
                ckpt.save_weights_atomic(self.best_dir, self.acc.unwrap_model(self.model),
                                         {"step": st.global_step, self.metric_name: float(value)})
        else:
            st.evals_without_improvement += 1
        patience = self.cfg.early_stopping_patience
        return patience is not None and st.evals_without_improvement >= patience

    def _eval_and_save(self, st: LoopState) -> bool:
        """Validate, track the best weights, checkpoint; return True when early stopping says stop."""
        metrics = self.evaluate()
        self.early_stopped = self._after_eval(st, metrics)
        self.last_eval, self.last_eval_step = metrics, st.global_step
        self.log({"event": "eval", "split": "validation", "step": st.global_step, "epoch": st.epoch,
                  **_scalars(metrics)})
        self.acc.print(f"step {st.global_step}: validation {self.metric_name}={metrics[self.metric_name]:.4f}")
        if self.cfg.save_steps is None:
            self._checkpoint(st)
        return self.early_stopped

    # ------------------------------------------------------------------ the loop
    def fit(self, train_rows: Sequence[dict], eval_rows: Sequence[dict] | None) -> FitResult:
        self._setup(train_rows, eval_rows)
        st = self._resume()
        st.train_seconds += self.prepare_seconds
        self.last_eval: dict[str, Any] = {}
        self.last_eval_step: int | None = None
        self.early_stopped = False
        self.time_budget_reached = False
        self._due: str | None = None
        # disable=None: a live bar on a terminal, none in logs (eval lines still print).
        bar = tqdm(total=self.total_steps, initial=st.global_step,
                   disable=None if self.acc.is_local_main_process else True,
                   desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)
        self.model.train()
        stop = st.global_step >= self.total_steps
        while not stop and st.epoch < self.n_epochs:
            self.batches.set_epoch(st.epoch, skip=st.batches_in_epoch)
            stop = self._run_epoch(st, self.train_loader, bar)
            if stop:
                break
            st.epoch, st.batches_in_epoch = st.epoch + 1, 0
            stop = self._epoch_end(st)
        if self._evaluating() and self.last_eval_step != st.global_step and not self.early_stopped:
            self._eval_and_save(st)  # the last step always gets a validation score
        bar.close()
        epochs_done = st.epoch + (1 if st.batches_in_epoch >= self.batches.batches_per_epoch() else 0)
        return FitResult(st.global_step, epochs_done, st.train_seconds, st.train_samples,
                         st.best_metric, st.best_step, self.early_stopped, self.last_eval, st.train_tokens,
                         self.time_budget_reached)

    def _evaluating(self) -> bool:
        return self.eval_loader is not None and self.cfg.eval_strategy != "no"

    def _epoch_end(self, st: LoopState) -> bool:
        if self.cfg.eval_strategy == "epoch" and self._evaluating():
            return self._eval_and_save(st)
        if self.cfg.save_steps is None:
            self._checkpoint(st)
        return False

    def _run_epoch(self, st: LoopState, loader, bar) -> bool:
        batches = iter(loader)
        if self._restore_rng is not None:  # resumed: RNG as it was at the checkpoint, from here on
            self._restore_rng()
            self._restore_rng = None
        self._t0, self._micro = time.perf_counter(), 0
        per_epoch = self.batches.batches_per_epoch()
        for batch in batches:
            micro_batches = self.step.micro_batches(self.model, batch)
            st.batches_in_epoch += 1
            last_batch = st.batches_in_epoch >= per_epoch
            stop = False
            for i, micro in enumerate(micro_batches):
                stop = self._train_micro(st, micro, bar, last=last_batch and i == len(micro_batches) - 1)
                if stop:
                    break
            # Evaluations and checkpoints fall due at optimizer steps but run between loader
            # batches, so a checkpoint never lands inside a batch's micro-batches (exact resume).
            if self._flush_due(st) or stop:
                return True
        st.train_seconds += time.perf_counter() - self._t0
        return False

    def _train_micro(self, st: LoopState, batch: dict[str, Any], bar, *, last: bool) -> bool:
        """Backward one micro-batch; every ``grad_accum`` of them (and the epoch's last) step the
        optimizer. Return True to stop training."""
        cfg, acc = self.cfg, self.acc
        samples, tokens = self.step.count(batch)  # on the CPU batch: no device sync
        batch = {k: v.to(acc.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        loss = self._loss_and_backward(st, batch)
        self._micro += 1
        st.train_samples += samples * acc.num_processes
        st.train_tokens += tokens * acc.num_processes
        if self._micro % cfg.grad_accum and not last:
            return False  # accumulate; the epoch's last micro-batch always ends with a step
        self._optimizer_step(st)
        st.train_seconds += time.perf_counter() - self._t0
        stop = self._after_step(st, loss.detach().float().item() * cfg.grad_accum, bar)
        self._t0 = time.perf_counter()
        return stop

    def _loss_and_backward(self, st: LoopState, batch: dict[str, Any]) -> torch.Tensor:
        """The micro-batch's loss (scaled for accumulation), back-propagated; a step with its own
        ``backward`` (GradCache) runs its backward passes itself through the accelerator."""
        scale = self.cfg.grad_accum
        own_backward = getattr(self.step, "backward", None)
        if callable(own_backward):
            loss = own_backward(self.model, batch, lambda t: self.acc.backward(t / scale)) / scale
        else:
            loss = self.step.loss(self.model, batch) / scale
        if not torch.isfinite(loss.detach()).all():
            raise TrainingDiverged(self._diverged_message(st, loss))
        if not callable(own_backward):
            self.acc.backward(loss)
        return loss

    def _optimizer_step(self, st: LoopState) -> None:
        if self.cfg.max_grad_norm:
            self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.global_step += 1

    def _after_step(self, st: LoopState, loss: float, bar) -> bool:
        """Logging, step-based eval/checkpoints; return True to stop training."""
        cfg = self.cfg
        bar.update(1)
        lr = self.scheduler.get_last_lr()[-1]
        if st.global_step % cfg.log_steps == 0 or st.global_step == 1:
            sps = st.train_samples / max(st.train_seconds, 1e-9)
            tps = st.train_tokens / max(st.train_seconds, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{sps:.1f}", refresh=False)
            self.log({"event": "train", "step": st.global_step, "epoch": st.epoch, "loss": loss,
                      "lr": lr, "samples_per_second": sps, "tokens_per_second": tps, **step_metrics(self.step)})
        if cfg.eval_strategy == "steps" and self._evaluating() and st.global_step % cfg.eval_steps == 0:
            self._due = "eval"
        elif cfg.save_steps and st.global_step % cfg.save_steps == 0 and self._due is None:
            self._due = "save"
        if cfg.max_seconds is not None and st.train_seconds >= cfg.max_seconds and st.global_step < self.total_steps:
            self.time_budget_reached = True
        return st.global_step >= self.total_steps or self.time_budget_reached

    def _flush_due(self, st: LoopState) -> bool:
        """Run the evaluation or checkpoint that fell due; return True when early stopping says stop."""
        due, self._due = self._due, None
        if due == "eval":
            t0 = time.perf_counter()
            stop = self._eval_and_save(st)
            self._t0 += time.perf_counter() - t0  # evaluation is not training time
            return stop
        if due == "save":
            self._checkpoint(st)
        return False

    def _diverged_message(self, st: LoopState, loss: torch.Tensor) -> str:
        last = ckpt.latest_checkpoint(self.ckpt_dir)
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
        return (f"loss became {loss.item()} at step {st.global_step + 1} (epoch {st.epoch}); training "
                f"stopped, {where}. Try a lower train.lr or train.max_grad_norm")

    def restore_best(self) -> bool:
        """Load the best validation weights into the model (if any were kept)."""
        ckpt.recover_atomic(self.best_dir)
        path = self.best_dir / ckpt.WEIGHTS
        if not (self.cfg.keep_best and path.is_file()):
            return False
        ckpt.load_trainable(self.acc.unwrap_model(self.model), ckpt.load_tensors(path))
        return True


def step_metrics(step: TrainStep) -> dict[str, Any]:
    """The step's own numbers since the last log line (rewards, KL, ...), if it keeps any."""
    report = getattr(step, "log_metrics", None)
    return dict(report()) if callable(report) else {}


def _greater_is_better(metric: str) -> bool:
    return not any(k in metric for k in ("loss", "mae", "mse", "rmse", "perplexity"))


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}

"""The training loop, on ``accelerate``: the same code on CPU, one GPU, or several processes.

It owns optimizer groups, schedules, gradient accumulation, clipping, evaluation cadence, early
stopping, best-checkpoint selection, exact resume and NaN/inf detection. Tasks supply the model
(which returns a loss when given ``labels``), rows, a collator and a metrics function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tunelab.config import TrainConfig
from tunelab.data.batching import EpochShuffleSampler, LengthGroupedSampler, ShardedBatchSampler
from tunelab.errors import TrainingDiverged
from tunelab.train import checkpoint as ckpt
from tunelab.train.optim import build_optimizer, build_scheduler
from tunelab.train.trunk_cache import FrozenTrunkCache

MetricsFn = Callable[[np.ndarray, np.ndarray], dict[str, Any]]
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


def batch_tokens(batch: dict[str, torch.Tensor], counted: torch.Tensor | None) -> int:
    """Real (non-padding) tokens of a batch: the collator's count, else the 2-D attention mask's sum."""
    if counted is not None:
        return int(counted)
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None and mask.dim() == 2 else batch["input_ids"].numel()


def make_loader(rows: Sequence[dict], batch_size: int, collate, *, train: bool, seed: int,
                group_by_length: bool, rank: int = 0, world: int = 1
                ) -> tuple[DataLoader, ShardedBatchSampler | None]:
    """A DataLoader; for training, its batches are this process's shard of an order that is a
    pure function of (seed, epoch), and the returned batch sampler can skip batches on resume."""
    # Own generator: making an iterator must not draw from the global RNG (dropout's).
    gen = torch.Generator().manual_seed(seed)
    if not train:
        return DataLoader(list(rows), batch_size=batch_size, shuffle=False, collate_fn=collate,
                          generator=gen), None
    sampler: Any = (LengthGroupedSampler([len(r["input_ids"]) for r in rows], batch_size, seed)
                    if group_by_length else EpochShuffleSampler(len(rows), seed))
    batches = ShardedBatchSampler(sampler, batch_size, rank, world)
    return DataLoader(list(rows), batch_sampler=batches, collate_fn=collate, generator=gen), batches


def eval_loader(rows: Sequence[dict], batch_size: int, collate, accelerator: Accelerator) -> DataLoader:
    """An evaluation loader (data order kept), prepared so each process gets its shard."""
    loader, _ = make_loader(rows, batch_size, collate, train=False, seed=0, group_by_length=False)
    return accelerator.prepare(loader)


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, accelerator: Accelerator
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and labels when present) over a prepared loader, gathered across processes."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        labels = batch.pop("labels", None)
        logits = model(**batch).logits
        logits = accelerator.gather_for_metrics(logits)
        all_logits.append(logits.float().cpu())
        if labels is not None:
            all_labels.append(accelerator.gather_for_metrics(labels).cpu())
    logits_np = torch.cat(all_logits).numpy()
    labels_np = torch.cat(all_labels).numpy() if all_labels else None
    return logits_np, labels_np


class Trainer:
    """Fit a model with one config; see :func:`Trainer.fit`."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, accelerator: Accelerator, *, seed: int,
                 collate, best_metric: tuple[str, bool], log: LogFn, run_dir: Path,
                 metrics_fn: MetricsFn | None = None, evaluate_fn: EvaluateFn | None = None,
                 eval_collate=None, group_by_length: bool = True):
        """``evaluate_fn(model, loader, accelerator)`` scores the validation loader; without it the
        logits go through ``metrics_fn(logits, labels)``. ``eval_collate`` defaults to ``collate``."""
        if (metrics_fn is None) == (evaluate_fn is None):
            raise ValueError("give exactly one of metrics_fn and evaluate_fn")
        self.cfg, self.acc, self.seed = cfg, accelerator, seed
        self.collate, self.metrics_fn, self.evaluate_fn, self.log = collate, metrics_fn, evaluate_fn, log
        self.eval_collate = eval_collate or collate
        self.metric_name = cfg.metric_for_best or best_metric[0]
        self.greater = best_metric[1] if cfg.metric_for_best is None else _greater_is_better(self.metric_name)
        self.ckpt_dir, self.best_dir = run_dir / "checkpoints", run_dir / "best"
        self.group_by_length = group_by_length
        self.model = model

    # ------------------------------------------------------------------ setup
    def _setup(self, train_rows: Sequence[dict], eval_rows: Sequence[dict] | None):
        cfg, acc = self.cfg, self.acc
        self.trunk = self._build_trunk_cache(train_rows) if cfg.cache_frozen_trunk else None
        if self.trunk is not None:
            train_rows = [dict(r, row_index=i) for i, r in enumerate(train_rows)]
        # The train loader is not handed to accelerate: our batch sampler shards by process and
        # skips on resume, so data order never depends on a wrapper's iteration counter.
        self.train_loader, self.batches = make_loader(
            train_rows, cfg.batch_size, self.collate, train=True, seed=self.seed,
            group_by_length=self.group_by_length, rank=acc.process_index, world=acc.num_processes)
        steps_per_epoch = math.ceil(self.batches.batches_per_epoch() / cfg.grad_accum)
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

    def _build_trunk_cache(self, rows: Sequence[dict]) -> FrozenTrunkCache:
        t0 = time.perf_counter()
        trunk = FrozenTrunkCache(self.model)
        trunk.build(rows, self.collate, self.cfg.eval_batch_size)
        self.cache_seconds = time.perf_counter() - t0  # counted as training time (honest cost)
        self.acc.print(f"cached the frozen trunk (layers 0-{trunk.k - 1}) for {len(rows)} rows "
                       f"in {self.cache_seconds:.1f} s")
        return trunk

    # ------------------------------------------------------------------ resume
    def _resume(self) -> LoopState:
        self._restore_rng: Callable[[], None] | None = None
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            return LoopState()
        saved, self._restore_rng = ckpt.load_checkpoint(path, self.acc.unwrap_model(self.model),
                                                        self.optimizer)
        self.scheduler.load_state_dict(saved.pop("scheduler"))
        self.acc.print(f"resuming from {path} (step {saved['global_step']})")
        return LoopState(**saved)

    def _checkpoint(self, st: LoopState) -> None:
        if self.acc.is_main_process:
            ckpt.save_checkpoint(self.ckpt_dir, st.global_step, self.acc.unwrap_model(self.model),
                                 self.optimizer, {**st.__dict__, "scheduler": self.scheduler.state_dict()},
                                 self.cfg.save_total_limit)
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        if self.evaluate_fn is not None:
            metrics = self.evaluate_fn(self.model, self.eval_loader, self.acc)
        else:
            logits, labels = predict_logits(self.model, self.eval_loader, self.acc)
            metrics = self.metrics_fn(logits, labels)
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
        st.train_seconds += getattr(self, "cache_seconds", 0.0)
        self.last_eval: dict[str, Any] = {}
        self.last_eval_step: int | None = None
        self.early_stopped = False
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
                         st.best_metric, st.best_step, self.early_stopped, self.last_eval, st.train_tokens)

    def _evaluating(self) -> bool:
        return self.eval_loader is not None and self.cfg.eval_strategy != "no"

    def _epoch_end(self, st: LoopState) -> bool:
        if self.cfg.eval_strategy == "epoch" and self._evaluating():
            return self._eval_and_save(st)
        if self.cfg.save_steps is None:
            self._checkpoint(st)
        return False

    def _run_epoch(self, st: LoopState, loader, bar) -> bool:
        cfg, acc, model = self.cfg, self.acc, self.model
        batches = iter(loader)
        if self._restore_rng is not None:  # resumed: RNG as it was at the checkpoint, from here on
            self._restore_rng()
            self._restore_rng = None
        t0, micro = time.perf_counter(), 0
        device = acc.device
        for batch in batches:
            tokens = batch_tokens(batch, batch.pop("num_tokens", None))  # on the CPU batch: no device sync
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            rows = batch.pop("row_index", None)
            if self.trunk is not None:
                with self.trunk.active(rows, batch["attention_mask"]):
                    out = model(**batch)
            else:
                out = model(**batch)
            loss = out.loss / cfg.grad_accum
            if not torch.isfinite(loss.detach()).all():
                raise TrainingDiverged(self._diverged_message(st, loss))
            acc.backward(loss)
            micro += 1
            st.batches_in_epoch += 1
            st.train_samples += batch["input_ids"].shape[0] * acc.num_processes
            st.train_tokens += tokens * acc.num_processes
            last = st.batches_in_epoch >= self.batches.batches_per_epoch()
            if micro % cfg.grad_accum and not last:
                continue  # accumulate; the epoch's last batch always ends with a step
            self._optimizer_step(st)
            st.train_seconds += time.perf_counter() - t0
            if self._after_step(st, loss.detach().float().item() * cfg.grad_accum, bar):
                return True
            t0 = time.perf_counter()
        st.train_seconds += time.perf_counter() - t0
        return False

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
                      "lr": lr, "samples_per_second": sps, "tokens_per_second": tps})
        stop = False
        if cfg.eval_strategy == "steps" and self._evaluating() and st.global_step % cfg.eval_steps == 0:
            stop = self._eval_and_save(st)
        elif cfg.save_steps and st.global_step % cfg.save_steps == 0:
            self._checkpoint(st)
        return stop or st.global_step >= self.total_steps

    def _diverged_message(self, st: LoopState, loss: torch.Tensor) -> str:
        last = ckpt.latest_checkpoint(self.ckpt_dir)
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
        return (f"loss became {loss.item()} at step {st.global_step + 1} (epoch {st.epoch}); training "
                f"stopped, {where}. Try a lower train.lr or train.max_grad_norm")

    def restore_best(self) -> bool:
        """Load the best validation weights into the model (if any were kept)."""
        path = self.best_dir / ckpt.WEIGHTS
        if not (self.cfg.keep_best and path.is_file()):
            return False
        from safetensors.torch import load_file

        ckpt.load_trainable(self.acc.unwrap_model(self.model), load_file(str(path)))
        return True


def _greater_is_better(metric: str) -> bool:
    return not any(k in metric for k in ("loss", "mae", "mse", "rmse", "perplexity"))


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}

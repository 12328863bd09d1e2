"""Dynamic batching: requests wait a few milliseconds in one queue, then run together.

One worker thread owns the models (so an adapter switch never races a forward pass). It takes the
oldest waiting job, waits up to ``batch_wait_ms`` for more, and forms a batch of at most
``max_batch_size`` rows from the oldest job and every later job that can share its forward pass:

* the same model group (one model in memory) and the same kind of work;
* for generation, rows of *different* adapters of a shared base join the same batch when the
  adapters can mix (:mod:`tunelab.adapters.mixed`: LoRA with DoRA/rsLoRA, IA3); otherwise
  only rows of the oldest job's adapter do, and the rest wait for the next batch (scheduled by
  adapter, oldest first);
* embeddings and classification batch the rows of one model.

Jobs whose client went away before their turn are dropped without running. The queue is bounded in
rows: :meth:`Scheduler.submit` raises :class:`QueueFull` (the server answers 429) instead of letting
latency grow without limit.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunelab.serve.engine import GenRow, generate_rows
from tunelab.serve.registry import ServedModel

GENERATE, EMBED, CLASSIFY = "generate", "embed", "classify"


class QueueFull(Exception):
    """The queue holds ``max_queue`` rows already."""


@dataclass
class Job:
    """One request's rows of work, and where its result goes."""

    kind: str
    model: ServedModel
    rows: list[Any]
    """:class:`GenRow` for generation; texts (embed, classify) or images (classify)."""
    done: Callable[[Any, BaseException | None], None]
    """Called once from the worker thread: (result, None) or (None, error)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return len(self.rows)


class Scheduler:
    """The queue and the worker thread (see the module docstring)."""

    def __init__(self, *, max_batch_size: int = 8, batch_wait_ms: float = 10.0, max_queue: int = 64,
                 metrics: Any = None) -> None:
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.busy_rows = 0

    # ------------------------------------------------------------------ the queue
    @property
    def queued_rows(self) -> int:
        with self._cond:
            return sum(j.size for j in self._jobs)

    def submit(self, job: Job) -> None:
        with self._cond:
            waiting = sum(j.size for j in self._jobs)
            if self._stopping or waiting + job.size > self.max_queue:
                raise QueueFull(f"the queue holds {waiting} row(s) of work (limit {self.max_queue})")
            self._jobs.append(job)
            self._gauge(waiting + job.size)
            self._cond.notify()

    def _gauge(self, rows: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(rows)

    # ------------------------------------------------------------------ the worker
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="tunelab-serve-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[Job] | None:
        """Wait for a job, then for the batching window (or a full batch); take a compatible batch."""
        with self._cond:
            while True:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._jobs:
                    return None
                self._drop_cancelled()
                if self._jobs:
                    break
            deadline = self._jobs[0].enqueued + self.batch_wait
            while not self._stopping and sum(j.size for j in self._jobs) < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._drop_cancelled()
            if not self._jobs:
                return []
            batch = self._take_compatible()
            self._gauge(sum(j.size for j in self._jobs))
            return batch

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.cancelled.is_set()]:
            self._jobs.remove(job)
            self._count_cancelled(job.size)
            job.done(None, _Cancelled())

    def _take_compatible(self) -> list[Job]:
        first = self._jobs[0]
        batch, rows = [first], first.size
        names = [first.model.adapter]
        for job in list(self._jobs)[1:]:
            if rows + job.size > self.max_batch_size:
                continue
            if job.kind != first.kind or job.model.group is not first.model.group:
                continue
            if job.model.name != first.model.name:
                if first.kind != GENERATE or first.model.group.why_not_mixable(names + [job.model.adapter]):
                    continue
                names.append(job.model.adapter)
            batch.append(job)
            rows += job.size
        for job in batch:
            self._jobs.remove(job)
        return batch

    def _count_cancelled(self, rows: int) -> None:
        if self.metrics is not None:
            self.metrics.cancelled_rows.inc(rows)

    def _run(self, batch: list[Job]) -> None:
        if not batch:
            return
        self.busy_rows = sum(j.size for j in batch)
        if self.metrics is not None:
            self.metrics.batch_rows.observe(self.busy_rows)
            self.metrics.batches.labels(kind=batch[0].kind, adapters=str(len({j.model.name for j in batch}))).inc()
        try:
            results = RUNNERS[batch[0].kind](batch)
            if batch[0].kind == GENERATE:
                self._count_cancelled(sum(r.finish_reason == "cancelled" for rows in results for r in rows))
        except BaseException as exc:  # noqa: BLE001 -- every waiting request gets the error
            for job in batch:
                _safe_done(job, None, exc)
        else:
            for job, result in zip(batch, results):
                _safe_done(job, result, None)
        finally:
            self.busy_rows = 0


class _Cancelled(Exception):
    """A job dropped because its client went away."""


def _safe_done(job: Job, result: Any, exc: BaseException | None) -> None:
    try:
        job.done(result, exc)
    except Exception:  # noqa: BLE001 -- a client gone (closed event loop) must not stop the worker
        pass


# ---------------------------------------------------------------------------- what a batch runs

def _run_generate(batch: list[Job]) -> list[list[GenRow]]:
    group = batch[0].model.group
    rows = [r for job in batch for r in job.rows]
    names = [job.model.adapter for job in batch for _ in job.rows]
    for job in batch:
        for row in job.rows:
            row.cancelled = job.cancelled.is_set
    with group.use(names) as model:
        generate_rows(model, batch[0].model.processor, rows)
    return [job.rows for job in batch]


def _split(batch: list[Job], outputs: list[Any]) -> list[list[Any]]:
    out, start = [], 0
    for job in batch:
        out.append(outputs[start:start + job.size])
        start += job.size
    return out


def _per_model(batch: list[Job], work: Callable[[ServedModel, list[Any]], list[Any]]) -> list[list[Any]]:
    """Run ``work`` once over the rows of the batch (every job names the same model)."""
    model = batch[0].model
    with model.group.use([model.adapter]):
        return _split(batch, work(model, [r for job in batch for r in job.rows]))


def _run_embed(batch: list[Job]) -> list[list[Any]]:
    return _per_model(batch, lambda m, texts: list(m.task.embed(m.loaded(), texts, batch_size=len(texts))))


def _run_classify(batch: list[Job]) -> list[list[Any]]:
    return _per_model(batch, lambda m, inputs: m.task.classify(m.loaded(), inputs, batch_size=len(inputs)))


RUNNERS: dict[str, Callable[[list[Job]], list[Any]]] = {GENERATE: _run_generate, EMBED: _run_embed,
                                                         CLASSIFY: _run_classify}

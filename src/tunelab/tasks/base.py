"""The task protocol: what every task offers the glue code, and its registry entry.

A task is *what is learned*: its data schema, how rows become tensors, the model and head, the
training step, the metrics and how predictions are made. Glue code (pipeline, CLI, run directory,
compare, serve) talks to a task only through :class:`Task` and reads its :class:`TaskSpec`; it
never names a task. Adding a task is one module that exposes ``SPECS`` plus one line in
:mod:`tunelab.tasks` (see ``docs/tasks.md``, with image classification as the worked example).

A task never imports a method, and never imports the engine: it hands the engine a
:class:`~tunelab.train.step.TrainStep` and builds its loaders with :mod:`tunelab.data.loaders`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel
from torch import nn

Processor = Any
"""What turns raw inputs into model inputs: a tokenizer, an image preprocessing, or None."""

Samples = list[dict[str, Any]]
"""Example outputs a task logs beside its metrics (e.g. generations); empty for most tasks."""


@dataclass(frozen=True)
class TaskSpec:
    """A task's registry entry: how to build it and what glue code may know about it."""

    name: str
    config_cls: type[BaseModel]
    """The ``task:`` section's class; its ``name`` field is a ``Literal`` of this spec's name."""
    build: Callable[[Any], Task]
    """Make the task from its validated ``task:`` section."""
    description: str
    metrics: Mapping[str, bool]
    """Test metrics the task reports (what ``compare`` may rank by) -> whether larger is better."""
    validation_metric: tuple[str, bool]
    """Default metric for the best checkpoint and early stopping, and whether larger is better."""
    headline: Callable[[Mapping[str, float]], str] | str
    """The metric a comparison ranks by by default (or a function of the test metrics it got)."""
    processor: Literal["tokenizer", "image", "none"] = "tokenizer"
    summary_metrics: tuple[str, ...] = ()
    """Test metrics ``tunelab train`` prints in its summary table, in order."""
    generates_text: bool = False
    """Runs answer with ``tunelab generate``/``chat`` rather than ``predict``."""
    has_labels: bool = True
    """Rows carry a target the metrics compare against (a label map may be saved with the run)."""
    can_pack: bool = False
    """Training rows can be packed into full sequences (``task.packing``)."""
    can_cache_trunk: bool = False
    """``train.cache_frozen_trunk`` works: a frozen lower trunk's outputs are computed once."""
    peft_task_type: str | None = None
    """peft's ``task_type`` for ``export --format peft`` (None: peft has no matching task)."""
    scores_responses: bool = False
    """The task object has ``score(loaded, prompts, responses, batch_size) -> list[float]``: a run
    scores responses to prompts (``tunelab score``; PPO/GRPO use it as their reward)."""
    can_distill: bool = False
    """A ``distill:`` teacher can train the task's model: the task object has
    ``distill_outputs(model, batch, features) -> (logits [N, C], task loss, head features [N, H] | None)``
    at the positions that count, and ``distill_cacheable(cfg) -> bool`` (see :mod:`tunelab.distill`)."""
    classifies: bool = False
    """The task object has ``classify(loaded, inputs, batch_size) -> list[dict]``: label, score and
    probabilities (or a regression's prediction) for texts, or for images (PIL) when ``processor`` is
    ``image`` (``tunelab serve``'s ``/v1/classify``)."""
    embeds_text: bool = False
    """The task object has ``embed(loaded, texts, batch_size) -> Tensor [N, d]``: a run turns texts into
    vectors (``tunelab embed``, ``export --format sentence-transformers``)."""
    predict_example: str = '"some text"'
    """A positional input of ``tunelab predict`` as the model card shows it (a text, an image file)."""
    comparable_options: tuple[str, ...] = ()
    """``task.*`` options that may differ between the runs of one comparison (training choices such
    as augmentation, not what is learned)."""
    extra_metric_checks: Callable[[Any, str], str | None] = field(default=lambda cfg, metric: None)
    """``(task config, metric) -> problem or None``: a metric it reports only with some options."""

    def headline_metric(self, test: Mapping[str, float]) -> str:
        return self.headline(test) if callable(self.headline) else self.headline

    def greater_is_better(self, metric: str) -> bool:
        """Direction of one of the task's metrics (unknown names: by the usual naming)."""
        if metric in self.metrics:
            return self.metrics[metric]
        return not any(k in metric for k in ("loss", "mae", "mse", "rmse", "perplexity"))


@runtime_checkable
class Prepared(Protocol):
    """Prepared data: encoded rows per split (``train``, optionally ``validation``/``test``) and
    the label map fitted on the training split (None for tasks without classes)."""

    rows: dict[str, list[dict[str, Any]]] | None
    labels: Any


class Task(Protocol):
    """What a task does; see the module docstring. ``cfg`` is the whole validated run config."""

    spec: TaskSpec

    @property
    def name(self) -> str: ...

    # -- model and inputs
    def resolve_model(self, ref: str) -> str:
        """A local reference the task's loaders read (``model.name_or_path`` resolved)."""
    def load_processor(self, resolved: str) -> Processor:
        """The input processor of the base model (tokenizer, image preprocessing, ...)."""
    def build_model(self, resolved: str, labels: Any) -> nn.Module:
        """The base model with a fresh head; ``model.tunelab_head_params`` lists the head's names."""

    # -- data
    def prepare(self, cfg: Any, processor: Processor) -> Prepared:
        """Read, validate, split and encode the data: every user error about the data happens here."""
    def check_methods(self, cfg: Any, methods: Sequence[Any]) -> None:
        """Refuse task options that cannot work with the configured methods (method specs given)."""
    def collators(self, cfg: Any, processor: Processor, model: nn.Module) -> tuple[Any, Any]:
        """(training collator, evaluation collator)."""

    # -- training
    def train_step(self, cfg: Any, model: nn.Module, processor: Processor, log: Callable[[str], None]) -> Any:
        """The :class:`~tunelab.train.step.TrainStep` the engine calls for each batch (``log``
        prints a line on the main process)."""
    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any) -> dict[str, Any]:
        """Validation metrics over a prepared evaluation loader."""
    def baseline(self, model: nn.Module, data: Prepared, processor: Processor, accelerator: Any, cfg: Any
                 ) -> tuple[dict[str, Any], Samples] | None:
        """The test evaluation before training, when it means something (else None)."""
    def test_metrics(self, model: nn.Module, data: Prepared, processor: Processor, accelerator: Any, cfg: Any
                     ) -> tuple[dict[str, Any], Samples]:
        """Metrics on the test split ({} without one) and samples to log."""

    # -- the run directory
    def save_artifacts(self, folder: Any, model: nn.Module, processor: Processor, data: Prepared | None,
                       test: dict[str, Any]) -> None:
        """Write the processor (and task extras such as plots) into the run's ``model/`` folder's parent."""
    def load_saved_processor(self, model_dir: Any, resolved: str) -> Processor:
        """The processor a run saved (falls back to the base model's)."""

    # -- using a trained run
    def predict(self, loaded: Any, inputs: Sequence[str] | None, file: str | None) -> list[dict[str, Any]]:
        """Predictions for positional inputs or the rows of a file (each output merged into its row)."""
    def evaluate_source(self, loaded: Any, data: str | None, split: str) -> dict[str, Any]:
        """Metrics of a trained run on its own split, or on another labelled file/folder."""

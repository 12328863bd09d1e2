"""Where RL rewards and judge scores come from (PPO, GRPO, and judged DPO runs).

``task.reward`` (and ``task.judge``) name one of:

- a **finished run** whose task scores responses (``TaskSpec.scores_responses``): a reward-model
  run (its scalar reward), or a classification run (the probability, or the logit, of the label
  ``task.reward_label``; default the second of two labels, e.g. ``positive`` for
  rotten_tomatoes). The run is loaded once, on the side, and scores the *text* of each response,
  re-tokenised with its own tokenizer, so the policy and the scorer need not share a vocabulary;
- a **Python function** ``package.module:function``, called as ``fn(prompts, responses)`` with two
  lists of strings (each prompt is its last user turn's text) and returning one number per
  response.

Every score must be a finite number. A scorer that raises or returns NaN/inf refuses the step
with a :class:`~tunelab.errors.UserError` naming the rollout row, before any update uses the
scores: the run's last checkpoint stays as it was, so the run can ``--resume`` with a fixed scorer.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.errors import UserError

Message = dict[str, str]
ScoreFn = Callable[[list[tuple[Message, ...]], list[str]], list[float]]

SCORE_OUTPUTS = ("probability", "logit")
_UNUSED = "no update used these scores (the last checkpoint is intact: fix the scorer, then --resume)"


@dataclass
class Scorer:
    """A loaded reward source: ``scorer(prompts, responses) -> [N]`` float64 scores."""

    name: str
    """How errors name it: ``"task.reward run runs/rm"`` or ``"task.reward function pkg.mod:fn"``."""
    fn: ScoreFn

    def __call__(self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = [tuple(p) for p in prompts], list(responses)
        try:
            values = list(self.fn(prompts, responses))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a user's function: name the row that fails
            raise UserError(self._failure(prompts, responses, e)) from None
        if len(values) != len(responses):
            raise UserError(f"{self.name} returned {len(values)} score(s) for {len(responses)} response(s); it must "
                            "return one number per response")
        out = []
        for i, value in enumerate(values):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                where = _row(prompts[i], responses[i])
                raise UserError(f"{self.name} returned {value!r} for rollout row {i + 1} ({where}); every score "
                                f"must be a finite number; {_UNUSED}")
            out.append(number)
        return torch.tensor(out, dtype=torch.float64)

    def _failure(self, prompts: list[tuple[Message, ...]], responses: list[str], error: Exception) -> str:
        """Name the first row on which the scorer fails on its own (or the batch, if none does)."""
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            try:
                self.fn([prompt], [response])
            except Exception as e:  # noqa: BLE001
                return (f"{self.name} raised {type(e).__name__}: {e} on rollout row {i + 1} "
                        f"({_row(prompt, response)}); {_UNUSED}")
        return f"{self.name} raised {type(error).__name__}: {error} on a batch of {len(responses)} rollouts"


def _row(prompt: Sequence[Message], response: str) -> str:
    user = next((t["content"] for t in reversed(prompt) if t["role"] == "user"), "")
    return f"prompt {_short(user)!r}, response {_short(response)!r}"


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def load_scorer(ref: str, field: str, label: str | None = None, output: str = "probability") -> Scorer:
    """The scorer behind ``ref`` (see the module docstring); ``field`` names the option in errors."""
    from tunelab.inference import is_run_dir

    if is_run_dir(ref):
        return _run_scorer(ref, field, label, output)
    path = Path(ref)
    if path.exists():
        if (path / "config.yaml").is_file():
            raise UserError(f"{field}: {ref} is an unfinished run (no results.json); finish or resume it first")
        raise UserError(f"{field}: {ref} is not a tunelab run directory (config.yaml + results.json)")
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise UserError(f"{field}: '{ref}' is neither a finished run directory nor a Python function "
                        "'package.module:function'")
    if label is not None:
        raise UserError(f"{field}_label applies to classification runs, not to the function {ref}")
    return Scorer(f"{field} function {ref}", _import_function(ref, module, attr, field))


def _import_function(ref: str, module: str, attr: str, field: str) -> ScoreFn:
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        raise UserError(f"{field}: cannot import module '{module}' for '{ref}' ({e}); is it on PYTHONPATH?") from None
    except AttributeError:
        raise UserError(f"{field}: module '{module}' has no function '{attr}'") from None
    if not callable(fn):
        raise UserError(f"{field}: '{ref}' is not callable")

    def call(prompts: list[tuple[Message, ...]], responses: list[str]) -> list[float]:
        texts = [next((t["content"] for t in reversed(p) if t["role"] == "user"), "") for p in prompts]
        return fn(texts, responses)

    return call


def _run_scorer(ref: str, field: str, label: str | None, output: str) -> Scorer:
    from tunelab.pipeline import load_run
    from tunelab.tasks import TASK_SPECS

    scorers = [name for name, spec in TASK_SPECS.items() if spec.scores_responses]
    with torch.random.fork_rng():  # building the scorer must not move the trainer's random stream
        loaded = load_run(ref)
    if not loaded.task.spec.scores_responses:
        raise UserError(f"{field}: run {ref} is a task.name={loaded.task.name} run, which cannot score responses; "
                        f"use a run of task.name={' or '.join(scorers)}, or a Python function 'module:function'")
    loaded.model.requires_grad_(False)

    def call(prompts: list[tuple[Message, ...]], responses: list[str]) -> list[float]:
        return loaded.task.score(loaded, prompts, responses, label=label, output=output, allow_empty=True)

    call([({"role": "user", "content": "Hello."},)], ["Hello."])  # options checked now, not mid-training
    return Scorer(f"{field} run {ref}", call)


__all__ = ["SCORE_OUTPUTS", "Scorer", "load_scorer"]

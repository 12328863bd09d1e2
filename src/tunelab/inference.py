"""What ``tunelab generate`` and ``tunelab chat`` talk to: a trained run or an untrained causal LM.

:func:`load_generator` accepts an instruction-tuning run directory (the model is rebuilt from the
run: base + method + saved weights, and prompts use the run's template and system prompt) or any
causal LM reference ``model.name_or_path`` accepts (a built-in alias such as ``smollm2-135m``, a
folder, or a hub id when online), so a base model can be tried before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tunelab.data.conversations import MESSAGE_COLUMNS, prompt_messages
from tunelab.data.templates import Template
from tunelab.errors import UserError

Message = dict[str, str]


@dataclass
class Generator:
    """A causal LM ready to answer: model, tokenizer, template, default system prompt."""

    model: nn.Module
    tokenizer: Any
    template: Template
    system_prompt: str | None
    source: str

    def render(self, messages: list[Message]) -> str:
        """The prompt text for a conversation that ends with a user turn (system prompt added)."""
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.template.prompt(messages, self.tokenizer)


def is_run_dir(ref: str) -> bool:
    """A tunelab run directory (config.yaml + results.json), as opposed to a model folder."""
    path = Path(ref)
    return (path / "config.yaml").is_file() and (path / "results.json").is_file()


def load_generator(ref: str, *, template: str | None = None, system_prompt: str | None = None) -> Generator:
    """The model behind ``ref`` (a run directory or a causal LM reference) for generation."""
    from tunelab.tasks import TASK_SPECS, get_task

    generative = [name for name, spec in TASK_SPECS.items() if spec.generates_text]
    if is_run_dir(ref):
        from tunelab.pipeline import load_run

        loaded = load_run(ref)
        if not loaded.task.spec.generates_text:
            raise UserError(f"run {ref} is a {loaded.cfg.task.name} run; generate and chat need a run of a task "
                            f"that generates text (task.name={' or '.join(generative)}) or a causal LM such as "
                            "smollm2-135m")
        task_cfg = loaded.cfg.task
        tmpl = Template.resolve(template or task_cfg.template, loaded.tokenizer)
        return Generator(loaded.model, loaded.tokenizer, tmpl, system_prompt or task_cfg.system_prompt, ref)
    if (Path(ref) / "config.yaml").is_file() and (Path(ref) / "metrics.jsonl").is_file():
        raise UserError(f"{ref} looks like an unfinished run (no results.json); finish or resume it first")
    task = get_task(generative[0])  # a base model answers as that task's untrained starting point
    resolved = task.resolve_model(ref)
    tokenizer = task.load_processor(resolved)
    model = task.build_model(resolved, None).eval()
    return Generator(model, tokenizer, Template.resolve(template or "auto", tokenizer), system_prompt, ref)


def row_messages(row: dict[str, Any], where: str) -> list[Message]:
    """A prompt row as a conversation ending with a user turn: ``prompt``, ``instruction`` (+
    ``input``), or ``messages`` / ``conversations`` (a trailing assistant turn is dropped)."""
    if isinstance(row.get("prompt"), str):
        return [{"role": "user", "content": row["prompt"]}]
    if isinstance(row.get("instruction"), str):
        extra = row.get("input")
        text = f"{row['instruction']}\n\n{extra}" if isinstance(extra, str) and extra.strip() else row["instruction"]
        return [{"role": "user", "content": text}]
    for column in MESSAGE_COLUMNS:
        if column in row:
            return prompt_messages(row[column], where)
    raise UserError(f"{where}: a prompt row needs a 'prompt', 'instruction' or 'messages' field; "
                    f"got {sorted(row)}")

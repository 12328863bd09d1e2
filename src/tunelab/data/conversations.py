"""Instruction-tuning rows -> conversations: one internal shape for every data format.

A :class:`Conversation` is a list of ``{"role", "content"}`` turns (``system`` / ``user`` /
``assistant``), or, for plain text, a single document. Formats (``task.format``):

* ``alpaca`` -- columns ``instruction``, optional ``input``, ``output`` (Taori et al., 2023): the
  instruction (and the input, after a blank line) is the user turn, the output the assistant turn;
* ``messages`` -- a column ``messages`` (or ``conversations``) holding a list of turns, either
  ``{"role", "content"}`` (OpenAI / chat-template style) or ShareGPT's ``{"from", "value"}`` with
  ``human`` / ``gpt`` / ``system``; it must end with an assistant turn;
* ``prompt_completion`` -- columns ``prompt`` and ``completion``;
* ``text`` -- a column ``text`` (or ``data.text_column``): continued pretraining, every token is
  trained;
* ``auto`` -- the first of these whose columns the data has.

Rows that do not fit the chosen format raise one :class:`UserError` naming the split, the row and
what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import UserError

FORMATS = ("alpaca", "messages", "prompt_completion", "text")
MESSAGE_COLUMNS = ("messages", "conversations")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    """Turns of one example (``text`` is set instead for plain-text documents)."""

    messages: list[dict[str, str]] = field(default_factory=list)
    text: str | None = None

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def prompt_and_reference(self) -> tuple[list[dict[str, str]], str]:
        """The turns before the last assistant turn, and that turn's content (for generation)."""
        return self.messages[:-1], self.messages[-1]["content"]


def detect_format(columns: Sequence[str], text_column: str = "text") -> str:
    """The first format whose required columns are present; a UserError lists what each needs."""
    cols = set(columns)
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if cols & set(MESSAGE_COLUMNS):
        return "messages"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if text_column in cols:
        return "text"
    raise UserError(
        f"cannot tell the instruction format from the columns {sorted(cols)}; expected alpaca "
        f"(instruction, [input], output), messages (messages or conversations), prompt_completion "
        f"(prompt, completion) or text ({text_column}); set task.format to one of {', '.join(FORMATS)}")


def required_columns(fmt: str, columns: Sequence[str], text_column: str = "text") -> list[str]:
    """Columns the format reads; a missing one is a UserError naming it."""
    cols = set(columns)
    need = {"alpaca": ["instruction", "output"], "prompt_completion": ["prompt", "completion"],
            "text": [text_column]}.get(fmt)
    if fmt == "messages":
        present = [c for c in MESSAGE_COLUMNS if c in cols]
        if not present:
            raise UserError(f"task.format=messages needs a 'messages' or 'conversations' column; "
                            f"the data has {sorted(cols)}")
        return present[:1]
    missing = [c for c in need or [] if c not in cols]
    if missing:
        raise UserError(f"task.format={fmt} needs column(s) {', '.join(missing)}; the data has {sorted(cols)}")
    return list(need or [])


def _text(value: Any, what: str, where: str) -> str:
    if value is None:
        raise UserError(f"{where}: '{what}' is empty")
    if not isinstance(value, str):
        raise UserError(f"{where}: '{what}' must be text, got {type(value).__name__}")
    return value


def _turn(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: each turn must be an object with role/content (or from/value), got {raw!r:.60}")
    if "role" in raw:
        role, content = raw["role"], raw.get("content")
        if role not in ROLES:
            raise UserError(f"{where}: unknown role {role!r}; accepted: {', '.join(ROLES)}")
    elif "from" in raw:
        role, content = SHAREGPT_ROLES.get(str(raw["from"]).lower()), raw.get("value")
        if role is None:
            raise UserError(f"{where}: unknown ShareGPT speaker {raw['from']!r}; accepted: "
                            f"{', '.join(sorted(SHAREGPT_ROLES))}")
    else:
        raise UserError(f"{where}: a turn needs 'role' and 'content' (or ShareGPT 'from' and 'value'); "
                        f"got keys {sorted(raw)}")
    return {"role": role, "content": _text(content, "content", where)}


def _messages(raw: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: messages must be a non-empty list of turns")
    turns = [_turn(t, f"{where}, turn {i}") for i, t in enumerate(raw)]
    if turns[-1]["role"] != "assistant":
        raise UserError(f"{where}: the last turn must be the assistant's (the response to learn), "
                        f"got {turns[-1]['role']!r}")
    if not any(t["role"] == "user" for t in turns):
        raise UserError(f"{where}: the conversation has no user turn")
    if any(t["role"] == "system" for t in turns[1:]):
        raise UserError(f"{where}: a system turn may only come first")
    return turns


def prompt_messages(raw: Any, where: str) -> list[dict[str, str]]:
    """Turns to generate a reply to: a trailing assistant turn (a reference answer) is dropped, and
    the rest must end with a user turn."""
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: messages must be a non-empty list of turns")
    turns = [_turn(t, f"{where}, turn {i}") for i, t in enumerate(raw)]
    if turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    if not turns or turns[-1]["role"] != "user":
        raise UserError(f"{where}: to generate a reply the conversation must end with a user turn")
    return turns


def to_conversation(row: dict[str, Any], fmt: str, where: str, text_column: str = "text",
                    system_prompt: str | None = None) -> Conversation:
    """One row in format ``fmt`` as a :class:`Conversation` (``system_prompt`` is prepended when
    the row has no system turn of its own)."""
    if fmt == "text":
        return Conversation(text=_text(row.get(text_column), text_column, where))
    if fmt == "alpaca":
        instruction = _text(row.get("instruction"), "instruction", where)
        extra = row.get("input")
        user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        turns = [{"role": "user", "content": user},
                 {"role": "assistant", "content": _text(row.get("output"), "output", where)}]
    elif fmt == "prompt_completion":
        turns = [{"role": "user", "content": _text(row.get("prompt"), "prompt", where)},
                 {"role": "assistant", "content": _text(row.get("completion"), "completion", where)}]
    elif fmt == "messages":
        column = next(c for c in MESSAGE_COLUMNS if c in row)
        turns = _messages(row[column], where)
    else:
        raise UserError(f"unknown task.format {fmt!r}; accepted: auto, {', '.join(FORMATS)}")
    if system_prompt and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": system_prompt}, *turns]
    return Conversation(messages=turns)

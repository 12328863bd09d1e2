"""Preference rows (prompt, chosen, rejected) and prompt-only rows, read and checked.

Preference optimisation (DPO and its relatives, reward modelling) learns from pairs of responses
to the same prompt, one preferred over the other. :func:`read_pairs` turns the rows of one split
into :class:`PreferencePair` objects; :func:`read_prompts` reads prompt-only rows for RL (PPO,
GRPO), where the responses are generated during training.

Accepted preference row shapes:

* ``prompt``, ``chosen``, ``rejected`` as plain strings (the prompt becomes one user turn);
* ``prompt`` as a string or as a list of turns, ``{"role", "content"}`` (OpenAI / chat-template
  style) or ShareGPT's ``{"from", "value"}``; system turns may come first and the list must end
  with a user turn;
* ``chosen`` / ``rejected`` as a string, or as a list of turns whose last turn is the assistant's
  (its content is the response; a list of a single assistant turn is the usual case);
* TRL's implicit-prompt form: no ``prompt`` column, ``chosen`` and ``rejected`` are full
  conversations that share every turn but their final assistant turn; the shared turns (ending with
  the last user turn) are the prompt and the final assistant turns are the responses;
* an optional ``margin`` column holding a number per row (how much more ``chosen`` is preferred;
  0.0 when the column is absent).

A pair whose chosen and rejected responses are equal (after stripping whitespace) is skipped and
counted, not refused: it carries no preference signal (its DPO / reward-model loss has a zero
gradient in the response), and such rows are common in scraped data. The caller prints the count;
a split in which every pair is identical is refused.

Every malformed row raises one :class:`UserError` line naming the split, the 1-based row
(``"train row 3"``), the column and what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from tunelab.data.conversations import MESSAGE_COLUMNS, _turn, prompt_messages
from tunelab.errors import UserError

Message = dict[str, str]
"""One turn: ``{"role": "system" | "user" | "assistant", "content": ...}``."""

PAIR_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")
"""The columns of the explicit-prompt preference form."""

_RESPONSE_ACCEPTED = "a non-empty string, or a list of turns ending with the assistant's turn"
_PROMPT_ACCEPTED = "a non-empty string, or a list of turns ({role, content} or ShareGPT {from, value}) ending with a user turn"


@dataclass(frozen=True)
class PreferencePair:
    """One preference example: a prompt and two responses to it, ``chosen`` preferred."""

    prompt: tuple[Message, ...]
    """The conversation up to and including the last user turn (system turns allowed first)."""
    chosen: str
    """The preferred assistant response text."""
    rejected: str
    """The dispreferred assistant response text."""
    margin: float = 0.0
    """How strongly ``chosen`` is preferred (from a ``margin`` column; 0.0 when absent)."""


def preference_columns(columns: Iterable[str], split: str | None = None) -> None:
    """Check that ``columns`` hold a preference form; raise :class:`UserError` naming what is missing.

    Accepted: ``prompt`` + ``chosen`` + ``rejected``, or ``chosen`` + ``rejected`` alone (the
    implicit-prompt form, where both are full conversations sharing their prompt turns).
    """
    cols = set(columns)
    missing = [c for c in ("chosen", "rejected") if c not in cols]
    if not missing:
        return
    where = f"the {split} split" if split else "the data"
    raise UserError(
        f"{where} lacks column(s) {', '.join(repr(c) for c in missing)}; preference data needs columns "
        f"'prompt', 'chosen' and 'rejected' (or 'chosen' and 'rejected' alone as full conversations "
        f"sharing their prompt turns); the data has columns {sorted(cols)}")


def read_pairs(ds: datasets.Dataset, split: str, *, where: str | None = None
               ) -> tuple[list[PreferencePair], int]:
    """Rows with prompt/chosen/rejected -> pairs; returns (pairs, number of identical pairs skipped).

    ``where`` (e.g. ``"file prefs.jsonl"``) is prefixed to error messages when given. A pair whose
    chosen equals rejected after stripping is skipped and counted, because it carries no preference
    signal. Raises :class:`UserError` for a missing column, a malformed row, an empty split or a
    split whose pairs are all identical.
    """
    preference_columns(ds.column_names, split)
    _check_not_empty(ds, split, where)
    has_prompt, has_margin = "prompt" in ds.column_names, "margin" in ds.column_names
    pairs: list[PreferencePair] = []
    skipped = 0
    for index, row in enumerate(ds.with_format(None)):
        loc = _location(split, index, where)
        pair = _pair(row, loc, has_prompt, has_margin)
        if pair.chosen.strip() == pair.rejected.strip():
            skipped += 1
        else:
            pairs.append(pair)
    if not pairs:
        raise UserError(
            f"{_prefix(where)}every one of the {skipped} pairs of the {split} split has chosen equal to "
            f"rejected, so there is no preference to learn; give rows whose 'chosen' and 'rejected' differ")
    return pairs, skipped


def read_prompts(ds: datasets.Dataset, split: str, *, where: str | None = None) -> list[tuple[Message, ...]]:
    """Prompt-only rows (for RL): a 'prompt' column (string or message list) or 'messages'/'conversations'
    (a trailing assistant turn dropped); also accepts preference files (uses only their prompt).

    Raises :class:`UserError` naming the split, row and column (after ``where``, e.g. ``"file p.jsonl"``,
    when given) for a missing column or a bad prompt.
    """
    cols = ds.column_names
    if "prompt" in cols:
        column = "prompt"
    elif any(c in cols for c in MESSAGE_COLUMNS):
        column = next(c for c in MESSAGE_COLUMNS if c in cols)
    elif {"chosen", "rejected"} <= set(cols):
        column = None  # implicit-prompt preference rows
    else:
        raise UserError(
            f"the {split} split has no prompt column; prompt data needs a 'prompt' column (a string or a "
            f"list of turns), a 'messages' or 'conversations' column (a trailing assistant turn is "
            f"dropped), or preference columns 'chosen' and 'rejected'; the data has columns {sorted(cols)}")
    _check_not_empty(ds, split, where)
    prompts: list[tuple[Message, ...]] = []
    for index, row in enumerate(ds.with_format(None)):
        loc = _location(split, index, where)
        if column == "prompt":
            prompts.append(_prompt(row["prompt"], loc))
        elif column is not None:
            prompts.append(_prompt_of_conversation(row[column], f"{loc}, column '{column}'"))
        else:
            prompts.append(_implicit(row, loc)[0])
    return prompts


def _pair(row: Mapping[str, Any], loc: str, has_prompt: bool, has_margin: bool) -> PreferencePair:
    """One row as a :class:`PreferencePair` (explicit or implicit prompt)."""
    if has_prompt:
        prompt = _prompt(row["prompt"], loc)
        chosen = _response(row["chosen"], f"{loc}, column 'chosen'")
        rejected = _response(row["rejected"], f"{loc}, column 'rejected'")
    else:
        prompt, chosen, rejected = _implicit(row, loc)
    margin = _margin(row["margin"], loc) if has_margin else 0.0
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, margin=margin)


def _prompt(value: Any, loc: str) -> tuple[Message, ...]:
    """A ``prompt`` cell (string or list of turns) as turns ending with a user turn."""
    where = f"{loc}, column 'prompt'"
    if isinstance(value, str):
        return ({"role": "user", "content": _nonempty(value, where, _PROMPT_ACCEPTED)},)
    if isinstance(value, list):
        turns = _turns(value, where, _PROMPT_ACCEPTED)
        if turns[-1]["role"] != "user":
            raise UserError(f"{where}: the prompt must end with a user turn, got {turns[-1]['role']!r}; "
                            f"accepted: {_PROMPT_ACCEPTED}")
        return tuple(turns)
    raise _type_error(value, where, _PROMPT_ACCEPTED)


def _prompt_of_conversation(value: Any, where: str) -> tuple[Message, ...]:
    """A conversation cell as a prompt: a trailing assistant turn (a reference answer) is dropped."""
    if not isinstance(value, list):
        raise _type_error(value, where, "a list of turns ending with a user turn (or a user then an assistant turn)")
    turns = prompt_messages([_clean(t) for t in value], where)
    for i, turn in enumerate(turns):
        _nonempty(turn["content"], f"{where}, turn {i}", "a turn with non-empty content")
    _system_first(turns, where)
    return tuple(turns)


def _response(value: Any, where: str) -> str:
    """A ``chosen``/``rejected`` cell (string or turns ending with the assistant's) as text."""
    if isinstance(value, str):
        return _nonempty(value, where, _RESPONSE_ACCEPTED)
    if isinstance(value, list):
        turns = _turns(value, where, _RESPONSE_ACCEPTED)
        if turns[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last turn must be the assistant's (the response), got "
                            f"{turns[-1]['role']!r}; accepted: {_RESPONSE_ACCEPTED}")
        return turns[-1]["content"]
    raise _type_error(value, where, _RESPONSE_ACCEPTED)


def _implicit(row: Mapping[str, Any], loc: str) -> tuple[tuple[Message, ...], str, str]:
    """TRL's implicit-prompt form: split two full conversations into shared prompt and responses."""
    accepted = ("without a 'prompt' column, 'chosen' and 'rejected' must be lists of turns that share every "
                "turn up to the last user turn and end with one assistant turn each")
    sides = {}
    for column in ("chosen", "rejected"):
        where = f"{loc}, column '{column}'"
        value = row[column]
        if not isinstance(value, list):
            raise _type_error(value, where, accepted)
        turns = _turns(value, where, accepted)
        if turns[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last turn must be the assistant's (the response), got "
                            f"{turns[-1]['role']!r}; {accepted}")
        sides[column] = turns
    chosen, rejected = sides["chosen"], sides["rejected"]
    prompt = chosen[:-1]
    if prompt != rejected[:-1] or not prompt or prompt[-1]["role"] != "user":
        raise UserError(f"{loc}, columns 'chosen' and 'rejected': the conversations do not share their prompt "
                        f"turns; {accepted}")
    return tuple(prompt), chosen[-1]["content"], rejected[-1]["content"]


def _turns(value: list[Any], where: str, accepted: str) -> list[Message]:
    """A list of turns (role/content or ShareGPT from/value) with non-empty content, system first."""
    if not value:
        raise UserError(f"{where}: the list of turns is empty; accepted: {accepted}")
    turns = [_turn(_clean(t), f"{where}, turn {i}") for i, t in enumerate(value)]
    for i, turn in enumerate(turns):
        _nonempty(turn["content"], f"{where}, turn {i}", "a turn with non-empty content")
    _system_first(turns, where)
    return turns


def _clean(turn: Any) -> Any:
    """Drop keys that Arrow filled with None when rows use different turn keys (role vs from)."""
    return {k: v for k, v in turn.items() if v is not None} if isinstance(turn, dict) else turn


def _system_first(turns: Sequence[Message], where: str) -> None:
    """Refuse a system turn anywhere but first."""
    if any(t["role"] == "system" for t in turns[1:]):
        raise UserError(f"{where}: a system turn may only come first")


def _nonempty(value: str, where: str, accepted: str) -> str:
    """``value`` unless it is empty or whitespace only."""
    if not value.strip():
        raise UserError(f"{where} is empty; accepted: {accepted}")
    return value


def _margin(value: Any, loc: str) -> float:
    """A ``margin`` cell as a finite float."""
    where = f"{loc}, column 'margin'"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = "empty" if value is None else f"{value!r:.40} ({type(value).__name__})"
        raise UserError(f"{where} is {shown}; accepted: a finite number (drop the column for no margin)")
    if not math.isfinite(value):
        raise UserError(f"{where} is {value}; accepted: a finite number (drop the column for no margin)")
    return float(value)


def _type_error(value: Any, where: str, accepted: str) -> UserError:
    """The error for a cell of the wrong type (None reads as empty)."""
    if value is None:
        return UserError(f"{where} is empty; accepted: {accepted}")
    return UserError(f"{where} has type {type(value).__name__} ({value!r:.40}); accepted: {accepted}")


def _check_not_empty(ds: datasets.Dataset, split: str, where: str | None) -> None:
    """Refuse a split without rows."""
    if len(ds) == 0:
        raise UserError(f"{_prefix(where)}the {split} split has no rows")


def _location(split: str, index: int, where: str | None) -> str:
    """``"<split> row N"`` with N 1-based, after ``where`` when given."""
    return f"{_prefix(where)}{split} row {index + 1}"


def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""

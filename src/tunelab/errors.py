"""The one error type for user mistakes.

The CLI prints a :class:`UserError` as a single line and exits with code 2 (no traceback unless
``--debug``). Raise it for anything the user can fix: a bad config value, a missing file or column,
an unknown name, labels that do not fit. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input, reported as one clear line (exit code 2)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, value: str, choices: Iterable[str]) -> UserError:
    """Build the standard 'unknown <kind>' error naming what is accepted."""
    choices = sorted(str(c) for c in choices)
    return UserError(
        f"unknown {kind} '{value}'{did_you_mean(value, choices)}; accepted: {', '.join(choices)}"
    )

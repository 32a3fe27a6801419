"""One exception family for everything a user can get wrong.

Each error carries a message that says what is wrong, where, and what to do next. The CLI
and the UI print ``str(error)``; only bugs ever show a traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class SuperMergerError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, refused operation)."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n{hint}")


class RecipeError(SuperMergerError):
    """The recipe (mode, ratios, weight lists, elemental text, options) is malformed."""


class ModelFileError(SuperMergerError):
    """A model file is missing, truncated, not a checkpoint, or refused for safety."""


class ArchitectureError(SuperMergerError):
    """Models are of an unsupported or mutually incompatible architecture."""


class OutputError(SuperMergerError):
    """The output cannot be written (exists, directory missing, disk full...)."""


class LiveModelError(SuperMergerError):
    """A merge cannot go into the host's live model. Raised before anything is written: the live model
    is still exactly what it was."""


def some(items: Iterable[str], n: int = 3) -> str:
    """The first ``n`` of ``items`` and how many more, for messages: "'a', 'b', 'c' and 12 more"."""
    items = list(items)
    shown = ", ".join(repr(str(i)) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """'did you mean ...?' text for an unknown ``name`` among ``choices`` ('' if nothing close)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    if not close:
        return ""
    return "Did you mean " + " or ".join(repr(lowered[c]) for c in close) + "?"

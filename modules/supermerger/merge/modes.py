"""The four merge modes, as pure functions of float32 tensors.

Each mode's ``apply(a, b, c, alpha, beta)`` receives float32 tensors (``a`` is a scratch copy
it may overwrite) and returns the merged float32 tensor. The same function runs on 256K-value
windows of a streamed file and on whole tensors in memory, so file merges and live merges give
bit-identical results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import RecipeError, suggest


def _weight_sum(a, b, c, alpha, beta):
    return a.lerp_(b, alpha)


def _add_difference(a, b, c, alpha, beta):
    return a.add_(b.sub_(c), alpha=alpha)


def _triple_sum(a, b, c, alpha, beta):
    total = alpha + beta
    if total == 0:
        return a
    return a.lerp_(b.lerp_(c, beta / total), total)


def _sum_twice(a, b, c, alpha, beta):
    return a.lerp_(b, alpha).lerp_(c, beta)


@dataclass(frozen=True)
class MergeMode:
    id: str
    label: str  # the original's UI label
    models: str  # "AB" or "ABC"
    uses_beta: bool
    formula: str
    apply: Callable
    # (cA, cB, cC) of the linear combination, for shortcuts (copy A / copy B) and --explain
    coefficients: Callable[[float, float], tuple[float, float, float]]

    @property
    def needs_c(self) -> bool:
        return "C" in self.models


MODES: dict[str, MergeMode] = {m.id: m for m in (
    MergeMode("weight_sum", "Weight sum", "AB", False, "(1-α)·A + α·B", _weight_sum,
              lambda a, b: (1 - a, a, 0.0)),
    MergeMode("add_difference", "Add difference", "ABC", False, "A + α·(B-C)", _add_difference,
              lambda a, b: (1.0, a, -a)),
    MergeMode("triple_sum", "Triple sum", "ABC", True, "(1-α-β)·A + α·B + β·C", _triple_sum,
              lambda a, b: (1 - a - b, a, b)),
    MergeMode("sum_twice", "sum Twice", "ABC", True, "(1-β)·((1-α)·A + α·B) + β·C", _sum_twice,
              lambda a, b: ((1 - b) * (1 - a), (1 - b) * a, b)),
)}


def get_mode(name: str) -> MergeMode:
    """Accepts ids (``add_difference``), original labels (``Add difference``) and short forms (``add``)."""
    norm = name.strip().lower().replace("-", "_").replace(" ", "_")
    for mode in MODES.values():
        if norm in (mode.id, mode.label.lower().replace(" ", "_"), mode.id.split("_")[0]):
            return mode
    choices = list(MODES) + [m.label for m in MODES.values()]
    raise RecipeError(f"Unknown merge mode {name!r}.", suggest(name, choices) or
                      "Modes: " + ", ".join(f"{m.id} ({m.label!r})" for m in MODES.values()))

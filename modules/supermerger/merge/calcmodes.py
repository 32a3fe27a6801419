"""Calculation modes: one registry, each entry a pure per-tensor function.

``normal`` is the plain mode formula. Elementwise methods run on windows of a streamed tensor;
others (cosine, tensor slicing, filters) get the whole tensor. The UI, the CLI's ``--calcmode``
and the XY plot list ``CALCMODES``; nothing else switches on calcmode names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import RecipeError, suggest
from .modes import MergeMode


@dataclass(frozen=True)
class MergeContext:
    """Per-key extra information a calcmode may need."""

    key: str
    mode: MergeMode
    gamma: float = 0.0
    stats: dict | None = None
    seed: int | None = None


@dataclass(frozen=True)
class CalcMode:
    id: str
    summary: str
    # fn(a, b, c, alpha, beta, ctx) -> float32 tensor; a, b, c are float32 scratch tensors.
    fn: Callable
    elementwise: bool = True
    modes: tuple[str, ...] = ("weight_sum", "add_difference", "triple_sum", "sum_twice")
    force_mode: str | None = None  # switch to this mode (with a notice) when another is chosen
    uses_beta: bool = False
    uses_gamma: bool = False
    aliases: tuple[str, ...] = field(default=())
    # prepass(plan) -> stats: a first pass over the inputs (e.g. cosine's global statistics);
    # its result reaches fn as ctx.stats.
    prepass: Callable | None = None


def _normal(a, b, c, alpha, beta, ctx: MergeContext):
    return ctx.mode.apply(a, b, c, alpha, beta)


CALCMODES: dict[str, CalcMode] = {}


def register(cm: CalcMode) -> CalcMode:
    CALCMODES[cm.id] = cm
    return cm


register(CalcMode("normal", "the mode's formula, computed in float32 with one rounding", _normal))


def get_calcmode(name: str) -> CalcMode:
    norm = name.strip().lower()
    for cm in CALCMODES.values():
        if norm == cm.id.lower() or norm in (a.lower() for a in cm.aliases):
            return cm
    raise RecipeError(f"Unknown calcmode {name!r}.", suggest(name, CALCMODES) or
                      "Calcmodes: " + ", ".join(CALCMODES))

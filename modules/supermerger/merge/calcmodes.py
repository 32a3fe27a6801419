"""Calculation modes: one registry, each entry a pure per-tensor function and its rules.

``normal`` is the plain mode formula. The original's calcmodes live in ``methods_original``,
methods from the merging literature in ``methods_modern``; this table says, for each, which
merge modes it works with, whether the original switched the mode for it, which ratios it reads,
what it checks, and which keys it leaves to A. The UI, the CLI's ``--calcmode``, its ``--help``
and the XY plot list ``CALCMODES``; nothing else switches on calcmode names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import RecipeError, suggest
from . import methods_modern as modern
from . import methods_original as orig
from .modes import MergeMode

ALL_MODES = ("weight_sum", "add_difference", "triple_sum", "sum_twice")


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
    summary: str  # one line, for --help, `supermerger calcmodes` and the UI
    # fn(a, b, c, alpha, beta, ctx) -> float32 tensor; a, b, c are float32 scratch tensors.
    fn: Callable
    # True: runs on flat windows of a streamed tensor (shape is lost); False: whole tensors.
    elementwise: bool = True
    modes: tuple[str, ...] = ALL_MODES
    force_mode: str | None = None  # switch to this mode (with a notice) when another is chosen
    uses_beta: bool = False
    uses_gamma: bool = False
    aliases: tuple[str, ...] = field(default=())
    # prepass(plan) -> stats: a first pass over the inputs (e.g. cosine's global statistics);
    # its result reaches fn as ctx.stats.
    prepass: Callable | None = None
    needs_seed: bool = False  # draws random numbers: the plan makes sure the recipe has a seed
    needs_c: bool = False  # model C must be given (it is the common base), not defaulted to A
    # keep(key) -> reason or None: keys this calcmode leaves to A (they are copied, not merged)
    keep: Callable[[str], str | None] | None = None
    # check(alpha, beta, gamma) -> problem or None, for every merged key's ratios
    check: Callable[[float, float, float], str | None] | None = None
    linear: bool = False  # the mode's linear formula: ratios giving exactly A or B copy the tensor
    name_beta: bool = False  # the merged model's name records beta (tensor exchange)
    # True: fn only moves values from B into A (never computes one), so on the CPU it may work on
    # A copied straight into the output tensor (output dtype) and B as read — no float32 round trip
    moves_values: bool = False
    params: str = ""  # what alpha / beta / gamma mean here, for --help and the docs


def _normal(a, b, c, alpha, beta, ctx: MergeContext):
    return ctx.mode.apply(a, b, c, alpha, beta)


def _unit(name: str, value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"{name} must be between 0 and 1, got {value:g}"


def _check_extract(alpha, beta, gamma):
    return _unit("alpha", alpha) or _unit("beta", beta) or (None if gamma >= 0 else f"gamma must be ≥ 0, got {gamma:g}")


def _check_tensor(alpha, beta, gamma):
    return _unit("alpha", alpha) or _unit("beta", beta)


def _check_density(alpha, beta, gamma):
    return None if 0.0 < beta <= 1.0 else f"beta (the density) must be in (0, 1], got {beta:g}"


def _check_ties(alpha, beta, gamma):
    return _unit("alpha", alpha) or _unit("beta (the density)", beta)


def _check_ties_dare(alpha, beta, gamma):
    return _unit("alpha", alpha) or _check_density(alpha, beta, gamma)


CALCMODES: dict[str, CalcMode] = {}


def register(cm: CalcMode) -> CalcMode:
    CALCMODES[cm.id] = cm
    return cm


for _cm in (
    CalcMode("normal", "the mode's formula, computed in float32 with one rounding", _normal, linear=True,
             params="alpha, beta: as the merge mode"),
    CalcMode("cosineA", "Weight sum by cosine similarity per column: where A and B agree A stays, elsewhere B",
             orig.cosine_a, elementwise=False, modes=("weight_sum",),
             prepass=orig.cosine_a_prepass, keep=orig.skip_vae,
             params="alpha: shifts the blend toward B (|alpha| is used)"),
    CalcMode("cosineB", "cosineA on the raw (not normalised) tensors, alpha taken with its sign", orig.cosine_b, elementwise=False, modes=("weight_sum",), prepass=orig.cosine_b_prepass,
             keep=orig.skip_vae, params="alpha: shifts the blend toward B"),
    CalcMode("trainDifference", "Add difference that scales B−C by how far B is from A, like training it into A",
             orig.train_difference, modes=("add_difference",), force_mode="add_difference",
             params="alpha: strength (×1.8 inside)"),
    CalcMode("smoothAdd", "Add difference with B−C smoothed (median filter 3, then Gaussian σ=1)",
             orig.smooth_add, elementwise=False, modes=("add_difference",),
             params="alpha: strength; up to about 2 is reasonable"),
    CalcMode("smoothAdd MT", "smoothAdd computed on worker threads (one per CPU); identical results",
             orig.smooth_add_mt, elementwise=False, modes=("add_difference",), aliases=("smoothAddMT",),
             params="alpha: strength; up to about 2 is reasonable"),
    CalcMode("extract", "add the features B−A and C−A share (beta 0) or do not share (beta 1)",
             orig.extract, elementwise=False, modes=("add_difference",), force_mode="add_difference",
             uses_beta=True, uses_gamma=True, check=_check_extract,
             params="alpha: 0 = from B, 1 = from C; beta: 0 = similar, 1 = dissimilar; gamma: selectivity (≥ 0)"),
    CalcMode("tensor", "exchange a band of rows (dim 0) between A and B instead of averaging them",
             orig.tensor, elementwise=False, modes=("weight_sum",), uses_beta=True, check=_check_tensor,
             name_beta=True, moves_values=True, params="alpha: width of the band from B; beta: where it starts"),
    CalcMode("tensor2", "tensor, but wide tensors (dim 1 > 100) exchange columns (dim 1)",
             orig.tensor2, elementwise=False, modes=("weight_sum",), uses_beta=True, check=_check_tensor,
             name_beta=True, moves_values=True, params="alpha: width of the band from B; beta: where it starts"),
    CalcMode("self", "scale A by alpha (B is not used); to_out, proj_out and norm keys stay",
             orig.self_scale, modes=("weight_sum",), keep=orig.skip_self_keys,
             params="alpha: the factor (0 leaves A)"),
    CalcMode("plus random", "add seeded Gaussian noise ×alpha to A; to_out, proj_out and norm keys stay",
             orig.plus_random, elementwise=False, modes=("weight_sum",), keep=orig.skip_self_keys,
             needs_seed=True, params="alpha: noise strength (0 leaves A); seed: --seed"),
    CalcMode("slerp", "spherical interpolation between A and B, per tensor (Shoemake 1985)",
             modern.slerp, elementwise=False, modes=("weight_sum",), params="alpha: 0 = A, 1 = B"),
    CalcMode("ties", "TIES-merging (Yadav et al. 2023) of A and B over their base C: trim, elect sign, mean",
             modern.ties, elementwise=False, modes=("add_difference",),
             uses_beta=True, needs_c=True, check=_check_ties,
             params="alpha: B's share (0 = A's changes, 1 = B's); beta: density kept per tensor; C: the base"),
    CalcMode("dare", "Add difference with B−C randomly dropped and rescaled, seeded (Yu et al. 2024)",
             modern.dare, elementwise=False, modes=("add_difference",), uses_beta=True, needs_seed=True,
             check=_check_density, params="alpha: strength; beta: density kept (1 = Add difference); seed: --seed"),
    CalcMode("ties_dare", "TIES sign election and disjoint mean on DARE-dropped A−C and B−C, seeded",
             modern.ties_dare, elementwise=False, modes=("add_difference",), uses_beta=True, needs_c=True,
             needs_seed=True, check=_check_ties_dare, aliases=("dare_ties",),
             params="alpha: B's share; beta: density kept; C: the base; seed: --seed"),
):
    register(_cm)
del _cm


def _canonical(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def get_calcmode(name: str) -> CalcMode:
    """Look a calcmode up by id or alias; case, spaces, '_' and '-' do not matter
    ("smoothAdd MT" = "smoothadd_mt")."""
    norm = _canonical(name)
    for cm in CALCMODES.values():
        if norm == _canonical(cm.id) or norm in (_canonical(a) for a in cm.aliases):
            return cm
    raise RecipeError(f"Unknown calcmode {name!r}.", suggest(name, CALCMODES) or
                      "Calcmodes: " + ", ".join(CALCMODES))


def calcmode_names() -> list[str]:
    """The calcmode ids, in the order the UI, the CLI and the XY plot show them."""
    return list(CALCMODES)


def describe(cm: CalcMode) -> str:
    """'modes: ...; alpha: ...' — the rules of one calcmode in one line."""
    from .modes import MODES

    modes = ", ".join(MODES[m].label for m in cm.modes)
    forced = f" (other modes switch to {MODES[cm.force_mode].label})" if cm.force_mode else ""
    return f"modes: {modes}{forced}; {cm.params}" if cm.params else f"modes: {modes}{forced}"

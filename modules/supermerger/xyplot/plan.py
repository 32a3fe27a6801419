"""An XYZ plot as plain data, its "|" split, and its plan: every cell's recipe and parameters, and
whether the cell merges, reuses the live merge, or reuses an image ("0 stock").

    plot = XYZPlot(x=Axis("alpha", "0.25,0.5,0.75"), y=Axis("seed", "1,2"))
    p = plan(plot, recipe, params)       # validates every value first; reads only file headers
    [c.action for c in p.cells]          # 'merge', 'reuse', 'merge', 'reuse', ...

Cells run Z → Y → X (X fastest). A cell merges when its recipe differs from the one live before
it, so a seed or prompt axis (or any axis that changes only generation) never re-merges.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .. import arch as archmod
from ..arch import Architecture
from ..errors import SuperMergerError
from ..merge.calcmodes import get_calcmode
from ..merge.modes import get_mode
from ..merge.recipe import Recipe
from .axes import AxisType, AxisValue, CellState, ParseContext, XYZError, axis_type

POSITIONS = ("x", "y", "z")
MAX_CELLS = 10000


@dataclass
class Axis:
    type: str = "none"
    values: str = ""

    @property
    def on(self) -> bool:
        return axis_type(self.type).id != "none" and bool(self.values.strip())


@dataclass
class XYZPlot:
    """One XYZ plot: three axes and the settings of spec §5.2 (plain, JSON-serialisable data)."""
    x: Axis = field(default_factory=lambda: Axis("alpha", "0.25,0.5,0.75"))
    y: Axis = field(default_factory=Axis)
    z: Axis = field(default_factory=Axis)
    swap_xy: bool = False  # transpose the grid
    save_model: bool = False  # save every merged model
    no_grid: bool = False  # "not save grid": the cells' images instead of a grid
    zero_stock: bool = False  # a cell that merges to model A reuses one image of model A
    save_gif: bool = False  # effective elemental checker: a 2-frame GIF per item
    save_csv: bool = False  # effective elemental checker: a CSV of the differences

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "XYZ plot") -> "XYZPlot":
        if not isinstance(data, Mapping):
            raise XYZError(f"{source}: expected an object, got {type(data).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            raise XYZError(f"{source}: unknown field {unknown[0]!r}.", "Fields: " + ", ".join(sorted(names)))
        kw = dict(data)
        for pos in POSITIONS:
            if pos in kw:
                a = kw[pos]
                if isinstance(a, Axis):
                    continue
                if not isinstance(a, Mapping) or set(a) - {"type", "values"}:
                    raise XYZError(f"{source}: axis {pos} must be an object with 'type' and 'values'.")
                kw[pos] = Axis(str(a.get("type", "none")), str(a.get("values", "")))
        return cls(**kw)

    def axes(self) -> list[tuple[str, Axis]]:
        return [(p, getattr(self, p)) for p in POSITIONS]


# -- the "|" split and ALL ----------------------------------------------------------------------------------
def expand_all(plot: XYZPlot, arch: Architecture, recipe: Recipe) -> XYZPlot:
    """``ALL`` replaced by what it stands for (it may hold '|', split next)."""
    out = copy.deepcopy(plot)
    for pos, ax in out.axes():
        if ax.values.strip().upper() != "ALL":
            continue
        t = axis_type(ax.type, pos.upper())
        if t.expand_all is None:
            raise XYZError(f"{pos.upper()} axis ({t.id}): ALL is not defined for this type.",
                           "ALL works for pinpoint blocks, pinpoint element, effective elemental checker, "
                           "pinpoint adjust, include/exclude blocks and calcmode.")
        ax.values = t.expand_all(ParseContext(arch, {}, recipe, pos.upper()))
    return out


def split_reservations(plot: XYZPlot, arch: Architecture | None = None, recipe: Recipe | None = None) -> list[XYZPlot]:
    """Spec §5.5: values holding '|' become several plots (every combination of the segments, X's
    segments varying fastest); the first is the one to run now, the others are queued."""
    if arch is not None:
        plot = expand_all(plot, arch, recipe or Recipe())
    plots = [plot]
    for pos in reversed(POSITIONS):  # the last split varies fastest: X
        nxt = []
        for p in plots:
            ax = getattr(p, pos)
            segments = [s for s in ax.values.split("|") if s.strip()] if "|" in ax.values else [ax.values]
            for seg in segments:
                q = copy.deepcopy(p)
                getattr(q, pos).values = seg
                nxt.append(q)
        plots = nxt
    return plots


# -- parsing ----------------------------------------------------------------------------------------------------
@dataclass
class ParsedAxis:
    pos: str  # "x" | "y" | "z"
    type: AxisType
    values: list[AxisValue]


def detect_arch(recipe: Recipe) -> Architecture:
    """The architecture of the recipe's model A, from its header (no tensor is read)."""
    from ..io.sources import open_model

    if not recipe.model_a:
        raise XYZError("Model A is not set: the plot needs it to know the block names.",
                       "Choose model A, or vary it on an axis (model_A).")
    try:
        with open_model(recipe.model_a) as src:
            return archmod.detect(src.tensors, {k: v.shape for k, v in src.tensors.items()}, f"model A ({src.name})")
    except FileNotFoundError:
        raise XYZError(f"Model A {recipe.model_a!r} does not exist.") from None


def parse_axes(plot: XYZPlot, recipe: Recipe, *, arch: Architecture | None = None,
               presets: Mapping[str, str] | None = None, resolve_model: Callable[[str], str] | None = None,
               models_dirs: Sequence[str] = (), rng: random.Random | None = None) -> list[ParsedAxis]:
    """Parse and check every axis (spec §5.1 validation); a bad item fails here, before any merge."""
    from ..arch.presets import load_presets

    presets = load_presets() if presets is None else presets
    rng = rng or random.Random()
    active: list[tuple[str, AxisType, str]] = []
    for pos, ax in plot.axes():
        t = axis_type(ax.type, pos.upper())
        if t.id == "none" or not ax.values.strip():
            if pos == "x":
                raise XYZError("The X axis is empty: choose a type and give values.",
                               "Example: type alpha, values 0.25,0.5,0.75.")
            continue
        if "|" in ax.values:
            raise XYZError(f"{pos.upper()} axis holds '|': split the plot first (split_reservations), which runs the "
                           "first part and queues the others.")
        active.append((pos, t, ax.values))
    seen: dict[str, str] = {}
    for pos, t, _ in active:
        if t.id in seen and not t.repeatable:
            raise XYZError(f"The {seen[t.id].upper()} and {pos.upper()} axes are both {t.id}; choose different types.")
        seen[t.id] = pos
    early: dict[str, list[AxisValue]] = {}  # model axes parsed first: they decide the architecture
    if arch is None:
        first = recipe
        for pos, t, text in active:
            if t.id in ("model_A", "merge ID"):
                # model names and history IDs do not depend on the block table
                early[pos] = t.parse(text, ParseContext(archmod.get("sd1"), presets, recipe, pos.upper(),
                                                        resolve_model, models_dirs, rng))
                if early[pos]:
                    v = early[pos][0].data
                    first = v if isinstance(v, Recipe) else recipe.replace(model_a=v)
                break
        arch = detect_arch(first)
    parsed = []
    for pos, t, text in active:
        ctx = ParseContext(arch, presets, recipe, pos.upper(), resolve_model, models_dirs, rng)
        values = early[pos] if pos in early else t.parse(text, ctx)
        if not values:
            raise XYZError(f"{pos.upper()} axis ({t.id}): no values in {text!r}.")
        parsed.append(ParsedAxis(pos, t, values))
    _check_companions(parsed)
    return parsed


def _check_companions(parsed: list[ParsedAxis]) -> None:
    ids = {p.type.id: p for p in parsed}
    pinpoint = [p for p in parsed if p.type.ratio]
    if len(pinpoint) > 1:
        raise XYZError(f"The {pinpoint[0].type.id} and {pinpoint[1].type.id} axes both take their ratio from the "
                       "alpha axis; use one of them.")
    for p in pinpoint:
        src = ids.get("alpha") or (ids.get("beta") if p.type.ratio == "alpha/beta" else None)
        if src is None:
            other = "an alpha or beta axis" if p.type.ratio == "alpha/beta" else "an alpha axis"
            raise XYZError(f"{p.pos.upper()} axis ({p.type.id}) needs {other} on another axis: its values are the "
                           "ratio written into the pinpointed part.", "Example: X = pinpoint blocks IN01,OUT10 "
                           "OUT11; Y = alpha 0,0.5,1.")
        if p.type.id == "effective elemental checker" and len(src.values) != 1:
            raise XYZError(f"The effective elemental checker takes one alpha value (the ratio every item is checked "
                           f"at); the {src.pos.upper()} axis has {len(src.values)}.")


# -- the plan ------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    index: tuple[int, int, int]  # (x, y, z) position
    recipe: Recipe
    params: Any  # GenParams
    action: str = "merge"  # "merge" | "reuse" (the live merge) | "stock" (the image of an earlier cell)
    same_as: int | None = None  # for "stock": the cell (execution order) whose image is reused
    labels: tuple[str, str, str] = ("", "", "")


@dataclass
class PlotPlan:
    plot: XYZPlot
    recipe: Recipe  # the base recipe
    params: Any  # the base GenParams, with the plot's fixed seed
    axes: list[ParsedAxis]
    arch: Architecture
    cells: list[Cell]  # execution order: Z, then Y, then X

    def axis(self, pos: str) -> ParsedAxis | None:
        return next((a for a in self.axes if a.pos == pos), None)

    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, grids) = the number of X, Y and Z values."""
        return tuple(len(a.values) if (a := self.axis(p)) else 1 for p in POSITIONS)  # type: ignore[return-value]

    def varied_models(self) -> set[str]:
        return {label for a in self.axes for label in a.type.models}

    def constant_models(self) -> list[str]:
        """Model files the plot holds constant (to protect in the model cache)."""
        varied = self.varied_models()
        return [v for label, v in (("A", self.recipe.model_a), ("B", self.recipe.model_b), ("C", self.recipe.model_c))
                if v and label not in varied]

    def counts(self) -> dict[str, int]:
        out = {"merge": 0, "reuse": 0, "stock": 0}
        for c in self.cells:
            out[c.action] += 1
        return out

    def checker(self) -> ParsedAxis | None:
        return next((a for a in self.axes if a.type.id == "effective elemental checker"), None)


def cell_state(base: Recipe, params, values: Sequence[tuple[ParsedAxis, AxisValue]], arch: Architecture,
               presets: Mapping[str, str]) -> CellState:
    """Apply one value of each axis to a copy of the base settings (replace, plain, then pinpoint)."""
    state = CellState(dataclasses.replace(base), dataclasses.replace(params), arch=arch, presets=presets)
    pin = next((a for a, _ in values if a.type.ratio), None)
    if pin is not None:
        kinds = {a.type.id for a, _ in values}
        state.ratio_of = "alpha" if "alpha" in kinds else "beta"
    for stage in (0, 1, 2):
        for a, v in values:
            if a.type.stage == stage:
                a.type.apply(state, v.data)
    if state.beta_set:
        mode, cm = get_mode(state.recipe.mode), get_calcmode(state.recipe.calcmode)
        if not (mode.uses_beta or cm.uses_beta):
            state.recipe.mode = "sum_twice"  # the original: "Twice automatically enabled"
    return state


def plan(plot: XYZPlot, recipe: Recipe, params, *, presets: Mapping[str, str] | None = None,
         resolve_model: Callable[[str], str] | None = None, models_dirs: Sequence[str] = (),
         rng: random.Random | None = None, arch: Architecture | None = None,
         is_stock: Callable[[Recipe], bool] | None = None) -> PlotPlan:
    """Every cell of ``plot`` over the base ``recipe`` and generation ``params``.

    A seed of -1 is drawn once here, so all cells share it unless seed is an axis. Each cell makes
    batch size × batch count images, as a generation would; the runner draws one grid per image
    index. ``is_stock(recipe)``: whether a recipe merges to
    model A unchanged (used with ``zero_stock``; default: planned from the file headers)."""
    from ..arch.presets import load_presets

    presets = load_presets() if presets is None else presets
    rng = rng or random.Random()
    recipe.check_types()
    axes = parse_axes(plot, recipe, arch=arch, presets=presets, resolve_model=resolve_model,
                      models_dirs=models_dirs, rng=rng)
    if arch is None:
        arch = _arch_of(axes, recipe)
    base_params = dataclasses.replace(params)
    if base_params.seed is None or base_params.seed < 0:
        base_params.seed = rng.randrange(2 ** 32 - 1)
    by_pos = {a.pos: a for a in axes}
    n = [len(by_pos[p].values) if p in by_pos else 1 for p in POSITIONS]
    if n[0] * n[1] * n[2] > MAX_CELLS:
        raise XYZError(f"The plot has {n[0] * n[1] * n[2]} cells; at most {MAX_CELLS} run in one plot.",
                       "Cut it with '|' into several reservations.")
    cells: list[Cell] = []
    for zi in range(n[2]):
        for yi in range(n[1]):
            for xi in range(n[0]):
                idx = {"x": xi, "y": yi, "z": zi}
                chosen = [(a, a.values[idx[a.pos]]) for a in axes]
                state = cell_state(recipe, base_params, chosen, arch, presets)
                labels = tuple(by_pos[p].values[idx[p]].label if p in by_pos else "" for p in POSITIONS)
                cells.append(Cell((xi, yi, zi), state.recipe, state.params, labels=labels))
    _check_axes_change_the_merge(axes, cells, n, recipe)
    _decide_actions(cells, plot.zero_stock, is_stock or _stock_by_plan)
    return PlotPlan(plot, recipe, base_params, axes, arch, cells)


def _check_axes_change_the_merge(axes: list[ParsedAxis], cells: list[Cell], n: list[int], base: Recipe) -> None:
    """Refuse, before anything runs, an axis whose values make the same merge and the same images in every
    row: e.g. alpha while block weights set every block's ratio (cells that differ only by their labels).
    Only recipes that differ in nothing but alpha / beta are planned (headers only) to compare the ratio
    each key gets; any other difference counts as a change."""
    plans: dict[str, tuple | None] = {}

    def ratios(recipe: Recipe) -> tuple | None:
        text = recipe.to_json(indent=None)
        if text not in plans:
            plans[text] = _key_ratios(recipe)
        return plans[text]

    def index(cell: Cell, pos: str) -> int:
        return cell.index[POSITIONS.index(pos)]

    for axis in axes:
        if len(axis.values) < 2:
            continue
        groups: dict[tuple, list[Cell]] = {}
        for cell in cells:
            rest = tuple(i for p, i in zip(POSITIONS, cell.index) if p != axis.pos)
            groups.setdefault(rest, []).append(cell)
        same_everywhere = True
        for group in groups.values():
            first = group[0]
            plain = {(c.recipe.replace(alpha=0.0, beta=0.0).to_json(indent=None), repr(c.params)) for c in group}
            if len(plain) > 1 or any(ratios(c.recipe) is None or ratios(c.recipe) != ratios(first.recipe)
                                     for c in group[1:]):
                same_everywhere = False
                break
        if same_everywhere:
            what = axis.type.id
            reason, hint = "nothing that the merge or the images use changes.", "Check the axis and its values."
            if "alpha" in what and base.mbw_alpha is not None or "beta" in what and base.mbw_beta is not None:
                reason = ("block weights (MBW) give every block its own ratio, so alpha / beta themselves are "
                          "not used.")
                hint = "Turn block weights off, or vary the weights with an 'mbw alpha' / 'mbw beta' axis."
            raise XYZError(f"{axis.pos.upper()} axis ({what}): every value makes the same merge and the same "
                           f"images: {reason}", hint)


def _key_ratios(recipe: Recipe) -> tuple | None:
    """What each key becomes, as planned from the headers (merged with which ratios, or copied from
    which model; a ratio of 0 or 1 is a copy); None if it cannot be planned
    (the run will say why)."""
    from ..api import plan_merge

    try:
        p = plan_merge(recipe)
    except SuperMergerError:
        return None
    try:
        return tuple((t.key, t.op, t.src, t.alpha, t.beta) if t.op == "merge" else (t.key, t.op, t.src)
                     for t in p.tasks)
    finally:
        for s in p.sources.values():
            s.close()


def arch_for(plot: XYZPlot, recipe: Recipe, resolve_model: Callable[[str], str] | None = None) -> Architecture:
    """The architecture the plot's block names refer to: model A's, or that of the first value of a
    model_A / merge ID axis (needed before the '|' split, to expand ALL)."""
    for pos, ax in plot.axes():
        if ax.on and axis_type(ax.type).id in ("model_A", "merge ID"):
            first = copy.deepcopy(ax)
            first.values = ax.values.split("|")[0]
            return _arch_of(parse_axes(XYZPlot(x=first), recipe, resolve_model=resolve_model), recipe)
    return detect_arch(recipe)


def _arch_of(axes: list[ParsedAxis], recipe: Recipe) -> Architecture:
    for a in axes:
        if a.type.id in ("model_A", "merge ID"):
            v = a.values[0].data
            return detect_arch(v if isinstance(v, Recipe) else recipe.replace(model_a=v))
    return detect_arch(recipe)


def _decide_actions(cells: list[Cell], zero_stock: bool, is_stock: Callable[[Recipe], bool]) -> None:
    """merge / reuse / stock for each cell, simulating what is live when it runs."""
    live: Recipe | None = None
    stock_images: dict[tuple, int] = {}
    for i, cell in enumerate(cells):
        if zero_stock and is_stock(cell.recipe):
            key = (cell.recipe.model_a, cell.recipe.dtype, cell.recipe.bake_vae, repr(cell.params))
            if key in stock_images:
                cell.action, cell.same_as = "stock", stock_images[key]
                continue
            stock_images[key] = i
        cell.action = "reuse" if cell.recipe == live else "merge"
        live = cell.recipe


def _stock_by_plan(recipe: Recipe) -> bool:
    """Whether the recipe's merge is model A as is (every key copied from A): α = 0, all-zero
    weights, elemental ratios of 0, nothing adjusted."""
    from ..api import plan_merge

    try:
        p = plan_merge(recipe)
    except SuperMergerError:
        return False
    try:
        return all(t.op == "copy" and t.src == "A" for t in p.tasks)
    finally:
        for s in p.sources.values():
            s.close()

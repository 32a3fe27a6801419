"""XYZ plot axis types (spec §5.1): one table, each type with its value parser and how it changes a cell.

A value text is parsed once, before anything runs, into ``AxisValue``s (a header label plus the
parsed data); a bad item raises ``XYZError`` naming the axis, the item and its position. Applying
a value changes one cell's ``CellState`` (a recipe and generation parameters). Types that
*pinpoint* (blocks, elements, Adjust slots) take their ratio from the plot's alpha (or beta) axis,
whose values then set only that ratio, not the recipe's alpha.

Block names are the model's own (SD1/SD2 26, SDXL 20), read from ``arch``; the original's
SD1-table lookups on SDXL and its never-firing beta pinpoint are not reproduced.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..arch import Architecture
from ..errors import SuperMergerError, suggest
from ..merge import adjust as adjustmod
from ..merge.calcmodes import calcmode_names, get_calcmode
from ..merge.elemental import parse_elemental
from ..merge.recipe import Recipe
from ..merge.weights import RANDOM_TOKENS, format_weights, is_number, number, parse_weights, weight_items, list_names

SEED_LIMIT = 2 ** 32 - 1
ADJUST_LABELS = {"COL1": "COL1(Cyan-Red)", "COL2": "COL2(Magenta-Green)", "COL3": "COL3(Yellow-Blue)"}


class XYZError(SuperMergerError):
    """An XYZ plot that cannot run: a bad axis value, a missing companion axis, a bad preset or queue entry."""


@dataclass
class CellState:
    """What one cell merges and generates with, while the axes are applied to it."""
    recipe: Recipe
    params: Any  # hosts.base.GenParams
    ratio: float | None = None  # the alpha (or beta) axis value, when a pinpoint axis takes it
    ratio_of: str | None = None  # "alpha" | "beta": which axis feeds the pinpoint ratio
    beta_set: bool = False  # a beta value was set: the mode must use beta (sum Twice if not)
    arch: Architecture | None = None
    presets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AxisValue:
    label: str  # what the grid header shows
    data: Any


@dataclass
class ParseContext:
    """What parsing needs besides the text: the block table, presets, the base recipe, model lookup."""
    arch: Architecture
    presets: Mapping[str, str]
    recipe: Recipe
    where: str = "X"  # which axis, for messages
    resolve_model: Callable[[str], str] | None = None
    models_dirs: Sequence[str] = ()
    rng: random.Random = field(default_factory=random.Random)


@dataclass(frozen=True)
class AxisType:
    index: int  # the original's position in the type list
    id: str  # short name, used by the CLI and stored in presets/reservations
    label: str  # the original's UI label (also accepted as a name)
    parse: Callable[[str, ParseContext], list[AxisValue]] | None
    apply: Callable[[CellState, Any], None] | None
    stage: int = 1  # 0: replaces the recipe (merge ID), 1: plain, 2: pinpoint (reads the ratio)
    merges: bool = True  # changes the merge (False: only generation parameters)
    ratio: str | None = None  # pinpoint types: "alpha" or "alpha/beta" axis they read their ratio from
    repeatable: bool = False  # may be on two axes at once
    expand_all: Callable[[ParseContext], str] | None = None  # the text that ALL stands for
    models: str = ""  # model labels this axis varies ("A", "B", "C", "ABC" for merge ID)
    help: str = ""


# -- item splitting ------------------------------------------------------------------------------
def comma_items(text: str) -> list[tuple[int, str]]:
    """(1-based position, item) of the comma/newline-separated items; empty items are skipped."""
    items = [t.strip() for t in re.split(r"[,\n]", text)]
    return [(i, t) for i, t in enumerate((t for t in items if t), 1)]


def line_items(text: str) -> list[tuple[int, str]]:
    return [(i, t) for i, t in enumerate((ln.strip() for ln in text.splitlines() if ln.strip()), 1)]


def block_items(text: str) -> list[tuple[int, str]]:
    """Items separated by blank lines; a blank line at the very start gives a leading empty item
    (the original's "two blank lines at start = no elemental")."""
    lines = text.replace("\r\n", "\n").split("\n")
    leading = bool(lines) and not lines[0].strip() and any(ln.strip() for ln in lines)
    blocks = [b.strip() for b in re.split(r"\n[ \t]*\n", text.strip())]
    blocks = [b for b in blocks if b]
    if leading:
        blocks.insert(0, "")
    return list(enumerate(blocks, 1))


def _err(ctx: ParseContext, axis: str, pos: int, item: str, problem: str, hint: str | None = None) -> XYZError:
    shown = item if len(item) <= 60 else item[:57] + "..."
    return XYZError(f"{ctx.where} axis ({axis}), item {pos} ({shown!r}): {problem}", hint)


def _wrap_error(ctx: ParseContext, axis: str, pos: int, item: str, e: SuperMergerError) -> XYZError:
    return _err(ctx, axis, pos, item, e.message, e.hint)


def _fmt(v: float) -> str:
    return format_weights([v])


# -- numbers ---------------------------------------------------------------------------------------
def _parse_floats(axis: str):
    def parse(text: str, ctx: ParseContext) -> list[AxisValue]:
        out = []
        for pos, item in comma_items(text):
            if not is_number(item):
                raise _err(ctx, axis, pos, item, "not a number.", "Give comma-separated numbers, e.g. 0.25,0.5,0.75.")
            out.append(AxisValue(item, number(item)))
        return out
    return parse


def _apply_alpha(state: CellState, v: float) -> None:
    if state.ratio_of == "alpha":
        state.ratio = v
    else:
        state.recipe.alpha = v


def _apply_beta(state: CellState, v: float) -> None:
    if state.ratio_of == "beta":
        state.ratio = v
    else:
        state.recipe.beta = v
        state.beta_set = True


def _parse_alpha_beta(text: str, ctx: ParseContext) -> list[AxisValue]:
    out = []
    for pos, item in comma_items(text):
        parts = item.split()
        if not 1 <= len(parts) <= 2 or not all(is_number(p) for p in parts):
            raise _err(ctx, "alpha and beta", pos, item, "expected 'ALPHA BETA' (two numbers separated by a space) "
                       "or one number for both.", "Example: 0,0.5 0.1,0.3 0.4")
        a, b = number(parts[0]), number(parts[-1])
        out.append(AxisValue(item, (a, b)))
    return out


def _apply_alpha_beta(state: CellState, v: tuple[float, float]) -> None:
    state.recipe.alpha, state.recipe.beta = v
    state.beta_set = True


def _parse_seeds(text: str, ctx: ParseContext) -> list[AxisValue]:
    out = []
    for pos, item in comma_items(text):
        if not re.fullmatch(r"-?\d+", item) or not -1 <= int(item) <= SEED_LIMIT:
            raise _err(ctx, "seed", pos, item, f"a seed is a whole number from 0 to {SEED_LIMIT}, or -1 (random).")
        seed = int(item)
        if seed == -1:
            seed = ctx.rng.randrange(SEED_LIMIT)
        out.append(AxisValue(str(seed), seed))
    return out


def _apply_seed(state: CellState, v: int) -> None:
    state.params.seed = v


# -- weights ---------------------------------------------------------------------------------------
def _check_weights(text: str, ctx: ParseContext, axis: str, pos: int, what: str) -> None:
    try:
        items = weight_items(text, ctx.presets, what)
        list_names(len(items), ctx.arch, what)
        if not any(i.strip().upper() in RANDOM_TOKENS for i in items):
            parse_weights(items, ctx.arch, ctx.presets, what)
    except SuperMergerError as e:
        raise _wrap_error(ctx, axis, pos, text, e) from None


def _parse_mbw(what: str, axis: str):
    def parse(text: str, ctx: ParseContext) -> list[AxisValue]:
        out = []
        for pos, line in line_items(text):
            _check_weights(line, ctx, axis, pos, what)
            out.append(AxisValue(line, line))
        return out
    return parse


def _apply_mbw_alpha(state: CellState, v: str) -> None:
    state.recipe.mbw_alpha = v


def _apply_mbw_beta(state: CellState, v: str) -> None:
    state.recipe.mbw_beta = v
    state.beta_set = True


def _parse_mbw_pairs(text: str, ctx: ParseContext) -> list[AxisValue]:
    lines = line_items(text)
    if len(lines) % 2:
        raise XYZError(f"{ctx.where} axis (mbw alpha and beta): {len(lines)} weight lines; it takes pairs of lines "
                       "(an alpha line, then a beta line), so the count must be even.")
    out = []
    for k in range(0, len(lines), 2):
        (pa, la), (pb, lb) = lines[k], lines[k + 1]
        _check_weights(la, ctx, "mbw alpha and beta", pa, "alpha")
        _check_weights(lb, ctx, "mbw alpha and beta", pb, "beta")
        out.append(AxisValue(f"alpha:({la}),beta({lb})", (la, lb)))
    return out


def _apply_mbw_pair(state: CellState, v: tuple[str, str]) -> None:
    state.recipe.mbw_alpha, state.recipe.mbw_beta = v
    state.beta_set = True


# -- models ----------------------------------------------------------------------------------------
def _parse_models(label: str):
    def parse(text: str, ctx: ParseContext) -> list[AxisValue]:
        out = []
        for pos, item in comma_items(text):
            try:
                path = ctx.resolve_model(item) if ctx.resolve_model else item
            except SuperMergerError as e:
                raise _wrap_error(ctx, f"model_{label}", pos, item, e) from None
            out.append(AxisValue(item, path))
        return out
    return parse


def _apply_model(field_name: str):
    def apply(state: CellState, v: str) -> None:
        setattr(state.recipe, field_name, v)
    return apply


# -- blocks ----------------------------------------------------------------------------------------
def _expand_block_tokens(tokens: list[str], ctx: ParseContext, axis: str, pos: int, item: str,
                         extra: Sequence[str] = ()) -> list[str]:
    """Block IDs and ranges (OUT03-OUT06) of the model's table, plus ``extra`` names, in table order."""
    arch = ctx.arch
    chosen: set[str] = set()
    named = {e.upper(): e for e in extra}
    for tok in tokens:
        if tok.upper() in named:
            chosen.add(named[tok.upper()])
            continue
        try:
            if "-" in tok:
                first, _, last = tok.partition("-")
                i = arch.block_index(arch.check_block(first.strip()))
                j = arch.block_index(arch.check_block(last.strip()))
                chosen.update(arch.blocks[min(i, j):max(i, j) + 1])
            else:
                chosen.add(arch.check_block(tok))
        except SuperMergerError as e:
            raise _wrap_error(ctx, axis, pos, item, e) from None
    order = list(arch.blocks) + list(extra)
    return [b for b in order if b in chosen]


def _parse_pinpoint_blocks(text: str, ctx: ParseContext) -> list[AxisValue]:
    out = []
    for pos, item in comma_items(text):
        tokens = item.split()
        negate = bool(tokens) and tokens[0].upper() == "NOT"
        blocks = _expand_block_tokens(tokens[1:] if negate else tokens, ctx, "pinpoint blocks", pos, item)
        if negate:
            blocks = [b for b in ctx.arch.blocks if b not in blocks]
        if not blocks:
            raise _err(ctx, "pinpoint blocks", pos, item, "names no block.")
        out.append(AxisValue(item, tuple(blocks)))
    return out


def _all_pinpoint_blocks(ctx: ParseContext) -> str:
    """Every block, one per column, in two runs: up to the middle block | the output blocks."""
    blocks = list(ctx.arch.blocks)
    mid = next(i for i, b in enumerate(blocks) if b.startswith("M"))
    return ",".join(blocks[:mid + 1]) + "|" + ",".join(blocks[mid + 1:])


def _base_block_weights(state: CellState, what: str) -> list[float]:
    """The cell's block weights for ``what`` (its MBW list, or its plain ratio for every block)."""
    spec = state.recipe.mbw_alpha if what == "alpha" else state.recipe.mbw_beta
    if spec is None:
        value = state.recipe.alpha if what == "alpha" else state.recipe.beta
        return [value] * state.arch.n_blocks
    items = weight_items(spec, state.presets, what)
    if any(i.strip().upper() in RANDOM_TOKENS for i in items):
        raise XYZError(f"pinpoint blocks: the weights {what} hold random tokens ({spec}); pinpointing needs numbers.")
    weights = list(parse_weights(items, state.arch, state.presets, what))
    if len(weights) != state.arch.n_blocks:
        raise XYZError(f"pinpoint blocks: the weights {what} are a {len(weights)}-value extended list; pinpointing "
                       f"blocks needs the {state.arch.n_blocks}-value list (or no MBW).")
    return weights


def _apply_pinpoint_blocks(state: CellState, blocks: tuple[str, ...]) -> None:
    what = state.ratio_of or "alpha"
    weights = _base_block_weights(state, what)
    for b in blocks:
        weights[state.arch.block_index(b)] = state.ratio
    text = format_weights(weights)
    if what == "alpha":
        state.recipe.mbw_alpha = text
    else:
        state.recipe.mbw_beta = text
        state.beta_set = True


def _filter_choices(ctx: ParseContext) -> list[str]:
    return ["VAE", "Adjust"]


def _parse_filter(axis: str):
    def parse(text: str, ctx: ParseContext) -> list[AxisValue]:
        out = []
        for pos, item in comma_items(text):
            tokens = item.split()
            negate = bool(tokens) and tokens[0].upper() == "NOT"
            names = _expand_block_tokens(tokens[1:] if negate else tokens, ctx, axis, pos, item,
                                         extra=_filter_choices(ctx))
            if negate:
                names = [b for b in list(ctx.arch.blocks) + _filter_choices(ctx) if b not in names]
            if not names:
                raise _err(ctx, axis, pos, item, "names no block.")
            out.append(AxisValue(item, " ".join(names)))
        return out
    return parse


def _all_filter(ctx: ParseContext) -> str:
    return ",".join(ctx.arch.blocks)


def _apply_filter(mode: str, add: bool):
    def apply(state: CellState, v: str) -> None:
        r = state.recipe
        if add:
            base = r.include if mode == "include" else r.exclude
            v = f"{base} {v}" if base else v
        if mode == "include":
            r.include, r.exclude = v, None
        else:
            r.exclude, r.include = v, None
    return apply


# -- elemental ---------------------------------------------------------------------------------------
def _join_elemental(base: str, more: str) -> str:
    base = (base or "").strip()
    return f"{base}\n{more}" if base else more


def _parse_elemental(axis: str):
    def parse(text: str, ctx: ParseContext) -> list[AxisValue]:
        out = []
        for pos, item in block_items(text):
            try:
                parse_elemental(item, ctx.arch, extended=ctx.recipe.extended_xl)
            except SuperMergerError as e:
                raise _wrap_error(ctx, axis, pos, item, e) from None
            out.append(AxisValue(item if item else "no elemental", item))
        return out
    return parse


def _apply_elemental(state: CellState, v: str) -> None:
    state.recipe.elemental = v


def _apply_add_elemental(state: CellState, v: str) -> None:
    if v:
        state.recipe.elemental = _join_elemental(state.recipe.elemental, v)


def _parse_pinpoint_elements(axis: str, baseline: bool, extended: bool = False):
    def parse(text: str, ctx: ParseContext) -> list[AxisValue]:
        if extended and (ctx.recipe.elemental or "").strip() and not ctx.recipe.extended_xl:
            raise XYZError(f"{ctx.where} axis ({axis}): the recipe's elemental text uses the {ctx.arch.n_blocks} block "
                           "names, but this axis writes extended XL IDs into it.",
                           "Clear the elemental text, or turn on 'use extended XL' and write it with those IDs.")
        out = [AxisValue("baseline", None)] if baseline else []
        for pos, item in comma_items(text):
            if item.count(":") != 1:
                raise _err(ctx, axis, pos, item, f"has {item.count(':')} ':' but needs exactly 1: BLOCKS:ELEMENTS "
                           "(the ratio comes from the alpha axis).", "Example: OUT04:attn2, IN07:, OUT05:NOT ff.net")
            try:
                parse_elemental(f"{item}:0", ctx.arch, extended=extended or ctx.recipe.extended_xl)
            except SuperMergerError as e:
                raise _wrap_error(ctx, axis, pos, item, e) from None
            out.append(AxisValue(item, item))
        return out
    return parse


def _all_elements(ctx: ParseContext) -> str:
    blocks = list(ctx.arch.blocks)
    mid = next(i for i, b in enumerate(blocks) if b.startswith("M"))
    return ",".join(f"{b}:" for b in blocks[:mid + 1]) + "|" + ",".join(f"{b}:" for b in blocks[mid + 1:])


def _all_fine_elements(ctx: ParseContext) -> str:
    ids = [f for f in ctx.arch.fine_blocks if f != "IN0"]  # listed in the original's table, never produced
    mid = next(i for i, f in enumerate(ids) if f.startswith("MID"))
    return ",".join(f"{f}:" for f in ids[:mid]) + "|" + ",".join(f"{f}:" for f in ids[mid:])


def _apply_pinpoint_element(state: CellState, v: str | None) -> None:
    if v is not None:
        state.recipe.elemental = _join_elemental(state.recipe.elemental, f"{v}:{_fmt(state.ratio)}")


def _apply_pinpoint_element_ext(state: CellState, v: str | None) -> None:
    state.recipe.extended_xl = True
    _apply_pinpoint_element(state, v)


# -- adjust, calcmode, prompts ------------------------------------------------------------------------------
def _parse_adjust(text: str, ctx: ParseContext) -> list[AxisValue]:
    out = []
    for pos, line in line_items(text):
        try:
            adjustmod.parse_adjust(line)
        except SuperMergerError as e:
            raise _wrap_error(ctx, "adjust", pos, line, e) from None
        out.append(AxisValue(line, line))
    return out


def _apply_adjust(state: CellState, v: str) -> None:
    state.recipe.adjust = v


def _parse_adjust_slots(text: str, ctx: ParseContext) -> list[AxisValue]:
    out = []
    for pos, item in comma_items(text):
        name = item.upper()
        if name not in adjustmod.NAMES:
            raise _err(ctx, "pinpoint adjust", pos, item, "is not an Adjust slot.",
                       (suggest(name, adjustmod.NAMES) + " " if suggest(name, adjustmod.NAMES) else "") +
                       "Slots: " + ",".join(adjustmod.NAMES))
        out.append(AxisValue(ADJUST_LABELS.get(name, name), adjustmod.NAMES.index(name)))
    return out


def _all_adjust(ctx: ParseContext) -> str:
    return ",".join(adjustmod.NAMES)


def _apply_adjust_slot(state: CellState, slot: int) -> None:
    values = list(adjustmod.parse_adjust(state.recipe.adjust) or (0.0,) * 8)
    values[slot] = state.ratio
    state.recipe.adjust = format_weights(values)


def _parse_calcmodes(text: str, ctx: ParseContext) -> list[AxisValue]:
    out = []
    for pos, item in comma_items(text):
        try:
            cm = get_calcmode(item)
        except SuperMergerError as e:
            raise _wrap_error(ctx, "calcmode", pos, item, e) from None
        out.append(AxisValue(cm.id, cm.id))
    return out


def _all_calcmodes(ctx: ParseContext) -> str:
    return ",".join(calcmode_names())


def _apply_calcmode(state: CellState, v: str) -> None:
    state.recipe.calcmode = v


def _parse_prompt_lines(text: str, ctx: ParseContext) -> list[AxisValue]:
    return [AxisValue(p, p) for _, p in line_items(text)]


def _parse_prompt_blocks(text: str, ctx: ParseContext) -> list[AxisValue]:
    return [AxisValue(p, p) for _, p in block_items(text) if p]


def _apply_prompt(state: CellState, v: str) -> None:
    state.params.prompt = v


# -- random, merge ID ---------------------------------------------------------------------------------------
def _parse_random(text: str, ctx: ParseContext) -> list[AxisValue]:
    items = comma_items(text)
    if len(items) != 1 or not re.fullmatch(r"\d+", items[0][1]) or int(items[0][1]) < 1:
        item = items[0][1] if items else text.strip()
        raise _err(ctx, "random", 1, item, "give one whole number N ≥ 1: the number of random merges.")
    from ..merge.dice import DiceSettings

    if not DiceSettings.from_dict(ctx.recipe.random).on:
        raise XYZError(f"{ctx.where} axis (random): the recipe's random mode is off, so there is nothing to draw.",
                       "Choose a random mode under 'Let the Dice roll' (recipe field random.mode, CLI --random-mode).")
    n = int(items[0][1])
    seeds = [ctx.rng.randrange(SEED_LIMIT) for _ in range(n)]
    return [AxisValue(f"{k + 1}: seed {s}", s) for k, s in enumerate(seeds)]


def _apply_random(state: CellState, seed: int) -> None:
    state.recipe.seed = seed


def _parse_merge_ids(text: str, ctx: ParseContext) -> list[AxisValue]:
    from .. import history

    out = []
    for pos, item in comma_items(text):
        if not re.fullmatch(r"-?\d+", item):
            raise _err(ctx, "merge ID", pos, item, "not a history ID (a whole number; -1 = the last merge).")
        try:
            restored = history.restore(int(item), ctx.models_dirs)
        except SuperMergerError as e:
            raise _wrap_error(ctx, "merge ID", pos, item, e) from None
        out.append(AxisValue(f"ID {item}", restored))
    return out


def _apply_merge_id(state: CellState, recipe: Recipe) -> None:
    state.recipe = recipe.replace(device=state.recipe.device, hashes=dict(recipe.hashes))


# -- the table -------------------------------------------------------------------------------------------
BETA_LABEL = "beta (if Triple or Twice is not selected,Twice automatically enable)"
PINPOINT_LABEL = "pinpoint blocks (alpha or beta must be selected for another axis)"
ADJUST_SLOTS_LABEL = "pinpoint adjust (IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3)"

AXIS_TYPES: tuple[AxisType, ...] = (
    AxisType(0, "none", "none", None, None, merges=False, help="axis off"),
    AxisType(1, "alpha", "alpha", _parse_floats("alpha"), _apply_alpha, help="numbers: 0.25,0.5,0.75"),
    AxisType(2, "beta", BETA_LABEL, _parse_floats("beta"), _apply_beta,
             help="numbers; a mode without beta becomes sum Twice"),
    AxisType(3, "alpha and beta", "alpha and beta", _parse_alpha_beta, _apply_alpha_beta,
             help="'ALPHA BETA' pairs or one number for both: 0,0.5 0.1,0.3 0.4"),
    AxisType(4, "seed", "seed", _parse_seeds, _apply_seed, merges=False, help="image seeds; -1 draws one"),
    AxisType(5, "mbw alpha", "mbw alpha", _parse_mbw("alpha", "mbw alpha"), _apply_mbw_alpha,
             help="one weight list (or preset name) per line"),
    AxisType(6, "mbw beta", "mbw beta", _parse_mbw("beta", "mbw beta"), _apply_mbw_beta,
             help="one weight list (or preset name) per line"),
    AxisType(7, "mbw alpha and beta", "mbw alpha and beta", _parse_mbw_pairs, _apply_mbw_pair,
             help="pairs of lines: alpha weights, then beta weights"),
    AxisType(8, "model_A", "model_A", _parse_models("A"), _apply_model("model_a"), models="A",
             help="checkpoint names"),
    AxisType(9, "model_B", "model_B", _parse_models("B"), _apply_model("model_b"), models="B",
             help="checkpoint names"),
    AxisType(10, "model_C", "model_C", _parse_models("C"), _apply_model("model_c"), models="C",
             help="checkpoint names"),
    AxisType(11, "pinpoint blocks", PINPOINT_LABEL, _parse_pinpoint_blocks, _apply_pinpoint_blocks, stage=2,
             ratio="alpha/beta", expand_all=_all_pinpoint_blocks,
             help="block IDs and ranges per item, NOT inverts: IN01,OUT10 OUT11,NOT M00 OUT03-OUT06"),
    AxisType(12, "include blocks", "include blocks", _parse_filter("include blocks"), _apply_filter("include", False),
             expand_all=_all_filter, help="blocks (and VAE, Adjust) merged, the rest kept from A; NOT inverts"),
    AxisType(13, "exclude blocks", "exclude blocks", _parse_filter("exclude blocks"), _apply_filter("exclude", False),
             expand_all=_all_filter, help="blocks (and VAE, Adjust) kept from A; NOT inverts"),
    AxisType(14, "add include", "add include", _parse_filter("add include"), _apply_filter("include", True),
             expand_all=_all_filter, help="added to the recipe's include list"),
    AxisType(15, "add exclude", "add exclude", _parse_filter("add exclude"), _apply_filter("exclude", True),
             expand_all=_all_filter, help="added to the recipe's exclude list"),
    AxisType(16, "elemental", "elemental", _parse_elemental("elemental"), _apply_elemental,
             help="elemental texts separated by blank lines; a leading blank line = no elemental"),
    AxisType(17, "add elemental", "add elemental", _parse_elemental("add elemental"), _apply_add_elemental,
             repeatable=True, help="like elemental, added to the recipe's elemental text"),
    AxisType(18, "pinpoint element", "pinpoint element", _parse_pinpoint_elements("pinpoint element", False),
             _apply_pinpoint_element, stage=2, ratio="alpha", expand_all=_all_elements,
             help="BLOCKS:ELEMENTS items, the ratio from the alpha axis: OUT04:attn2,IN07:"),
    AxisType(19, "pinpoint element ext", "pinpoint element ext",
             _parse_pinpoint_elements("pinpoint element ext", False, extended=True), _apply_pinpoint_element_ext,
             stage=2, ratio="alpha", expand_all=_all_fine_elements,
             help="like pinpoint element with SDXL's extended XL IDs: IN715:attn2,MID10:"),
    AxisType(20, "effective elemental checker", "effective elemental checker",
             _parse_pinpoint_elements("effective elemental checker", True), _apply_pinpoint_element, stage=2,
             ratio="alpha", expand_all=_all_elements,
             help="like pinpoint element, after a baseline; images compared with it (one alpha value)"),
    AxisType(21, "adjust", "adjust", _parse_adjust, _apply_adjust, help="one Adjust text (8 values) per line"),
    AxisType(22, "pinpoint adjust", ADJUST_SLOTS_LABEL, _parse_adjust_slots, _apply_adjust_slot, stage=2,
             ratio="alpha", expand_all=_all_adjust, help="Adjust slots, the value from the alpha axis"),
    AxisType(23, "calcmode", "calcmode", _parse_calcmodes, _apply_calcmode, expand_all=_all_calcmodes,
             help="calcmode names"),
    AxisType(24, "prompt", "prompt", _parse_prompt_lines, _apply_prompt, merges=False, help="one prompt per line"),
    AxisType(25, "prompt2", "prompt2", _parse_prompt_blocks, _apply_prompt, merges=False,
             help="prompts separated by blank lines"),
    AxisType(26, "prompt3", "prompt3", _parse_prompt_blocks, _apply_prompt, merges=False,
             help="prompts separated by blank lines; on X each row is ONE batch (seed, seed+1, ...)"),
    AxisType(27, "random", "random", _parse_random, _apply_random, repeatable=True,
             help="N: N merges with random ratios from the dice-roll settings"),
    AxisType(28, "merge ID", "merge ID", _parse_merge_ids, _apply_merge_id, stage=0, models="ABC",
             help="history IDs: each cell merges that record's recipe"),
)
UNSUPPORTED: dict[str, str] = {}  # names of the original's types this engine cannot offer, with why
_BY_NAME: dict[str, AxisType] = {}


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


for _t in AXIS_TYPES:
    _BY_NAME[_norm(_t.id)] = _t
    _BY_NAME[_norm(_t.label)] = _t
_BY_NAME[_norm("Elemental checker")] = _BY_NAME[_norm("effective elemental checker")]
del _t


def axis_type(name: str, where: str = "") -> AxisType:
    """The axis type by short name or the original's UI label (case, '_' and spaces do not matter)."""
    t = _BY_NAME.get(_norm(name or "none"))
    if t is not None:
        return t
    prefix = f"{where} axis: " if where else ""
    if _norm(name) in UNSUPPORTED:
        raise XYZError(f"{prefix}axis type {name!r} is not available: {UNSUPPORTED[_norm(name)]}.")
    names = [t.id for t in AXIS_TYPES]
    raise XYZError(f"{prefix}unknown axis type {name!r}.", suggest(name, names) or "Types: " + ", ".join(names))


def type_names() -> list[str]:
    return [t.id for t in AXIS_TYPES]

"""The Merge tab's form as plain data: field names and defaults, form values <-> Recipe, which
sliders a mode uses, and the elemental live check. No Gradio here, so all of it is unit-tested
without a browser; ``context.UIContext`` binds it to components.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import RecipeError, SuperMergerError
from ..merge.calcmodes import get_calcmode
from ..merge.dice import DEFAULT_CUSTOM
from ..merge.modes import MODES, get_mode
from ..merge.recipe import Recipe

MODE_LABELS: tuple[str, ...] = tuple(m.label for m in MODES.values())
FILTER_MODES = ("Off", "Include", "Exclude")
SAVE_FORMATS = ("safetensors", "ckpt")
NO_VAE = "None"
DEFAULT_ALPHA_WEIGHTS = ",".join(["0.5"] * 26)
DEFAULT_BETA_WEIGHTS = ",".join(["0.2"] * 26)

# Every Merge-tab value that defines a recipe, in the fixed order of ``UIContext.merge_inputs``.
MERGE_FIELDS: dict[str, Any] = {
    "model_a": None, "model_b": None, "model_c": None,
    "mode": MODE_LABELS[0], "calcmode": "normal",
    "alpha": 0.5, "beta": 0.25, "gamma": 0.3,
    "use_mbw": False, "mbw_alpha": DEFAULT_ALPHA_WEIGHTS, "mbw_beta": DEFAULT_BETA_WEIGHTS,
    "elemental": "", "extended_xl": False,
    "filter_mode": "Off", "filter_text": "",
    "adjust": "",
    "dice_mode": "off", "dice_targets": ["alpha"], "dice_custom": DEFAULT_CUSTOM,
    "dice_upper": "1", "dice_lower": "0", "dice_clamp_upper": "1", "dice_clamp_lower": "0", "dice_round": 3,
    "merge_seed": -1,
    "save": False, "save_format": "safetensors", "dtype": "keep", "prune": False, "overwrite": False,
    "reset_clip_ids": False, "metadata": True, "custom_name": "", "bake_vae": NO_VAE,
}

# Generation parameters (hosts.base.GenParams), in the fixed order of ``UIContext.gen_inputs``.
GEN_FIELDS: tuple[str, ...] = ("prompt", "negative_prompt", "steps", "cfg_scale", "sampler", "scheduler",
                               "width", "height", "seed", "batch_size", "batch_count", "enable_hr",
                               "hr_scale", "hr_upscaler", "hr_second_pass_steps", "denoising_strength")


def mode_id(label_or_id: str) -> str:
    return get_mode(label_or_id).id


def mode_label(label_or_id: str) -> str:
    return get_mode(label_or_id).label


@dataclass(frozen=True)
class SliderUse:
    """Which of alpha / beta / gamma (and model C) the chosen mode and calcmode use."""
    alpha: bool
    beta: bool
    gamma: bool
    model_c: bool


def slider_use(mode: str, calcmode: str) -> SliderUse:
    """Beta is used by Triple sum / sum Twice and by calcmodes that take a beta (tensor, extract, ties...);
    gamma only by calcmodes that say so; model C by three-model modes and calcmodes that need a base."""
    cm = get_calcmode(calcmode)
    m = get_mode(mode)
    if m.id not in cm.modes and cm.force_mode:
        m = get_mode(cm.force_mode)  # the plan switches the mode; the sliders follow
    return SliderUse(alpha=True, beta=m.uses_beta or cm.uses_beta, gamma=cm.uses_gamma,
                     model_c=m.needs_c or cm.needs_c)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _int(value: Any, name: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{name} must be a whole number, got {value!r}.") from None
    if f != int(f):
        raise RecipeError(f"{name} must be a whole number, got {value!r}.")
    return int(f)


def output_path(folder: str | os.PathLike | None, custom_name: str, save_format: str) -> Path | None:
    """The file a custom name asks for (None: the merge's default name, decided after planning)."""
    name = _text(custom_name).strip()
    if not name:
        return None
    ext = ".safetensors" if save_format == "safetensors" else ".ckpt"
    if any(c in name for c in '\\/:*?"<>|') and not Path(name).is_absolute():
        raise RecipeError(f"Custom name {name!r} contains a character a file name cannot have.",
                          'Leave out \\ / : * ? " < > |')
    if not name.lower().endswith(ext):
        name += ext
    path = Path(name)
    return path if path.is_absolute() or folder is None else Path(folder) / path


def recipe_from_values(values: Mapping[str, Any], resolve_model: Callable[[str], str] | None = None,
                       device: str = "cpu", resolve_vae: Callable[[str], str] | None = None) -> Recipe:
    """The Recipe the form describes. ``resolve_model`` / ``resolve_vae`` turn a picker's name into a
    file path (the host's); where the merge is saved is not part of the recipe (``output_path``)."""
    v = dict(MERGE_FIELDS)
    v.update({k: values[k] for k in values if k in MERGE_FIELDS})
    resolve = resolve_model or (lambda name: name)

    def model(label: str, name: Any) -> str | None:
        name = _text(name).strip()
        return resolve(name) if name else None

    mode = get_mode(_text(v["mode"]) or MODE_LABELS[0])
    calcmode = get_calcmode(_text(v["calcmode"]) or "normal")
    use = slider_use(mode.id, calcmode.id)
    mbw_alpha = mbw_beta = None
    if v["use_mbw"]:
        mbw_alpha = _text(v["mbw_alpha"]).strip() or None
        if use.beta:
            mbw_beta = _text(v["mbw_beta"]).strip() or None
    filter_mode = _text(v["filter_mode"]) or "Off"
    if filter_mode not in FILTER_MODES:
        raise RecipeError(f"Include/Exclude must be one of {', '.join(FILTER_MODES)}, got {filter_mode!r}.")
    filter_text = _text(v["filter_text"]).strip() or None
    random = None
    dice_mode = _text(v["dice_mode"]) or "off"
    if dice_mode != "off":
        random = {"mode": dice_mode, "targets": list(v["dice_targets"] or []), "custom": _text(v["dice_custom"]),
                  "upper": _text(v["dice_upper"]), "lower": _text(v["dice_lower"]),
                  "clamp_upper": _text(v["dice_clamp_upper"]), "clamp_lower": _text(v["dice_clamp_lower"]),
                  "round": _int(v["dice_round"], "Dice round")}
    seed = _int(v["merge_seed"], "Merge seed") if v["merge_seed"] not in (None, "") else -1
    bake = _text(v["bake_vae"]).strip()
    recipe = Recipe(
        model_a=model("A", v["model_a"]), model_b=model("B", v["model_b"]),
        model_c=model("C", v["model_c"]) if use.model_c else None,
        mode=mode.id, calcmode=calcmode.id,
        alpha=float(v["alpha"]), beta=float(v["beta"]), gamma=float(v["gamma"]),
        mbw_alpha=mbw_alpha, mbw_beta=mbw_beta,
        elemental=_text(v["elemental"]), extended_xl=bool(v["extended_xl"]),
        include=filter_text if filter_mode == "Include" else None,
        exclude=filter_text if filter_mode == "Exclude" else None,
        adjust=_text(v["adjust"]).strip(),
        dtype=_text(v["dtype"]) or "keep", prune=bool(v["prune"]), reset_clip_ids=bool(v["reset_clip_ids"]),
        metadata=bool(v["metadata"]),
        bake_vae=(resolve_vae or (lambda name: name))(bake) if bake and bake != NO_VAE else None,
        overwrite=bool(v["overwrite"]),
        seed=None if seed == -1 else seed, random=random, device=device)
    recipe.check_types("the Merge tab")
    return recipe


def _weights_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        from ..merge.weights import format_weights

        return format_weights([float(x) for x in value])
    return str(value)


def values_from_recipe(recipe: Recipe, model_name: Callable[[str], str] | None = None,
                       vae_name: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The form values that reproduce ``recipe`` (the inverse of ``recipe_from_values``);
    ``model_name`` / ``vae_name`` turn a file path back into the picker's name."""
    name = model_name or (lambda path: path)
    vae = vae_name or (lambda path: path)
    dice = recipe.random or {}
    use_mbw = recipe.mbw_alpha is not None or recipe.mbw_beta is not None
    filter_mode = "Include" if recipe.include else "Exclude" if recipe.exclude else "Off"
    return {
        "model_a": name(recipe.model_a) if recipe.model_a else None,
        "model_b": name(recipe.model_b) if recipe.model_b else None,
        "model_c": name(recipe.model_c) if recipe.model_c else None,
        "mode": mode_label(recipe.mode), "calcmode": get_calcmode(recipe.calcmode).id,
        "alpha": recipe.alpha, "beta": recipe.beta, "gamma": recipe.gamma,
        "use_mbw": use_mbw,
        "mbw_alpha": _weights_text(recipe.mbw_alpha) or DEFAULT_ALPHA_WEIGHTS,
        "mbw_beta": _weights_text(recipe.mbw_beta) or DEFAULT_BETA_WEIGHTS,
        "elemental": recipe.elemental or "", "extended_xl": recipe.extended_xl,
        "filter_mode": filter_mode, "filter_text": recipe.include or recipe.exclude or "",
        "adjust": recipe.adjust or "",
        "dice_mode": dice.get("mode", "off"), "dice_targets": list(dice.get("targets", ["alpha"])),
        "dice_custom": dice.get("custom", DEFAULT_CUSTOM), "dice_upper": dice.get("upper", "1"),
        "dice_lower": dice.get("lower", "0"), "dice_clamp_upper": dice.get("clamp_upper", "1"),
        "dice_clamp_lower": dice.get("clamp_lower", "0"), "dice_round": dice.get("round", 3),
        "merge_seed": -1 if recipe.seed is None else recipe.seed,
        "dtype": recipe.dtype, "prune": recipe.prune, "overwrite": recipe.overwrite,
        "reset_clip_ids": recipe.reset_clip_ids, "metadata": recipe.metadata,
        "bake_vae": vae(recipe.bake_vae) if recipe.bake_vae else NO_VAE,
    }


def gen_params_from_values(values: Mapping[str, Any], defaults=None):
    """GenParams from the form (``defaults``: the host's txt2img values for anything left out)."""
    from ..hosts.base import GenParams

    base = defaults or GenParams()
    changes: dict[str, Any] = {}
    for name in GEN_FIELDS:
        if name not in values or values[name] is None:
            continue
        value = values[name]
        current = getattr(base, name)
        if isinstance(current, bool):
            value = bool(value)
        elif isinstance(current, int):
            value = _int(value, name.replace("_", " ").capitalize())
        elif isinstance(current, float):
            value = float(value)
        else:
            value = str(value)
        changes[name] = value
    params = base.with_(**changes)
    if params.steps < 1 or params.width < 8 or params.height < 8 or params.batch_size < 1 or params.batch_count < 1:
        raise RecipeError("Steps, batch size and batch count must be at least 1, width and height at least 8.")
    return params


# -- elemental live check ------------------------------------------------------------------------
@dataclass
class ElementalLine:
    index: int
    text: str
    blocks: str  # the blocks the entry covers, e.g. "OUT03", "IN04-IN08 M00", "all 26 blocks"
    matched: int  # keys whose block and element the entry matches
    decided: int  # keys whose ratio this entry decides (the last matching entry wins)


def elemental_lines(plan) -> list[ElementalLine]:
    """Per-entry counts from a merge plan (``api.plan_merge``)."""
    mergeable = [t for t in plan.tasks if t.block is not None and t.op != "literal"
                 and ("model" in t.key and ("weight" in t.key or "bias" in t.key))]
    out = []
    for e in plan.elemental:
        if e.line == 0:
            continue  # added by the dice roll (ER/EU/EX), not typed by the user
        matched = sum(1 for t in mergeable if e.matches(t.key, t.block, plan.arch.fine_of(t.key)))
        decided = sum(1 for t in plan.tasks if t.why.startswith(e.describe()))
        names = plan.arch.fine_blocks if e.extended else plan.arch.blocks
        if e.blocks is None:
            covered = list(names)
        else:
            covered = [b for b in names if (b in e.blocks) != e.blocks_not]
        out.append(ElementalLine(e.index, e.text, block_ranges(covered, names), matched, decided))
    return out


def block_ranges(blocks: Sequence[str], order: Sequence[str]) -> str:
    """Blocks as short text in the architecture's order: runs of neighbours as ranges ("IN04-IN08"),
    every block as "all N blocks", none as "no block"."""
    if not blocks:
        return "no block"
    if len(blocks) == len(order):
        return f"all {len(order)} blocks"
    index = sorted(order.index(b) for b in blocks)
    parts, start = [], index[0]
    for prev, cur in zip(index, index[1:] + [None]):
        if cur is None or cur != prev + 1:
            parts.append(order[start] if start == prev else f"{order[start]}-{order[prev]}")
            start = cur
    return " ".join(parts)


def elemental_report(lines: Sequence[ElementalLine], arch_label: str) -> str:
    if not lines:
        return "No elemental entries: every key takes its ratio from alpha / the block weights."
    rows = [f"{arch_label}: {len(lines)} entr{'y' if len(lines) == 1 else 'ies'} (the last matching entry wins)"]
    for ln in lines:
        note = "  ⚠ matches no key" if ln.matched == 0 else \
            "  ⚠ every match is overridden by a later entry" if ln.decided == 0 else ""
        rows.append(f"#{ln.index} '{ln.text}': {ln.blocks}, "
                    f"matches {ln.matched} keys, decides {ln.decided}{note}")
    return "\n".join(rows)


def elemental_check(text: str, recipe: Recipe | None, plan_fn: Callable[[Recipe], Any],
                    arch_id: str = "sd1") -> str:
    """The live check's text: per-entry blocks and key counts when models A and B are set (planned
    with ``plan_fn``, i.e. ``api.plan_merge``), else the syntax check against ``arch_id``'s blocks;
    a malformed entry gives the engine's message, which names the entry and its line."""
    from .. import arch as archmod
    from ..merge.elemental import parse_elemental

    if not text or not text.strip():
        return "No elemental entries: every key takes its ratio from alpha / the block weights."
    try:
        if recipe is not None and recipe.model_a and recipe.model_b:
            # models and elemental only: the counts are about the elemental text, whatever else is set
            probe = Recipe(model_a=recipe.model_a, model_b=recipe.model_b, elemental=text,
                           extended_xl=recipe.extended_xl)
            plan = plan_fn(probe)
            try:
                return elemental_report(elemental_lines(plan), plan.arch.label)
            finally:
                for s in plan.sources.values():
                    s.close()
        architecture = archmod.get(arch_id)
        entries = parse_elemental(text, architecture, extended=bool(recipe is not None and recipe.extended_xl))
        return (f"{architecture.label}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} parsed; "
                "pick models A and B to see how many keys each matches.")
    except SuperMergerError as e:
        return "Error: " + message(e)


MESSAGE_CHARS = 240  # the most of an unexpected error's text the status shows


def message(exc: BaseException) -> str:
    """A SuperMergerError (or any exception) as the one readable text the UI shows."""
    if isinstance(exc, SuperMergerError):
        return exc.message if not exc.hint else f"{exc.message} {exc.hint}"
    # a bug: one line (the first of its text, cut short), never a wall of text; the console has the rest
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if len(first) > MESSAGE_CHARS:
        first = first[:MESSAGE_CHARS].rstrip() + " ..."
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text + " (the full error is in the console)"

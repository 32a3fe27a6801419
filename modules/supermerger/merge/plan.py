"""Planning: a recipe plus file headers become a list of per-key tasks, before any tensor is read.

Everything a user can get wrong is found here: unknown names, bad weight lists, elemental text,
incompatible architectures or shapes, an output that exists. ``--dry-run`` prints the plan;
``--explain`` prints, for every key, the ratio it gets and the rule that decided it.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Mapping

from .. import arch as archmod
from ..arch import Architecture
from ..arch.presets import load_presets
from ..errors import ArchitectureError, RecipeError
from ..io.safetensors_format import TensorInfo
from ..io.sources import Source
from . import adjust as adjustmod
from .calcmodes import CalcMode, get_calcmode
from .dice import Dice, DiceSettings
from .elemental import ElementalEntry, parse_elemental, random_entries, resolve
from .filters import KeyFilter, parse_filter
from .modes import MergeMode, get_mode
from .naming import merged_name
from .recipe import Recipe
from .seeds import draw_seed
from .weights import fine_ratio, format_weights, has_random, is_fine, list_names, parse_weights, weight_items

DTYPE_CODES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
INPAINT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
VAE_PREFIX = "first_stage_model."
TIME_EMBED = "model.diffusion_model.time_embed."


@dataclass
class KeyTask:
    key: str
    dtype: str  # output safetensors dtype code
    shape: tuple[int, ...]
    op: str  # "merge" | "copy" | "literal"
    src: str = "A"  # for copy: which source
    alpha: float = 0.0
    beta: float = 0.0
    block: str | None = None
    why: str = ""
    adjust: adjustmod.AdjustOp | None = None
    channels: int | None = None  # inpainting / pix2pix: merge only the first N input channels
    value: list | None = None  # literal tensor data (reset CLIP ids)
    whole: bool = False  # the method needs the whole tensor (not windows)
    src_key: str | None = None  # key in the source when it differs (baked VAE files)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return TensorInfo(self.dtype, self.shape).nbytes


@dataclass
class MergePlan:
    recipe: Recipe
    arch: Architecture
    mode: MergeMode
    calcmode: CalcMode
    sources: dict[str, Source]
    tasks: list[KeyTask]
    name: str
    block_alpha: tuple[float, ...] | None = None
    block_beta: tuple[float, ...] | None = None
    elemental: list[ElementalEntry] = field(default_factory=list)
    key_filter: KeyFilter | None = None
    notices: list[str] = field(default_factory=list)
    variant: str | None = None  # "inpainting" / "instruct-pix2pix"

    # -- figures for --dry-run ------------------------------------------------------------
    def bytes_to_read(self) -> int:
        total = 0
        for t in self.tasks:
            if t.op == "copy":
                total += self.sources[t.src].tensors[t.src_key or t.key].nbytes
            elif t.op == "merge":
                for s in self.inputs():
                    total += self.sources[s].tensors[t.key].nbytes
        return total

    def bytes_to_write(self) -> int:
        return sum(t.nbytes for t in self.tasks)

    def inputs(self) -> tuple[str, ...]:
        return tuple(self.mode.models)

    def peak_memory_estimate(self, chunk_elems: int, depth: int) -> int:
        """Bytes of tensor buffers the executor holds at most (excluding the Python runtime)."""
        n_in = len(self.inputs())
        streamed = depth * (n_in + 1) * chunk_elems * 4
        whole = max((t.numel for t in self.tasks if t.whole), default=0)
        return streamed + whole * 4 * (2 * n_in + 1)

    def rule_counts(self) -> Counter:
        return Counter(t.why for t in self.tasks)

    def explain_lines(self) -> list[str]:
        lines = [f"{'key':<80} {'block':<6} {'alpha':>8} {'beta':>8}  rule"]
        for t in self.tasks:
            if t.op == "merge":
                beta = f"{t.beta:8.4g}" if (self.mode.uses_beta or self.calcmode.uses_beta) else f"{'-':>8}"
                lines.append(f"{t.key:<80} {t.block or '':<6} {t.alpha:8.4g} {beta}  {t.why}")
            else:
                lines.append(f"{t.key:<80} {t.block or '':<6} {'-':>8} {'-':>8}  {t.why}")
        return lines

    def summary_lines(self, chunk_elems: int = 1 << 21, depth: int = 4) -> list[str]:
        r = self.recipe
        lines = [
            f"merged model : {self.name}",
            f"architecture : {self.arch.label} ({self.arch.n_blocks} blocks)"
            + (f", {self.variant}" if self.variant else ""),
            f"mode         : {self.mode.label}  {self.mode.formula}   calcmode: {self.calcmode.id}",
        ]
        for key in self.inputs():
            s = self.sources[key]
            lines.append(f"model {key}      : {s.path or s.name}")
        if "VAE" in self.sources:
            lines.append(f"bake VAE     : {self.sources['VAE'].path}")
        if self.block_alpha is not None:
            lines.append("block alpha  : " + " ".join(f"{b}={v:g}" for b, v in zip(self.arch.blocks, self.block_alpha)))
        else:
            lines.append(f"alpha        : {r.alpha:g}")
        if self.mode.uses_beta or self.calcmode.uses_beta:
            if self.block_beta is not None:
                lines.append("block beta   : " + " ".join(f"{b}={v:g}" for b, v in zip(self.arch.blocks, self.block_beta)))
            else:
                lines.append(f"beta         : {r.beta:g}")
        ops = Counter(t.op for t in self.tasks)
        lines.append(f"keys         : {len(self.tasks)} in output ({ops.get('merge', 0)} merged, "
                     f"{ops.get('copy', 0)} copied, {ops.get('literal', 0)} set)")
        lines.append("rules        :")
        for why, n in sorted(self.rule_counts().items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:6d} keys  {why}")
        if self.elemental:
            lines.append("elemental    :")
        mergeable = [t for t in self.tasks if t.block is not None and _eligible(t.key)]
        for e in self.elemental:
            matched = sum(1 for t in mergeable if e.matches(t.key, t.block, self.arch.fine_of(t.key)))
            decided = sum(1 for t in self.tasks if t.why.startswith(e.describe()))
            note = ("  warning: matches no key" if matched == 0 else
                    "  warning: every match is overridden by a later entry" if decided == 0 else "")
            lines.append(f"  #{e.index:<3} matches {matched:5d} keys, decides {decided:5d}  '{e.text}'{note}")
        gib = 2 ** 30
        lines.append(f"read         : {self.bytes_to_read() / gib:.2f} GiB   write: {self.bytes_to_write() / gib:.2f} GiB"
                     f"   dtype: {r.dtype}")
        lines.append(f"peak memory  : about {self.peak_memory_estimate(chunk_elems, depth) / 2**20:.0f} MiB of buffers")
        if r.seed is not None:
            lines.append(f"seed         : {r.seed}")
        lines.append(f"output       : {r.output or '(in memory)'}")
        lines += [f"notice       : {n}" for n in self.notices]
        return lines


def _eligible(key: str) -> bool:
    """The original's rule: only keys with 'model' and 'weight'/'bias' in their name are merged."""
    return "model" in key and ("weight" in key or "bias" in key)


def _out_dtype(key: str, info: TensorInfo, dtype_choice: str) -> str:
    if dtype_choice == "keep" or not info.is_float or "model" not in key:
        return info.dtype
    return DTYPE_CODES[dtype_choice]


def _keep_on_prune(key: str, arch: Architecture) -> bool:
    prefixes = tuple(p for comp in arch.components.values() for p in comp)
    return key.startswith(prefixes)


def _no_model_c(mode: MergeMode) -> RecipeError:
    # refused before any work, as the original does (it once ran as A + α(B − A), a plain weight sum)
    return RecipeError(f"{mode.label} needs model C and none was given.",
                       "Choose model C (--model-c, model_c), or use Weight sum.")


def build_plan(recipe: Recipe, sources: Mapping[str, Source], presets: Mapping[str, str] | None = None) -> MergePlan:
    """Validate ``recipe`` against the opened ``sources`` (headers only) and plan every key."""
    notices: list[str] = []
    mode = get_mode(recipe.mode)
    calcmode = get_calcmode(recipe.calcmode)
    if mode.id not in calcmode.modes:
        if calcmode.force_mode:
            forced = get_mode(calcmode.force_mode)
            notices.append(f"calcmode {calcmode.id} works with {forced.label}: mode switched from {mode.label}.")
            mode = forced
        else:
            allowed = ", ".join(get_mode(m).label for m in calcmode.modes)
            raise RecipeError(f"calcmode {calcmode.id} cannot be used with {mode.label}; it works with: {allowed}.")

    a, b = sources["A"], sources["B"]
    c = sources.get("C") if mode.needs_c else None
    if calcmode.needs_c and c is None:
        raise RecipeError(f"calcmode {calcmode.id} needs model C: the base model that A and B were both "
                          "fine-tuned from.", "Give --model-c (model_c).")
    if mode.needs_c and c is None:
        raise _no_model_c(mode)
    shapes_a = {k: v.shape for k, v in a.tensors.items()}
    arch = archmod.detect(a.tensors, shapes_a, f"model A ({a.name})")
    for label, src in (("B", b), ("C", c)):
        if src is None or src is a:
            continue
        other = archmod.detect(src.tensors, {k: v.shape for k, v in src.tensors.items()}, f"model {label} ({src.name})")
        if other.id != arch.id:
            raise ArchitectureError(
                f"Model A ({a.name}) is {arch.label} but model {label} ({src.name}) is {other.label}: "
                "they cannot be merged.", "Pick models of the same family (SD1 with SD1, SDXL with SDXL).")

    presets = presets if presets is not None else load_presets()
    recipe, dice, block_alpha, block_beta, entries = _ratios(recipe, arch, calcmode, presets, notices)
    if block_beta is not None and not (mode.uses_beta or calcmode.uses_beta):
        notices.append(f"weights beta are ignored: {mode.label} with calcmode {calcmode.id} uses no beta.")
    key_filter = None
    if recipe.include:
        key_filter = parse_filter("include", recipe.include, arch)
    elif recipe.exclude:
        key_filter = parse_filter("exclude", recipe.exclude, arch)
    adjust_values = adjustmod.parse_adjust(recipe.adjust)
    adjust_ops = adjustmod.adjust_ops(adjust_values, arch)
    time_embed_block = None
    if recipe.time_embed_block:
        time_embed_block = arch.check_block(recipe.time_embed_block.strip().upper(), " (time_embed_block)")

    inputs = {"A": a, "B": b}
    if c is not None:
        inputs["C"] = c
    variant = None
    tasks: list[KeyTask] = []
    mismatches: list[str] = []
    # Model A's keys in file order (sequential reads), then keys only in B.
    order = sorted(a.tensors, key=lambda k: a.tensors[k].offset)
    for key in order:
        info = a.tensors[key]
        if recipe.prune and not _keep_on_prune(key, arch):
            continue
        if key.startswith(arch.drop_on_save):
            continue
        block = arch.block_of(key) if key.startswith("model.diffusion_model.") or _eligible(key) else None
        if time_embed_block and key.startswith(TIME_EMBED):
            block = time_embed_block
        out_dtype = _out_dtype(key, info, recipe.dtype)
        present = all(key in s.tensors for s in inputs.values())
        if not _eligible(key) or key in arch.ignored_keys or not present or not info.is_float:
            why = "kept from A (not a weight/bias of a model)" if not _eligible(key) or not info.is_float else \
                "kept from A (not in every model)" if not present else "kept from A (never merged)"
            tasks.append(KeyTask(key, out_dtype, info.shape, "copy", "A", block=block, why=why))
            continue
        channels = None
        for label, src in inputs.items():
            other = src.tensors[key]
            if other.shape == info.shape:
                continue
            if key == INPAINT_KEY and len(info.shape) == 4 and info.shape[1] in (8, 9) and other.shape[1] == 4 \
                    and other.shape[0] == info.shape[0] and other.shape[2:] == info.shape[2:]:
                channels = 4
                variant = "inpainting" if info.shape[1] == 9 else "instruct-pix2pix"
                continue
            if key == INPAINT_KEY and len(other.shape) == 4 and other.shape[1] in (8, 9) and info.shape[1] == 4:
                kind = "inpainting" if other.shape[1] == 9 else "instruct-pix2pix"
                raise ArchitectureError(
                    f"Model {label} ({src.name}) is an {kind} model but model A ({a.name}) is not: "
                    f"A must be the {kind} model.", f"Swap the models so that the {kind} model is model A.")
            mismatches.append(f"{key}: A {list(info.shape)} vs {label} {list(other.shape)}")
        if mismatches and mismatches[-1].startswith(key + ":"):
            continue

        alpha, why = _block_ratio(block_alpha, arch, key, block, recipe.alpha, "alpha")
        beta, _ = _block_ratio(block_beta, arch, key, block, recipe.beta, "beta")
        fine = arch.fine_of(key) if entries and (recipe.extended_xl or any(e.extended for e in entries)) else None
        entry = resolve(entries, key, block, fine) if entries else None
        if entry is not None:
            alpha = dice.element_ratio(entry.random_token, key, block, fine) if entry.random_token \
                else float(entry.ratio)
            why = entry.describe()
        if key_filter is not None:
            merges, fwhy = key_filter.merges(key, block, arch.component_of(key), key in adjust_ops)
            if not merges:
                tasks.append(KeyTask(key, out_dtype, info.shape, "copy", "A", block=block, why=f"kept from A ({fwhy})"))
                continue
        kept = calcmode.keep(key) if calcmode.keep is not None else None
        if kept:
            tasks.append(KeyTask(key, out_dtype, info.shape, "copy", "A", block=block,
                                 why=f"kept from A (calcmode {calcmode.id}: {kept})"))
            continue
        problem = calcmode.check(alpha, beta, recipe.gamma) if calcmode.check is not None else None
        if problem:
            raise RecipeError(f"calcmode {calcmode.id}: {problem} for {key} ({why}).",
                              f"calcmode {calcmode.id} takes {calcmode.params}.")
        adj = adjust_ops.get(key)
        task = KeyTask(key, out_dtype, info.shape, "merge", alpha=alpha, beta=beta, block=block, why=why,
                       adjust=adj, channels=channels, whole=(not calcmode.elementwise) or channels is not None)
        if adj is not None:
            task.why += " + adjust"
        if calcmode.linear and adj is None and channels is None:
            coeffs = mode.coefficients(alpha, beta)
            if coeffs == (1.0, 0.0, 0.0) or (coeffs[0] == 1.0 and coeffs[1] == 0.0 and coeffs[2] == 0.0):
                task.op, task.src, task.why = "copy", "A", why + " (ratio gives A)"
            elif coeffs[0] == 0.0 and coeffs[1] == 1.0 and coeffs[2] == 0.0:
                task.op, task.src, task.why = "copy", "B", why + " (ratio gives B)"
        tasks.append(task)

    if mismatches:
        shown = "\n  ".join(mismatches[:5])
        more = f"\n  ... and {len(mismatches) - 5} more" if len(mismatches) > 5 else ""
        raise ArchitectureError(
            f"{len(mismatches)} tensors have different shapes in the models, so they cannot be merged:\n  {shown}{more}",
            "The models are of different variants (e.g. SD2 512 vs a modified network); pick compatible models.")

    planned = {t.key for t in tasks}
    for key, info in b.tensors.items():
        if key in planned or "model" not in key or key in arch.ignored_keys or key.startswith(arch.drop_on_save):
            continue
        if recipe.prune and not _keep_on_prune(key, arch):
            continue
        tasks.append(KeyTask(key, _out_dtype(key, info, recipe.dtype), info.shape, "copy", "B",
                             block=arch.block_of(key), why="copied from B (only in B)"))

    if "VAE" in sources:
        _bake_vae(tasks, sources["VAE"])
    if recipe.reset_clip_ids and arch.clip_position_ids:
        for t in tasks:
            if t.key == arch.clip_position_ids:
                n = t.shape[-1]
                t.op, t.value, t.dtype, t.why = "literal", list(range(n)), "I64", "reset CLIP ids to 0..%d" % (n - 1)

    mbw_a = format_weights(block_alpha) if block_alpha is not None else None
    mbw_b = format_weights(block_beta) if block_beta is not None else None
    name = merged_name(mode.id, a.name, b.name, c.name if c is not None else None, recipe.alpha, recipe.beta,
                       calcmode.id, mbw_a, mbw_b)
    if calcmode.name_beta:
        name += f"_beta_{recipe.beta:g}"
    return MergePlan(recipe, arch, mode, calcmode, dict(inputs, **({"VAE": sources["VAE"]} if "VAE" in sources else {})),
                     tasks, name, block_alpha, block_beta, entries, key_filter, notices, variant)


def _block_ratio(weights, arch: Architecture, key: str, block: str, plain: float, what: str) -> tuple[float, str]:
    """A key's ratio from block weights (20/26: by block; 110 extended XL: by sub-module) or the plain ratio."""
    if weights is None:
        return plain, what
    if is_fine(weights, arch):
        value, slot = fine_ratio(weights, arch, key)
        return value, f"weights {what} {slot}"
    return weights[arch.block_index(block)], f"weights {what} {block}"


def _ratios(recipe: Recipe, arch: Architecture, calcmode: CalcMode, presets: Mapping[str, str], notices: list[str]):
    """Block weights and elemental entries, with the dice rolled where the recipe asks for chance.

    Returns the recipe (with the seed actually used, when randomness is involved), the Dice (or
    None), the alpha and beta block weights (or None) and the elemental entries."""
    settings = DiceSettings.from_dict(recipe.random)
    specs = {"alpha": recipe.mbw_alpha, "beta": recipe.mbw_beta}
    if settings.on:
        slots = len(arch.fine_blocks) if recipe.extended_xl and arch.fine_blocks else \
            (26 if arch.from_26 else arch.n_blocks)  # "use extended XL": all 110 slots are drawn
        fill = settings.token_list(slots)
        for target in settings.targets:
            if specs[target] is not None:
                notices.append(f"random mode {settings.mode} replaces the weights {target} that were given.")
            specs[target] = fill
        if not settings.targets:
            notices.append(f"random mode {settings.mode} has no target (alpha / beta): nothing is drawn.")
    items = {w: weight_items(spec, presets, w) if spec is not None else None for w, spec in specs.items()}
    entries = parse_elemental(recipe.elemental, arch, extended=recipe.extended_xl)
    chance = has_random(items["alpha"]) or has_random(items["beta"]) or any(e.random_token for e in entries)
    dice = None
    if chance or calcmode.needs_seed:
        if recipe.seed is None or recipe.seed == -1:
            recipe = recipe.replace(seed=draw_seed())
            notices.append(f"random seed {recipe.seed} was drawn; the recorded recipe carries it "
                           f"(--seed {recipe.seed} replays this merge).")
        dice = Dice(recipe.seed, settings, arch)
    weights: dict[str, tuple[float, ...] | None] = {}
    for what in ("alpha", "beta"):
        values = items[what]
        if has_random(values):
            names = list_names(len(values), arch, what)
            values, elements = dice.resolve_list(values, names, what)
            if elements and what == "beta":
                notices.append("ER/EU/EX in weights beta give 0: elemental ratios apply to alpha only.")
            elif elements:
                extended = bool(arch.fine_blocks) and names == arch.fine_blocks
                entries = entries + random_entries(elements, arch, len(entries) + 1, extended=extended)
        weights[what] = parse_weights(values, arch, presets, what) if values is not None else None
    return recipe, dice, weights["alpha"], weights["beta"], entries


def _bake_vae(tasks: list[KeyTask], vae: Source) -> None:
    by_key = {t.key: t for t in tasks}
    hits = 0
    for vkey, info in vae.tensors.items():
        key = vkey if vkey.startswith(VAE_PREFIX) else VAE_PREFIX + vkey
        task = by_key.get(key)
        if task is None:
            continue
        if tuple(info.shape) != tuple(task.shape):
            raise ArchitectureError(f"VAE {vae.name}: tensor {vkey!r} has shape {list(info.shape)}, the model's "
                                    f"{key!r} has {list(task.shape)}; this VAE does not fit the model.")
        task.op, task.src, task.why = "copy", "VAE", f"baked from VAE {vae.name}"
        task.src_key = vkey
        hits += 1
    if hits == 0:
        raise ArchitectureError(f"VAE {vae.name} has no tensor that matches the model's VAE keys; is it a VAE file?")

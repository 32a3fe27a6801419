"""Turning a finished merge into a history record.

``api.merge`` calls ``start`` once the plan is made and ``finish`` after the merge. ``start``
hashes the input files on worker threads while the merge runs (file saves hash them anyway, for
the output's metadata, so those hashes are taken from there); hashes are cached (io.hashing), so a
model is read for hashing once. A state dict merged from memory has no file: only its name is
recorded.

Effective block weights (spec §7: "0 in blocks that Include/Exclude skipped"): a block counts as
skipped when include/exclude kept every mergeable key of it from model A. A block of which some
keys were still merged (an element substring picked them) keeps its weight. Without block weights
but with include/exclude, the effective list is alpha (beta) in every block, with those zeros.
Elemental entries change single keys, not blocks, and are not folded into these lists.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from ..io.hashing import BackgroundHash
from ..merge import adjust as adjustmod
from ..merge.plan import MergePlan
from ..merge.recipe import Recipe
from ..merge.weights import fine_slot, is_fine
from .record import ModelRef, Record

_FIELDS = {"A": "model_a", "B": "model_b", "C": "model_c", "VAE": "bake_vae"}


class PendingRecord:
    """A merge being recorded: started before the merge (hashing meanwhile), finished after it."""

    def __init__(self, plan: MergePlan, saving: bool):
        self.plan = plan
        self.time = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.labels = _labels(plan)
        # A file save hashes the inputs for its metadata; a merge in memory hashes them here.
        self.hashers = {label: BackgroundHash(src.path) for label, src in self.labels.items()
                        if src.path is not None and (not saving or label == "VAE")}

    def record(self, metadata: dict[str, str] | None, output: Path | None) -> Record:
        """The history record of the merge (without an ID: History.append gives one)."""
        plan = self.plan
        hashes = _hashes_from_metadata(metadata)
        refs: dict[str, ModelRef] = {}
        for label, src in self.labels.items():
            sha = hashes.get(label, "")
            if not sha and label in self.hashers:
                try:
                    sha = self.hashers[label].get()
                except Exception:  # e.g. the file went away after the merge: record it without a hash
                    sha = ""
            path = str(Path(src.path).resolve()) if src.path is not None else ""
            size = _size(path)
            refs[label] = ModelRef(name=src.name, path=path, sha256=sha, size=size)
        recipe = _recorded_recipe(plan.recipe, refs, output)
        eff_alpha, eff_beta = effective_weights(plan)
        r = plan.recipe
        include_mode = "Include" if r.include else "Exclude" if r.exclude else "Off"
        return Record(
            id=0, time=self.time, name=plan.name, mode=plan.mode.id, calcmode=plan.calcmode.id,
            alpha=r.alpha, beta=r.beta, gamma=r.gamma, architecture=plan.arch.id,
            weights_alpha=_given(r.mbw_alpha), weights_beta=_given(r.mbw_beta),
            effective_alpha=eff_alpha, effective_beta=eff_beta, models=refs, elemental=r.elemental or "",
            include_mode=include_mode, include_exclude=r.include or r.exclude or "", adjust=r.adjust or "",
            seed=r.seed, random=r.random, save_settings=save_settings(r, output),
            output=str(output.resolve()) if output is not None else "", recipe_json=recipe.to_json(indent=None))


def _labels(plan: MergePlan) -> dict:
    """The sources that were really used, by label (C only when it is not model A standing in)."""
    out = {}
    for label in ("A", "B", "C", "VAE"):
        src = plan.sources.get(label)
        if src is None or (label == "C" and src is plan.sources.get("A")):
            continue
        out[label] = src
    return out


def _recorded_recipe(recipe: Recipe, refs: dict[str, ModelRef], output: Path | None) -> Recipe:
    """The recipe as merged: absolute model paths (None for state dicts), their hashes, the output."""
    changes: dict = {"hashes": {k: r.sha256 for k, r in refs.items() if r.sha256},
                     "output": str(output.resolve()) if output is not None else None}
    for label, field in _FIELDS.items():
        if label in refs:
            changes[field] = refs[label].path or None
    return recipe.replace(**changes)


def _hashes_from_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    from ..merge.metadata import RECIPE_KEY

    try:
        return dict(json.loads((metadata or {}).get(RECIPE_KEY) or "{}").get("hashes") or {})
    except (ValueError, AttributeError):
        return {}


def effective_weights(plan: MergePlan) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Per-block alpha and beta as applied: 0 where include/exclude kept a whole block from A."""
    uses_beta = plan.mode.uses_beta or plan.calcmode.uses_beta
    if plan.key_filter is None:
        return plan.block_alpha, plan.block_beta if uses_beta else None
    fine = is_fine(plan.block_alpha, plan.arch) or is_fine(plan.block_beta, plan.arch)
    blocks = plan.arch.fine_blocks if fine else plan.arch.blocks
    alpha = plan.block_alpha or (plan.recipe.alpha,) * len(blocks)
    beta = plan.block_beta or ((plan.recipe.beta,) * len(blocks) if uses_beta else None)
    skipped = skipped_blocks(plan, fine)
    zero = lambda ws: tuple(0.0 if b in skipped else w for b, w in zip(blocks, ws))  # noqa: E731
    return zero(alpha), zero(beta) if beta is not None else None


def skipped_blocks(plan: MergePlan, fine: bool = False) -> set[str]:
    """Blocks (with ``fine``: extended-XL slots) whose every mergeable key include/exclude kept from model A."""
    kf = plan.key_filter
    if kf is None:
        return set()
    adjust_keys = adjustmod.adjust_ops(adjustmod.parse_adjust(plan.recipe.adjust), plan.arch)
    merged: set[str] = set()
    filtered: set[str] = set()
    for t in plan.tasks:
        if t.block is None or not ("model" in t.key and ("weight" in t.key or "bias" in t.key)):
            continue
        label = fine_slot(plan.arch, t.key) if fine else t.block
        if t.op == "merge" or "(ratio gives" in t.why:
            merged.add(label)
        elif not kf.merges(t.key, t.block, plan.arch.component_of(t.key), t.key in adjust_keys)[0]:
            filtered.add(label)
    return filtered - merged


def save_settings(recipe: Recipe, output: Path | None) -> str:
    """The save options in words, e.g. ``safetensors, fp16, prune`` (``in memory`` when not saved)."""
    if output is None:
        return "in memory"
    parts = [output.suffix.lstrip(".").lower() or "file"]
    if recipe.dtype != "keep":
        parts.append(recipe.dtype)
    for flag, word in ((recipe.prune, "prune"), (recipe.reset_clip_ids, "reset CLIP ids"),
                       (recipe.overwrite, "overwrite"), (not recipe.metadata, "no metadata")):
        if flag:
            parts.append(word)
    if recipe.bake_vae:
        parts.append("bake VAE")
    return ", ".join(parts)


def _given(spec) -> str:
    if spec is None:
        return ""
    if isinstance(spec, str):
        return spec
    return ",".join(str(v) for v in spec)


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return None

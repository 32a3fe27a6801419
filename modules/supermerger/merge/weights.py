"""Merge Block Weights: weight lists (or preset names) turned into one ratio per block.

The first value is BASE (text encoder, VAE and anything outside the U-Net). SD1/SD2 take
26 values, SDXL 20; a 26-value list given for SDXL keeps BASE, IN00-IN08, M00 and
OUT00-OUT08 (the rule of the original, so SD1 presets work on SDXL). SDXL also takes the
original's 110-value "extended XL" list, one value per sub-module (``fine_ratio``).

A list may hold the dice-roll tokens (R, U, X, D, ER, EU, EX); ``merge.dice`` replaces them by
numbers (with the recipe's seed) before ``parse_weights`` reads the list.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

from ..arch import Architecture, architectures
from ..errors import RecipeError, suggest

# Tokens that draw a block's ratio at random (spec §11.2); ER/EU/EX randomise every key of the block.
RANDOM_TOKENS = ("R", "U", "X", "D", "ER", "EU", "EX")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def is_number(text: str) -> bool:
    """The one test of every ratio a user types (weights, elemental, adjust, LoRA specs, axis values, dice
    limits): a finite decimal number ("0.5", "-1", ".25", "1e-3"). Not "nan", "inf", "1e999" (which is
    infinite), "1_0" or "0x1" — Python's float() takes some of those."""
    t = str(text).strip()
    return bool(_NUMBER.match(t)) and math.isfinite(float(t))


def number(text: str) -> float:
    """The value of a text that ``is_number`` accepts."""
    return float(str(text).strip())


def finite_float(text: str) -> float:
    """An argparse ``type`` for a ratio option: ``is_number`` or argparse's one-line error."""
    import argparse

    if not is_number(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite decimal number (such as 0.5)")
    return number(text)


def expand_preset(spec: str | Sequence[float], presets: Mapping[str, str], what: str = "alpha") -> str | Sequence[float]:
    """Replace a preset name by its weights; leave lists and comma text alone."""
    if not isinstance(spec, str):
        return spec
    text = spec.strip()
    if "," in text or is_number(text):
        return text
    if text in presets:
        return presets[text]
    hint = suggest(text, presets)
    raise RecipeError(f"Unknown MBW preset {text!r} for weights {what}.",
                      hint or "List the presets with `supermerger presets`.")


def split_values(spec: str | Sequence[float], what: str) -> list[str]:
    if isinstance(spec, str):
        items = [t.strip() for t in spec.replace("\n", ",").split(",")]
        if items and items[-1] == "":
            items.pop()
        return items
    return [str(v) for v in spec]


def weight_items(spec: str | Sequence[float], presets: Mapping[str, str], what: str = "alpha") -> list[str]:
    """The items of a weight list (preset names expanded), as text, before any conversion."""
    return split_values(expand_preset(spec, presets, what), what)


def has_random(items: Sequence[str] | None) -> bool:
    return items is not None and any(str(i).strip().upper() in RANDOM_TOKENS for i in items)


def list_names(n: int, arch: Architecture, what: str = "alpha") -> tuple[str, ...]:
    """The block each position of an ``n``-value list stands for (``arch``'s own, SD1's 26, or
    SDXL's 110 extended IDs)."""
    if n == 0:
        raise RecipeError(f"Weights {what} are empty: give {arch.n_blocks} comma-separated values or a preset name.")
    if n == arch.n_blocks:
        return arch.blocks
    if n == 26 and arch.from_26:
        return architectures()["sd1"].blocks
    if arch.fine_blocks and n == len(arch.fine_blocks):
        return arch.fine_blocks
    valid_lengths = sorted({a.n_blocks for a in architectures().values()} | {26}
                           | {len(a.fine_blocks) for a in architectures().values() if a.fine_blocks})
    lengths = f"{arch.n_blocks}" + (" or 26 (converted)" if arch.from_26 else "") + \
        (f" or {len(arch.fine_blocks)} (extended)" if arch.fine_blocks else "")
    raise RecipeError(
        f"Weights {what} have {n} values, but {arch.label} needs {lengths}: "
        f"{', '.join(arch.blocks[:3])}, ..., {arch.blocks[-1]}.",
        "Valid list lengths: " + ", ".join(map(str, valid_lengths)) +
        " (20 = SDXL, 26 = SD1/SD2, 110 = extended SDXL).")


def is_fine(weights: Sequence[float] | None, arch: Architecture) -> bool:
    """Whether parsed weights are per extended-XL ID (110) rather than per block."""
    return weights is not None and bool(arch.fine_blocks) and len(weights) == len(arch.fine_blocks) \
        and len(weights) != arch.n_blocks


def fine_slot(arch: Architecture, key: str) -> str:
    """The slot of a 110-value extended-XL list that sets ``key``'s ratio. CLIP-L, the VAE and keys
    outside the table take the base value (slot 0, CLIPL); the VAE slot is listed but not honoured."""
    fine = arch.fine_of(key)
    if fine is None or fine in arch.fine_base_slots or fine not in arch.fine_blocks:
        return arch.fine_blocks[0]
    return fine


def fine_ratio(weights: Sequence[float], arch: Architecture, key: str) -> tuple[float, str]:
    """The ratio of ``key`` from 110 extended-XL weights, and the slot it came from."""
    slot = fine_slot(arch, key)
    return weights[arch.fine_blocks.index(slot)], slot


def parse_weights(spec: str | Sequence[float], arch: Architecture, presets: Mapping[str, str],
                  what: str = "alpha") -> tuple[float, ...]:
    """Weights for every block of ``arch`` (BASE first), from a list, comma text or preset name."""
    items = weight_items(spec, presets, what)
    names = list_names(len(items), arch, what)
    values: dict[str, float] = {}
    for pos, (name, item) in enumerate(zip(names, items), 1):
        if item.upper() in RANDOM_TOKENS:
            raise RecipeError(
                f"Weights {what}, value {pos} ({name}) is the random token {item!r}; it has to be drawn "
                "first (merge.dice, which the merge plan does with the recipe's seed).")
        if not is_number(item):
            raise RecipeError(f"Weights {what}, value {pos} ({name}) is {item!r}, not a finite number.",
                              "Use a decimal number such as 0.5 (a dot, not a comma, as decimal separator).")
        values[name] = number(item)
    return tuple(values[b] for b in (arch.fine_blocks if names == arch.fine_blocks else arch.blocks))


def format_weights(weights: Sequence[float]) -> str:
    return ",".join(_fmt(w) for w in weights)


def _fmt(w: float) -> str:
    text = f"{w:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"

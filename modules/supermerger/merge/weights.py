"""Merge Block Weights: weight lists (or preset names) turned into one ratio per block.

The first value is BASE (text encoder, VAE and anything outside the U-Net). SD1/SD2 take
26 values, SDXL 20; a 26-value list given for SDXL keeps BASE, IN00-IN08, M00 and
OUT00-OUT08 (the rule of the original, so SD1 presets work on SDXL).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from ..arch import Architecture, architectures
from ..errors import RecipeError, suggest

RANDOM_TOKENS = ("R", "U", "X")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def is_number(text: str) -> bool:
    return bool(_NUMBER.match(text.strip()))


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


def parse_weights(spec: str | Sequence[float], arch: Architecture, presets: Mapping[str, str],
                  what: str = "alpha") -> tuple[float, ...]:
    """Weights for every block of ``arch`` (BASE first), from a list, comma text or preset name."""
    items = split_values(expand_preset(spec, presets, what), what)
    valid_lengths = sorted({a.n_blocks for a in architectures().values()} | {26})
    n = len(items)
    if n == 0:
        raise RecipeError(f"Weights {what} are empty: give {arch.n_blocks} comma-separated values or a preset name.")
    names_26 = architectures()["sd1"].blocks
    if n == arch.n_blocks:
        names = arch.blocks
    elif n == 26 and arch.from_26:
        names = names_26
    else:
        lengths = f"{arch.n_blocks}" + (" or 26 (converted)" if arch.from_26 else "")
        raise RecipeError(
            f"Weights {what} have {n} values, but {arch.label} needs {lengths}: "
            f"{', '.join(arch.blocks[:3])}, ..., {arch.blocks[-1]}.",
            "Valid list lengths: " + ", ".join(map(str, valid_lengths)) + " (20 = SDXL, 26 = SD1/SD2).")
    values: dict[str, float] = {}
    for pos, (name, item) in enumerate(zip(names, items), 1):
        if item.upper() in RANDOM_TOKENS:
            raise RecipeError(
                f"Weights {what}, value {pos} ({name}) is the random token {item!r}; random ratios need "
                "the dice-roll options (random mode and seed).")
        if not is_number(item):
            raise RecipeError(f"Weights {what}, value {pos} ({name}) is {item!r}, not a number.",
                              "Use a decimal number such as 0.5 (a dot, not a comma, as decimal separator).")
        values[name] = float(item)
    return tuple(values[b] for b in arch.blocks)


def format_weights(weights: Sequence[float]) -> str:
    return ",".join(_fmt(w) for w in weights)


def _fmt(w: float) -> str:
    text = f"{w:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"

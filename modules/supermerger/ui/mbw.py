"""Block-weight helpers of the Merge tab, as pure functions: one row of 26 sliders named after the
SD1/SD2 blocks (the SDXL blocks are a subset of those names, so XL shows 20 of them), text <-> sliders,
and the Set / Add / Multiply helper on block groups. Block lists come from the architecture tables.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .. import arch as archmod
from ..errors import RecipeError
from ..merge.weights import RANDOM_TOKENS, format_weights, is_number, list_names, weight_items

SLIDER_BLOCKS: tuple[str, ...] = archmod.get("sd1").blocks  # BASE, IN00-IN11, M00, OUT00-OUT11
GROUPS = ("BASE", "IN", "MID", "OUT")
OPERATIONS = ("Set", "Add", "Multiply")
QUICK_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)  # the helper's one-click values


def visible_blocks(arch_id: str) -> tuple[str, ...]:
    """The sliders an architecture uses (26 for SD1/SD2, 20 for SDXL)."""
    blocks = archmod.get(arch_id).blocks
    unknown = [b for b in blocks if b not in SLIDER_BLOCKS]
    if unknown:
        raise RecipeError(f"{archmod.get(arch_id).label} has blocks the sliders do not show: {', '.join(unknown)}.")
    return blocks


def sliders_to_text(values: Sequence[float], arch_id: str) -> str:
    """The weight list of the visible sliders, in the architecture's block order."""
    by_name = dict(zip(SLIDER_BLOCKS, values))
    return format_weights([float(by_name[b]) for b in visible_blocks(arch_id)])


def text_to_sliders(text: str, arch_id: str, presets: Mapping[str, str], current: Sequence[float]) -> list[float]:
    """Slider values from a weight list or preset name; random tokens read as 0 (as the original);
    sliders the list does not cover keep ``current``."""
    items = weight_items(text, presets, "alpha")
    arch = archmod.get(arch_id)
    names = list_names(len(items), arch, "alpha")
    if arch.fine_blocks and names == arch.fine_blocks:
        raise RecipeError(f"This is a {len(items)}-value extended {arch.label} list (one value per sub-module): "
                          "it has no sliders; it merges as written in the text box.")
    out = dict(zip(SLIDER_BLOCKS, (float(v) for v in current)))
    for pos, (name, item) in enumerate(zip(names, items), 1):
        if item.upper() in RANDOM_TOKENS:
            out[name] = 0.0
        elif is_number(item):
            out[name] = round(float(item), 6)
        else:
            raise RecipeError(f"Weights, value {pos} ({name}) is {item!r}, not a number.")
    return [out[b] for b in SLIDER_BLOCKS]


def group_of(block: str) -> str:
    if block == "BASE":
        return "BASE"
    if block.startswith("M"):
        return "MID"
    return "IN" if block.startswith("IN") else "OUT"


def apply_helper(values: Sequence[float], groups: Sequence[str], operation: str, value: float,
                 arch_id: str = "sd1") -> list[float]:
    """Set, add or multiply ``value`` on the visible sliders of the chosen block groups."""
    if operation not in OPERATIONS:
        raise RecipeError(f"Helper operation {operation!r} is not one of {', '.join(OPERATIONS)}.")
    visible = set(visible_blocks(arch_id))
    out = []
    for block, current in zip(SLIDER_BLOCKS, values):
        current = float(current)
        if block in visible and group_of(block) in groups:
            current = value if operation == "Set" else current + value if operation == "Add" else current * value
        out.append(round(current, 6))
    return out


def preset_choices(presets: Mapping[str, str], arch_id: str) -> list[str]:
    """Presets whose length fits the architecture (26 values also fit SDXL, which converts them)."""
    arch = archmod.get(arch_id)
    fits = {arch.n_blocks} | ({26} if arch.from_26 else set())
    return [name for name, text in presets.items() if len(text.split(",")) in fits]

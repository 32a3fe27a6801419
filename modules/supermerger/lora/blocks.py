"""LoRA specs (``name:ratio:blocks``) and LoRA Block Weights (spec §10.1).

An item is ``name``, ``name:ratio`` or ``name:ratio:blocks``; items are separated by commas, and
the commas inside an inline block list stay with their item. ``blocks`` is a preset name (its
values times the ratio) or a list of 12, 17, 20 or 26 numbers (used as they are). Each length
names its blocks as below; blocks a list does not name get 0, and blocks a model does not have
(IN09-IN11 and OUT09-OUT11 on SDXL) are ignored, so a block of the model always reads the same
ID as in MBW (``arch`` tables).
"""

from __future__ import annotations

import re

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from .. import arch as archmod
from ..arch import Architecture
from ..arch.presets import parse_presets
from ..errors import ArchitectureError, RecipeError, suggest
from ..merge.weights import is_number, number


def _ids(*spans: str) -> tuple[str, ...]:
    """``"IN04-IN05"`` style spans to IDs."""
    out: list[str] = []
    for span in spans:
        first, _, last = span.partition("-")
        if not last:
            out.append(first)
            continue
        head = first.rstrip("0123456789")
        out += [f"{head}{i:02d}" for i in range(int(first[len(head):]), int(last[len(head):]) + 1)]
    return tuple(out)


def lbw_formats() -> dict[int, tuple[str, ...]]:
    """List length -> the block each position stands for."""
    return {
        12: _ids("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00-OUT05"),  # SDXL LBW
        17: _ids("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03-OUT11"),  # classic LBW
        20: archmod.get("sdxl").blocks,
        26: archmod.get("sd1").blocks,
    }


# -- presets ---------------------------------------------------------------------------------------

def master_lbw_presets() -> dict[str, str]:
    text = resources.files("supermerger.lora.data").joinpath("lbwpresets.txt").read_text("utf-8")
    return parse_presets(text, "lbwpresets.txt")


def user_lbw_presets_path() -> Path:
    from ..paths import data_dir

    return data_dir() / "lbwpresets.txt"


def load_lbw_presets(user_file: str | os.PathLike | None = None) -> dict[str, str]:
    """The shipped LBW presets, overridden and extended by the user's file; only lists of a known length."""
    presets = master_lbw_presets()
    path = Path(user_file) if user_file else user_lbw_presets_path()
    if path.is_file():
        presets.update(parse_presets(path.read_text(encoding="utf-8"), str(path)))
    lengths = lbw_formats()
    return {k: v for k, v in presets.items() if len(_split(v)) in lengths}


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# -- specs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to use: a file (or name), its ratio, and optional block weights."""

    name: str
    ratio: float = 1.0
    blocks: str | None = None  # preset name or comma list

    def text(self) -> str:
        return self.name + f":{_fmt(self.ratio)}" + (f":{self.blocks}" if self.blocks else "")


def _fmt(x: float) -> str:
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def parse_specs(text: str | Sequence, default_ratio: float = 1.0) -> list[LoraSpec]:
    """``"a:0.8:OUTD,b:0.5,c:1:1,0,0,...,0"`` (or a list of such strings / LoraSpec) -> LoraSpecs."""
    if isinstance(text, LoraSpec):
        return [text]
    if not isinstance(text, str):
        out: list[LoraSpec] = []
        for item in text:
            out += [item] if isinstance(item, LoraSpec) else parse_specs(item, default_ratio)
        return out
    items: list[str] = []
    for token in re.split(r"[,\r\n]", text):  # items are separated by commas or lines
        token = token.strip()
        if not token:
            continue
        if items and ":" not in token and is_number(token) and len(_fields(items[-1])) >= 3:
            items[-1] += "," + token  # a value of the previous item's inline block list
        else:
            items.append(token)
    return [_parse_item(i, default_ratio) for i in items]


def _fields(item: str) -> list[str]:
    """``item`` split at its colons; a Windows drive (``C:\\``) stays with the name."""
    parts = item.split(":")
    if len(item) > 2 and item[1] == ":" and item[2] in "\\/":
        parts = [parts[0] + ":" + parts[1]] + parts[2:]
    return parts


def _spec(item: str, name: str, ratio: float, blocks: str | None = None) -> LoraSpec:
    if not name.strip():
        raise RecipeError(f"LoRA item {item!r} has no name before its ratio.", "For example my_lora:0.8.")
    return LoraSpec(name, ratio, blocks)


def _parse_item(item: str, default_ratio: float) -> LoraSpec:
    parts = _fields(item)
    if len(parts) >= 3 and is_number(parts[-2]):
        return _spec(item, ":".join(parts[:-2]), number(parts[-2]), parts[-1].strip() or None)
    if len(parts) >= 2 and is_number(parts[-1]):
        return _spec(item, ":".join(parts[:-1]), number(parts[-1]))
    if len(parts) == 1:
        return _spec(item, item, default_ratio)
    raise RecipeError(f"LoRA item {item!r}: expected name, name:ratio or name:ratio:blocks with a number as ratio.",
                      "For example my_lora:0.8 or my_lora:0.8:OUTD or my_lora:1:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0.")


def block_ratios(spec: LoraSpec, arch: Architecture, presets: Mapping[str, str] | None = None) -> dict[str, float]:
    """The ratio of every block of ``arch`` for one LoRA item."""
    if spec.blocks is None or not spec.blocks.strip():
        return {b: spec.ratio for b in arch.blocks}
    text = spec.blocks.strip()
    multiplier = 1.0
    if "," not in text and not is_number(text):
        presets = load_lbw_presets() if presets is None else presets
        if text not in presets:
            raise RecipeError(f"LoRA {spec.name!r}: unknown LBW preset {text!r}.",
                              suggest(text, presets) or "List the presets with `supermerger lora presets`; "
                              "or give 12, 17, 20 or 26 comma-separated values.")
        text, multiplier = presets[text], spec.ratio
    values = _split(text)
    formats = lbw_formats()
    if len(values) == 61:
        raise ArchitectureError(f"LoRA {spec.name!r}: 61 block weights are the Flux layout; Flux is not supported yet.")
    if len(values) not in formats:
        raise RecipeError(f"LoRA {spec.name!r}: {len(values)} block weights; give 12 (SDXL LBW), 17 (LBW), "
                          "20 (SDXL) or 26 (SD1/SD2) values, or a preset name.")
    ratios = {b: 0.0 for b in arch.blocks}
    for pos, (block, value) in enumerate(zip(formats[len(values)], values), 1):
        if not is_number(value):
            raise RecipeError(f"LoRA {spec.name!r}: block weight {pos} ({block}) is {value!r}, not a finite number.")
        if block in ratios:
            ratios[block] = number(value) * multiplier
    return ratios


def ratios_text(ratios: Mapping[str, float], arch: Architecture) -> str:
    return ",".join(_fmt(ratios[b]) for b in arch.blocks)

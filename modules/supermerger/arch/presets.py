"""MBW weight presets: the shipped master table plus the user's own file, same format.

Format: one preset per line, ``NAME<TAB>w1,w2,...`` or ``NAME:w1,w2,...``; an optional header
line ``preset_name<TAB>preset_weights``; blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from ..errors import RecipeError

HEADER = "preset_name\tpreset_weights"


def parse_presets(text: str, source: str = "presets") -> dict[str, str]:
    presets: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line.replace(" ", "\t") == HEADER:
            continue
        if "\t" in line:
            name, _, weights = line.partition("\t")
        elif ":" in line:
            name, _, weights = line.partition(":")
        else:
            raise RecipeError(f"{source}, line {lineno}: expected NAME<TAB>weights or NAME:weights, got {raw!r}.")
        name, weights = name.strip(), weights.strip()
        if not name or not weights:
            raise RecipeError(f"{source}, line {lineno}: empty preset name or weights in {raw!r}.")
        presets[name] = weights
    return presets


def master_presets() -> dict[str, str]:
    text = resources.files("supermerger.arch.data").joinpath("mbwpresets_master.txt").read_text("utf-8")
    return parse_presets(text, "mbwpresets_master.txt")


def user_presets_path() -> Path:
    from ..paths import data_dir

    return data_dir() / "mbwpresets.txt"


def load_presets(user_file: str | os.PathLike | None = None) -> dict[str, str]:
    """Master presets, overridden and extended by the user's file (if it exists)."""
    presets = master_presets()
    path = Path(user_file) if user_file else user_presets_path()
    if path.is_file():
        presets.update(parse_presets(path.read_text(encoding="utf-8"), str(path)))
    return presets


def save_user_preset(name: str, weights: str, user_file: str | os.PathLike | None = None) -> Path:
    """Add or replace one preset in the user's file (atomic rewrite)."""
    from ..io.atomic import atomic_write_text

    if not name or any(c in name for c in "\t:,\n") or name != name.strip():
        raise RecipeError(f"Preset name {name!r} must be non-empty and contain no tab, colon, comma or newline.")
    path = Path(user_file) if user_file else user_presets_path()
    existing = parse_presets(path.read_text("utf-8"), str(path)) if path.is_file() else {}
    existing[name] = weights
    body = HEADER + "\n" + "".join(f"{k}\t{v}\n" for k, v in existing.items())
    atomic_write_text(path, body)
    return path

"""Finding LoRA files by name and opening the LoRAs of a spec list."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import RecipeError, suggest
from .blocks import LoraSpec, parse_specs
from .formats import LORA_EXTS, LoraFile, LoraFileError, load_lora


def lora_dirs(dirs: Iterable[str | os.PathLike] | str | os.PathLike | None = None) -> list[Path]:
    """The folders LoRA names are looked up in: the given ones, else ``$SUPERMERGER_LORA_DIR``
    (``os.pathsep``-separated), else none (names must then be paths)."""
    if dirs is None:
        env = os.environ.get("SUPERMERGER_LORA_DIR", "")
        dirs = [d for d in env.split(os.pathsep) if d]
    elif isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    return [Path(d) for d in dirs]


def find_lora(name: str, dirs: Iterable[str | os.PathLike] | None = None) -> Path:
    """The file of a LoRA given as a path or as a name (with or without extension) in ``dirs``."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    folders = lora_dirs(dirs)
    names = [name] if path.suffix.lower() in LORA_EXTS else [name + ext for ext in LORA_EXTS]
    for n in names:  # a path without its extension
        if Path(n).expanduser().is_file():
            return Path(n).expanduser()
    for folder in folders:
        for n in names:
            if (folder / n).is_file():
                return folder / n
        for n in names:  # sub-folders, as the WebUI's LoRA list shows them
            hit = next(iter(sorted(folder.rglob(Path(n).name))), None) if folder.is_dir() else None
            if hit is not None and hit.is_file():
                return hit
    known = [p.stem for f in folders if f.is_dir() for p in f.rglob("*") if p.suffix.lower() in LORA_EXTS]
    where = (" in " + ", ".join(str(f) for f in folders)) if folders else ""
    raise LoraFileError(f"LoRA {name!r} not found (not a file, and no such LoRA{where}).",
                        suggest(Path(name).stem, known) or
                        "Give the path of the LoRA file, or its name with --lora-dir FOLDER.")


def open_loras(specs, dirs: Iterable[str | os.PathLike] | None = None) -> list[tuple[LoraSpec, LoraFile]]:
    """Each spec with its opened LoRA. Specs: a spec string, LoraSpecs, or ``(file_or_state_dict,
    ratio[, blocks])`` tuples."""
    items: list[tuple[LoraSpec, object]] = []
    if isinstance(specs, (str, LoraSpec)):
        specs = [specs]
    for i, s in enumerate(specs):
        if isinstance(s, tuple):
            value, ratio, *rest = s
            blocks = rest[0] if rest else None
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
                raise RecipeError(f"LoRA {i + 1}: the ratio must be a finite number, got {ratio!r}.")
            if isinstance(value, Mapping):
                items.append((LoraSpec(f"lora{i + 1}", float(ratio), blocks), value))
            else:
                items.append((LoraSpec(str(value), float(ratio), blocks), None))
        else:
            items += [(spec, None) for spec in parse_specs(s)]
    out: list[tuple[LoraSpec, LoraFile]] = []
    try:
        for spec, value in items:
            if value is not None:
                out.append((spec, load_lora(value, spec.name)))
            else:
                path = find_lora(spec.name, dirs)
                out.append((spec, load_lora(path)))
    except BaseException:
        for _, f in out:
            f.close()
        raise
    if not out:
        raise LoraFileError("No LoRA given.", "Give one or more LoRAs as name:ratio[:blocks].")
    return out

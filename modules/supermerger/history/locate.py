"""Restoring a recorded merge: its recipe, with every model found again on this machine.

Models are found by hash first: the recorded path if its sha256 still matches; any file the hash
cache knows with that hash; then files in the model folders (those given, searched with their
subfolders, and the folders the record's paths were in), trying same-named and same-sized files
before hashing others. A record of the original extension knows only a 10-hex short hash and no
size, so every model file in those folders may have to be hashed once (the cache keeps it). When no
file has the hash, a file of the recorded name is used, and the merge's notices say it differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import ModelFileError
from ..io import hashing
from ..merge.modes import get_mode
from ..merge.recipe import Recipe
from .record import ModelRef, Record

MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth")
_FIELDS = {"A": "model_a", "B": "model_b", "C": "model_c", "VAE": "bake_vae"}


@dataclass
class Restored:
    recipe: Recipe
    record: Record
    found: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (path, how it was found)
    missing: list[str] = field(default_factory=list)  # with allow_missing: the models not found, described
    message: str = ""  # with allow_missing: why they are missing and where we looked ("" when none is)


def restore_record(record: Record, models_dirs: Iterable[str | os.PathLike] = (),
                   given: Mapping[str, str] | None = None, allow_missing: bool = False) -> Restored:
    """``allow_missing``: a model found nowhere leaves its field empty (None) and is named in
    ``missing`` / ``message`` instead of raising (the UI restores everything else)."""
    recipe = record.recipe()
    given = {k: v for k, v in (given or {}).items() if v}
    folders = [Path(d) for d in models_dirs]
    for d in folders:
        if not d.is_dir():
            raise ModelFileError(f"Models folder {str(d)!r} does not exist.")
    beside = list(dict.fromkeys(Path(r.path).parent for r in record.models.values() if r.path))
    finder = _Finder(folders, beside)
    needs_c = get_mode(record.mode).needs_c if record.mode else True
    changes: dict[str, str | None] = {}
    found: dict[str, tuple[str, str]] = {}
    missing: list[str] = []
    for label, fld in _FIELDS.items():
        if label in given:
            changes[fld] = str(given[label])
            found[label] = (str(given[label]), "given")
            continue
        ref = record.models.get(label)
        if ref is None or (label == "C" and not needs_c):
            continue
        hit = finder.find(ref)
        if hit is None:
            missing.append(f"model {label} ({ref.describe()})" if label != "VAE" else f"the VAE ({ref.describe()})")
            changes[fld] = None
            continue
        changes[fld] = str(hit[0])
        found[label] = (str(hit[0]), hit[1])
    message = ""
    if missing:
        looked = [str(p) for p in folders + beside] or ["no folder: none was given and the record has no paths"]
        message = (f"{_join(missing)} not found (looked by hash, then by name, in: {', '.join(looked)}).")
        if not allow_missing:
            raise ModelFileError(f"History record {record.id} cannot be restored: {message}",
                                 "Pass the folder that holds it with --models-dir DIR, or give the file with "
                                 "--model-a/-b/-c.")
    return Restored(recipe.replace(output=None, **changes), record, found, missing, message)


class _Finder:
    def __init__(self, folders: list[Path], beside: list[Path]):
        self.folders = folders
        self.beside = beside
        self._files: list[Path] | None = None

    def files(self) -> list[Path]:
        if self._files is None:
            out: dict[Path, None] = {}
            for d in self.folders:
                for root, _dirs, names in os.walk(d):
                    for n in sorted(names):
                        if n.lower().endswith(MODEL_EXTS):
                            out[Path(root) / n] = None
            for d in self.beside:
                try:
                    for p in sorted(d.iterdir()):
                        if p.name.lower().endswith(MODEL_EXTS) and p.is_file():
                            out[p] = None
                except OSError:
                    continue
            self._files = list(out)
        return self._files

    def find(self, ref: ModelRef) -> tuple[Path, str] | None:
        want = (ref.sha256 or ref.short).lower()
        recorded = Path(ref.path) if ref.path and Path(ref.path).is_file() else None
        if recorded is not None and (not want or _hash_ok(recorded, want)):
            return recorded, "recorded path" + (", sha256 checked" if want else "")
        if want:
            for p in self._by_hash_order(ref, want):
                if _hash_ok(p, want):
                    return p, "found by hash"
        if recorded is not None:
            return recorded, "recorded path, but its sha256 differs from the record's"
        for p in self.files():
            if ref.name and p.stem == ref.name:
                return p, "found by name" + (" (its sha256 differs from the record's)" if want else "")
        return None

    def _by_hash_order(self, ref: ModelRef, want: str) -> list[Path]:
        """Candidates, cheapest first: known to the hash cache, same name, same size, then (size
        unknown) every other model file."""
        cached = []
        try:
            for path, entry in hashing._load_cache().items():
                if str(entry.get("sha256", "")).startswith(want) and os.path.isfile(path):
                    cached.append(Path(path))
        except Exception:  # an unreadable cache only makes the search slower
            pass
        files = self.files()
        fits = [p for p in files if ref.size is None or _size(p) == ref.size]  # another size cannot match
        named = [p for p in fits if ref.name and p.stem == ref.name]
        sized = fits if ref.size is not None else []
        rest = [p for p in files if ref.size is None]
        return list(dict.fromkeys(cached + named + sized + rest))


def _hash_ok(path: Path, want: str) -> bool:
    try:
        return hashing.sha256_file(path).startswith(want)
    except OSError:
        return False


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

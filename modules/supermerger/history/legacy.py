"""Reading the history CSV of the original extension (spec §7), as far as it goes.

Its rows have 23 fields under a 16-name header that no longer lines up: ID, time, name, weights
alpha, weights beta, model A/B/C short hashes, alpha, beta, mode (``Weight sum:A*(1-alpha)+B*alpha``),
use MBW, custom name, save settings and ID-stamp settings (Python list reprs), elemental, calcmode,
seed, Adjust, gamma, include/exclude mode, blocks and elements. Older versions wrote fewer fields;
missing ones take the defaults. A recipe is rebuilt from the fields; the models are known by their
10-hex short hash only, so restoring one searches model folders by hash.
"""

from __future__ import annotations

import ast
import csv
import io
import locale
import shutil
from pathlib import Path

from ..errors import SuperMergerError
from ..merge.calcmodes import get_calcmode
from ..merge.modes import get_mode
from ..merge.recipe import Recipe
from .record import ModelRef, Record, parse_floats

ORIGINAL_HEADER = ("ID", "time", "name", "weights alpha", "weights beta", "model A", "model B", "model C", "alpha",
                   "beta", "mode", "use MBW", "plus lora", "custum name", "save setting", "use ID")
ORIGINAL_NOTE = "from the original SuperMerger's history"


def is_original_header(line: bytes) -> bool:
    """Whether the first line of a history CSV is the original's header (or already a data row)."""
    text = line.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace").strip()
    fields = next(csv.reader([text]), [])
    if not fields or "recipe" in fields:
        return False
    return tuple(fields[:4]) == ORIGINAL_HEADER[:4] or fields[0].strip().isdigit()


def read_original(path: str | Path) -> tuple[list[Record], list[str]]:
    """The records of an original history file (their IDs kept), and what could not be read."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        from . import HistoryError

        raise HistoryError(f"Cannot read {str(path)!r}: {e.strerror or e}.") from None
    rows = list(csv.reader(io.StringIO(_decode(raw))))
    if rows and rows[0] and not rows[0][0].strip().isdigit():
        rows = rows[1:]
    records, notes = [], []
    for n, row in enumerate(rows, 2):
        if not any(x.strip() for x in row):
            continue
        try:
            records.append(original_row_to_record(row))
        except (ValueError, IndexError) as e:
            notes.append(f"{path.name}: row {n} cannot be read ({e}); it is skipped.")
    return records, notes


def original_row_to_record(f: list[str]) -> Record:
    def at(i: int) -> str:
        return f[i].strip() if i < len(f) else ""

    if len(f) < 11:
        raise ValueError(f"{len(f)} fields, fewer than the 11 every version wrote")
    rid = int(at(0))
    notes = [ORIGINAL_NOTE]
    try:
        mode = get_mode(at(10).split(":")[0]).id
    except SuperMergerError:
        raise ValueError(f"unknown mode {at(10)!r}") from None
    calcmode = at(16) or "normal"
    try:
        calcmode = get_calcmode(calcmode).id
    except SuperMergerError:
        notes.append(f"calcmode {calcmode!r} is unknown to this version")
    mbw = at(11) == "True"
    weights_alpha, weights_beta = (at(3), at(4)) if mbw else ("", "")
    save = _literal_list(at(13))
    if at(12):
        notes.append(f"custom name {at(12)!r}")
    if _literal_list(at(14)):
        notes.append("ID stamped on: " + ", ".join(_literal_list(at(14))))
    include_mode = at(20) if at(20) in ("Include", "Exclude") else "Off"
    listed = " ".join(_literal_list(at(21)) + _literal_list(at(22))) if include_mode != "Off" else ""
    seed = int(at(17)) if at(17).lstrip("-").isdigit() and int(at(17)) >= 0 else None
    adjust = at(18) if any(_float(x, 0.0) for x in at(18).split(",")) else ""
    models = {label: ModelRef(short=h) for label, h in zip("ABC", (at(5), at(6), at(7))) if h}
    rec = Record(
        id=rid, time=at(1), name=at(2), mode=mode, calcmode=calcmode, alpha=_float(at(8), 0.5),
        beta=_float(at(9), 0.25), gamma=_float(at(19), 0.3), weights_alpha=weights_alpha, weights_beta=weights_beta,
        effective_alpha=_floats(weights_alpha), effective_beta=_floats(weights_beta), models=models,
        elemental=",".join(_literal_list(at(15))), include_mode=include_mode, include_exclude=listed,
        adjust=adjust, seed=seed, save_settings=", ".join(save))
    recipe = Recipe(
        mode=mode, calcmode=calcmode, alpha=rec.alpha, beta=rec.beta, gamma=rec.gamma,
        mbw_alpha=weights_alpha or None, mbw_beta=weights_beta or None, elemental=rec.elemental,
        include=listed if include_mode == "Include" and listed else None,
        exclude=listed if include_mode == "Exclude" and listed else None,
        adjust=adjust, dtype="fp16" if "fp16" in save else "keep", prune="prune" in save,
        reset_clip_ids="Reset CLIP ids" in save, overwrite="overwrite" in save, seed=seed)
    try:
        recipe.check_types(f"original history row {rid}")
        rec.recipe_json = recipe.to_json(indent=None)
    except SuperMergerError as e:
        notes.append(f"not replayable: {e.message}")
    notes.append("models known by short hash only")
    rec.note = "; ".join(notes)
    return rec


def convert_original_file(history) -> list[str]:
    """Rewrite ``history.path`` (an original file) in this version's columns, keeping a copy of it.
    The caller holds the history's lock."""
    records, notes = read_original(history.path)
    backup = _free_name(history.path.with_name(history.path.stem + ".original.csv"))
    shutil.copy2(history.path, backup)
    history.rewrite(records)
    return [f"{history.path.name} was written by the original SuperMerger: its {len(records)} records were "
            f"converted to this version's columns (IDs kept); the original file is kept as {backup.name}."] + notes


def _free_name(path: Path) -> Path:
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def _decode(raw: bytes) -> str:
    """The original wrote with the platform's encoding (UTF-8 on Linux, often cp932 on Japanese Windows)."""
    for enc in ("utf-8-sig", locale.getpreferredencoding(False), "cp932"):
        try:
            return raw.decode(enc)
        except (UnicodeDecodeError, LookupError):
            continue
    return raw.decode("utf-8", errors="replace")


def _literal_list(text: str) -> list[str]:
    """``['a', 'b']`` (a Python list repr), or plain comma text, as a list of non-empty strings."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text.strip("[]").replace("'", "").split(",")
        if isinstance(value, (list, tuple)):
            return [str(v).strip() for v in value if str(v).strip()]
    return [t.strip() for t in text.split(",") if t.strip()]


def _float(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def _floats(text: str) -> tuple[float, ...] | None:
    try:
        return parse_floats(text)
    except ValueError:
        return None

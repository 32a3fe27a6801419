"""XYZ presets (spec §5.7): named axis settings, saved in the data folder's ``xyzpresets.json``.

Format (the original's): ``{"<name>": {"xtype": "<type>", "xvalues": "...", "ytype": ..., "yvalues": ...,
"ztype": ..., "zvalues": ...}}``. Types are stored as the short names (the original's UI labels are
read too). Writes are atomic and locked; saving refuses an existing name unless asked to overwrite.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..history.lock import LockTimeout, locked
from ..io.atomic import atomic_write_text
from .axes import XYZError, axis_type
from .plan import Axis, XYZPlot

FILE_NAME = "xyzpresets.json"


def presets_path() -> Path:
    from ..paths import data_dir

    return data_dir() / FILE_NAME


def _read(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XYZError(f"XYZ presets file {str(path)!r} cannot be read: {e}.") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise XYZError(f"XYZ presets file {str(path)!r} is not an object of named presets.")
    return data


def names(path: str | os.PathLike | None = None) -> list[str]:
    return list(_read(Path(path) if path else presets_path()))


def load(name: str, path: str | os.PathLike | None = None) -> XYZPlot:
    """The axes of preset ``name`` as a plot (settings other than the axes at their defaults)."""
    presets = _read(Path(path) if path else presets_path())
    if name not in presets:
        from ..errors import suggest

        raise XYZError(f"No XYZ preset named {name!r}.", suggest(name, presets) or
                       ("Presets: " + ", ".join(presets) if presets else "No preset is saved yet."))
    d = presets[name]
    axes = {}
    for pos in "xyz":
        t = str(d.get(f"{pos}type", "none") or "none")
        axes[pos] = Axis(axis_type(t, f"preset {name!r}, {pos.upper()}").id, str(d.get(f"{pos}values", "") or ""))
    return XYZPlot(**axes)


def save(name: str, plot: XYZPlot, overwrite: bool = False, path: str | os.PathLike | None = None) -> Path:
    name = (name or "").strip()
    if not name:
        raise XYZError("Give the XYZ preset a name.")
    target = Path(path) if path else presets_path()
    try:
        with locked(target.with_name(target.name + ".lock")):
            presets = _read(target)
            if name in presets and not overwrite:
                raise XYZError(f"An XYZ preset named {name!r} exists already.", "Tick 'overwrite' to replace it.")
            entry = {}
            for pos, ax in plot.axes():
                entry[f"{pos}type"] = axis_type(ax.type, pos.upper()).id
                entry[f"{pos}values"] = ax.values
            presets[name] = entry
            atomic_write_text(target, json.dumps(presets, indent=2, ensure_ascii=False))
    except LockTimeout as e:
        raise XYZError(f"The XYZ presets file is busy: {e}.") from None
    return target


def delete(name: str, path: str | os.PathLike | None = None) -> None:
    target = Path(path) if path else presets_path()
    try:
        with locked(target.with_name(target.name + ".lock")):
            presets = _read(target)
            if name not in presets:
                raise XYZError(f"No XYZ preset named {name!r}.")
            del presets[name]
            atomic_write_text(target, json.dumps(presets, indent=2, ensure_ascii=False))
    except LockTimeout as e:
        raise XYZError(f"The XYZ presets file is busy: {e}.") from None


# -- sample.txt ---------------------------------------------------------------------------------------------
def parse_samples(text: str) -> dict[str, tuple[str, str]]:
    """The samples of a ``sample.txt``: {name: (axis type, values)}. A sample starts with a line
    ``### NAME: TYPE``; ``#`` lines describe it; the values follow a ``---`` line, exactly as typed
    (blank lines count, trailing ones excepted)."""
    samples: dict[str, tuple[str, str]] = {}
    current: tuple[str, str] | None = None
    lines: list[str] | None = None

    def close():
        if current is not None:
            if lines is None:
                raise XYZError(f"sample {current[0]!r} has no '---' line before its values.")
            samples[current[0]] = (current[1], "\n".join(lines).rstrip())

    for raw in text.splitlines():
        if raw.startswith("### "):
            close()
            name, sep, type_ = raw[4:].partition(":")
            if not sep:
                raise XYZError(f"sample header {raw!r}: expected '### NAME: TYPE'.")
            current, lines = (name.strip(), axis_type(type_.strip(), name.strip()).id), None
        elif current is not None and lines is None:
            if raw.strip() == "---":
                lines = []
            elif raw.strip() and not raw.startswith("#"):
                raise XYZError(f"sample {current[0]!r}: description lines start with '#', then '---' before values.")
        elif lines is not None:
            lines.append(raw)
    close()
    return samples

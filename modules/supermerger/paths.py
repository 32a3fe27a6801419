"""Where SuperMerger keeps user data (presets, history, hash cache).

Inside the WebUI the extension folder is used (the host sets it); standalone, ``$SUPERMERGER_HOME``
or the XDG data folder (``~/.local/share/supermerger``).
"""

from __future__ import annotations

import os
from pathlib import Path

_override: Path | None = None


def set_data_dir(path: str | os.PathLike | None) -> None:
    global _override
    _override = Path(path) if path is not None else None


def data_dir() -> Path:
    if _override is not None:
        base = _override
    elif os.environ.get("SUPERMERGER_HOME"):
        base = Path(os.environ["SUPERMERGER_HOME"])
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        base = Path(xdg) / "supermerger"
    base.mkdir(parents=True, exist_ok=True)
    return base

"""The effective elemental checker (spec §5.4): how much of the image each pinpointed element changes.

The first image is the baseline. For every other image: the absolute pixel difference from the
baseline, thresholded at 20 (a channel value differing by more than 20 counts), and the share of
such values over all pixels and channels, in percent. The grid has three rows — the baseline
repeated, the changed images, the (inverted) difference images — or three columns when the
checker runs along Y. Optional outputs: a two-frame GIF per item (baseline, changed; 1 s each,
looping) and a CSV of ``label, percent`` rows (appended).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

THRESHOLD = 20


@dataclass
class Difference:
    label: str
    percent: float
    image: object  # the changed image
    diff: object  # inverted binary difference image (black = changed)


def difference(baseline, image, threshold: int = THRESHOLD) -> tuple[float, object]:
    """(percent of channel values differing by more than ``threshold``, inverted difference image)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(baseline.convert("RGB"), dtype=np.int16)
    b = np.asarray(image.convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    changed = np.abs(a - b) > threshold
    percent = float(changed.sum()) * 100.0 / changed.size
    diff = Image.fromarray(np.where(changed, 0, 255).astype(np.uint8), "RGB")
    return percent, diff


def analyse(baseline, images: Sequence, labels: Sequence[str], threshold: int = THRESHOLD) -> list[Difference]:
    out = []
    for im, label in zip(images, labels):
        pct, diff = difference(baseline, im, threshold)
        out.append(Difference(label, pct, im, diff))
    return out


def label_with(d: Difference) -> str:
    return f"{d.label}\n Diff : {d.percent:.3f}%"


def checker_grid(baseline, diffs: list[Difference], along_y: bool = False, corner: str = ""):
    """The 3-row grid (3 columns when ``along_y``): baseline / changed / difference."""
    from .grid import draw_grid

    labels = [label_with(d) for d in diffs]
    rows = [[baseline] * len(diffs), [d.image for d in diffs], [d.diff for d in diffs]]
    row_labels = ["baseline", "changed", "difference"]
    if along_y:
        cols = [list(r) for r in zip(*rows)]
        return draw_grid(cols, row_labels, labels, corner)
    return draw_grid(rows, labels, row_labels, corner)


def save_gifs(baseline, diffs: list[Difference], folder: str | os.PathLike) -> list[Path]:
    """A two-frame GIF (baseline, changed; 1000 ms each, looping) per item, never overwriting."""
    from ..io.atomic import atomic_open

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for d in diffs:
        path = _free(folder, _safe(d.label), ".gif")
        buf = io.BytesIO()
        frames = [baseline.convert("RGB"), d.image.convert("RGB")]
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=1000, loop=0)
        with atomic_open(path) as f:
            f.write(buf.getvalue())
        written.append(path)
    return written


def append_csv(diffs: list[Difference], path: str | os.PathLike) -> Path:
    """Rows ``label, percent`` appended to ``path`` (created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for d in diffs:
            w.writerow([d.label, f"{d.percent:.3f}"])
    return path


def _safe(label: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label.replace(" ", "_"))
    return keep.strip("_") or "item"


def _free(folder: Path, stem: str, ext: str) -> Path:
    path = folder / f"{stem}{ext}"
    n = 1
    while path.exists():
        path = folder / f"{stem}-{n}{ext}"
        n += 1
    return path

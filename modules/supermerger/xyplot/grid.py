"""Grid images (spec §5.3): cells row-major under column headers (X values) and beside row headers
(Y values), the merge description in the top-left corner; saved as PNG with the plot in its metadata.

Text uses Pillow's built-in scalable font (``ImageFont.load_default(size=...)``, Pillow ≥ 10.1), so
no font file is shipped; older Pillow falls back to its fixed bitmap font.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

BACKGROUND = "white"
TEXT = "black"
WRAP_AT = 25  # a line break after a comma once this many characters have accumulated


@dataclass
class GridLayout:
    """Where the cells lie in a grid image: cell (col, row) starts at (left + col*w, top + row*h)."""
    left: int
    top: int
    cell_w: int
    cell_h: int
    cols: int
    rows: int

    def box(self, col: int, row: int) -> tuple[int, int, int, int]:
        x, y = self.left + col * self.cell_w, self.top + row * self.cell_h
        return x, y, x + self.cell_w, y + self.cell_h


def wrap_label(text: str, width: int = WRAP_AT) -> str:
    """Long weight lists broken after a comma once ``width`` characters have accumulated."""
    out_lines = []
    for line in str(text).split("\n"):
        cur = ""
        for i, part in enumerate(line.split(",")):
            piece = part + ("," if i < line.count(",") else "")
            cur += piece
            if len(cur) >= width and i < line.count(","):
                out_lines.append(cur)
                cur = ""
        out_lines.append(cur)
    return "\n".join(out_lines)


def font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(8, int(size)))
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, fnt) -> tuple[int, int]:
    if not text:
        return 0, 0
    l, t, r, b = draw.multiline_textbbox((0, 0), text, font=fnt, spacing=2)
    return r - l, b - t


def _wrap_at_commas(draw, text: str, fnt, width: int) -> str | None:
    """``text`` broken after commas so that every line fits ``width`` pixels (None if a piece cannot)."""
    lines = []
    for line in text.split("\n"):
        parts = line.split(",")
        pieces = [p + "," for p in parts[:-1]] + [parts[-1]]
        cur = ""
        for piece in pieces:
            if _text_size(draw, cur + piece, fnt)[0] <= width:
                cur += piece
                continue
            if _text_size(draw, piece, fnt)[0] > width:
                return None  # one piece is wider than the cell at this size
            if cur:
                lines.append(cur)
            cur = piece
        lines.append(cur)
    return "\n".join(lines)


def _fit_columns(draw, texts: list[str], width: int, size: int):
    """(font, texts): the largest font size (down to 8) at which every column header, broken after
    commas, fits the cell width; at 8, lines still too wide are cut where they must."""
    for s in range(size, 7, -1):
        fnt = font(s)
        wrapped = [_wrap_at_commas(draw, t, fnt, width) for t in texts]
        if all(w is not None for w in wrapped):
            return fnt, wrapped
    fnt = font(8)
    out = []
    for t in texts:
        lines = []
        for line in t.split("\n"):
            cur = ""
            for ch in line:
                if cur and _text_size(draw, cur + ch, fnt)[0] > width:
                    lines.append(cur)
                    cur = ""
                cur += ch
            lines.append(cur)
        out.append("\n".join(lines))
    return fnt, out


def draw_grid(images: Sequence[Sequence[object]], col_labels: Sequence[str], row_labels: Sequence[str] | None,
              corner: str = "", font_size: int | None = None):
    """``images[row][col]`` (PIL images, or None for a cell not made, e.g. after Stop) under
    ``col_labels``, beside ``row_labels`` (None: no row headers). Returns (image, GridLayout)."""
    from PIL import Image, ImageDraw

    rows, cols = len(images), max((len(r) for r in images), default=0)
    first = next((im for r in images for im in r if im is not None), None)
    w, h = first.size if first is not None else (64, 64)
    size = font_size or max(12, min(28, (w + h) // 25))
    fnt = font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(4, size // 3)
    col_texts = [str(t) for t in col_labels]  # broken after commas to fit the cell width (_fit_columns)
    row_texts = [wrap_label(t) for t in row_labels] if row_labels is not None else None
    corner_text = corner.strip()
    col_font, col_texts = _fit_columns(probe, col_texts, w - 4, size)
    col_h = max((_text_size(probe, t, col_font)[1] for t in col_texts), default=0)
    corner_w, corner_h = _text_size(probe, corner_text, fnt)
    row_w = max((_text_size(probe, t, fnt)[0] for t in row_texts), default=0) if row_texts else 0
    left = max(row_w, corner_w) + 2 * pad if (row_texts or corner_text) else 0
    if row_texts:
        left = max(left, w * 3 // 4)
    top = max(col_h, corner_h) + 2 * pad
    grid = Image.new("RGB", (left + cols * w, top + rows * h), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if corner_text:
        draw.multiline_text((pad, pad), corner_text, fill=TEXT, font=fnt, spacing=2)
    for c, t in enumerate(col_texts):
        tw, th = _text_size(probe, t, col_font)
        x = left + c * w + max(0, (w - tw) // 2)
        draw.multiline_text((x, top - pad - th), t, fill=TEXT, font=col_font, spacing=2, align="center")
    for r, t in enumerate(row_texts or ()):
        tw, th = _text_size(probe, t, fnt)
        y = top + r * h + max(0, (h - th) // 2)
        draw.multiline_text((left - pad - tw, y), t, fill=TEXT, font=fnt, spacing=2, align="right")
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            if im is not None:
                if im.size != (w, h):
                    im = im.resize((w, h))
                grid.paste(im.convert("RGB"), (left + c * w, top + r * h))
    return grid, GridLayout(left, top, w, h, cols, rows)


def save_grid(image, path: str | os.PathLike, parameters: str, plot_json: dict | None = None,
              overwrite: bool = False) -> Path:
    """Write the grid as PNG: ``parameters`` (readable text, as the WebUI's grids carry) and the plot
    as JSON in a ``supermerger_xyz`` chunk. Atomic; an existing file is kept unless ``overwrite``."""
    from PIL.PngImagePlugin import PngInfo

    from ..io.atomic import atomic_open, check_output_path

    path = check_output_path(path, overwrite)
    info = PngInfo()
    for key, text in (("parameters", parameters), ("supermerger_xyz", json.dumps(plot_json, ensure_ascii=False)
                                                   if plot_json is not None else None)):
        if text is None:
            continue
        try:
            text.encode("latin-1")
            info.add_text(key, text)
        except UnicodeEncodeError:
            info.add_itxt(key, text)
    with atomic_open(path, overwrite=overwrite) as f:
        image.save(f, format="PNG", pnginfo=info)
    return path


def free_path(folder: Path, stem: str, ext: str = ".png") -> Path:
    """``folder/stem-0001.png``: the next number not yet used (never overwrites)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    existing = {p.name for p in folder.glob(f"{stem}-*{ext}")}
    while f"{stem}-{n:04d}{ext}" in existing:
        n += 1
    return folder / f"{stem}-{n:04d}{ext}"

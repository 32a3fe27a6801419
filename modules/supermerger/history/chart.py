"""The Weight Analysis chart (spec §7): one bar per block at the mean weight, with a ±1σ error bar,
block labels underneath; drawn with Pillow, so it needs no plotting library.

``layout`` computes the geometry (plain numbers, tested on their own); ``render`` paints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .analysis import WeightStats

BACKGROUND = (255, 255, 255)
BAR = (70, 130, 180)
ERROR = (200, 40, 40)
AXIS = (0, 0, 0)
GRID = (225, 225, 225)
TEXT = (40, 40, 40)


@dataclass(frozen=True)
class Bar:
    block: str
    left: int
    right: int  # exclusive
    top: int  # pixel rows of the bar: [top, bottom)
    bottom: int
    err_top: int  # the error bar's ends (mean + σ, mean − σ)
    err_bottom: int


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    lo: float  # value at plot_bottom
    hi: float  # value at plot_top
    zero: int  # pixel row of the value 0
    bars: tuple[Bar, ...]

    def y(self, value: float) -> int:
        """The pixel row of ``value``."""
        span = self.hi - self.lo
        return round(self.plot_bottom - (value - self.lo) / span * (self.plot_bottom - self.plot_top))


def _range(stats: WeightStats) -> tuple[float, float]:
    lo = min([0.0] + [m - s for m, s in zip(stats.mean, stats.std)])
    hi = max([0.0] + [m + s for m, s in zip(stats.mean, stats.std)])
    if hi - lo < 1e-9:
        hi = lo + 1.0
    pad = (hi - lo) * 0.05
    return (lo - pad if lo < 0 else lo), hi + pad


def layout(stats: WeightStats, width: int = 900, height: int = 360) -> Layout:
    n = len(stats.blocks)
    left, right, top, bottom = 48, width - 12, 14, height - 46
    lo, hi = _range(stats)
    proto = Layout(width, height, left, right, top, bottom, lo, hi, 0, ())
    zero = proto.y(0.0)
    slot = (right - left) / max(n, 1)
    bars = []
    for i, (block, m, s) in enumerate(zip(stats.blocks, stats.mean, stats.std)):
        x0 = round(left + i * slot + slot * 0.15)
        x1 = max(x0 + 1, round(left + (i + 1) * slot - slot * 0.15))
        y = proto.y(m)
        bars.append(Bar(block, x0, x1, min(y, zero), max(y, zero), proto.y(m + s), proto.y(m - s)))
    return Layout(width, height, left, right, top, bottom, lo, hi, zero, tuple(bars))


def render(stats: WeightStats, width: int = 900, height: int = 360):
    """The chart as a PIL image (RGB)."""
    from PIL import Image, ImageDraw, ImageFont

    g = layout(stats, width, height)
    img = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for value in _ticks(g.lo, g.hi):
        y = g.y(value)
        d.line([(g.plot_left, y), (g.plot_right, y)], fill=GRID)
        d.text((4, y - 6), f"{value:g}", fill=TEXT, font=font)
    for b in g.bars:
        if b.bottom > b.top:
            d.rectangle([b.left, b.top, b.right - 1, b.bottom - 1], fill=BAR)
        mid = (b.left + b.right - 1) // 2
        d.line([(mid, b.err_top), (mid, b.err_bottom)], fill=ERROR, width=1)
        cap = max(1, (b.right - b.left) // 4)
        for y in (b.err_top, b.err_bottom):
            d.line([(mid - cap, y), (mid + cap, y)], fill=ERROR)
        _vertical_label(img, b.block, mid, g.plot_bottom + 4, font)
    d.line([(g.plot_left, g.zero), (g.plot_right, g.zero)], fill=AXIS)
    d.line([(g.plot_left, g.plot_top), (g.plot_left, g.plot_bottom)], fill=AXIS)
    return img


def _ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round values (steps of 1, 2, 2.5 or 5 times a power of ten) for the grid lines."""
    raw = (hi - lo) / most
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    n = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [round(first + i * step, 10) for i in range(n)]


def _vertical_label(img, text: str, x: int, y: int, font) -> None:
    """``text`` rotated 90° so that 26 labels fit under their bars."""
    from PIL import Image, ImageDraw

    box = ImageDraw.Draw(img).textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0] + 2, box[3] - box[1] + 2
    label = Image.new("RGB", (w, h), BACKGROUND)
    ImageDraw.Draw(label).text((-box[0] + 1, -box[1] + 1), text, fill=TEXT, font=font)
    label = label.rotate(90, expand=True)
    img.paste(label, (x - label.width // 2, y))


def png_bytes(stats: WeightStats, width: int = 900, height: int = 360) -> bytes:
    import io

    buf = io.BytesIO()
    render(stats, width, height).save(buf, format="PNG")
    return buf.getvalue()

"""Merged model names and default file names, as the original builds them (spec §8.4), without its
stray spaces ("(B -  C)", "+B"); file names drop every space, so they are the original's."""

from __future__ import annotations

import re


def _r(x: float) -> str:
    text = f"{round(x, 3):.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def merged_name(mode_id: str, a: str, b: str, c: str | None, alpha: float, beta: float,
                calcmode: str = "normal", mbw_alpha: str | None = None, mbw_beta: str | None = None) -> str:
    if mode_id == "weight_sum":
        name = f"{a} x {_r(1 - alpha)} + {b} x {_r(alpha)}" if mbw_alpha is None else \
            f"{a} x (1-alpha) + {b} x alpha ({mbw_alpha})"
    elif mode_id == "add_difference":
        name = f"{a} + ({b} - {c}) x {_r(alpha)}" if mbw_alpha is None else \
            f"{a} + ({b} - {c}) x alpha ({mbw_alpha})"
    elif mode_id == "triple_sum":
        name = f"{a} x {_r(1 - alpha - beta)} + {b} x {_r(alpha)} + {c} x {_r(beta)}" if mbw_alpha is None else \
            f"{a} x (1-alpha-beta) + {b} x alpha + {c} x beta (alpha:{mbw_alpha},beta:{mbw_beta})"
    else:
        name = f"({a} x {_r(1 - alpha)} + {b} x {_r(alpha)}) x {_r(1 - beta)} + {c} x {_r(beta)}" if mbw_alpha is None else \
            f"({a} x (1-alpha) + {b} x alpha) x (1-beta) + {c} x beta (alpha:{mbw_alpha},beta:{mbw_beta})"
    if calcmode != "normal":
        name += f"_{calcmode.replace(' ', '')}"
    return name


def default_filename(name: str, ext: str = ".safetensors", fp16: bool = False, variant: str | None = None) -> str:
    """File name from the merged name: spaces removed, ',' '(' ')' -> '_', leading '_' stripped."""
    stem = re.sub(r"[()\,]", "_", name.replace(" ", "")).lstrip("_")
    stem = re.sub(r'[\\/:*?"<>|]', "_", stem)
    if len(stem) > 240:
        stem = stem[:240]
    if fp16:
        stem += ".fp16"
    if variant:
        stem += f"-{variant}"
    return stem + ext

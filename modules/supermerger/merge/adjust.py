"""Adjust: small scale/offset tweaks of the U-Net's first and last layers (detail, contrast, colour).

Eight values IN, OUT, OUT2, CONT(rast), BRI(ghtness), COL1, COL2, COL3. Weights are scaled by
``1 - v*0.01``, biases of the first two layers by ``1 + v*0.02``; the final conv's 4-channel bias
gets ``[CONT*0.02, 0.02*(BRI*vB + COL1*v1 + COL2*v2 + COL3*v3)]`` with per-architecture colour
vectors (arch data).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import Architecture
from ..errors import RecipeError
from .weights import is_number, number

NAMES = ("IN", "OUT", "OUT2", "CONT", "BRI", "COL1", "COL2", "COL3")
KEYS = (
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.0.0.bias",
    "model.diffusion_model.out.0.weight",
    "model.diffusion_model.out.0.bias",
    "model.diffusion_model.out.2.weight",
    "model.diffusion_model.out.2.bias",
)


@dataclass(frozen=True)
class AdjustOp:
    scale: float = 1.0
    offset: tuple[float, ...] | None = None  # added elementwise (length of the bias)


def parse_adjust(text: str | None) -> tuple[float, ...] | None:
    """Eight floats, or None when empty / all zero (Adjust off). Fewer values are padded with 0."""
    if text is None or not str(text).strip():
        return None
    items = [t.strip() for t in str(text).split(",")]
    if len(items) > 8:
        raise RecipeError(f"Adjust has {len(items)} values; it takes at most 8: {','.join(NAMES)}.")
    values = []
    for pos, item in enumerate(items):
        if not is_number(item):
            raise RecipeError(f"Adjust value {pos + 1} ({NAMES[pos]}) is {item!r}, not a finite number.",
                              "Example: 0,0,0,0,0,0,0,0 (IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3).")
        values.append(number(item))
    values += [0.0] * (8 - len(values))
    return tuple(values) if any(values) else None


def adjust_ops(values: tuple[float, ...] | None, arch: Architecture) -> dict[str, AdjustOp]:
    if values is None:
        return {}
    v_in, v_out, v_out2, cont, bri, c1, c2, c3 = values
    vec = arch.adjust_color_vectors
    color = [0.02 * (bri * vec["brightness"][i] + c1 * vec["col1"][i] + c2 * vec["col2"][i] + c3 * vec["col3"][i])
             for i in range(3)]
    return {
        KEYS[0]: AdjustOp(scale=1 - v_in * 0.01),
        KEYS[1]: AdjustOp(scale=1 + v_in * 0.02),
        KEYS[2]: AdjustOp(scale=1 - v_out * 0.01),
        KEYS[3]: AdjustOp(scale=1 + v_out * 0.02),
        KEYS[4]: AdjustOp(scale=1 - v_out2 * 0.01),
        KEYS[5]: AdjustOp(offset=(cont * 0.02, *color)),
    }

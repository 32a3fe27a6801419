"""Independent reference computations for the tests (deliberately not using the engine's code)."""

from __future__ import annotations

import re

import torch
from safetensors.torch import load_file

SD1_BLOCKS = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
XL_BLOCKS = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]


def load(path):
    return load_file(str(path))


def block_sd1(key: str) -> str:
    """Spec §3.3 for SD1/SD2, written out independently of arch data."""
    if "time_embed" in key:
        return "IN00"
    if ".out." in key:
        return "OUT11"
    m = re.search(r"\.input_blocks\.(\d+)\.", key)
    if m:
        return "IN%02d" % int(m.group(1))
    if ".middle_block." in key:
        return "M00"
    m = re.search(r"\.output_blocks\.(\d+)\.", key)
    if m:
        return "OUT%02d" % int(m.group(1))
    return "BASE"


def block_xl(key: str) -> str:
    if "label_emb" in key or "time_embed" in key:
        return "IN00"
    if key.startswith("model.diffusion_model.out."):
        return "OUT08"
    m = re.search(r"\.input_blocks\.(\d+)\.", key)
    if m:
        return "IN%02d" % int(m.group(1))
    if ".middle_block." in key:
        return "M00"
    m = re.search(r"\.output_blocks\.(\d+)\.", key)
    if m:
        return "OUT%02d" % int(m.group(1))
    return "BASE"


def merged_keys(sd: dict) -> list[str]:
    return [k for k, v in sd.items() if "model" in k and ("weight" in k or "bias" in k) and v.is_floating_point()
            and not k.endswith("position_ids")]


def lerp(a, b, t):
    return (a.float() + t * (b.float() - a.float()))


def assert_close_dtype(actual: torch.Tensor, expected32: torch.Tensor, dtype, key=""):
    """actual (in dtype) equals expected computed in float32 and rounded once, within 1 ulp of dtype."""
    assert actual.dtype == dtype, (key, actual.dtype, dtype)
    exp = expected32.to(dtype)
    diff = (actual.float() - exp.float()).abs()
    tol = exp.float().abs() * (2 ** -9 if dtype == torch.float16 else 2 ** -7 if dtype == torch.bfloat16 else 1e-6) + 1e-7
    assert bool((diff <= tol).all()), f"{key}: max diff {diff.max().item()}"

"""Writing LoRA files: precision, metadata (spec §10.7) and the additional-networks hashes.

Metadata modes for merged LoRAs:

* ``create new`` (default) / ``create new without output_name``: only the network keys of the
  first source (``ss_network_module``, ``ss_network_alpha``, ``ss_network_dim``, ``ss_v2``,
  ``ss_sd_model_name``, ``ss_base_model_version``);
* ``use first lora``: the first source's metadata;
* ``save all``: the first source's metadata plus ``sshs_cp<i>``, each source's metadata as JSON;
* ``merge``: as ``save all``, with the ``ss_tag_frequency`` of every source united.

Each source's metadata gets ``sshs_ratio``, ``sshs_blocks`` and ``ss_output_name`` first. Then
``ss_output_name`` (not in the "without" mode), ``ss_mixed_precision``, ``sshs_model_hash``
(sha256 of the tensor data, what the WebUI shows) and ``sshs_legacy_hash`` are set.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import OutputError, RecipeError
from ..io.atomic import check_output_path
from ..io.safetensors_format import build_header
from ..io.sources import dtype_code

METADATA_MODES = ("create new", "create new without output_name", "use first lora", "save all", "merge")
NETWORK_KEYS = ("ss_network_module", "ss_network_alpha", "ss_network_dim", "ss_v2", "ss_sd_model_name",
                "ss_base_model_version")
PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def metadata_mode(text: str) -> str:
    mode = text.strip().lower().replace("_", " ").replace("-", " ")
    mode = {"create new without output name": "create new without output_name"}.get(mode, mode)
    if mode not in METADATA_MODES:
        raise RecipeError(f"Unknown metadata mode {text!r}.", "Use one of: " + ", ".join(METADATA_MODES) + ".")
    return mode


def source_metadata(metadata: Mapping[str, str], name: str, ratio: float, blocks: str) -> dict[str, str]:
    out = dict(metadata)
    out.update({"sshs_ratio": str(ratio), "sshs_blocks": blocks, "ss_output_name": name})
    return out


def merged_metadata(sources: Sequence[Mapping[str, str]], mode: str, output_name: str,
                    precision: str) -> dict[str, str]:
    mode = metadata_mode(mode)
    first = dict(sources[0]) if sources else {}
    if mode.startswith("create new"):
        meta = {k: first[k] for k in NETWORK_KEYS if k in first}
    elif mode == "use first lora":
        meta = first
    else:
        meta = dict(first)
        for i, src in enumerate(sources):
            meta[f"sshs_cp{i}"] = json.dumps(dict(src), ensure_ascii=False)
        if mode == "merge":
            meta["ss_tag_frequency"] = json.dumps(_union_tags(sources), ensure_ascii=False)
    module = next((s["ss_network_module"] for s in sources if s.get("ss_network_module")), None)
    if module:
        meta["ss_network_module"] = module
    if mode == "create new without output_name":
        meta.pop("ss_output_name", None)
    else:
        meta["ss_output_name"] = output_name
    meta["ss_mixed_precision"] = precision
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _union_tags(sources: Sequence[Mapping[str, str]]) -> dict:
    merged: dict = {}
    for src in sources:
        try:
            tags = json.loads(src.get("ss_tag_frequency", "{}"))
        except (TypeError, ValueError):
            continue
        if isinstance(tags, dict):
            for folder, counts in tags.items():
                merged.setdefault(folder, counts)
    return merged


def put_module(tensors: dict, name: str, up, down, alpha: float, mid=None) -> None:
    """Add one kohya LoRA module (``lora_up`` / ``lora_down`` / optional ``lora_mid`` / ``alpha``)."""
    import torch

    tensors[f"{name}.lora_up.weight"] = up
    tensors[f"{name}.lora_down.weight"] = down
    if mid is not None:
        tensors[f"{name}.lora_mid.weight"] = mid
    tensors[f"{name}.alpha"] = torch.tensor(float(alpha))


def check_save_options(output, overwrite: bool, precision: str, mode: str | None = None) -> None:
    """Refuse a bad precision, metadata mode or output before any work is done."""
    if precision not in PRECISIONS:
        raise RecipeError(f"Unknown precision {precision!r}: use fp16, bf16 or fp32.")
    if mode is not None:
        metadata_mode(mode)
    if output is not None:
        if Path(output).suffix.lower() != ".safetensors":
            raise OutputError(f"Output {str(output)!r}: LoRAs are written as .safetensors.")
        check_output_path(output, overwrite)


def save_lora(tensors: Mapping, output: str | os.PathLike, metadata: Mapping[str, str], precision: str = "fp16",
              overwrite: bool = False) -> tuple[Path, dict[str, str]]:
    """Write ``tensors`` (key order sorted) as a .safetensors LoRA; the hashes are added to the
    metadata. Returns the path and the metadata written."""
    out = Path(output)
    if out.suffix.lower() != ".safetensors":
        raise OutputError(f"Output {str(out)!r}: LoRAs are written as .safetensors.")
    check_output_path(out, overwrite)
    cast = cast_tensors(tensors, precision)
    entries = [(k, dtype_code(t.dtype), tuple(t.shape)) for k, t in cast.items()]
    data = [_bytes(t) for t in cast.values()]
    meta = dict(metadata)
    meta.update(lora_hashes(entries, data, meta))
    from ..io.writer import SafetensorsWriter

    with SafetensorsWriter(out, entries, meta, overwrite=overwrite) as writer:
        for b in data:
            writer.write(b)
    return out, meta


def cast_tensors(tensors: Mapping, precision: str) -> dict:
    import torch

    if precision not in PRECISIONS:
        raise RecipeError(f"Unknown precision {precision!r}: use fp16, bf16 or fp32.")
    dtype = getattr(torch, PRECISIONS[precision])
    return {k: tensors[k].detach().to("cpu", dtype=dtype if tensors[k].is_floating_point() else tensors[k].dtype)
            .contiguous() for k in sorted(tensors)}


def _bytes(t) -> bytes:
    import torch

    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def lora_hashes(entries, data: Sequence[bytes], metadata: Mapping[str, str]) -> dict[str, str]:
    """``sshs_model_hash``: sha256 of the tensor data (the file after its header);
    ``sshs_legacy_hash``: the old 8-digit hash of 64 KiB at 1 MiB of the file written with only
    the ``ss_*`` metadata (the additional-networks scheme)."""
    h = hashlib.sha256()
    for b in data:
        h.update(b)
    header, _ = build_header(entries, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    window = bytearray()
    pos = 0
    for piece in [header, *data]:  # bytes [0x100000, 0x110000) of header + data
        lo, hi = max(0x100000 - pos, 0), min(0x110000 - pos, len(piece))
        if lo < hi:
            window += piece[lo:hi]
        pos += len(piece)
    return {"sshs_model_hash": h.hexdigest(), "sshs_legacy_hash": hashlib.sha256(bytes(window)).hexdigest()[:8]}

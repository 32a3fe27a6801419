"""The safetensors container, read and written without the safetensors library.

Layout: an 8-byte little-endian header length N, N bytes of JSON (tensor name ->
{dtype, shape, data_offsets}, plus an optional ``__metadata__`` dict of strings), then the
tensor bytes. Parsing the header alone gives every name, shape and dtype, so a merge can be
planned and validated without reading a single tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileError

# safetensors dtype code -> (bytes per element, torch dtype attribute name)
DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"), "F32": (4, "float32"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
    "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"),
    "I64": (8, "int64"), "I32": (4, "int32"), "I16": (2, "int16"), "I8": (1, "int8"),
    "U8": (1, "uint8"), "BOOL": (1, "bool"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors code, e.g. "F16"
    shape: tuple[int, ...]
    offset: int = 0  # absolute file offset of the first byte (file sources only)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][0]

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate a safetensors header; raise ModelFileError naming the file if broken."""
    path = Path(path)
    name = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{name!r} is empty or truncated (no safetensors header).")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise ModelFileError(f"{name!r} is not a safetensors file or is truncated "
                                     f"(header length {n} for a file of {size} bytes).")
            raw = f.read(n)
    except FileNotFoundError:
        raise ModelFileError(f"Model file {name!r} does not exist.") from None
    except IsADirectoryError:
        raise ModelFileError(f"{name!r} is a folder, not a model file.") from None
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" "))  # the format pads with spaces only
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{name!r} has a corrupt safetensors header ({e}).") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{name!r} has a corrupt safetensors header (not a JSON object).")
    data_start = 8 + n
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"{name!r}: its __metadata__ is not a map of strings to strings, as the safetensors "
                             "format requires.")
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for key, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(_whole(s) for s in entry["shape"])
            offsets = entry["data_offsets"]
            if not isinstance(offsets, list) or len(offsets) != 2:
                raise ValueError
            begin, end = (_whole(x) for x in offsets)
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{name!r}: malformed header entry for tensor {key!r} (shape and data offsets "
                                 "must be lists of whole numbers ≥ 0).") from None
        if dtype not in DTYPES:
            raise ModelFileError(f"{name!r}: tensor {key!r} has unsupported dtype {dtype!r}.")
        info = TensorInfo(dtype, shape, data_start + begin)
        if end - begin != info.nbytes:
            raise ModelFileError(f"{name!r}: tensor {key!r} has {end - begin} bytes for shape {list(shape)} {dtype}.")
        if data_start + end > size:
            raise ModelFileError(
                f"{name!r} is truncated: tensor {key!r} ends at byte {data_start + end}, the file has {size}.",
                "Download or copy the file again.")
        tensors[key] = info
        spans.append((begin, end, key))
    # The format's rule: the tensors' bytes tile the data section exactly, no overlap, no hole, nothing after.
    pos, last = 0, None
    for begin, end, key in sorted(spans):
        if begin != pos:
            what = (f"overlaps tensor {last!r}" if begin < pos else f"leaves {begin - pos} bytes unused before it")
            raise ModelFileError(f"{name!r}: the data of tensor {key!r} (bytes {begin}-{end}) {what}; a safetensors "
                                 "file's tensors lie back to back.", "The file is damaged or was not written by "
                                 "a safetensors writer: get it again.")
        pos, last = end, key
    if data_start + pos != size:
        raise ModelFileError(f"{name!r} has {size - data_start - pos} bytes after its last tensor; a safetensors "
                             "file ends where its data does.", "The file is damaged: get it again.")
    return Header(tensors, dict(meta), data_start, size)


def _whole(value) -> int:
    """A shape entry or data offset: a JSON whole number ≥ 0 (not a float, a string or a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


def build_header(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None,
                 pad_to: int | None = None) -> tuple[bytes, list[int]]:
    """Serialise a header for tensors written back to back in the given order.

    Returns the header bytes (length prefix included, padded to 8 bytes) and each tensor's
    byte offset relative to the start of the data section.
    """
    obj: dict = {}
    if metadata:
        obj["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets = []
    pos = 0
    for key, dtype, shape in entries:
        nbytes = math.prod(shape) * DTYPES[dtype][0]
        obj[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        offsets.append(pos)
        pos += nbytes
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if pad_to is not None:
        if len(raw) > pad_to - 8:
            raise ValueError("header grew beyond its reserved size")
        raw += b" " * (pad_to - 8 - len(raw))
    return struct.pack("<Q", len(raw)) + raw, offsets


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    return read_header(path).metadata

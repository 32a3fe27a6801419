"""Streaming safetensors writer: the header first (every shape and dtype is known from the plan),
then tensor bytes appended in order, into a temporary file renamed into place at the end."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import OutputError
from .atomic import atomic_open, check_free_space, check_output_path
from .safetensors_format import build_header


class SafetensorsWriter:
    def __init__(self, path: str | os.PathLike, entries: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None, overwrite: bool = False, fsync: bool = False):
        self.path = check_output_path(path, overwrite)
        self.entries = entries
        self.header, _ = build_header(entries, metadata)
        self.expected = sum(_nbytes(d, s) for _, d, s in entries)
        check_free_space(self.path, len(self.header) + self.expected)
        self._cm = atomic_open(self.path, overwrite=overwrite, fsync=fsync)
        self._f = None
        self.written = 0

    def __enter__(self) -> "SafetensorsWriter":
        self._f = self._cm.__enter__()
        if hasattr(os, "posix_fallocate"):
            with contextlib.suppress(OSError):
                os.posix_fallocate(self._f.fileno(), 0, len(self.header) + self.expected)
        self._f.write(self.header)
        return self

    def write(self, data) -> None:
        mv = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
        n = len(mv)
        done = 0
        while done < n:
            done += self._f.write(mv[done:])
        self.written += n

    def rewrite_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the metadata once late facts (input hashes) are known; the header keeps its size."""
        header, _ = build_header(self.entries, metadata, pad_to=len(self.header))
        self._f.seek(0)
        self._f.write(header)
        self._f.seek(0, os.SEEK_END)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and self.written != self.expected:
            exc = OutputError(f"Internal error: wrote {self.written} tensor bytes, expected {self.expected}; "
                              "the output was discarded.")
            self._cm.__exit__(type(exc), exc, None)
            raise exc
        return bool(self._cm.__exit__(exc_type, exc, tb))


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    from .safetensors_format import TensorInfo

    return TensorInfo(dtype, tuple(shape)).nbytes


def save_torch(path: str | os.PathLike, state_dict: dict, overwrite: bool = False) -> Path:
    """A .ckpt output: ``torch.save`` of the flat state dict, written atomically."""
    import torch

    path = check_output_path(path, overwrite)
    with atomic_open(path, overwrite=overwrite) as f:
        torch.save(state_dict, f)
    return path

"""Streaming safetensors writer: the header first (every shape and dtype is known from the plan),
then tensor bytes appended in order, into a temporary file renamed into place at the end.

Putting new pages into the page cache is the dearest part of a file merge, and on virtual
machines that hand free memory back to the host (virtio-balloon free page reporting) it is
dearer still: memory freed more than a couple of seconds ago has to be faulted back in by the
host on first touch (measured here: 2.1 GB written in 3.5-4.7 s into such memory, 0.4-1.2 s
into pages just freed). So when the output replaces an existing file, that file's cached pages
are dropped just ahead of each write (``posix_fadvise(DONTNEED)``; its data stays on disk until
the final rename) and the kernel hands us pages it freed a moment ago — what ``dd`` gets from
truncating its output.

(Writing zeros ahead of the data while torch is imported, so that the data would land in pages
that already exist, was tried and measured neutral here: 1.00 (0.95-1.39) over 8 pairs.)
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import OutputError
from .atomic import atomic_open, check_free_space, check_output_path
from .safetensors_format import build_header

RELEASE_AHEAD = 64 * 2**20  # the replaced file's pages are dropped this far ahead of our writes


class SafetensorsWriter:
    def __init__(self, path: str | os.PathLike, entries: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None, overwrite: bool = False, fsync: bool = False):
        self.path = check_output_path(path, overwrite)
        self.entries = entries
        self.header, _ = build_header(entries, metadata)
        self.expected = sum(_nbytes(d, s) for _, d, s in entries)
        self.size = len(self.header) + self.expected
        check_free_space(self.path, self.size)
        self._cm = atomic_open(self.path, overwrite=overwrite, fsync=fsync)
        self._f = None
        self._fd = -1
        self._old_fd = -1  # the file being replaced, whose cached pages we release as we go
        self._released = 0
        self.written = 0
        self._pos = 0  # file offset of the next data byte

    def __enter__(self) -> "SafetensorsWriter":
        self._f = self._cm.__enter__()
        self._fd = self._f.fileno()
        if self.path.exists() and hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                self._old_fd = os.open(self.path, os.O_RDONLY)
        if hasattr(os, "posix_fallocate"):
            # Reserves the blocks at once (no delayed allocation work on close or rename).
            with contextlib.suppress(OSError):
                os.posix_fallocate(self._fd, 0, self.size)
        self._pwrite_all(memoryview(self.header), 0)
        self._pos = len(self.header)
        return self

    def _make_room(self, end: int) -> None:
        """Release the replaced file's cached pages up to a little past offset ``end`` of ours."""
        if self._old_fd < 0 or self._released >= end + RELEASE_AHEAD // 2:
            return
        upto = end + RELEASE_AHEAD
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._old_fd, self._released, upto - self._released, os.POSIX_FADV_DONTNEED)
        self._released = upto

    def _pwrite_all(self, mv: memoryview, offset: int) -> None:
        self._make_room(offset + len(mv))
        done, n = 0, len(mv)
        while done < n:
            done += os.pwrite(self._fd, mv[done:], offset + done)

    def write(self, data) -> None:
        """Append ``data`` (any buffer) at the write position."""
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        self._pwrite_all(mv, self._pos)
        self._pos += len(mv)
        self.written += len(mv)

    def rewrite_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the metadata once late facts (input hashes) are known; the header keeps its size."""
        header, _ = build_header(self.entries, metadata, pad_to=len(self.header))
        self._pwrite_all(memoryview(header), 0)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._old_fd >= 0:
            os.close(self._old_fd)
            self._old_fd = -1
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

"""Streaming safetensors writer: the header first (every shape and dtype is known from the plan),
then tensor bytes appended in order, into a temporary file renamed into place at the end.

Writing new pages into the page cache is the most expensive part of a file merge (allocating
and accounting each page costs several times the copy). ``prefill`` lets the writer thread do
that part early, while the rest of the merge is still starting up (``import torch`` alone takes
about two seconds): it writes zeros ahead of the data, and the data written later over those
pages costs little more than a memory copy. Prefill never runs behind the write position, so it
can never overwrite real data.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import OutputError
from .atomic import atomic_open, check_free_space, check_output_path
from .safetensors_format import build_header

PREFILL_STEP = 8 * 2**20  # bytes per prefill call: small enough that a waiting chunk is not delayed
_ZEROS = bytes(2**20)
_ZEROS_MV = memoryview(_ZEROS)


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
        self._replacing = self.path.exists()
        self._f = None
        self._fd = -1
        self.written = 0
        self._pos = 0  # file offset of the next data byte
        self._filled = 0  # bytes [0, _filled) of the file hold either real data or prefill zeros

    def __enter__(self) -> "SafetensorsWriter":
        self._f = self._cm.__enter__()
        self._fd = self._f.fileno()
        if hasattr(os, "posix_fallocate"):
            # Reserves the blocks at once (no delayed allocation work on close or rename).
            with contextlib.suppress(OSError):
                os.posix_fallocate(self._fd, 0, self.size)
        self._pwrite_all(memoryview(self.header), 0)
        self._pos = self._filled = len(self.header)
        return self

    def release_replaced(self) -> None:
        """Drop the page cache of the file this one will replace (its data stays on disk until the
        rename). The kernel then finds those pages at hand for the new file's; writing into memory
        that was given up long ago is several times slower on virtual machines. A few tenths of a
        second: the writer thread does it while torch is imported."""
        if not self._replacing or not hasattr(os, "posix_fadvise"):
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def _pwrite_all(self, mv: memoryview, offset: int) -> None:
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
        self._filled = max(self._filled, self._pos)
        self.written += len(mv)

    def prefill(self, max_bytes: int = PREFILL_STEP) -> int:
        """Write up to ``max_bytes`` of zeros after everything written so far; returns how many
        (0 once the whole file is covered)."""
        n = min(max_bytes, self.size - self._filled)
        if n <= 0:
            return 0
        done = 0
        while done < n:  # pwritev may write less than asked; go on from where it stopped
            left = n - done
            iov = [_ZEROS] * (left // len(_ZEROS))
            if left % len(_ZEROS):
                iov.append(_ZEROS_MV[: left % len(_ZEROS)])
            done += os.pwritev(self._fd, iov, self._filled + done)
        self._filled += n
        return n

    def rewrite_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the metadata once late facts (input hashes) are known; the header keeps its size."""
        header, _ = build_header(self.entries, metadata, pad_to=len(self.header))
        self._pwrite_all(memoryview(header), 0)

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

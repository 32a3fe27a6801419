"""An exclusive lock on a file, across processes (and threads), with a time limit.

POSIX uses ``fcntl.flock``, Windows ``msvcrt.locking``; elsewhere a lock file created with
``O_EXCL`` (taken over when older than ``STALE_SECONDS``, i.e. left behind by a killed process).
flock and msvcrt locks are released by the OS when a process dies, so a kill never leaves the
history locked.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None

STALE_SECONDS = 120.0
_thread_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


class LockTimeout(OSError):
    pass


def _thread_lock(path: Path) -> threading.Lock:
    with _guard:
        return _thread_locks.setdefault(str(path), threading.Lock())


@contextlib.contextmanager
def locked(path: str | os.PathLike, timeout: float = 30.0) -> Iterator[None]:
    """Hold the lock ``path`` (created if missing) for the ``with`` block; LockTimeout after ``timeout`` s."""
    path = Path(path)
    tlock = _thread_lock(path)
    if not tlock.acquire(timeout=timeout):
        raise LockTimeout(f"another thread of this program holds {path} for more than {timeout:.0f} s")
    try:
        if fcntl is not None or msvcrt is not None:
            with _os_lock(path, timeout):
                yield
        else:
            with _exclusive_file(path, timeout):
                yield
    finally:
        tlock.release()


@contextlib.contextmanager
def _os_lock(path: Path, timeout: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    os.lseek(fd, 0, os.SEEK_SET)
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"another process holds {path} for more than {timeout:.0f} s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive_file(path: Path, timeout: float) -> Iterator[None]:
    marker = path.with_name(path.name + ".held")
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - marker.stat().st_mtime > STALE_SECONDS:
                    marker.unlink()
                    continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{marker} exists for more than {timeout:.0f} s; remove it if no merge is running")
            time.sleep(0.01)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()

"""Atomic file writes: data goes to a temporary file in the target folder, then is renamed.

A kill or a full disk mid-write leaves the target untouched (or absent) and no partial file
under its name; the temporary file is removed on any error. A process killed outright (SIGKILL,
power loss) cannot remove its temporary file, so the name carries the writer's PID and the next
write to the same target deletes those whose writer is gone (a merge's is the model's size).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

from ..errors import OutputError


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) or a missing folder, before any work."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"Output file {str(path)!r} already exists and was not overwritten.",
                          "Choose another name, or pass --overwrite (overwrite=True) to replace it.")
    if path.is_dir():
        raise OutputError(f"Output path {str(path)!r} is a folder; give a file name such as merged.safetensors.")
    if not path.parent.is_dir():
        raise OutputError(f"Output folder {str(path.parent)!r} does not exist.", "Create it first, or choose another path.")
    remove_stale_partials(path)
    return path


def check_not_an_input(path: str | os.PathLike, inputs) -> None:
    """Refuse an output that is one of the inputs, however it is spelt (``sub/../a``, a symlink, a hard
    link): ``inputs`` are ``(label, path)`` pairs (None paths are skipped). With or without overwrite:
    writing a merge over its own model A would destroy the input while it is being read."""
    from ..errors import OutputError

    out = Path(path)
    if not out.exists():
        return  # a file that is not there is no input
    for label, source in inputs:
        if source is None:
            continue
        try:
            same = os.path.samefile(out, source)
        except OSError:
            continue
        if same:
            raise OutputError(f"The output {str(out)!r} is {label} itself ({str(source)!r}); an input is never "
                              "overwritten, even with overwrite on.", "Choose another output name.")


STALE_SECONDS = 60.0  # a temp file untouched this long, whose writer's PID is not running, is abandoned


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def remove_stale_partials(path: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Delete temporary files of earlier writes to ``path`` whose writer died (not running, and the file
    untouched for a minute, so a writer on another machine sharing the folder is left alone)."""
    path = Path(path)
    now = time.time() if now is None else now
    removed = []
    for part in path.parent.glob(f".{path.name}.*.part"):
        pid_text = part.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if now - part.stat().st_mtime >= STALE_SECONDS:
                part.unlink()
                removed.append(part)
    return removed


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    import shutil

    folder = Path(path).parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OutputError(
            f"Not enough free disk space in {str(folder)!r}: the output needs {needed / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free.", "Free some space or write to another disk.")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, overwrite: bool = False, fsync: bool = False) -> Iterator[IO[bytes]]:
    """Open a temporary binary file beside ``path``; on success rename it over ``path``."""
    path = Path(path)
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent)
    try:
        _give_plain_mode(fd)
        with os.fdopen(fd, "wb", buffering=0) as f:
            yield f
            if fsync:
                os.fsync(f.fileno())
        if not overwrite and path.exists():
            raise OutputError(f"Output file {str(path)!r} appeared while merging and was not overwritten.")
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        import errno

        if e.errno == errno.ENOSPC:
            raise OutputError(f"The disk filled up while writing {str(path)!r}; nothing was written.",
                              "Free some space or write to another disk.") from None
        raise OutputError(f"Could not write {str(path)!r}: {e.strerror or e}.") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so it is never changed, even briefly)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_plain_mode(fd: int) -> None:
    """mkstemp makes its file 0600; the output gets the mode a plain open() would give it (0666 & ~umask),
    as the WebUI's own files have."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o666 & ~current_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, overwrite=True, fsync=True) as f:
        f.write(text.encode("utf-8"))


def _remove_quietly(p: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)

"""Checkpoint hashes as the WebUI computes them, with a cache so each file is hashed once.

- sha256: of the whole file; the WebUI's "shorthash" is its first 10 hex digits.
- legacy hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits (old WebUI model hash).
The cache (``hashes.json`` in the data folder) is keyed by absolute path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from ..paths import data_dir

_lock = threading.Lock()


def _cache_path() -> Path:
    return data_dir() / "hashes.json"


def _load_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def legacy_hash(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def sha256_file(path: str | os.PathLike, use_cache: bool = True) -> str:
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    if use_cache:
        entry = _load_cache().get(str(path))
        if entry and entry.get("stamp") == stamp:
            return entry["sha256"]
    h = hashlib.sha256()
    buf = bytearray(16 * 2**20)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(mv)
            if not n:
                break
            h.update(mv[:n])
    digest = h.hexdigest()
    if use_cache:
        from .atomic import atomic_write_text

        with _lock:
            cache = _load_cache()
            cache[str(path)] = {"stamp": stamp, "sha256": digest}
            try:
                atomic_write_text(_cache_path(), json.dumps(cache, indent=0))
            except Exception:  # a read-only data folder must not break a merge
                pass
    return digest


class BackgroundHash:
    """Hash a file on a worker thread (hashlib releases the GIL) while the merge runs."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.result: str | None = None
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, daemon=True, name="sha256")
        self._t.start()

    def _run(self) -> None:
        try:
            self.result = sha256_file(self.path)
        except BaseException as e:  # reported by get()
            self.error = e

    def get(self) -> str:
        self._t.join()
        if self.error:
            raise self.error
        assert self.result is not None
        return self.result

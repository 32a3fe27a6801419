"""A model cache: checkpoints' state dicts kept in RAM, least recently used out.

    cache = ModelCache(max_models=3, max_bytes=8 << 30)
    sd = cache.get("/models/A.safetensors")            # read once, then answered from RAM
    with cache.protect(["/models/A.safetensors"]):     # an XY plot holds A constant: never evicted
        ...
    cache.clear()                                       # "Clear cache" (protected models stay)

Capacity is a number of models and/or a number of bytes; the least recently used unprotected
model goes first when a new one does not fit. A file's entry is keyed by its resolved path and
remembers the file's size and modification time: a file changed on disk is read again. Entries
need not be files: ``put(name, state_dict)`` keeps any state dict under a name (the WebUI adapter
keeps what its own loader produced). Host-independent: the standalone host and the WebUI adapter
both use it. Thread-safe (one lock; loading happens outside it).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping


@dataclass
class _Entry:
    state_dict: dict
    nbytes: int
    stamp: tuple | None  # (size, mtime_ns) of the file it came from, None for put() entries
    path: str | None


def state_dict_bytes(state_dict: Mapping) -> int:
    """Bytes held by the tensors of a state dict (shared storages counted once)."""
    seen, total = set(), 0
    for t in state_dict.values():
        if not hasattr(t, "untyped_storage"):
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _stamp(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class ModelCache:
    """``max_models``: at most this many state dicts (0: cache nothing; None: no count limit);
    ``max_bytes``: at most this many bytes of tensors (None: no byte limit). A single model
    larger than ``max_bytes`` is returned but not kept (unless protected)."""

    def __init__(self, max_models: int | None = 2, max_bytes: int | None = None):
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._protected: Counter[str] = Counter()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    # -- keys ---------------------------------------------------------------------------------
    @staticmethod
    def key(name: str | os.PathLike) -> str:
        """The cache key of a model: its resolved path when it names an existing file, else the name."""
        text = os.fspath(name)
        path = Path(text)
        if path.is_file():
            return str(path.resolve())
        return text

    # -- reading --------------------------------------------------------------------------------
    def get(self, name: str | os.PathLike, loader: Callable[[str], Mapping] | None = None) -> dict:
        """The state dict of ``name`` (a file path, or a name given to ``put``): from RAM when cached
        and unchanged on disk, else read with ``loader(path)`` (default: every tensor of the file,
        copied into memory) and kept as capacity allows."""
        key = self.key(name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (entry.path is None or entry.stamp == _stamp(entry.path)):
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.state_dict
            if entry is not None:  # the file changed since it was read
                del self._entries[key]
            self.misses += 1
        is_file = Path(key).is_file()
        if loader is None and not is_file:
            from ..errors import ModelFileError

            raise ModelFileError(f"Model {os.fspath(name)!r} is neither a file nor in the model cache.")
        stamp = _stamp(key) if is_file else None
        state_dict = dict((loader or _read_file)(key))
        self._store(key, state_dict, stamp, key if is_file else None)
        return state_dict

    def source(self, name: str | os.PathLike):
        """A merge source (``supermerger.io.sources.DictSource``) over the cached state dict of a file;
        it keeps the file's path, so the merge history records and hashes the file as usual."""
        from ..io.sources import DictSource, model_name

        key = self.key(name)
        sd = self.get(key)
        return DictSource(sd, name=model_name(Path(key)), path=key if Path(key).is_file() else None)

    def put(self, name: str | os.PathLike, state_dict: Mapping) -> None:
        """Keep ``state_dict`` under ``name`` (replacing an entry of that name)."""
        key = self.key(name)
        path = key if Path(key).is_file() else None
        self._store(key, dict(state_dict), _stamp(path) if path else None, path)

    def _store(self, key: str, state_dict: dict, stamp, path) -> None:
        entry = _Entry(state_dict, state_dict_bytes(state_dict), stamp, path)
        with self._lock:
            self._entries.pop(key, None)
            if self.max_models == 0 and not self._protected[key]:
                return
            if self.max_bytes is not None and entry.nbytes > self.max_bytes and not self._protected[key]:
                self._evict()  # it cannot fit: keep nothing of it, and make no room for it
                return
            self._entries[key] = entry
            self._evict(keep=key)

    def _evict(self, keep: str | None = None) -> list[str]:
        """Drop least recently used entries until the limits hold; protected entries and ``keep`` (the
        one just read) stay, even when protected models alone fill the capacity."""
        dropped = []
        for key in list(self._entries):
            if self._fits():
                break
            if self._protected[key] or key == keep:
                continue
            del self._entries[key]
            dropped.append(key)
        return dropped

    def _fits(self) -> bool:
        if self.max_models is not None and len(self._entries) > max(self.max_models, 0):
            return False
        if self.max_bytes is not None and self.nbytes > self.max_bytes:
            return False
        return True

    # -- state ----------------------------------------------------------------------------------
    def __contains__(self, name) -> bool:
        with self._lock:
            return self.key(name) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def set_capacity(self, max_models: int | None = None, max_bytes: int | None = None) -> None:
        with self._lock:
            self.max_models, self.max_bytes = max_models, max_bytes
            self._evict()

    # -- XY plots: models held constant -----------------------------------------------------------
    @contextlib.contextmanager
    def protect(self, names: Iterable[str | os.PathLike]) -> Iterator[None]:
        """While inside, the models ``names`` are never evicted (nesting and repeats are counted).
        An XY plot wraps its run in this with the models it holds constant."""
        keys = [self.key(n) for n in names]
        with self._lock:
            self._protected.update(keys)
        try:
            yield
        finally:
            with self._lock:
                self._protected.subtract(keys)
                self._protected = +self._protected  # drop zero counts
                self._evict()

    def is_protected(self, name) -> bool:
        return self._protected[self.key(name)] > 0

    # -- freeing ----------------------------------------------------------------------------------
    def discard(self, name) -> bool:
        with self._lock:
            return self._entries.pop(self.key(name), None) is not None

    def clear(self, *, protected: bool = False) -> int:
        """"Clear cache": drop every entry (protected ones only with ``protected=True``); returns how
        many were dropped. Memory is returned to the system once no one else holds the tensors."""
        with self._lock:
            keys = [k for k in self._entries if protected or not self._protected[k]]
            for k in keys:
                del self._entries[k]
        gc.collect()
        return len(keys)


def _read_file(path: str) -> dict:
    from ..io.sources import open_model

    with open_model(path) as src:
        return {k: src.tensor(k) for k in src.tensors}

"""Tensor sources: where the executor gets input tensors from.

``open_model`` gives a SafetensorsSource (header parsed, tensors read on demand, never the whole
file) or, for ``.ckpt``/``.pt``, a DictSource over a ``torch.load(weights_only=True)`` result. A
DictSource also wraps any in-memory state dict (a host's cache, a library caller's dict).

Every source exposes the same small surface: ``tensors`` (name -> TensorInfo), ``metadata``,
``chunk(key, start, count, buf)`` (a flat torch tensor of ``count`` elements, read into ``buf``
for file sources) and ``tensor(key)`` (a private copy for file sources). A SafetensorsSource
also has ``view(key, start, count)``: the elements as a read-only tensor over the file's own
pages (a memory map), which the executor uses — it saves copying every input byte once
(about a fifth of the CPU time of a weight sum) and needs no buffers.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import re
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

from ..errors import ModelFileError
from .safetensors_format import DTYPES, TensorInfo, read_header

# Old SD1 checkpoints name the CLIP text model without its `text_model.` level.
_OLD_CLIP = "cond_stage_model.transformer."
_OLD_CLIP_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


def canonical_key(key: str) -> str:
    if key.startswith(_OLD_CLIP):
        rest = key[len(_OLD_CLIP):]
        if rest.startswith(_OLD_CLIP_PARTS):
            return _OLD_CLIP + "text_model." + rest
    return key


def torch_dtype(code: str):
    import torch

    return getattr(torch, DTYPES[code][1])


def dtype_code(torch_dtype_) -> str:
    name = str(torch_dtype_).replace("torch.", "")
    for code, (_, tname) in DTYPES.items():
        if tname == name:
            return code
    raise ModelFileError(f"Unsupported tensor dtype {name}.")


def model_name(path: str | os.PathLike) -> str:
    """Display name of a checkpoint: its file name without the extension."""
    name = Path(path).name
    for ext in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


class Source:
    name: str
    path: Path | None
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    buffered = False  # chunk() reads into the caller's buffer (True) or returns a view of memory (False)
    mapped = False  # view() gives read-only tensors over a memory map of the file

    def chunk(self, key: str, start: int, count: int, buf=None):
        raise NotImplementedError

    def tensor(self, key: str):
        """The whole tensor with its shape and dtype (a private copy for file sources)."""
        info = self.tensors[key]
        buf = bytearray(max(info.nbytes, 1))
        return self.chunk(key, 0, info.numel, buf).view(info.shape)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsSource(Source):
    buffered = True

    def __init__(self, path: str | os.PathLike, name: str | None = None, mapped: bool = True):
        self.mapped = mapped
        self.path = Path(path)
        self.name = name or model_name(self.path)
        header = read_header(self.path)
        self.tensors = {}
        for key, info in header.tensors.items():
            self.tensors.setdefault(canonical_key(key), info)
        self.metadata = header.metadata
        self._file = None

    def _f(self):
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)
            if hasattr(os, "posix_fadvise"):  # a larger kernel readahead window for our sequential reads
                with contextlib.suppress(OSError):
                    os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return self._file

    def read_bytes(self, key: str, start_byte: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes of tensor ``key`` from byte ``start_byte`` on (thread-safe)."""
        f = self._f()
        pos = self.tensors[key].offset + start_byte
        done = 0
        n = len(out)
        while done < n:
            got = _pread_into(f, out[done:], pos + done)
            if not got:
                raise ModelFileError(f"{str(self.path)!r} ended early while reading {key!r}: "
                                     "the file was truncated or replaced during the merge.")
            done += got

    def chunk(self, key: str, start: int, count: int, buf=None):
        """Elements [start, start+count) of ``key`` as a flat tensor read into ``buf`` (a bytearray
        or a uint8 tensor at least that large; a new buffer when None)."""
        import torch

        info = self.tensors[key]
        dtype = torch_dtype(info.dtype)
        nbytes = count * info.itemsize
        if isinstance(buf, torch.Tensor):
            self.read_bytes(key, start * info.itemsize, memoryview(buf.numpy())[:nbytes])
            return buf[:nbytes].view(dtype)
        if buf is None or len(buf) < nbytes:
            buf = bytearray(max(nbytes, 1))
        mv = memoryview(buf)[:nbytes]
        self.read_bytes(key, start * info.itemsize, mv)
        if nbytes == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(mv, dtype=dtype, count=count)

    def view(self, key: str, start: int, count: int):
        """Elements [start, start+count) of ``key`` as a flat, read-only tensor over the file's
        pages (mapped and faulted in now, on the calling thread; unmapped when the tensor dies).
        Never write into it (the process would crash): copy first."""
        import torch

        info = self.tensors[key]
        dtype = torch_dtype(info.dtype)
        nbytes = count * info.itemsize
        if nbytes == 0:
            return torch.empty(0, dtype=dtype)
        pos = info.offset + start * info.itemsize
        fd = self._f().fileno()
        if os.fstat(fd).st_size < pos + nbytes:  # a truncated file would crash the process on access
            raise ModelFileError(f"{str(self.path)!r} ended early while reading {key!r}: "
                                 "the file was truncated or replaced during the merge.")
        lo = pos - pos % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(fd, pos + nbytes - lo, offset=lo, **_MAP_READ)
        _quiet_readonly_warning()
        return torch.frombuffer(m, dtype=dtype, count=count, offset=pos - lo)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


if hasattr(mmap, "MAP_POPULATE"):  # fault the pages in at once, in the (reader) thread that maps them
    _MAP_READ = dict(flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
else:
    _MAP_READ = dict(access=mmap.ACCESS_READ)
_warning_filtered = False


def _quiet_readonly_warning() -> None:
    """torch warns that a tensor over a read-only buffer could be written to; ours are never."""
    global _warning_filtered
    if not _warning_filtered:
        warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning,
                                module=re.escape(__name__))
        _warning_filtered = True


_seek_lock = threading.Lock()


def _pread_into(f, mv: memoryview, pos: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(f.fileno(), [mv], pos)
    with _seek_lock:  # Windows: no positional read in os; keep seek + read together
        f.seek(pos)
        return f.readinto(mv)


class DictSource(Source):
    """A source over tensors already in memory (a .ckpt load, a host cache, a caller's dict)."""

    def __init__(self, state_dict: Mapping, name: str = "model", path: str | os.PathLike | None = None,
                 metadata: Mapping[str, str] | None = None):
        import torch

        self.name = name
        self.path = Path(path) if path else None
        self.metadata = dict(metadata or {})
        self._sd: dict = {}
        self.tensors = {}
        for key, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                continue
            key = canonical_key(str(key))
            if key in self._sd:
                continue
            self._sd[key] = value
            self.tensors[key] = TensorInfo(dtype_code(value.dtype), tuple(value.shape))

    def chunk(self, key: str, start: int, count: int, buf: bytearray | None):
        t = self._sd[key]
        flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
        return flat[start:start + count]

    def tensor(self, key: str):
        return self._sd[key]


def load_ckpt(path: str | os.PathLike) -> dict:
    """Load a pickle checkpoint safely: torch.load(weights_only=True) or refuse."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {str(path)!r} does not exist.")
    try:
        is_zip = zipfile.is_zipfile(path)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        text = str(e)
        code = "Unsupported global" in text or "GLOBAL" in text
        detail = next((ln.strip() for ln in text.splitlines()[1:] if ln.strip() and "error" not in ln.lower()), "")
        why = ("the pickle contains Python objects other than tensors, and loading it could run code from the file"
               if code else "it is not a PyTorch checkpoint that the safe (weights-only) loader can read")
        raise ModelFileError(
            f"Refused to load {str(path)!r}: {why}" + (f" ({detail})" if detail else "")
            + ". Nothing from it was executed.",
            "Use a .safetensors version of this model, or convert it with a tool you trust.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFileError(f"{str(path)!r} is not a readable checkpoint or is truncated ({first}).") from None
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelFileError(f"{str(path)!r} does not contain a state dict (found {type(obj).__name__}).")
    return obj


def open_model(path: str | os.PathLike) -> Source:
    """Open a checkpoint file by extension: .safetensors streams; .ckpt/.pt/.pth load weights-only."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsSource(path)
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return DictSource(load_ckpt(path), name=model_name(path), path=path)
    if not path.exists():
        raise ModelFileError(f"Model file {str(path)!r} does not exist.")
    raise ModelFileError(f"{str(path)!r}: unknown model file type {suffix or '(no extension)'!r}.",
                         "Use .safetensors (preferred) or .ckpt/.pt files.")

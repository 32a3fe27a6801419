"""LoRA dimensions, type and family of a whole folder, from file headers only (spec §10.8).

Results are cached in ``loradims.json`` in the data folder, keyed by path, size and mtime, so
only new or changed files are read again.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SuperMergerError
from ..paths import data_dir
from .formats import LORA_EXTS, LoraFile, NotALoraError, load_lora
from .keymap import detect_lora_arch

NOT_A_LORA = "not a LoRA"
VERSION_LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


@dataclass(frozen=True)
class LoraInfo:
    name: str
    path: str
    dim: int | None  # the rank most modules have (None: unknown / no rank, e.g. full)
    conv_dim: int | None  # LoCon: the rank of the 3×3 conv modules
    type: str  # LoRA, LoCon, LoHa, LoKr, full, unknown
    version: str  # SD1, SD2, SDXL, Flux, unknown
    modules: int = 0
    error: str = ""

    @property
    def is_lora(self) -> bool:
        """False for a file that is no LoRA at all (a checkpoint, an embedding beside the LoRAs)."""
        return self.error != NOT_A_LORA

    def label(self) -> str:
        """``name[dim,type,version]`` as the original's list shows it (type omitted for LoRA)."""
        parts = [str(self.dim) if self.dim is not None else "?"]
        if self.type != "LoRA":
            parts.append(self.type)
        parts.append(self.version)
        return f"{self.name}[{','.join(parts)}]"


def inspect_lora(path: str | os.PathLike) -> LoraInfo:
    """Dims, type and family of one LoRA file (header only for .safetensors)."""
    path = Path(path)
    name = path.stem
    try:
        with load_lora(path) as lora:
            return _info(lora, name, str(path))
    except NotALoraError:
        return LoraInfo(name, str(path), None, None, "unknown", "unknown", 0, NOT_A_LORA)
    except SuperMergerError as e:
        return LoraInfo(name, str(path), None, None, "unknown", "unknown", 0, e.message)


def _info(lora: LoraFile, name: str, path: str) -> LoraInfo:
    mods = [m for m in lora.modules.values() if m.supported]
    types = Counter(m.type for m in mods)
    if not types:
        return LoraInfo(name, path, None, None, "unknown", "unknown", len(lora.modules), "no supported modules")
    kind = types.most_common(1)[0][0]
    conv = [m.rank for m in mods if m.is_conv and m.rank]
    linear = [m.rank for m in mods if not m.is_conv and m.rank]
    label = {"lora": "LoCon" if conv else "LoRA", "loha": "LoHa", "lokr": "LoKr", "full": "full"}[kind]
    try:
        version = VERSION_LABELS[detect_lora_arch(mods, lora.metadata, name).id]
    except SuperMergerError:
        version = "Flux" if any("single_blocks" in m.name or "double_blocks" in m.name for m in mods) else "unknown"
    dim = Counter(linear or conv).most_common(1)[0][0] if (linear or conv) else None
    conv_dim = Counter(conv).most_common(1)[0][0] if conv else None
    return LoraInfo(name, path, dim, conv_dim, label, version, len(lora.modules))


def _cache_path() -> Path:
    return data_dir() / "loradims.json"


def lora_dims(folder: str | os.PathLike, use_cache: bool = True, recursive: bool = True) -> list[LoraInfo]:
    """:class:`LoraInfo` of every LoRA file in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        from .formats import LoraFileError

        raise LoraFileError(f"LoRA folder {str(folder)!r} does not exist.")
    files = sorted((p for p in (folder.rglob("*") if recursive else folder.iterdir())
                    if p.is_file() and p.suffix.lower() in LORA_EXTS), key=lambda p: (p.stem.lower(), str(p)))
    cache = _load_cache() if use_cache else {}
    changed = False
    out = []
    for p in files:
        st = p.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        key = str(p.resolve())
        entry = cache.get(key)
        if entry and entry.get("stamp") == stamp:
            try:
                out.append(LoraInfo(**entry["info"]))
                continue
            except TypeError:  # written by another version: read the file again
                pass
        info = inspect_lora(p)
        out.append(info)
        cache[key] = {"stamp": stamp, "info": asdict(info)}
        changed = True
    if use_cache and changed:
        from ..io.atomic import atomic_write_text

        try:
            atomic_write_text(_cache_path(), json.dumps(cache, indent=0, ensure_ascii=False))
        except SuperMergerError:  # a read-only data folder must not break the listing
            pass
    return out


def _load_cache() -> dict:
    try:
        data = json.loads(_cache_path().read_text("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_csv(infos: list[LoraInfo], path: str | os.PathLike) -> None:
    """Rows ``name,dim,type,version`` (the original's loradims.csv) plus conv_dim and path."""
    import csv
    import io

    from ..io.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["name", "dim", "type", "version", "conv_dim", "path"])
    for i in infos:
        w.writerow([i.name, i.dim if i.dim is not None else "", i.type, i.version,
                    i.conv_dim if i.conv_dim is not None else "", i.path])
    atomic_write_text(path, buf.getvalue())


# -- the LoRA tab's list filters -------------------------------------------------------------------
TYPE_GROUPS = ("LoRA", "LoCon", "Others")


def type_group(info: LoraInfo) -> str:
    """The tab's type filter: LoRA, LoCon, or Others (LoHa, LoKr, full, unreadable)."""
    return info.type if info.type in ("LoRA", "LoCon") else "Others"


def dim_label(info: LoraInfo) -> str:
    """``"SD1 32"``: a family and a dim, the unit of the tab's dim filter (``?``: no known dim)."""
    return f"{info.version} {info.dim if info.dim is not None else '?'}"


def dim_choices(infos: list[LoraInfo]) -> list[str]:
    """Every family-and-dim label of ``infos``, by family (SD1, SD2, SDXL, Flux, unknown) then dim."""
    order = {v: i for i, v in enumerate(list(VERSION_LABELS.values()) + ["Flux", "unknown"])}

    def key(info: LoraInfo):
        return order.get(info.version, len(order)), info.version, info.dim is None, info.dim or 0

    return list(dict.fromkeys(dim_label(i) for i in sorted(infos, key=key)))


def filter_infos(infos: list[LoraInfo], types=None, dims=None) -> list[LoraInfo]:
    """The LoRAs of the chosen type groups and family-and-dim labels (an empty choice: all)."""
    types, dims = set(types or ()), set(dims or ())
    return [i for i in infos if (not types or type_group(i) in types) and (not dims or dim_label(i) in dims)]

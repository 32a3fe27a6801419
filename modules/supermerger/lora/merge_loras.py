"""Merge LoRAs into one LoRA (spec §10.4), and Extract from two LoRAs (§10.6).

Modules of different files that change the same weight are merged together, whatever each file
calls them (kohya LDM or diffusers names, PEFT names). Ways to merge, per module:

* ``sum`` (the original's default, kohya's): up = Σ fᵢ·upᵢ, down = Σ fᵢ·downᵢ, alpha of the first
  file, so all files must share each module's dim. f = sqrt(alphaᵢ/alpha₀)·r, so a LoRA alone
  comes out at r²; with ``same_to_strength`` f = sqrt(|r|) on up and sign(r)·sqrt(|r|) on down,
  exactly r. Where two files change the same module the product has cross terms
  (upᵢ·downⱼ): the sum is the original's approximation, not the two LoRAs applied together.
* ``concat``: the files' ranks side by side (dim = Σ dims, alpha = dim): exactly every LoRA at its
  ratio, any dims.
* ``svd``: ΔW = Σ rᵢ·ΔWᵢ, then re-ranked by SVD to ``dim`` (a number, or ``auto``: the largest
  contributing rank of the module); exact at full rank; any types (LoHa and LoKr become LoRA).
* a single LoHa / LoKr / LoRA file alone is scaled exactly by r on one factor of each module.

``concat`` and ``svd`` are always linear in the ratio (``same_to_strength`` only changes ``sum``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .. import arch as archmod
from ..arch import Architecture
from ..errors import RecipeError
from ..io.atomic import check_not_an_input
from .blocks import LoraSpec, block_ratios, ratios_text
from .files import open_loras
from .formats import LoraFile, LoraMismatchError, LoraModule
from .keymap import detect_lora_arch, keymap_for, lookup_name
from .save import check_save_options, merged_metadata, put_module, save_lora, source_metadata
from .svd import check_method, factorize, max_rank

MODES = ("auto", "sum", "concat", "svd")


@dataclass
class Entry:
    lora: int
    module: LoraModule
    ratio: float


@dataclass
class Group:
    """The modules of all files that change one weight."""

    name: str  # output module name (kohya form)
    entries: list[Entry] = field(default_factory=list)


@dataclass
class LoraResult:
    arch: Architecture
    mode: str
    state_dict: dict
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _group(loras: list[tuple[LoraSpec, LoraFile]], arch: Architecture, presets, notices: list[str],
           unmatched: dict[str, list[str]]) -> dict[tuple, Group]:
    km = keymap_for(arch.id)
    groups: dict[tuple, Group] = {}
    for i, (spec, lora) in enumerate(loras):
        ratios = block_ratios(spec, arch, presets)
        for m in lora.modules.values():
            if not m.supported:
                unmatched.setdefault(lora.name, []).append(f"{m.name} ({m.type})")
                continue
            target = km.lookup(m.name)
            if target is None:  # kept, at the item's plain ratio (no block is known)
                unmatched.setdefault(lora.name, []).append(m.name)
                gid, ratio = ("?", lookup_name(m.name, km)), spec.ratio
            else:
                gid, ratio = target.id, ratios[target.block]
            groups.setdefault(gid, Group(lookup_name(m.name, km))).entries.append(Entry(i, m, ratio))
    for name, mods in unmatched.items():
        notices.append(f"LoRA {name}: {len(mods)} modules not matched to {arch.label} weights: kept at the "
                       "plain ratio where their type is supported: " + ", ".join(mods[:5]) + (" ..." if len(mods) > 5 else ""))
    return groups


def merge_loras(specs, output=None, *, mode: str = "auto", dim: int | str | None = None,
                same_to_strength: bool = False, arch: str | None = None, precision: str = "fp16",
                metadata_mode: str = "create new", svd: str = "full", seed: int = 0,
                clamp_quantile: float | None = 0.99, device: str = "cpu", overwrite: bool = False,
                lora_dirs=None, presets: Mapping[str, str] | None = None,
                output_name: str | None = None) -> LoraResult:
    """Merge LoRAs (``"a:0.8,b:0.5:OUTD"``, LoraSpecs or ``(file_or_state_dict, ratio[, blocks])``)
    into one LoRA; written to ``output`` (.safetensors) if given, always in ``result.state_dict``."""
    t0 = time.perf_counter()
    if mode not in MODES:
        raise RecipeError(f"Unknown LoRA merge mode {mode!r}.", "Use auto, sum, concat or svd.")
    dim = _check_dim(dim)
    check_method(svd)
    check_save_options(output, overwrite, precision, metadata_mode)
    loras = open_loras(specs, lora_dirs)
    try:
        if output is not None:
            check_not_an_input(output, [(f"LoRA {f.name!r}", f.path) for _, f in loras])
        a = _arch_of(loras, arch)
        notices: list[str] = []
        unmatched: dict[str, list[str]] = {}
        groups = _group(loras, a, presets, notices, unmatched)
        how = _choose(mode, dim, loras, groups)
        tensors: dict = {}
        for g in groups.values():
            if how == "scale":
                _scale_single(g, loras, tensors, device)
            elif how == "sum":
                _sum(g, loras, tensors, same_to_strength, device)
            elif how == "concat":
                _concat(g, loras, tensors, device)
            else:
                _svd(g, loras, tensors, dim, svd, seed, clamp_quantile, device)
        if how == "sum" and any(len({e.lora for e in g.entries}) > 1 for g in groups.values()):
            notices.append("sum merge: where two LoRAs change the same module, up and down are summed "
                           "(the original's way); the product has cross terms. --mode concat or --dim give "
                           "the exact sum of the LoRAs.")
        name = output_name or (Path(output).stem if output else "merged")
        sources = [source_metadata(f.metadata, f.name, s.ratio, ratios_text(block_ratios(s, a, presets), a))
                   for s, f in loras]
        meta = merged_metadata(sources, metadata_mode, name, precision)
        meta.update(_network_keys(tensors, how, meta))
        meta["supermerger_lora_merge"] = json.dumps({
            "mode": how, "dim": dim, "same_to_strength": same_to_strength, "svd": svd if how == "svd" else None,
            "loras": [{"name": f.name, "ratio": s.ratio, "blocks": s.blocks} for s, f in loras]}, ensure_ascii=False)
        result = LoraResult(a, how, tensors, unmatched=unmatched, notices=notices)
        if output is not None:
            result.path, result.metadata = save_lora(tensors, output, meta, precision, overwrite)
        else:
            result.metadata = meta
    finally:
        for _, f in loras:
            f.close()
    result.seconds = time.perf_counter() - t0
    return result


def _check_dim(dim):
    if dim is None or dim == "auto":
        return dim
    if isinstance(dim, str):
        if dim.strip().lower() in ("no", "none", ""):
            return None
        if not dim.strip().isdigit():
            raise RecipeError(f"Dimension {dim!r}: give a number (e.g. 64), auto, or nothing.")
        dim = int(dim)
    if int(dim) < 1:
        raise RecipeError(f"Dimension {dim}: must be at least 1.")
    return int(dim)


def _arch_of(loras: list[tuple[LoraSpec, LoraFile]], arch: str | None) -> Architecture:
    if arch:
        return archmod.get(arch)
    found = [detect_lora_arch(f.modules.values(), f.metadata, f"LoRA {f.name!r}") for _, f in loras]
    # SD1 and SD2 LoRAs share names; a shape-less decision (tiny files) may say sd1 for either
    if len({x.id for x in found} - ({"sd1"} if "sd2" in {x.id for x in found} else set())) > 1:
        listing = ", ".join(f"{f.name} ({x.label})" for (_, f), x in zip(loras, found))
        raise LoraMismatchError(f"These LoRAs are for different model families: {listing}.",
                                "Merge LoRAs of one family (SD1, SD2 or SDXL) at a time.")
    return next((x for x in found if x.id == "sd2"), found[0])


def _choose(mode: str, dim, loras, groups: dict[tuple, Group]) -> str:
    lycoris = [f.name for _, f in loras if any(m.type in ("loha", "lokr", "full") for m in f.modules.values())]
    if mode == "svd" or isinstance(dim, int):
        return "svd"
    if mode == "concat":
        if lycoris:
            raise RecipeError(f"concat merges LoRA/LoCon modules only; {lycoris[0]} has LoHa/LoKr/full modules.",
                              "Give --dim N (or auto) to re-rank everything into a LoRA through SVD.")
        return "concat"
    if lycoris:
        if len(loras) == 1 and dim is None:
            return "scale"
        if dim is None:
            raise RecipeError(f"LoHa / LoKr LoRAs ({', '.join(lycoris)}) cannot be summed with other LoRAs.",
                              "Give --dim N (or auto) to re-rank them all into one LoRA through SVD.")
        return "svd"
    differ = [g.name for g in groups.values() if len({_factor_shapes(e.module) for e in g.entries}) > 1]
    if differ:
        if dim == "auto":
            return "svd"
        if mode == "sum" or dim is None:
            raise RecipeError(f"The LoRAs have different dims (e.g. module {differ[0]}), so they cannot be summed.",
                              "Give --dim auto (re-rank to the largest) or --dim N, or --mode concat.")
    return "sum"


def _factor_shapes(m: LoraModule) -> tuple:
    return tuple(sorted((p, s) for p, s in m.shapes.items() if p != "alpha"))


def _alpha(f: LoraFile, m: LoraModule) -> float:
    a = f.alpha(m)
    return float(m.rank) if a is None else a


def _sum(g: Group, loras, tensors: dict, same_to_strength: bool, device: str) -> None:
    first = loras[g.entries[0].lora][1]
    base_alpha = _alpha(first, g.entries[0].module)
    up = down = mid = None
    for e in g.entries:
        f = loras[e.lora][1]
        parts = f.factors(e.module, device)
        s = math.sqrt(_alpha(f, e.module) / base_alpha) if base_alpha else 1.0
        if same_to_strength:
            fu = s * math.sqrt(abs(e.ratio))
            fd = math.copysign(fu, e.ratio) if e.ratio else 0.0
        else:
            fu = fd = s * e.ratio
        up = parts["up"] * fu if up is None else up.add_(parts["up"], alpha=fu)
        down = parts["down"] * fd if down is None else down.add_(parts["down"], alpha=fd)
        if "mid" in parts:
            mid = parts["mid"] if mid is None else mid.add_(parts["mid"])
    put_module(tensors, g.name, up, down, base_alpha, mid)


def _concat(g: Group, loras, tensors: dict, device: str) -> None:
    import torch

    ups, downs = [], []
    for e in g.entries:
        f = loras[e.lora][1]
        parts = f.factors(e.module, device)
        if "mid" in parts:
            raise RecipeError(f"Module {g.name}: Tucker (lora_mid) LoCon modules cannot be concatenated.",
                              "Use --dim N (or auto) to re-rank through SVD.")
        fu = math.sqrt(abs(e.ratio) * f.scale(e.module))
        ups.append(parts["up"] * fu)
        downs.append(parts["down"] * math.copysign(fu, e.ratio))
    ups = [u.reshape(u.shape[0], u.shape[1], *([1] * (downs[0].ndim - 2))) for u in ups]
    up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
    put_module(tensors, g.name, up, down, down.shape[0])


def _svd(g: Group, loras, tensors: dict, dim, method: str, seed: int, clamp, device: str) -> None:
    total = None
    ranks = []
    for e in g.entries:
        f = loras[e.lora][1]
        delta = f.delta(e.module, device)
        total = delta.mul_(e.ratio) if total is None else total.add_(delta.reshape(total.shape), alpha=e.ratio)
        ranks.append(_effective_rank(e.module))
    rank = dim if isinstance(dim, int) else max(ranks)
    rank = min(rank, max_rank(tuple(total.shape)))
    up, down = factorize(total, rank, method, seed, clamp)
    put_module(tensors, g.name, up.cpu(), down.cpu(), up.shape[1])


def _effective_rank(m: LoraModule) -> int:
    full = max_rank(m.delta_shape())
    r = m.rank
    if m.type == "lora" and r:
        return min(r, full)
    if m.type == "loha" and r:
        return min(r * r, full)  # a Hadamard product of two rank-r matrices has rank up to r²
    return full


def _scale_single(g: Group, loras, tensors: dict, device: str) -> None:
    """One file alone: every tensor copied, one factor of each module times the ratio (exact)."""
    e = g.entries[0]
    f = loras[e.lora][1]
    m = e.module
    scaled = {"lora": ("up",), "loha": ("w1a",), "lokr": ("k1", "k1a"), "full": ("diff",)}[m.type]
    done = False
    for part, key in m.parts.items():
        t = f.source.tensor(key).to(device)
        if not done and part in scaled:
            t = t.float() * e.ratio
            done = True
        tensors[key] = t


def _network_keys(tensors: dict, how: str, meta: dict) -> dict[str, str]:
    """ss_network_dim / ss_network_alpha of what was written, when the merge changed the dims."""
    if how not in ("svd", "concat"):
        return {}
    ranks = [t.shape[0] for k, t in tensors.items() if k.endswith(".lora_down.weight")]
    if not ranks:
        return {}
    common = max(set(ranks), key=ranks.count)
    out = {"ss_network_dim": str(common), "ss_network_alpha": str(common)}
    if "ss_network_module" not in meta or how == "svd":
        out["ss_network_module"] = "networks.lora"
    return out


# -- Extract from two LoRAs (§10.6) ----------------------------------------------------------------

def extract_loras(specs, output=None, *, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0,
                  same_to_strength: bool = False, arch: str | None = None, precision: str = "fp16",
                  metadata_mode: str = "create new", device: str = "cpu", overwrite: bool = False,
                  lora_dirs=None, presets: Mapping[str, str] | None = None,
                  output_name: str | None = None) -> LoraResult:
    """For the first two LoRAs a and b (each scaled alone by its ratio / blocks, as ``sum`` does),
    every factor becomes lerp(a, b, α)·lerp(d, 1−d, β), d = ((cos(a, b along the last dim) + 1)/2)^γ:
    what b adds that a lacks (β = 1), or what they share (β = 0)."""
    from types import SimpleNamespace

    from ..merge.methods_original import extract

    t0 = time.perf_counter()
    check_save_options(output, overwrite, precision, metadata_mode)
    loras = open_loras(specs, lora_dirs)
    try:
        if output is not None:
            check_not_an_input(output, [(f"LoRA {f.name!r}", f.path) for _, f in loras])
        if len(loras) < 2:
            raise RecipeError("Extract from two LoRAs needs two LoRAs (the first two items are used).")
        loras = loras[:2]
        a = _arch_of(loras, arch)
        notices: list[str] = []
        unmatched: dict[str, list[str]] = {}
        groups = _group(loras, a, presets, notices, unmatched)
        tensors: dict = {}
        skipped = 0
        ctx = SimpleNamespace(gamma=gamma)
        for g in groups.values():
            by_file = {e.lora: e for e in g.entries}
            if set(by_file) != {0, 1} or any(e.module.type != "lora" for e in g.entries):
                skipped += 1
                continue
            if _factor_shapes(by_file[0].module) != _factor_shapes(by_file[1].module):
                raise RecipeError(f"Module {g.name}: the two LoRAs have different dims; extract needs equal dims.")
            scaled = []
            for i in (0, 1):  # each LoRA alone, at its ratio and block weights
                alone: dict = {}
                _sum(Group(g.name, [by_file[i]]), loras, alone, same_to_strength, device)
                scaled.append(alone)
            a_t, b_t = scaled
            alpha_key = f"{g.name}.alpha"
            s_b = math.sqrt(float(b_t[alpha_key]) / float(a_t[alpha_key]))  # b at a's alpha
            for key, x in a_t.items():
                if key == alpha_key:
                    tensors[key] = x
                else:
                    tensors[key] = extract(x.new_zeros(x.shape), x.clone(), b_t[key] * s_b, alpha, beta, ctx)
        if skipped:
            notices.append(f"{skipped} modules are not LoRA modules present in both files; left out.")
        name = output_name or (Path(output).stem if output else "extracted")
        sources = [source_metadata(f.metadata, f.name, s.ratio, ratios_text(block_ratios(s, a, presets), a))
                   for s, f in loras]
        meta = merged_metadata(sources, metadata_mode, name, precision)
        result = LoraResult(a, "extract", tensors, unmatched=unmatched, notices=notices)
        if output is not None:
            result.path, result.metadata = save_lora(tensors, output, meta, precision, overwrite)
        else:
            result.metadata = meta
    finally:
        for _, f in loras:
            f.close()
    result.seconds = time.perf_counter() - t0
    return result

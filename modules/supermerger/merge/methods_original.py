"""The calculation modes of the original extension (spec §2), as pure per-tensor functions.

Every function has the calcmode signature ``fn(a, b, c, alpha, beta, ctx)``: ``a``, ``b``, ``c``
are float32 tensors of one key (scratch copies the function may overwrite; ``c`` is None when
the mode has no model C), ``alpha`` / ``beta`` are that key's ratios after block weights and
elemental, ``ctx`` is the key's MergeContext (key name, mode, gamma, prepass stats, seed). The
result is a float32 tensor of the same shape; the executor rounds it once to the output dtype.

Deliberate differences from the original's code (its evident intent, not its accidents):
- zero-norm tensors give similarity 0 in cosineA/B instead of NaN weights;
- tensor2 slices dim 1 only when it also computes its indices from dim 1 (shape[1] > 100);
- ``plus random`` draws from a generator seeded by the recipe's seed and the key name.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from . import ndfilters
from .seeds import key_generator

VAE_PREFIX = "first_stage_model."
SELF_SKIP = ("to_out", "proj_out", "norm")  # key substrings that self / plus random leave alone
TRAIN_DIFFERENCE_GAIN = 1.8


# -- cosineA / cosineB (spec §2.1) ---------------------------------------------------------------
#
# Everything cosine needs from a key is per "column" (dim 0 reduced, the other dims kept): the
# dot products of A and B and their squared norms. The original's steps — normalise along dim 0
# (F.normalize, eps 1e-12), cosine similarity along dim 0 (F.cosine_similarity, eps 1e-8), and a
# cosine of the flattened (normalised, for cosineA) tensors — are all functions of those three
# column sums, so each key is reduced once and no normalised copy of a tensor is ever made.
# The statistics pass keeps every key's similarity (one value per column: kilobytes per key),
# and the merge pass reuses it instead of reducing the key a second time.

NORMALIZE_EPS = 1e-12  # F.normalize's default
COSINE_EPS = 1e-8  # F.cosine_similarity's default


def _column_sums(a, b):
    """(Σ a·b, Σ a², Σ b²) over dim 0, shaped like the other dims (0-d for a 1-D key)."""
    x = a.reshape(a.shape[0], -1)
    y = b.reshape(b.shape[0], -1)
    rest = a.shape[1:]
    return ((x * y).sum(0).reshape(rest), (x * x).sum(0).reshape(rest), (y * y).sum(0).reshape(rest))


def _flat_cos(dot, nx2, ny2):
    """Cosine of two flattened tensors from their column sums (0 if either norm is zero)."""
    den = nx2.sum().sqrt() * ny2.sum().sqrt()
    num = dot.sum()
    return (num / den).where(den != 0, num.new_zeros(()))


def column_similarity(a, b, variant: str):
    """The similarities of one key: (per column, of the whole tensor), as cosineA / cosineB see them.

    cosineB: the plain column cosines and the cosine of the flattened tensors.
    cosineA: the same on tensors normalised along dim 0 — a normalised column has norm 1 (0 if it
    was zero), so its column cosines equal the raw ones, and its flattened cosine is the sum of
    the column cosines over √(columns of A) · √(columns of B)."""
    dot, nx2, ny2 = _column_sums(a, b)
    nx, ny = nx2.sqrt(), ny2.sqrt()
    if variant == "A":
        sx, sy = nx.clamp_min(NORMALIZE_EPS), ny.clamp_min(NORMALIZE_EPS)  # F.normalize's divisors
        dot, ux, uy = dot / (sx * sy), nx / sx, ny / sy  # column dots and norms after normalising
        cols = dot / (ux.clamp_min(COSINE_EPS) * uy.clamp_min(COSINE_EPS))
        return cols, _flat_cos(dot, ux * ux, uy * uy)
    cols = dot / (nx.clamp_min(COSINE_EPS) * ny.clamp_min(COSINE_EPS))
    return cols, _flat_cos(dot, nx2, ny2)


def stats_similarity(a, b, variant: str):
    """The per-key similarities that cosine's statistics pass collects (spec §2.1, Stage 0)."""
    cols, flat = column_similarity(a, b, variant)
    return cols if variant == "A" else (cols + flat) / 2.0


def cosine_stats_keys(plan):
    """Keys of the statistics pass: float tensors (not 0-d) in A and B alike whose name contains
    'model', except the VAE's."""
    a_src, b_src = plan.sources["A"], plan.sources["B"]
    for key, info in a_src.tensors.items():
        other = b_src.tensors.get(key)
        if "model" not in key or key.startswith(VAE_PREFIX) or other is None:
            continue
        if not info.is_float or not other.is_float or not info.shape or tuple(info.shape) != tuple(other.shape):
            continue
        yield key


def trimmed_range(values) -> tuple[float, float]:
    """min and max after dropping NaNs, then values under the 1st percentile, then values over the
    99th percentile of what is left (numpy 'midpoint' percentiles, as the original)."""
    import numpy as np

    sims = np.asarray(values, dtype=np.float64)
    sims = sims[~np.isnan(sims)]
    if sims.size:
        sims = sims[sims >= np.percentile(sims, 1, method="midpoint")]
    if sims.size:
        sims = sims[sims <= np.percentile(sims, 99, method="midpoint")]
    if not sims.size:
        return 0.0, 1.0
    return float(sims.min()), float(sims.max())


STATS_CACHE_SIZE = 2  # statistics of this many model pairs are kept (a few MB each)
_stats_cache: OrderedDict = OrderedDict()
_stats_lock = threading.Lock()


def _file_identity(src):
    """(path, size, mtime) of a source read from a file, None for one that is not (a live model)."""
    path = getattr(src, "path", None)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path), st.st_size, st.st_mtime_ns


def _cosine_prepass(plan, variant: str) -> dict:
    """The statistics pass, remembered per pair of unchanged files: the statistics depend on A
    and B only, so an XY plot or repeated Merge & Gen over ratios reads the models once for them."""
    ids = (_file_identity(plan.sources["A"]), _file_identity(plan.sources["B"]))
    key = (variant, *ids) if None not in ids else None
    if key is not None:
        with _stats_lock:
            if key in _stats_cache:
                _stats_cache.move_to_end(key)
                return _stats_cache[key]
    stats = _compute_cosine_stats(plan, variant)
    if key is not None:
        with _stats_lock:
            _stats_cache[key] = stats
            while len(_stats_cache) > STATS_CACHE_SIZE:
                _stats_cache.popitem(last=False)
    return stats


def _compute_cosine_stats(plan, variant: str) -> dict:
    import numpy as np

    parts = []
    sims = {}
    a_src, b_src = plan.sources["A"], plan.sources["B"]
    for key in cosine_stats_keys(plan):
        a = a_src.tensor(key).float()
        b = b_src.tensor(key).float()
        cols, flat = column_similarity(a, b, variant)
        sims[key] = (cols + flat) / 2.0  # what the merge pass needs from this key
        collected = cols if variant == "A" else sims[key]
        parts.append(collected.reshape(-1).double().numpy())
    smin, smax = trimmed_range(np.concatenate(parts) if parts else [])
    return {"smin": smin, "smax": smax, "sims": sims}


def cosine_a_prepass(plan) -> dict:
    return _cosine_prepass(plan, "A")


def cosine_b_prepass(plan) -> dict:
    return _cosine_prepass(plan, "B")


def _cosine_k(a, b, ctx, variant: str, shift: float):
    stats = ctx.stats
    c = (stats.get("sims") or {}).get(ctx.key)
    if c is None or tuple(c.shape) != tuple(a.shape[1:]):  # not in the statistics pass (or a part of the key)
        cols, flat = column_similarity(a, b, variant)
        c = (cols + flat) / 2.0
    span = stats["smax"] - stats["smin"]
    scaled = (c - stats["smin"]) / span if span > 0 else c.new_ones(c.shape)
    return (scaled - shift).clamp(0.0, 1.0).to(a.device)


def cosine_a(a, b, c, alpha, beta, ctx):
    """Keeps A's structure: the more similar A and B are, the more A is kept (normalised inputs)."""
    if a.ndim == 0:
        return a
    return b.lerp_(a, _cosine_k(a, b, ctx, "A", abs(alpha)))


def cosine_b(a, b, c, alpha, beta, ctx):
    """Like cosineA on the raw tensors, with alpha used as given (no abs)."""
    if a.ndim == 0:
        return a
    return b.lerp_(a, _cosine_k(a, b, ctx, "B", alpha))


# -- trainDifference (spec §2.2) -----------------------------------------------------------------

def train_difference(a, b, c, alpha, beta, ctx):
    """A + α·1.8·s·(B − C) with s = |B − A| / (|B − C| + |B − A|) (0 where both are 0).

    Where B equals C the addition is zero, so a key whose B and C are identical stays A.
    (The original's sign(B − C)·s·|B − C| is (B − C)·s: the same product, rounded once.)
    B and C are scratch copies: the work is done in them, with one temporary."""
    import torch

    diff = torch.sub(b, c, out=c)  # B − C
    share = b.sub_(a).abs_()  # |B − A|
    total = diff.abs().add_(share)
    share.div_(total).masked_fill_(total == 0, 0.0)
    return a.add_(diff.mul_(share).mul_(alpha * TRAIN_DIFFERENCE_GAIN))


# -- smoothAdd / smoothAdd MT (spec §2.3) --------------------------------------------------------

def smooth_add(a, b, c, alpha, beta, ctx):
    """A + α·gauss(median(B − C)): the difference, smoothed, added to A."""
    return a.add_(ndfilters.smooth(b.sub_(c), workers=1), alpha=alpha)


def smooth_add_mt(a, b, c, alpha, beta, ctx):
    """smoothAdd with the filters split across worker threads (one per CPU); identical results."""
    return a.add_(ndfilters.smooth(b.sub_(c), workers=os.cpu_count() or 1), alpha=alpha)


# -- extract (spec §2.4) -------------------------------------------------------------------------

def extract(a, b, c, alpha, beta, ctx):
    """A + lerp(B−A, C−A, α) · lerp(d, 1−d, β), d = ((cos(B−A, C−A along the last dim) + 1)/2)^γ.

    The cosine is F.cosine_similarity's (each norm at least 1e-8), from three sums along the last
    dim rather than from normalised copies of both differences."""
    shape = a.shape
    if a.ndim == 0:
        a, b, c = a.reshape(1), b.reshape(1), c.reshape(1)
    x = b.sub_(a)
    y = c.sub_(a)
    dot = (x * y).sum(-1, keepdim=True)
    nx = (x * x).sum(-1, keepdim=True).sqrt_().clamp_min_(COSINE_EPS)
    ny = (y * y).sum(-1, keepdim=True).sqrt_().clamp_min_(COSINE_EPS)
    cos = dot.div_(nx.mul_(ny)).clamp_(-1.0, 1.0)
    d = ((cos + 1.0) / 2.0).pow(ctx.gamma)
    return a.add_(x.lerp_(y, alpha).mul_(d.lerp(1.0 - d, beta))).reshape(shape)


# -- tensor / tensor2 (spec §2.5) ----------------------------------------------------------------

def _exchange(a, b, alpha: float, beta: float, axis: int):
    """Copy a band of slices along ``axis`` from B into A: [β, α+β) — or, past 1, where the band
    wraps around, everything except [α+β−1, β), which stays A. Writes only into ``a`` (B is read)."""
    n = a.shape[axis]

    def band(start: int, end: int):
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, end)
        return tuple(index)

    if alpha + beta <= 1:
        spans = [(int(n * beta), int(n * (alpha + beta)))]
    else:
        spans = [(0, int(n * (alpha + beta - 1))), (int(n * beta), n)]
    for start, end in spans:
        if end > start:
            a[band(start, end)] = b[band(start, end)]
    return a


def tensor(a, b, c, alpha, beta, ctx):
    """Exchange rows (dim 0) instead of averaging: rows [β, α+β) of the tensor come from B."""
    if a.ndim == 0:
        return a
    return _exchange(a, b, alpha, beta, 0)


def tensor2(a, b, c, alpha, beta, ctx):
    """tensor along dim 1 for wide tensors (ndim ≥ 2 and shape[1] > 100), else along dim 0."""
    if a.ndim == 0:
        return a
    axis = 1 if a.ndim >= 2 and a.shape[1] > 100 else 0
    return _exchange(a, b, alpha, beta, axis)


# -- self / plus random (spec §2.6, §2.7) --------------------------------------------------------

def self_scale(a, b, c, alpha, beta, ctx):
    """A·α (α = 0 leaves A unchanged); B is not used."""
    return a.mul_(alpha) if alpha != 0 else a


def plus_random(a, b, c, alpha, beta, ctx):
    """A + α·N(0, 1) noise, drawn from the recipe's seed and the key name (α = 0 leaves A)."""
    import torch

    if alpha == 0:
        return a
    noise = torch.randn(a.shape, generator=key_generator(ctx.seed, ctx.key, "plus random"), dtype=torch.float32)
    return a.add_(noise.to(a.device), alpha=alpha)


# -- key rules -------------------------------------------------------------------------------------

def skip_vae(key: str) -> str | None:
    return "cosine leaves the VAE to A" if key.startswith(VAE_PREFIX) else None


def skip_self_keys(key: str) -> str | None:
    hit = next((s for s in SELF_SKIP if s in key), None)
    return f"'{hit}' keys are left to A" if hit else None

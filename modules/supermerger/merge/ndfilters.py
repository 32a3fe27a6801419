"""N-dimensional median (window 3) and Gaussian (σ = 1) filters in torch, for smoothAdd.

They follow the conventions of ``scipy.ndimage.median_filter(x, size=3)`` and
``scipy.ndimage.gaussian_filter(x, sigma=1)`` with their defaults, which the original used:
'reflect' borders (``d c b a | a b c d | d c b a``, repeated for axes shorter than the
window), the Gaussian truncated at 4σ and applied axis by axis, each pass summed in float64 and
stored in float32. Written in torch rather than taken from scipy so that the engine needs no
extra dependency, runs on the merge device, and can split one tensor across worker threads.

Work is cut into slabs along axis 0. Every output element is computed by the same sequence of
operations whichever slab it falls in, so any slab size and any number of threads give
bit-identical results (smoothAdd MT relies on this).
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

SLAB_ELEMS = 1 << 16  # elements of stacked neighbourhood values per slab (bounds the memory per thread)
GAUSS_SIGMA = 1.0
GAUSS_TRUNCATE = 4.0


def reflect(idx, n: int):
    """Map positions (any integers) onto 0..n-1 the way 'reflect' borders extend an axis."""
    period = 2 * n
    m = idx.remainder(period)
    return m.where(m < n, period - 1 - m)


def gaussian_weights(sigma: float = GAUSS_SIGMA, truncate: float = GAUSS_TRUNCATE) -> list[float]:
    """Normalised 1-D Gaussian taps for offsets 0..radius (the kernel is symmetric)."""
    radius = int(truncate * sigma + 0.5)
    raw = [math.exp(-0.5 * (j / sigma) ** 2) for j in range(-radius, radius + 1)]
    total = math.fsum(raw)
    return [raw[radius + j] / total for j in range(radius + 1)]


def _slabs(n0: int, row_elems: int, factor: int) -> list[tuple[int, int]]:
    rows = max(1, SLAB_ELEMS // max(1, row_elems * factor))
    return [(s, min(s + rows, n0)) for s in range(0, n0, rows)]


def _run(bounds: list[tuple[int, int]], job: Callable[[int, int], None], workers: int) -> None:
    if workers <= 1 or len(bounds) == 1:
        for s, e in bounds:
            job(s, e)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="supermerger-smooth") as pool:
        for _ in pool.map(lambda se: job(*se), bounds):
            pass


def median3(x, workers: int = 1):
    """Median of each element's 3×3×…×3 neighbourhood (all axes), 'reflect' borders."""
    import torch

    if x.ndim == 0:
        return x.clone()
    out = torch.empty_like(x)
    shape = x.shape
    arange = [torch.arange(n, device=x.device) for n in shape]
    shifted = [[reflect(arange[d] + k, shape[d]) for k in (-1, 0, 1)] for d in range(x.ndim)]
    count = 3 ** x.ndim
    row_elems = math.prod(shape[1:])

    def job(s: int, e: int) -> None:
        rows = arange[0][s:e]
        views = [x.index_select(0, reflect(rows + k, shape[0])) for k in (-1, 0, 1)]
        for d in range(1, x.ndim):
            views = [v.index_select(d, idx) for v in views for idx in shifted[d]]
        # 3^ndim is odd, so torch's median is the exact middle value (as scipy's rank filter)
        out[s:e] = torch.stack(views, dim=-1).median(dim=-1).values

    _run(_slabs(shape[0], row_elems, count), job, workers)
    return out


def gaussian(x, workers: int = 1):
    """Gaussian blur with σ = 1 along every axis in turn (axis 0 first), 'reflect' borders."""
    import torch

    if x.ndim == 0:
        return x.clone()
    w = gaussian_weights()
    radius = len(w) - 1
    shape = x.shape
    row_elems = math.prod(shape[1:])
    arange = [torch.arange(n, device=x.device) for n in shape]
    cur = x
    for axis in range(x.ndim):
        n = shape[axis]
        out = torch.empty_like(x)
        taps = {j: reflect(arange[axis] + j, n) for j in range(-radius, radius + 1)}

        def job(s: int, e: int, cur=cur, out=out, axis=axis, taps=taps) -> None:
            if axis == 0:
                rows = arange[0][s:e]

                def pick(j):
                    return cur.index_select(0, reflect(rows + j, n)).double()
            else:
                slab = cur[s:e]

                def pick(j):
                    return slab.index_select(axis, taps[j]).double()
            # the centre tap first, then the symmetric pairs from the outside in
            acc = pick(0) * w[0]
            for j in range(radius, 0, -1):
                acc += (pick(-j) + pick(j)) * w[j]
            out[s:e] = acc

        _run(_slabs(shape[0], row_elems, 2 * (radius + 1)), job, workers)
        cur = out
    return cur


def smooth(x, workers: int = 1):
    """smoothAdd's filter: median over 3^ndim neighbours, then the σ = 1 Gaussian."""
    return gaussian(median3(x, workers), workers)

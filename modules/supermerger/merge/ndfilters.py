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

SLAB_ELEMS = 1 << 20  # elements of stacked neighbourhood values per slab (bounds the memory per thread)
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


def _pad(x, axis: int, width: int):
    """``x`` extended by ``width`` positions on both ends of ``axis`` with 'reflect' borders."""
    import torch

    n = x.shape[axis]
    return x.index_select(axis, reflect(torch.arange(-width, n + width, device=x.device), n))


def _med3(a, b, c):
    """Elementwise median of three tensors (four min/max operations)."""
    import torch

    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def _sort3(a, b, c):
    """Elementwise (low, middle, high) of three tensors."""
    import torch

    lo_ab, hi_ab = torch.minimum(a, b), torch.maximum(a, b)
    return torch.minimum(lo_ab, c), _med3(a, b, c), torch.maximum(hi_ab, c)


def _median_small(padded, shape, s: int, e: int):
    """The median of 3 (one axis) or of 3×3 (two axes) for output rows [s, e), by comparisons.

    Two axes: each column of three (axis 0) is sorted once, then the median of the nine is the
    median of {the largest of the three lows, the median of the three middles, the smallest of
    the three highs} — exact, because sorting the rows of a column-sorted 3×3 array keeps its
    columns sorted, and in an array sorted both ways only those three entries can be the median.
    """
    import torch

    if len(shape) == 1:
        return _med3(padded[s:e], padded[s + 1:e + 1], padded[s + 2:e + 2])
    lo, mid, hi = _sort3(padded[s:e], padded[s + 1:e + 1], padded[s + 2:e + 2])
    n = shape[1]

    def cols(t):
        return t[:, 0:n], t[:, 1:n + 1], t[:, 2:n + 2]

    return _med3(torch.maximum(torch.maximum(*cols(lo)[:2]), cols(lo)[2]), _med3(*cols(mid)),
                 torch.minimum(torch.minimum(*cols(hi)[:2]), cols(hi)[2]))


def _median_stacked(padded, shape, s: int, e: int):
    """The median of the 3^ndim neighbours of output rows [s, e): gather them as 3^ndim rows of
    the slab (one contiguous copy per neighbour offset), turn that into one row of neighbours per
    output, and select the middle one (numpy's in-place partition on the CPU: 1.4x torch.median)."""
    import torch

    views = []
    for offsets in itertools.product(range(3), repeat=len(shape)):
        index = (slice(s + offsets[0], e + offsets[0]),) + tuple(
            slice(o, o + n) for o, n in zip(offsets[1:], shape[1:]))
        views.append(padded[index])
    rows = torch.stack(views).reshape(len(views), -1).t().contiguous()
    middle = len(views) // 2  # 3^ndim is odd: the exact middle value, as scipy's rank filter
    if rows.device.type == "cpu":
        arr = rows.numpy()
        arr.partition(middle, axis=-1)
        picked = torch.from_numpy(arr[:, middle])
    else:
        picked = rows.kthvalue(middle + 1, dim=-1).values
    return picked.reshape(e - s, *shape[1:])


def _gather_order(shape) -> list[int]:
    """An axis order for the gathering path: the longest axis first (work is cut along it) and the
    next longest last, so that every neighbour offset is copied in long contiguous runs (a 3×3
    convolution [O, I, 3, 3] becomes [O, 3, 3, I]: runs of I values instead of 3)."""
    by_size = sorted(range(len(shape)), key=lambda a: -shape[a])
    first, last = by_size[0], by_size[1]
    return [first] + [a for a in range(len(shape)) if a not in (first, last)] + [last]


def median3(x, workers: int = 1):
    """Median of each element's 3×3×…×3 neighbourhood (all axes), 'reflect' borders.

    An axis of length 1 is dropped first: 'reflect' makes its three neighbours the element itself,
    and giving every value of a neighbourhood three copies leaves its median unchanged. (A 1×1
    convolution is then a 3×3 median, not one of 81 values.) One or two axes left use comparison
    networks; more fall back to gathering the neighbours and selecting the middle one.
    """
    import torch

    if x.ndim == 0:
        return x.clone()
    kept = [n for n in x.shape if n != 1]
    if not kept:
        return x.clone()
    y = x.reshape(kept)
    order = None
    if y.ndim <= 2:
        select, factor = _median_small, 8  # temporaries of the network per output element
    else:
        # the neighbourhood is the same whatever the order of the axes: compute in a better one
        select, factor = _median_stacked, 3 ** y.ndim
        order = _gather_order(y.shape)
        y = y.permute(order).contiguous()
    padded = y
    for axis in range(y.ndim):
        padded = _pad(padded, axis, 1)
    out = torch.empty_like(y)
    shape = tuple(y.shape)

    def job(s: int, e: int) -> None:
        out[s:e] = select(padded, shape, s, e)

    _run(_slabs(shape[0], math.prod(shape[1:]), factor), job, workers)
    if order is not None:
        out = out.permute([order.index(a) for a in range(len(order))])
    return out.reshape(x.shape)


def gaussian(x, workers: int = 1):
    """Gaussian blur with σ = 1 along every axis in turn (axis 0 first), 'reflect' borders.

    A pass along an axis of length 1 returns its input exactly (all taps are the element itself
    and the weights sum to 1), so those axes are dropped. With three or more axes the work is done
    in the gathering path's axis order (long contiguous runs); the passes still go in the order
    of the original axes, so every value is computed by the same operations as before.
    """
    import torch

    if x.ndim == 0:
        return x.clone()
    kept = [n for n in x.shape if n != 1]
    if not kept:
        return x.clone()
    w = gaussian_weights()
    radius = len(w) - 1
    order = _gather_order(kept) if len(kept) >= 3 else list(range(len(kept)))
    cur = x.reshape(kept).permute(order).contiguous()
    shape = cur.shape
    for original_axis in range(len(kept)):
        axis = order.index(original_axis)
        n = shape[axis]
        padded = _pad(cur, axis, radius)
        out = torch.empty_like(cur)

        def job(s: int, e: int, padded=padded, out=out, axis=axis, n=n) -> None:
            def tap(j):  # the input shifted by j along axis, for output rows [s, e)
                if axis == 0:
                    return padded[s + radius + j:e + radius + j].double()
                index = [slice(s, e)] + [slice(None)] * (len(shape) - 1)
                index[axis] = slice(radius + j, radius + j + n)
                return padded[tuple(index)].double()
            # the centre tap first, then the symmetric pairs from the outside in
            acc = tap(0) * w[0]
            for j in range(radius, 0, -1):
                acc += (tap(-j) + tap(j)) * w[j]
            out[s:e] = acc

        _run(_slabs(shape[0], math.prod(shape[1:]), 2 * (radius + 1)), job, workers)
        cur = out
    return cur.permute([order.index(a) for a in range(len(order))]).reshape(x.shape)


def smooth(x, workers: int = 1):
    """smoothAdd's filter: median over 3^ndim neighbours, then the σ = 1 Gaussian."""
    return gaussian(median3(x, workers), workers)

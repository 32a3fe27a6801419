"""ΔW -> LoRA factors by singular value decomposition (used by re-rank merges and Make LoRA).

``method="full"``: ``torch.linalg.svd`` (exact truncation). ``method="lowrank"``:
``torch.svd_lowrank``, randomised (a few power iterations) and seeded, much faster on wide
matrices when the rank is small. As kohya does, up = U·S and down = Vh, and both are clamped to
±(the ``clamp_quantile`` quantile of their values) to keep outliers out of fp16 files
(``clamp_quantile=None`` keeps the exact factors).
"""

from __future__ import annotations

from ..errors import RecipeError

METHODS = ("full", "lowrank")
OVERSAMPLE = 8  # extra random directions for svd_lowrank; more = closer to the full SVD
NITER = 2
# Below this many elements one thread is faster: torch's thread pool costs more than it gives
# (a 640×640 SVD took 106 ms on one thread, 273 ms on four, on a busy 2-core machine).
SMALL = 2**20


def check_method(method: str) -> str:
    if method not in METHODS:
        raise RecipeError(f"Unknown SVD method {method!r}: use full or lowrank.")
    return method


def max_rank(shape: tuple[int, ...]) -> int:
    """The rank of a full ΔW of this shape (out × in·kh·kw)."""
    inner = 1
    for s in shape[1:]:
        inner *= s
    return min(shape[0], inner)


def factorize(delta, rank: int, method: str = "full", seed: int = 0, clamp_quantile: float | None = 0.99):
    """(up, down) with up @ down ≈ ``delta`` at ``rank``, shaped for ``delta``'s kind of layer:
    linear (out, k) / (k, in); conv (out, k, 1, 1) / (k, in, kh, kw)."""
    check_method(method)
    shape = tuple(delta.shape)
    mat = delta.reshape(shape[0], -1).float()
    rank = max(1, min(rank, max_rank(shape)))
    if mat.is_cuda or mat.numel() >= SMALL:
        return _factorize(mat, shape, rank, method, seed, clamp_quantile)
    from ..merge.executor import intra_op_threads

    with intra_op_threads(1):
        return _factorize(mat, shape, rank, method, seed, clamp_quantile)


def _factorize(mat, shape, rank, method, seed, clamp_quantile):
    import torch

    if method == "full" or rank >= min(mat.shape) - OVERSAMPLE:
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    else:
        cuda = mat.device.type == "cuda"
        with torch.random.fork_rng(devices=[mat.device] if cuda else []):  # the caller's RNG is left as it was
            if cuda:
                torch.cuda.manual_seed(seed)
            else:  # not torch.manual_seed: it also seeds every accelerator, at ~1 ms a call
                torch.default_generator.manual_seed(seed)
            u, s, v = torch.svd_lowrank(mat, q=min(rank + OVERSAMPLE, min(mat.shape)), niter=NITER)
        vh = v.T
    up = u[:, :rank] * s[:rank]
    down = vh[:rank].contiguous()
    if clamp_quantile is not None and clamp_quantile < 1.0:
        hi = quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    if len(shape) == 4:
        return up.reshape(shape[0], rank, 1, 1), down.reshape(rank, *shape[1:])
    return up.contiguous(), down


def quantile(values, q: float) -> float:
    """``torch.quantile`` (linear interpolation) without its 16M-element limit."""
    flat = values.flatten()
    pos = q * (flat.numel() - 1)
    lo = int(pos)
    a = float(flat.kthvalue(lo + 1).values)
    if pos == lo:
        return a
    b = float(flat.kthvalue(lo + 2).values)
    return a + (b - a) * (pos - lo)

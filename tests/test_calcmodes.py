"""Every calcmode on small tensors, against numbers and formulas written out here by hand.

The expected values never come from the engine's helpers: they are literal numbers worked out
on paper (noted in comments) or formulas spelled out in this file.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from supermerger.errors import RecipeError
from supermerger.io.sources import DictSource
from supermerger.merge import ndfilters
from supermerger.merge.calcmodes import CALCMODES, MergeContext, calcmode_names, get_calcmode
from supermerger.merge.methods_original import trimmed_range
from supermerger.merge.modes import MODES

KEY = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32) if not isinstance(rows[0], (int, float)) else \
        torch.tensor(list(rows), dtype=torch.float32)


def run(name, a, b, c=None, alpha=0.5, beta=0.25, gamma=0.3, stats=None, seed=None, key=KEY):
    cm = get_calcmode(name)
    mode = MODES[cm.modes[0]]
    ctx = MergeContext(key, mode, gamma, stats, seed)
    clone = (lambda x: None if x is None else x.clone().float())
    return cm.fn(clone(a), clone(b), clone(c), alpha, beta, ctx)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=1e-6)


# -- the registry ----------------------------------------------------------------------------------

def test_registry_lists_every_calcmode_once_in_ui_order():
    assert calcmode_names() == ["normal", "cosineA", "cosineB", "trainDifference", "smoothAdd", "smoothAdd MT",
                                "extract", "tensor", "tensor2", "self", "plus random", "slerp", "ties", "dare",
                                "ties_dare"]
    for cm in CALCMODES.values():
        assert cm.summary and "\n" not in cm.summary
        assert set(cm.modes) <= set(MODES)
        assert cm.force_mode is None or cm.force_mode in cm.modes


@pytest.mark.parametrize("spelling,expected", [("smoothadd_mt", "smoothAdd MT"), ("SmoothAdd-MT", "smoothAdd MT"),
                                                ("plus_random", "plus random"), ("COSINEA", "cosineA"),
                                                ("dare_ties", "ties_dare"), ("traindifference", "trainDifference")])
def test_lookup_ignores_case_spaces_and_separators(spelling, expected):
    assert get_calcmode(spelling).id == expected


def test_unknown_calcmode_suggests_the_nearest():
    with pytest.raises(RecipeError, match="Did you mean 'cosineA'"):
        get_calcmode("cosinA")
    with pytest.raises(RecipeError, match="Did you mean 'trainDifference'"):
        get_calcmode("trainDiference")


def test_methods_name_their_papers():
    from supermerger.merge import methods_modern as m

    assert "Shoemake" in m.slerp.__doc__
    assert "TIES-Merging" in m.ties.__doc__ and "2306.01708" in m.ties.__doc__
    assert "Super Mario" in m.dare.__doc__ and "2311.03099" in m.dare.__doc__
    assert "2306.01708" in m.ties_dare.__doc__ and "2311.03099" in m.ties_dare.__doc__


# -- normal ------------------------------------------------------------------------------------------

def test_normal_is_the_mode_formula():
    a, b, c = t(1.0, 2.0), t(3.0, 6.0), t(1.0, 1.0)
    close(run("normal", a, b, c, alpha=0.25), [1.5, 3.0])  # (1-α)A + αB


# -- cosineA / cosineB ---------------------------------------------------------------------------------
# A = [[3, 0], [4, 1]], B = [[6, 1], [8, 0]]: column 0 of A and B point the same way (cos 1), column 1
# is orthogonal (cos 0).

A2 = t([3.0, 0.0], [4.0, 1.0])
B2 = t([6.0, 1.0], [8.0, 0.0])


def test_cosine_a_by_hand():
    # normalised along dim 0: An = [[.6, 0], [.8, 1]], Bn = [[.6, 1], [.8, 0]]
    # column similarities [1, 0]; flat: An·Bn = .36 + .64 = 1, |An| = |Bn| = √2 -> 0.5
    # c = ([1, 0] + 0.5)/2 = [.75, .25]; stats (.25, .75) -> scaled [1, 0]; k = clip(scaled - |α|) = [.5, 0]
    out = run("cosineA", A2, B2, alpha=-0.5, stats={"smin": 0.25, "smax": 0.75})
    close(out, [[0.5 * 3 + 0.5 * 6, 1.0], [0.5 * 4 + 0.5 * 8, 0.0]])  # k·A + (1-k)·B per column


def test_cosine_b_by_hand_uses_alpha_without_abs():
    # raw tensors: column similarities [1, 0]; flat cos = (18 + 32) / (√26·√101)
    mag = 50 / math.sqrt(26 * 101)
    k0 = (1 + mag) / 2 - 0.5  # stats (0, 1), α = 0.5
    k1 = max(0.0, mag / 2 - 0.5)
    out = run("cosineB", A2, B2, alpha=0.5, stats={"smin": 0.0, "smax": 1.0})
    close(out, [[k0 * 3 + (1 - k0) * 6, k1 * 0 + (1 - k1) * 1], [k0 * 4 + (1 - k0) * 8, k1 * 1 + (1 - k1) * 0]])
    # with α = -0.5 cosineB (no abs) raises k instead of lowering it
    out = run("cosineB", A2, B2, alpha=-0.5, stats={"smin": 0.0, "smax": 1.0})
    kb0, kb1 = 1.0, mag / 2 + 0.5  # clip((1+mag)/2 + .5) = 1
    close(out, [[3.0, kb1 * 0 + (1 - kb1) * 1], [4.0, kb1 * 1 + (1 - kb1) * 0]])


def test_cosine_alpha_one_gives_b_and_alpha_zero_does_not_give_a():
    stats = {"smin": 0.0, "smax": 1.0}
    close(run("cosineA", A2, B2, alpha=1.0, stats=stats), B2)  # k = clip(scaled - 1) = 0
    out = run("cosineA", A2, B2, alpha=0.0, stats=stats)  # k = c = [.75, .25]
    close(out, [[0.75 * 3 + 0.25 * 6, 0.25 * 0 + 0.75 * 1], [0.75 * 4 + 0.25 * 8, 0.25 * 1 + 0.75 * 0]])


def test_cosine_one_dimensional():
    # A = [3, 4], B = [4, 3]: cos = 24/25 = .96 both ways; stats (0, 1), α = .5 -> k = .46
    for name in ("cosineA", "cosineB"):
        close(run(name, t(3.0, 4.0), t(4.0, 3.0), alpha=0.5, stats={"smin": 0.0, "smax": 1.0}),
              [0.46 * 3 + 0.54 * 4, 0.46 * 4 + 0.54 * 3], atol=1e-5)


@pytest.mark.parametrize("name", ["cosineA", "cosineB"])
def test_cosine_zero_norm_tensors_give_finite_results(name):
    zero = torch.zeros(3, 2)
    b = t([1.0, 2.0], [3.0, 4.0], [5.0, 6.0])
    stats = {"smin": 0.0, "smax": 1.0}
    # similarity 0 everywhere -> k = clip(0 - α) = 0 -> B
    close(run(name, zero, b, alpha=0.25, stats=stats), b)
    out = run(name, zero, torch.zeros(3, 2), alpha=0.25, stats=stats)
    assert torch.isfinite(out).all() and not out.any()


def test_cosine_degenerate_statistics_do_not_divide_by_zero():
    out = run("cosineA", A2, B2, alpha=0.5, stats={"smin": 0.4, "smax": 0.4})
    assert torch.isfinite(out).all()


def test_trimmed_range_drops_nans_and_the_percentile_tails():
    # 0..100: the 1st percentile (midpoint) is 1, so 0 goes; of 1..100 the 99th is 99.5, so 100 goes.
    assert trimmed_range([float("nan")] + list(range(101))) == (1.0, 99.0)
    # few values: the extremes go, one at each end
    assert trimmed_range([5.0, -1.0, 2.0, 7.0, 3.0]) == (2.0, 5.0)
    assert trimmed_range([]) == (0.0, 1.0)


def _sources(pairs):
    a = DictSource({k: torch.tensor(v[0]) for k, v in pairs.items()}, "A")
    b = DictSource({k: torch.tensor(v[1]) for k, v in pairs.items()}, "B")
    return SimpleNamespace(sources={"A": a, "B": b})


def test_cosine_statistics_cover_model_keys_but_not_the_vae():
    s3 = math.sqrt(3.0)
    plan = _sources({
        "model.k0.weight": ([1.0, 0.0], [0.0, 1.0]),  # cos 0
        "model.k1.weight": ([1.0, 0.0], [1.0, 0.0]),  # 1
        "model.k2.weight": ([1.0, 1.0], [1.0, 0.0]),  # 1/√2
        "model.k3.weight": ([1.0, 0.0], [-1.0, 0.0]),  # -1
        "model.k4.bias": ([3.0, 4.0], [4.0, 3.0]),  # .96
        "first_stage_model.k5.weight": ([1.0, 0.0], [-1.0, s3]),  # -0.5: would be the minimum if counted
        "alphas_cumprod": ([1.0, 0.0], [-1.0, 0.0]),  # no 'model' in the name
    })
    # values [-1, 0, .707, .96, 1]: the extremes go -> (0, .96)
    stats = get_calcmode("cosineB").prepass(plan)
    assert stats["smin"] == pytest.approx(0.0, abs=1e-7) and stats["smax"] == pytest.approx(0.96, abs=1e-6)
    stats = get_calcmode("cosineA").prepass(plan)
    assert stats["smin"] == pytest.approx(0.0, abs=1e-7) and stats["smax"] == pytest.approx(0.96, abs=1e-6)


@pytest.mark.parametrize("shape", [(6, 4), (5, 3, 3, 3), (7,)])
def test_cosine_column_sums_give_what_normalize_and_cosine_similarity_give(shape):
    # the original's steps, written with torch's own functions, against the engine's column sums;
    # one column of A and one of B are zero (F.normalize's and F.cosine_similarity's eps matter)
    import torch.nn.functional as F

    from supermerger.merge.methods_original import column_similarity

    g = torch.Generator().manual_seed(len(shape))
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    if len(shape) > 1:
        a[:, 0] = 0.0
        b[:, 1] = 0.0

    def flat(x, y):
        den = x.norm() * y.norm()
        return 0.0 if den == 0 else float((x * y).sum() / den)

    an, bn = F.normalize(a, dim=0), F.normalize(b, dim=0)
    cols, whole = column_similarity(a, b, "A")
    close(cols, F.cosine_similarity(an, bn, dim=0), atol=1e-6)
    assert float(whole) == pytest.approx(flat(an, bn), abs=1e-6)
    cols, whole = column_similarity(a, b, "B")
    close(cols, F.cosine_similarity(a, b, dim=0), atol=1e-6)
    assert float(whole) == pytest.approx(flat(a, b), abs=1e-6)


@pytest.mark.parametrize("name", ["cosineA", "cosineB"])
def test_cosine_merge_pass_reuses_the_statistics_pass(name):
    plan = _sources({"model.w": ([[3.0, 0.0, 1.0], [4.0, 1.0, 2.0]], [[6.0, 1.0, -1.0], [8.0, 0.0, 2.0]]),
                     "model.v": ([1.0, 2.0, 2.0], [2.0, 1.0, -2.0])})
    stats = get_calcmode(name).prepass(plan)
    assert set(stats["sims"]) == {"model.w", "model.v"}
    a, b = plan.sources["A"].tensor("model.w"), plan.sources["B"].tensor("model.w")
    cached = run(name, a, b, alpha=0.3, stats=stats, key="model.w")
    fresh = run(name, a, b, alpha=0.3, stats={"smin": stats["smin"], "smax": stats["smax"]}, key="model.w")
    assert torch.equal(cached, fresh)
    # a key the statistics did not see (or a slice of one) is computed on the spot
    assert torch.equal(run(name, a[:, :2], b[:, :2], alpha=0.3, stats=stats, key="model.w"),
                       run(name, a[:, :2], b[:, :2], alpha=0.3, stats={k: stats[k] for k in ("smin", "smax")}))


def test_cosine_a_statistics_collect_column_similarities_only():
    # 2-D key: column cosines [1, 0] (cosineA ignores the flat similarity); 1-D keys add .5 and .96
    plan = _sources({
        "model.a.weight": ([[3.0, 0.0], [4.0, 1.0]], [[6.0, 1.0], [8.0, 0.0]]),
        "model.b.weight": ([1.0, 0.0], [0.5, 0.75 ** 0.5]),  # cos .5
        "model.c.weight": ([3.0, 4.0], [4.0, 3.0]),  # .96
        "model.d.weight": ([0.0, 1.0], [0.0, -1.0]),  # -1
    })
    # values [1, 0, .5, .96, -1] -> drop -1 and 1 -> (0, .96)
    stats = get_calcmode("cosineA").prepass(plan)
    assert stats["smin"] == pytest.approx(0.0, abs=1e-6) and stats["smax"] == pytest.approx(0.96, abs=1e-6)


# -- trainDifference ---------------------------------------------------------------------------------

def test_train_difference_by_hand():
    a = t(1.0, 2.0, 3.0, 0.0, 1.0, 0.0)
    b = t(2.0, 2.0, 5.0, 1.0, 1.0, -2.0)
    c = t(1.0, 2.0, 1.0, 1.0, 1.0, 0.0)
    # per element: s = |B-A| / (|B-C| + |B-A|); result A + s·(B-C)·α·1.8 with α = .5 (factor .9)
    # 0: s = 1/2, B-C = 1 -> +.45; 1: B = C -> +0; 2: s = 2/6, B-C = 4 -> +1.2
    # 3: B = C -> +0; 4: all equal (0/0 -> s = 0) -> +0; 5: s = 2/4, B-C = -2 -> -.9
    close(run("trainDifference", a, b, c, alpha=0.5), [1.45, 2.0, 4.2, 0.0, 1.0, -0.9])


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 3, 3), (9,), ()])
def test_train_difference_and_extract_equal_the_specs_formulas_on_random_tensors(shape):
    # the spec's formulas written with torch's own functions (sign·s·|B−C|; F.cosine_similarity)
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(len(shape) + 40)
    a, b, c = (torch.randn(shape, generator=g) for _ in range(3))
    if len(shape) > 1:
        c[0] = b[0]  # a row where B = C
        b[1] = a[1]  # a row where B = A (B−A = 0: extract's cosine with a zero vector)
    diff = b - c
    total = diff.abs() + (b - a).abs()
    s_ = ((b - a).abs() / total).where(total != 0, torch.zeros(()))
    close(run("trainDifference", a, b, c, alpha=0.7), a + diff.sign() * s_ * diff.abs() * (0.7 * 1.8), atol=1e-5)
    x, y = (b - a).reshape(-1) if not shape else b - a, (c - a).reshape(-1) if not shape else c - a
    cos = F.cosine_similarity(x, y, dim=-1).clamp(-1, 1).unsqueeze(-1)
    d = ((cos + 1) / 2) ** 0.3
    expected = (a.reshape(x.shape) + torch.lerp(x, y, 0.4) * torch.lerp(d, 1 - d, 0.6)).reshape(shape)
    close(run("extract", a, b, c, alpha=0.4, beta=0.6, gamma=0.3), expected, atol=1e-5)


def test_train_difference_edges():
    a, b = t(1.0, -3.0, 0.5), t(2.0, 4.0, -1.0)
    assert torch.equal(run("trainDifference", a, b, b.clone(), alpha=0.7), a)  # B = C: A unchanged
    assert torch.equal(run("trainDifference", a, b, t(0.0, 0.0, 0.0), alpha=0.0), a)  # α = 0
    # α = 1: factor 1.8. element 0: B-C = 2, |B-A| = 1 -> s = 1/3 -> 1 + 2/3·1.8 = 2.2
    assert run("trainDifference", a, b, t(0.0, 0.0, 0.0), alpha=1.0)[0].item() == pytest.approx(2.2)


# -- smoothAdd -----------------------------------------------------------------------------------------

def _reflect(i, n):
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


def _gauss1d(values):
    """σ = 1 Gaussian, truncated at 4σ, 'reflect' borders, written out in plain Python."""
    w = [math.exp(-0.5 * j * j) for j in range(-4, 5)]
    total = sum(w)
    n = len(values)
    return [sum(w[j + 4] / total * values[_reflect(i + j, n)] for j in range(-4, 5)) for i in range(n)]


def _median1d(values):
    n = len(values)
    return [sorted(values[_reflect(i + j, n)] for j in (-1, 0, 1))[1] for i in range(n)]


def test_smooth_add_removes_a_single_spike():
    a = t(1.0, 1.0, 1.0, 1.0, 1.0)
    b = t(0.0, 0.0, 9.0, 0.0, 0.0)
    close(run("smoothAdd", a, b, torch.zeros(5), alpha=2.0), a)  # the median of 3 drops the spike


def test_smooth_add_one_dimensional_by_hand():
    diff = [0.0, 0.0, 0.0, 4.0, 4.0, 4.0, 1.0, 2.0]
    expected = _gauss1d(_median1d(diff))
    a = torch.arange(8, dtype=torch.float32)
    out = run("smoothAdd", a, t(*diff), torch.zeros(8), alpha=0.5)
    close(out, [i + 0.5 * v for i, v in enumerate(expected)], atol=1e-5)
    # B = C and α = 0 leave A
    close(run("smoothAdd", a, t(*diff), t(*diff), alpha=0.5), a)
    close(run("smoothAdd", a, t(*diff), torch.zeros(8), alpha=0.0), a)


def test_median_of_the_3x3_neighbourhood_with_reflected_borders():
    x = t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0])
    # centre: median of 1..9 = 5; corner (0,0): rows {0,0,1} x cols {0,0,1} = 1,1,2,1,1,2,4,4,5 -> 2
    m = ndfilters.median3(x)
    assert m[1, 1].item() == 5.0 and m[0, 0].item() == 2.0
    # edge (0,1): rows {0,0,1} x cols {0,1,2}: 1,2,3,1,2,3,4,5,6 -> 3
    assert m[0, 1].item() == 3.0


def _median_by_sorting(x):
    """The median filter written the slow, obvious way: every element's 3^ndim neighbours
    (indices reflected by hand), sorted, the middle one taken."""
    def reflected(i, n):
        return -i - 1 if i < 0 else (2 * n - i - 1 if i >= n else i)

    out = torch.empty_like(x)
    for pos in itertools.product(*(range(n) for n in x.shape)):
        values = sorted(x[tuple(reflected(p + d, n) for p, d, n in zip(pos, offs, x.shape))].item()
                        for offs in itertools.product((-1, 0, 1), repeat=x.ndim))
        out[pos] = values[len(values) // 2]
    return out


@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (1, 5), (5, 1), (3, 3), (6, 9), (2, 2), (4, 1, 1),
                                   (5, 3, 1, 1), (4, 6, 3, 3), (3, 1, 2), (2, 3, 4), (2, 1, 3, 1, 2)])
def test_median_filter_equals_sorting_every_neighbourhood(shape, monkeypatch):
    # randn values, and values from {0, 1, 2} so that neighbourhoods are full of ties; the
    # comparison networks (1 or 2 axes left after dropping length-1 axes) and the gathering path
    # (3 or more) must all give the sorted middle value, with one worker or several
    g = torch.Generator().manual_seed(len(shape) * 31 + sum(shape))
    for x in (torch.randn(shape, generator=g), torch.randint(0, 3, shape, generator=g).float()):
        expected = _median_by_sorting(x)
        assert torch.equal(ndfilters.median3(x), expected), shape
    monkeypatch.setattr(ndfilters, "SLAB_ELEMS", 20)  # one or two rows per slab, split over threads
    for x in (torch.randn(shape, generator=g), torch.randint(0, 3, shape, generator=g).float()):
        assert torch.equal(ndfilters.median3(x, workers=3), _median_by_sorting(x)), shape


def test_gaussian_on_a_wide_axis_matches_the_written_out_sum():
    row = [float((i * 7) % 5) for i in range(12)]
    x = torch.tensor([row], dtype=torch.float32)  # shape (1, 12): the size-1 axis reflects onto itself
    close(ndfilters.gaussian(x)[0], _gauss1d(row), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 1, 4, 3), (2, 5, 3, 3), (4, 3, 5), (1, 6, 1)])
def test_gaussian_is_the_one_dimensional_sum_along_each_axis_in_turn(shape):
    # the written-out 1-D sum applied along axis 0, then 1, ... (values stored as float32
    # between passes); length-1 axes and the reordered axes of the fast path must not show
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    expected = x.numpy().astype("float64")
    for axis in range(len(shape)):
        moved = expected.swapaxes(axis, -1)
        rows = [_gauss1d(list(row)) for row in moved.reshape(-1, shape[axis])]
        expected = torch.tensor(rows, dtype=torch.float32).double().numpy().reshape(moved.shape).swapaxes(axis, -1)
    close(ndfilters.gaussian(x), torch.from_numpy(expected).float(), atol=1e-6)


def test_smoothing_matches_scipy_bit_for_bit():
    nd = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(3)
    for shape in [(7,), (2,), (5, 3), (4, 6, 3, 3), (3, 1, 2)]:
        x = torch.randn(shape, generator=g)
        expected = nd.gaussian_filter(nd.median_filter(x.numpy(), size=3), sigma=1)
        assert torch.equal(ndfilters.smooth(x), torch.from_numpy(expected)), shape


def test_smooth_add_mt_gives_identical_results_across_threads_and_slabs(monkeypatch):
    g = torch.Generator().manual_seed(5)
    a, b, c = (torch.randn(9, 5, 3, 3, generator=g) for _ in range(3))
    single = run("smoothAdd", a, b, c, alpha=0.8)
    monkeypatch.setattr(ndfilters, "SLAB_ELEMS", 60)  # many slabs, so the threads really split the work
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    multi = run("smoothAdd MT", a, b, c, alpha=0.8)
    assert torch.equal(single, multi)


# -- extract -------------------------------------------------------------------------------------------
# A = [[0, 0], [1, 1]], B = [[1, 0], [1, 2]], C = [[0, 1], [1, 0]]
# B-A = [[1, 0], [0, 1]], C-A = [[0, 1], [0, -1]]: row 0 orthogonal (cos 0), row 1 opposite (cos -1)
EA, EB, EC = t([0.0, 0.0], [1.0, 1.0]), t([1.0, 0.0], [1.0, 2.0]), t([0.0, 1.0], [1.0, 0.0])


def test_extract_similar_features_by_hand():
    # γ = 1: d = (cos+1)/2 = [.5, 0]; β = 0 -> factor d; α = .25: lerp rows = [.75, .25], [0, .5]
    close(run("extract", EA, EB, EC, alpha=0.25, beta=0.0, gamma=1.0), [[0.375, 0.125], [1.0, 1.0]])
    # γ = 2: d = [.25, 0]
    close(run("extract", EA, EB, EC, alpha=0.25, beta=0.0, gamma=2.0), [[0.1875, 0.0625], [1.0, 1.0]])


def test_extract_dissimilar_features_by_hand():
    # β = 1 -> factor 1-d = [.5, 1]
    close(run("extract", EA, EB, EC, alpha=0.25, beta=1.0, gamma=1.0), [[0.375, 0.125], [1.0, 1.5]])
    # β = .5 -> factor (d + 1-d)/2 = .5 everywhere: A + lerp(B-A, C-A, α)/2
    close(run("extract", EA, EB, EC, alpha=0.25, beta=0.5, gamma=1.0), [[0.375, 0.125], [1.0, 1.25]])


def test_extract_alpha_picks_b_or_c():
    # α = 0: only B-A; α = 1: only C-A (γ = 1, β = 1: factors [.5, 1])
    close(run("extract", EA, EB, EC, alpha=0.0, beta=1.0, gamma=1.0), [[0.5, 0.0], [1.0, 2.0]])
    close(run("extract", EA, EB, EC, alpha=1.0, beta=1.0, gamma=1.0), [[0.0, 0.5], [1.0, 0.0]])


def test_extract_zero_norm_and_one_dimensional():
    a = t(1.0, 2.0, 3.0)
    # B = A: B-A = 0 -> cos 0 -> d = .5^γ; result A + α·(C-A)·d (β = 0)
    c = t(2.0, 2.0, 5.0)
    out = run("extract", a, a.clone(), c, alpha=0.5, beta=0.0, gamma=2.0)
    close(out, [1.0 + 0.5 * 1 * 0.25, 2.0, 3.0 + 0.5 * 2 * 0.25])
    # 1-D: one cosine over the whole vector. B-A = [1, 0, 0], C-A = [1, 0, 0] -> cos 1 -> d = 1
    out = run("extract", a, t(2.0, 2.0, 3.0), t(2.0, 2.0, 3.0), alpha=0.5, beta=0.0, gamma=0.3)
    close(out, [2.0, 2.0, 3.0])


# -- tensor / tensor2 --------------------------------------------------------------------------------

def _rows(n, cols=2, offset=0.0):
    return torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, cols) + offset


def test_tensor_copies_a_band_of_rows_from_b():
    a, b = _rows(10), _rows(10, offset=100.0)
    out = run("tensor", a, b, alpha=0.25, beta=0.5)  # rows [int(5), int(7.5)) = [5, 7) from B
    expected = a.clone()
    expected[5:7] = b[5:7]
    assert torch.equal(out, expected)


def test_tensor_wraps_around_when_alpha_plus_beta_exceeds_one():
    a, b = _rows(10), _rows(10, offset=100.0)
    out = run("tensor", a, b, alpha=0.75, beta=0.5)  # α+β = 1.25: B, except rows [2, 5) from A
    expected = b.clone()
    expected[2:5] = a[2:5]
    assert torch.equal(out, expected)


def test_tensor_edges():
    a, b = _rows(8), _rows(8, offset=100.0)
    assert torch.equal(run("tensor", a, b, alpha=0.0, beta=0.5), a)  # empty band
    assert torch.equal(run("tensor", a, b, alpha=1.0, beta=0.0), b)  # the whole tensor
    assert torch.equal(run("tensor", a, b, alpha=1.0, beta=1.0), b)  # α+β = 2: rows [8, 8) from A
    out = run("tensor", t(1.0, 2.0, 3.0, 4.0), t(5.0, 6.0, 7.0, 8.0), alpha=0.5, beta=0.25)  # 1-D: [1, 3)
    assert out.tolist() == [1.0, 6.0, 7.0, 4.0]
    scalar = torch.tensor(2.0)
    assert torch.equal(run("tensor", scalar, torch.tensor(5.0), alpha=1.0, beta=0.0), scalar)


def test_tensor2_slices_columns_of_wide_tensors_with_column_indices():
    a, b = torch.zeros(4, 200), torch.ones(4, 200)
    out = run("tensor2", a, b, alpha=0.25, beta=0.5)  # columns [100, 150) from B
    assert out[:, 100:150].eq(1).all() and out[:, :100].eq(0).all() and out[:, 150:].eq(0).all()
    conv_a, conv_b = torch.zeros(8, 128, 3, 3), torch.ones(8, 128, 3, 3)
    out = run("tensor2", conv_a, conv_b, alpha=0.25, beta=0.5)  # channels [64, 96)
    assert out[:, 64:96].eq(1).all() and out[:, :64].eq(0).all() and out[:, 96:].eq(0).all()
    out = run("tensor2", conv_a, conv_b, alpha=0.75, beta=0.5)  # wraps: ones except channels [32, 64)
    assert out[:, 32:64].eq(0).all() and out[:, :32].eq(1).all() and out[:, 64:].eq(1).all()


def test_tensor2_slices_rows_of_narrow_tensors_with_row_indices():
    a, b = _rows(8, cols=50), _rows(8, cols=50, offset=100.0)
    out = run("tensor2", a, b, alpha=0.25, beta=0.5)  # shape[1] = 50 <= 100: rows [4, 6)
    expected = a.clone()
    expected[4:6] = b[4:6]
    assert torch.equal(out, expected)
    out = run("tensor2", t(1.0, 2.0, 3.0, 4.0), t(5.0, 6.0, 7.0, 8.0), alpha=0.5, beta=0.0)  # 1-D: [0, 2)
    assert out.tolist() == [5.0, 6.0, 3.0, 4.0]


# -- self / plus random ------------------------------------------------------------------------------

def test_self_scales_a():
    a, b = t(1.0, -2.0, 4.0), t(9.0, 9.0, 9.0)
    assert run("self", a, b, alpha=0.5).tolist() == [0.5, -1.0, 2.0]
    assert torch.equal(run("self", a, b, alpha=0.0), a)  # α = 0 leaves A
    assert torch.equal(run("self", a, b, alpha=1.0), a)


def test_self_and_plus_random_leave_to_out_proj_out_and_norm_keys():
    for name in ("self", "plus random"):
        keep = get_calcmode(name).keep
        assert keep("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight")
        assert keep("model.diffusion_model.input_blocks.1.1.proj_out.weight")
        assert keep("model.diffusion_model.input_blocks.1.1.norm.bias")
        assert keep("model.diffusion_model.input_blocks.1.0.in_layers.2.weight") is None


def test_plus_random_is_seeded_per_key():
    a = torch.linspace(-1, 1, 4000)
    first = run("plus random", a, a, alpha=0.1, seed=11)
    assert torch.equal(first, run("plus random", a, a, alpha=0.1, seed=11))
    assert not torch.equal(first, run("plus random", a, a, alpha=0.1, seed=12))
    assert not torch.equal(first, run("plus random", a, a, alpha=0.1, seed=11, key=KEY + "x"))
    noise = (first - a) / 0.1  # standard normal noise
    assert abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1.0) < 0.1
    assert torch.equal(run("plus random", a, a, alpha=0.0, seed=11), a)


# -- slerp ---------------------------------------------------------------------------------------------

def test_slerp_by_hand():
    a, b = t(1.0, 0.0), t(0.0, 1.0)  # Ω = 90°
    close(run("slerp", a, b, alpha=0.5), [math.sqrt(0.5), math.sqrt(0.5)])
    close(run("slerp", a, b, alpha=1 / 3), [math.cos(math.pi / 6), math.sin(math.pi / 6)])
    close(run("slerp", t(2.0, 0.0), t(0.0, 2.0), alpha=0.5), [math.sqrt(2), math.sqrt(2)])
    # a tensor is one vector: [[1, 0], [0, 0]] and [[0, 0], [0, 1]] are orthogonal
    close(run("slerp", t([1.0, 0.0], [0.0, 0.0]), t([0.0, 0.0], [0.0, 1.0]), alpha=0.5),
          [[math.sqrt(0.5), 0.0], [0.0, math.sqrt(0.5)]])
    # Ω = 60°: A = [1, 0], B = [.5, √3/2], α = .5 -> the unit vector at 30°
    close(run("slerp", a, t(0.5, math.sqrt(3) / 2), alpha=0.5), [math.cos(math.pi / 6), 0.5])


def test_slerp_edges():
    a, b = t(1.0, 2.0, -3.0), t(-2.0, 0.5, 1.0)
    assert torch.equal(run("slerp", a, b, alpha=0.0), a)
    assert torch.equal(run("slerp", a, b, alpha=1.0), b)
    close(run("slerp", a, a * 3, alpha=0.5), a * 2)  # parallel: linear
    close(run("slerp", a, -a, alpha=0.25), a * 0.5)  # opposite: linear
    close(run("slerp", torch.zeros(3), b, alpha=0.25), b * 0.25)  # zero norm: linear


# -- ties / dare / ties_dare -------------------------------------------------------------------------
# base C = 1; task vectors A-C = [1, -2, 3, .5], B-C = [2, 1, -1.5, 0]
TC = t(1.0, 1.0, 1.0, 1.0)
TA = TC + t(1.0, -2.0, 3.0, 0.5)
TB = TC + t(2.0, 1.0, -1.5, 0.0)


def test_ties_without_trimming_by_hand():
    # β = 1 keeps everything; α = .5 -> weights (.5, .5); weighted sum [1.5, -.5, .75, .25] elects [+, -, +, +]
    # 0: both agree -> (.5·1 + .5·2)/1 = 1.5; 1: only A (-2); 2: only A (3); 3: only A (.5; B is 0)
    close(run("ties", TA, TB, TC, alpha=0.5, beta=1.0), TC + t(1.5, -2.0, 3.0, 0.5))


def test_ties_with_trimming_by_hand():
    # β = .5 keeps the top 2 magnitudes: A-C -> [0, -2, 3, 0], B-C -> [2, 0, -1.5, 0]
    # weighted (.5, .5): [1, -1, .75, 0] -> signs [+, -, +, none]
    close(run("ties", TA, TB, TC, alpha=0.5, beta=0.5), TC + t(2.0, -2.0, 3.0, 0.0))


def test_ties_weights_decide_the_sign_election():
    # α = .9: entry 1 weighs A -2·.1 = -.2 against B 1·.9 = .9 -> B's sign wins, B's value is kept
    out = run("ties", TA, TB, TC, alpha=0.9, beta=1.0)
    assert out[1].item() == pytest.approx(1.0 + 1.0)
    # entry 0: both agree -> (.1·1 + .9·2)/1
    assert out[0].item() == pytest.approx(1.0 + 0.1 * 1 + 0.9 * 2)


def test_ties_edges():
    close(run("ties", TA, TB, TC, alpha=0.0, beta=1.0), TA)  # only A's changes
    close(run("ties", TA, TB, TC, alpha=1.0, beta=1.0), TB)  # only B's changes
    close(run("ties", TA, TC.clone(), TC, alpha=0.5, beta=1.0), TA)  # B = C: nothing from B
    close(run("ties", TA, TB, TC, alpha=0.5, beta=0.0), TC)  # density 0: the base


@pytest.mark.parametrize("kind", ["randn", "few distinct values", "sorted", "sample misses"])
def test_kth_smallest_is_exactly_the_kth_value(kind, monkeypatch):
    from supermerger.merge import methods_modern as mm

    monkeypatch.setattr(mm, "SELECT_DIRECT", 500)  # small tensors take the bracketing path
    monkeypatch.setattr(mm, "SELECT_SAMPLE", 64)
    g = torch.Generator().manual_seed(11)
    n = 6000
    if kind == "randn":
        v = torch.randn(n, generator=g).abs()
    elif kind == "few distinct values":
        v = torch.randint(0, 4, (n,), generator=g).float()
    elif kind == "sorted":
        v = torch.linspace(0, 1, n)
    else:  # the strided sample sees only zeros, so its bracket cannot hold the high ranks
        v = torch.rand(n, generator=g) + 1.0
        v[:: n // 64] = 0.0
    ordered = sorted(v.tolist())
    for k in (1, 2, n // 3, n // 2, n - 7, n):
        assert mm.kth_smallest(v, k).item() == ordered[k - 1], (kind, k)


def test_ties_trims_large_tensors_to_their_top_fraction(monkeypatch):
    from supermerger.merge import methods_modern as mm

    monkeypatch.setattr(mm, "SELECT_DIRECT", 100)
    g = torch.Generator().manual_seed(4)
    n = 5000
    ta = torch.randn(n, generator=g)
    kept = mm.trim_top(ta.clone(), 0.3)
    # the 1500 largest magnitudes, found by sorting here
    top = set(sorted(range(n), key=lambda i: -abs(ta[i].item()))[:1500])
    assert [i for i in range(n) if kept[i] != 0] == sorted(top)
    assert torch.equal(kept[sorted(top)], ta[sorted(top)])


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.3, 0.7), (-0.2, 1.2), (1.0, 0.0)])
def test_elect_and_merge_entry_by_entry(weights):
    # TIES' rule for each entry written out in plain Python, on vectors with zeros and sign fights
    from supermerger.merge.methods_modern import disjoint_mean

    g = torch.Generator().manual_seed(7)
    va = torch.randint(-2, 3, (400,), generator=g).float()
    vb = torch.randint(-2, 3, (400,), generator=g).float() * 0.5
    base = torch.randn(400, generator=g)
    out = disjoint_mean(base.clone(), (va, vb), weights)
    for i in range(400):
        vals = (va[i].item(), vb[i].item())
        total = sum(w * v for w, v in zip(weights, vals))
        sign = (total > 0) - (total < 0)
        agree = [(w, v) for w, v in zip(weights, vals) if v != 0 and ((v > 0) - (v < 0)) == sign]
        den = sum(w for w, _ in agree)
        mean = sum(w * v for w, v in agree) / den if agree and den != 0 else 0.0
        assert out[i].item() == pytest.approx(base[i].item() + mean, abs=1e-6), (i, vals)


def test_dare_density_one_is_add_difference():
    a, b, c = t(1.0, 2.0, 3.0), t(2.0, 0.0, 3.0), t(1.0, 1.0, 1.0)
    close(run("dare", a, b, c, alpha=0.5, beta=1.0, seed=1), [1.5, 1.5, 4.0])  # A + .5·(B-C)


def test_dare_drops_and_rescales_with_its_seed():
    n = 20000
    a = torch.zeros(n)
    b = torch.linspace(1, 2, n)
    out = run("dare", a, b, torch.zeros(n), alpha=0.5, beta=0.25, seed=3)
    kept = out != 0
    # every entry is either dropped (A) or A + α·(B-C)/β
    close(out[kept], (0.5 * b / 0.25)[kept])
    assert abs(kept.float().mean().item() - 0.25) < 0.02
    assert torch.equal(out, run("dare", a, b, torch.zeros(n), alpha=0.5, beta=0.25, seed=3))
    assert not torch.equal(out, run("dare", a, b, torch.zeros(n), alpha=0.5, beta=0.25, seed=4))
    assert not torch.equal(out, run("dare", a, b, torch.zeros(n), alpha=0.5, beta=0.25, seed=3, key="other"))
    # B = C and α = 0 leave A
    assert torch.equal(run("dare", b, a, a.clone(), alpha=0.5, beta=0.25, seed=3), b)
    assert torch.equal(run("dare", b, a, torch.ones(n), alpha=0.0, beta=0.25, seed=3), b)


def test_ties_dare_without_drops_is_ties():
    close(run("ties_dare", TA, TB, TC, alpha=0.5, beta=1.0, seed=9), TC + t(1.5, -2.0, 3.0, 0.5))


def test_ties_dare_entries_come_from_the_rescaled_vectors():
    n = 4000
    g = torch.Generator().manual_seed(2)
    c = torch.randn(n, generator=g)
    ta, tb = torch.randn(n, generator=g), torch.randn(n, generator=g)
    out = run("ties_dare", c + ta, c + tb, c, alpha=0.5, beta=0.5, seed=5) - c
    # each entry: 0, A's change ×2, B's change ×2, or their mean ×2 (when both kept and agreeing)
    cands = torch.stack([torch.zeros(n), 2 * ta, 2 * tb, ta + tb])
    assert ((cands - out).abs().min(0).values < 1e-5).all()
    assert torch.equal(out + c, run("ties_dare", c + ta, c + tb, c, alpha=0.5, beta=0.5, seed=5))


# -- the guides -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", ["calcmode_en.md", "calcmode_ja.md"])
def test_guides_explain_every_calcmode(doc):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    table = [line for line in text.splitlines() if line.startswith("| [")]
    for cm in CALCMODES.values():
        assert any(cm.id in h for h in headings), f"{doc}: no section for {cm.id}"
        assert any(line.startswith(f"| [{cm.id}]") for line in table), f"{doc}: {cm.id} missing from the table"

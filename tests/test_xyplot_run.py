"""XYZ plots end to end on tiny models with the standalone host: the plan (which cells merge, which
reuse), grids whose cells are pixel-equal to single Merge & Gen runs, Stop, 0 stock, the checker."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch

from supermerger.hosts import GenParams
from supermerger.merge.recipe import Recipe
from supermerger.xyplot import Axis, XYZPlot, plan, run
from supermerger.xyplot import checker

PARAMS = GenParams(prompt="a cat", negative_prompt="", seed=7, steps=2, cfg_scale=7, sampler="Euler", width=64,
                   height=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two SD1-layout models with the full CLIP vocabulary (what the standalone host needs)."""
    from supermerger.testing.synthetic import write_checkpoint

    root = tmp_path_factory.mktemp("xyz_models")
    return tuple(str(write_checkpoint(root / f"m{k}.safetensors", "sd1", seed=k, vocab=49408)) for k in (1, 2))


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xyz_work")


@pytest.fixture(scope="module")
def host(work_dir):
    pytest.importorskip("diffusers")
    from supermerger.hosts import clip_tokenizer
    from supermerger.hosts.diffusers_host import DiffusersHost

    try:
        clip_tokenizer.find_bpe_file()
    except Exception:  # pragma: no cover
        pytest.skip("open-clip-torch (the CLIP vocabulary) is not installed")
    return DiffusersHost(work_dir=work_dir)


def actions(cells):
    return [c.action for c in cells]


# -- the plan -----------------------------------------------------------------------------------------------------
def test_plan_merges_only_where_the_recipe_changes(models):
    r = Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]))
    p = plan(XYZPlot(x=Axis("seed", "1,2,3"), y=Axis("alpha", "0.2,0.4")), r, PARAMS)
    assert actions(p.cells) == ["merge", "reuse", "reuse", "merge", "reuse", "reuse"]
    assert [c.index for c in p.cells] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0), (1, 1, 0), (2, 1, 0)]
    assert [c.params.seed for c in p.cells] == [1, 2, 3, 1, 2, 3]
    p = plan(XYZPlot(x=Axis("alpha", "0.2,0.4"), y=Axis("seed", "1,2"), z=Axis("prompt", "a\nb")), r, PARAMS)
    assert actions(p.cells) == ["merge"] * 8  # alpha changes every cell (Z → Y → X order)
    assert [(c.recipe.alpha, c.params.seed, c.params.prompt) for c in p.cells][:3] == \
        [(0.2, 1, "a"), (0.4, 1, "a"), (0.2, 2, "a")]
    p = plan(XYZPlot(x=Axis("prompt", "a\nb"), y=Axis("alpha", "0.5")), r, PARAMS)
    assert actions(p.cells) == ["merge", "reuse"]
    assert p.shape() == (2, 1, 1) and p.constant_models() == [r.model_a, r.model_b]
    assert plan(XYZPlot(x=Axis("model_B", str(models[("sd1", "C")]))), r, PARAMS).constant_models() == [r.model_a]


def test_plan_fixed_seed_and_the_batch_of_every_cell(models):
    r = Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]))
    params = PARAMS.with_(seed=-1, batch_size=4, batch_count=2)
    p = plan(XYZPlot(x=Axis("alpha", "0,1")), r, params, rng=random.Random(5))
    seeds = {c.params.seed for c in p.cells}
    assert len(seeds) == 1 and seeds.pop() == random.Random(5).randrange(2 ** 32 - 1)
    assert all((c.params.batch_size, c.params.batch_count) == (4, 2) for c in p.cells)
    assert params.seed == -1  # the caller's parameters are left as they were


def test_plan_zero_stock_reuses_the_image_of_model_a(models):
    r = Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]))
    plot = XYZPlot(x=Axis("alpha", "0,0.5,0"), y=Axis("seed", "1,2"), zero_stock=True)
    p = plan(plot, r, PARAMS)
    assert actions(p.cells) == ["merge", "merge", "stock", "merge", "merge", "stock"]
    assert [c.same_as for c in p.cells] == [None, None, 0, None, None, 3]
    # all-zero weights and a zero elemental ratio are model A too; without the option nothing is stock
    plot = XYZPlot(x=Axis("mbw alpha", "ALL_A\nALL_B"), y=Axis("add elemental", "\n\nOUT05::0"), zero_stock=True)
    p = plan(plot, r, PARAMS)
    assert actions(p.cells) == ["merge", "merge", "stock", "merge"]
    plot.zero_stock = False
    assert "stock" not in actions(plan(plot, r, PARAMS).cells)


# -- running --------------------------------------------------------------------------------------------------------
def test_3x2_grid_cells_equal_single_merge_and_gen_runs(tiny, host, work_dir, tmp_path):
    from PIL import Image

    from supermerger.history import png_text_chunks
    from supermerger.hosts.diffusers_host import DiffusersHost

    a, b = tiny
    recipe = Recipe(model_a=a, model_b=b, mbw_alpha="FLAT_25")
    plot = XYZPlot(x=Axis("alpha", "0,0.5,1"), y=Axis("pinpoint blocks", "IN01 IN02,OUT10 OUT11"))
    result = run(host, plot, recipe, PARAMS, outdir=tmp_path)
    assert result.complete and not result.stopped and len(result.grids) == 1
    grid, layout = result.grids[0], result.layouts[0]
    assert (layout.cols, layout.rows, layout.cell_w, layout.cell_h) == (3, 2, 64, 64)
    assert grid.size == (layout.left + 3 * 64, layout.top + 2 * 64) and layout.left >= 48 and layout.top > 0
    assert [c.cell.action for c in result.cells] == ["merge"] * 6
    fresh = DiffusersHost(work_dir=work_dir, cache=False)
    for c in result.cells:
        x, y, _ = c.cell.index
        w = [0.0] + [0.25] * 25
        for blk in ((2, 3), (24, 25))[y]:
            w[blk] = (0.0, 0.5, 1.0)[x]
        single = recipe.replace(mbw_alpha=",".join(map(str, w)))
        fresh.merge_and_load(single, history=False)
        want = np.asarray(fresh.generate(PARAMS).images[0])
        got = np.asarray(grid.crop(layout.box(x, y)))
        assert np.array_equal(got, want), c.cell.index
    assert len(result.paths) == 1 and result.paths[0].suffix == ".png"
    saved = Image.open(result.paths[0])
    assert saved.size == grid.size
    chunks = png_text_chunks(result.paths[0])
    assert "XYZ plot X: alpha: 0, 0.5, 1" in chunks["parameters"] and "Seed: 7" in chunks["parameters"]
    assert '"pinpoint blocks"' in chunks["supermerger_xyz"]


def test_seed_axis_merges_once_per_row_and_protects_constant_models(tiny, host):
    a, b = tiny
    recipe = Recipe(model_a=a, model_b=b)
    seen = []

    def on_cell(i, n, cell):
        seen.append((i, n, cell.cell.action, host.cache.is_protected(a), host.cache.is_protected(b)))

    result = run(host, XYZPlot(x=Axis("seed", "1,2"), y=Axis("alpha", "0.3")), recipe, PARAMS, on_cell=on_cell,
                 history=False)
    assert seen == [(0, 2, "merge", True, True), (1, 2, "reuse", True, True)]
    assert not host.cache.is_protected(a)
    im = [np.asarray(c.image) for c in result.cells]
    assert not np.array_equal(im[0], im[1])  # another seed, same model
    assert result.cells[1].merge_seconds == 0 and "Seed: 2" in result.cells[1].infotext


def test_a_batch_per_cell_gives_one_grid_per_image_index(tiny, host):
    # batch size 2: every cell makes two images (seeds 5 and 6); grid k holds the k-th image of
    # every cell, pixel-equal to a plain generation with the same seed on the same merge
    a, b = tiny
    params = PARAMS.with_(seed=5, batch_size=2)
    result = run(host, XYZPlot(x=Axis("alpha", "0.25,0.75")), Recipe(model_a=a, model_b=b), params,
                 history=False)
    assert len(result.grids) == 2 and all(len(c.images) == 2 for c in result.cells)
    for k, (grid, layout) in enumerate(zip(result.grids, result.layouts)):
        for x, cell in enumerate(result.cells):
            assert np.array_equal(np.asarray(grid.crop(layout.box(x, 0))), np.asarray(cell.images[k]))
    host.merge_and_load(Recipe(model_a=a, model_b=b, alpha=0.75), history=False)
    single = host.generate(PARAMS.with_(seed=6)).images[0]
    assert np.array_equal(np.asarray(result.cells[1].images[1]), np.asarray(single))
    assert not np.array_equal(np.asarray(result.cells[1].images[0]), np.asarray(single))


def test_prompt3_on_x_generates_each_row_as_one_batch(tiny, host):
    # two prompts, one batch per row: seeds 5 and 6, image k with prompt k; the same batch made
    # directly on the same merge gives the same pixels
    a, b = tiny
    seen = []
    result = run(host, XYZPlot(x=Axis("prompt3", "a red cat\n\na blue dog"), y=Axis("alpha", "0.4")),
                 Recipe(model_a=a, model_b=b), PARAMS.with_(seed=5), history=False,
                 on_cell=lambda i, n, c: seen.append((i, n)))
    assert seen == [(0, 2), (1, 2)]
    first, second = result.cells
    assert first.infotext.startswith("a red cat") and "Seed: 5" in first.infotext
    assert second.infotext.startswith("a blue dog") and "Seed: 6" in second.infotext
    host.merge_and_load(Recipe(model_a=a, model_b=b, alpha=0.4), history=False)
    direct = host.generate(PARAMS.with_(seed=5, prompts=("a red cat", "a blue dog"), batch_size=2))
    for cell, image in zip(result.cells, direct.images):
        assert np.array_equal(np.asarray(cell.image), np.asarray(image))
    # on Y the prompts are generated one by one (other merges come in between)
    result = run(host, XYZPlot(x=Axis("alpha", "0.4,0.6"), y=Axis("prompt3", "a red cat\n\na blue dog")),
                 Recipe(model_a=a, model_b=b), PARAMS.with_(seed=5), history=False)
    assert all("Seed: 5" in c.infotext for c in result.cells)


def test_stop_after_the_current_cell_gives_a_partial_grid(tiny, host):
    a, b = tiny
    stop = threading.Event()
    result = run(host, XYZPlot(x=Axis("seed", "1,2,3"), y=Axis("alpha", "0.5,1")), Recipe(model_a=a, model_b=b),
                 PARAMS, stop=stop, on_cell=lambda i, n, c: stop.set() if i == 1 else None, history=False)
    assert result.stopped and len(result.cells) == 2 and not result.complete
    grid, layout = result.grids[0], result.layouts[0]
    assert (layout.cols, layout.rows) == (3, 2)
    assert np.array_equal(np.asarray(grid.crop(layout.box(1, 0))), np.asarray(result.cells[1].image))
    blank = np.asarray(grid.crop(layout.box(2, 1)))
    assert (blank == 255).all()  # not made: background


def test_zero_stock_and_no_grid_and_swap(tiny, host, tmp_path):
    a, b = tiny
    plot = XYZPlot(x=Axis("alpha", "0,1,0"), y=Axis("seed", "3"), zero_stock=True, no_grid=True)
    result = run(host, plot, Recipe(model_a=a, model_b=b), PARAMS, history=False, outdir=tmp_path)
    assert [c.cell.action for c in result.cells] == ["merge", "merge", "stock"]
    assert result.cells[2].image is result.cells[0].image and result.cells[2].merge_seconds == 0
    assert not result.grids and len(result.images) == 3 and len(result.paths) == 3
    plot = XYZPlot(x=Axis("seed", "1,2,3"), y=Axis("alpha", "0.5"), swap_xy=True)
    result = run(host, plot, Recipe(model_a=a, model_b=b), PARAMS, history=False)
    layout = result.layouts[0]
    assert (layout.cols, layout.rows) == (1, 3)
    assert np.array_equal(np.asarray(result.grids[0].crop(layout.box(0, 2))), np.asarray(result.cells[2].image))


def test_save_model_writes_each_merge(tiny, host, tmp_path):
    from safetensors.torch import load_file

    import supermerger

    a, b = tiny
    result = run(host, XYZPlot(x=Axis("alpha", "0.25,0.75"), save_model=True), Recipe(model_a=a, model_b=b),
                 PARAMS, history=False, outdir=tmp_path)
    saved = [p for p in result.paths if p.suffix == ".safetensors"]
    assert len(saved) == 2 and all(p.parent == tmp_path / "models" for p in saved)
    want = supermerger.merge(Recipe(model_a=a, model_b=b, alpha=0.75), history=False).state_dict
    got = load_file(str(saved[1]))
    assert all(torch.equal(got[k], want[k]) for k in want)


# -- the effective elemental checker ----------------------------------------------------------------------------------
def test_checker_percentages_on_constructed_images():
    from PIL import Image

    base = np.zeros((4, 5, 3), np.uint8)
    one = base.copy()
    one[0, 0, 0] = 21  # counts (more than 20)
    one[1, 1, 1] = 20  # does not
    pct, diff = checker.difference(Image.fromarray(base), Image.fromarray(one))
    assert pct == pytest.approx(100 / 60)
    d = np.asarray(diff)
    assert d[0, 0].tolist() == [0, 255, 255] and (d[1:] == 255).all()
    two = base.copy()
    two[2, :2] = 255  # two pixels, all three channels
    diffs = checker.analyse(Image.fromarray(base), [Image.fromarray(one), Image.fromarray(two)], ["a", "b"])
    assert [round(x.percent, 4) for x in diffs] == [round(100 / 60, 4), 10.0]
    assert checker.label_with(diffs[1]) == "b\n Diff : 10.000%"
    grid, layout = checker.checker_grid(Image.fromarray(base), diffs)
    assert (layout.cols, layout.rows) == (2, 3)
    grid, layout = checker.checker_grid(Image.fromarray(base), diffs, along_y=True)
    assert (layout.cols, layout.rows) == (3, 2)


def test_checker_plot_baseline_grid_gif_and_csv(tiny, host, tmp_path):
    from PIL import Image

    a, b = tiny
    plot = XYZPlot(x=Axis("effective elemental checker", "OUT11:,BASE:"), y=Axis("alpha", "1"), save_gif=True,
                   save_csv=True)
    result = run(host, plot, Recipe(model_a=a, model_b=b, alpha=0), PARAMS, history=False, outdir=tmp_path)
    base, out11, text_vae = (c.image for c in result.cells)
    assert [c.cell.recipe.elemental for c in result.cells] == ["", "OUT11::1", "BASE::1"]
    diffs = result.differences[0]
    assert [d.label for d in diffs] == ["OUT11:", "BASE:"]
    # random tiny U-Nets barely move the image; B's text encoder and VAE (BASE) change it a lot
    assert [d.percent for d in diffs] == [checker.difference(base, im)[0] for im in (out11, text_vae)]
    assert diffs[1].percent > 10 and diffs[0].percent < diffs[1].percent
    layout = result.layouts[0]
    assert (layout.cols, layout.rows) == (2, 3)
    assert np.array_equal(np.asarray(result.grids[0].crop(layout.box(1, 1))), np.asarray(text_vae))
    gifs = [p for p in result.paths if p.suffix == ".gif"]
    assert len(gifs) == 2 and gifs[0].parent == tmp_path / "difgif" / "m1+m2"
    assert Image.open(gifs[0]).n_frames == 2
    rows = (tmp_path / "difgif" / "m1+m2" / "difference.csv").read_text().splitlines()
    assert rows == [f"OUT11:,{diffs[0].percent:.3f}", f"BASE:,{diffs[1].percent:.3f}"]


# -- grid drawing ------------------------------------------------------------------------------------------------------
def test_grid_layout_labels_wrapped_to_fit():
    from PIL import Image, ImageDraw

    from supermerger.xyplot.grid import _fit_columns, _text_size, draw_grid, wrap_label

    assert wrap_label("0,1,0.916667,0.833333,0.75,0.666667,0.5") == "0,1,0.916667,0.833333,0.75,\n0.666667,0.5"
    assert wrap_label("a cat\non a mat") == "a cat\non a mat"
    weights = "mbw alpha = " + ",".join(["0.916667"] * 26)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    fnt, texts = _fit_columns(probe, [weights, "FLAT_25"], 124, 12)
    assert texts[1] == "FLAT_25" and texts[0].replace("\n", "") == weights
    assert all(_text_size(probe, line, fnt)[0] <= 124 for line in texts[0].split("\n"))
    cells = [[Image.new("RGB", (128, 96), (k, 0, 0)) for k in range(3)] for _ in range(2)]
    cells[1][2] = None  # a cell not made (after Stop)
    grid, layout = draw_grid(cells, [weights, "b", "c"], ["y = 1", "2"], "corner\ntext")
    assert grid.size == (layout.left + 3 * 128, layout.top + 2 * 96)
    assert np.array_equal(np.asarray(grid.crop(layout.box(2, 0))), np.asarray(cells[0][2]))
    assert (np.asarray(grid.crop(layout.box(2, 1))) == 255).all()
    grid, layout = draw_grid(cells[:1], ["a", "b", "c"], None)  # no Y axis: no row headers, no corner
    assert layout.left == 0 and (layout.rows, layout.cols) == (1, 3)

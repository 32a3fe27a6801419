"""The XYZ Plot section and the Reservation tab: the app builds with them, and their actions (run,
reserve, '|' split, presets, the queue's start and delete) work on the Merge tab's snapshot."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("diffusers")

from supermerger.ui import forms  # noqa: E402
from supermerger.xyplot import Axis, ReservationQueue, XYZPlot  # noqa: E402


pytestmark = pytest.mark.usefixtures("needs_vocabulary")


@pytest.fixture
def app_ctx():
    """The standalone app's context on the demo models, with every tab built."""
    from supermerger.ui.app import create_app
    from supermerger.ui.standalone import make_context

    ctx = make_context()
    app = create_app(ctx)
    yield ctx
    app.close()


def merge_values(ctx, **changes):
    names = ctx.host.list_checkpoints()
    values = dict(forms.MERGE_FIELDS, model_a=names[0], model_b=names[1])
    values.update(changes)
    return [values[k] for k in forms.MERGE_FIELDS]


def gen_values(**changes):
    values = dict(prompt="a cat", negative_prompt="", steps=1, cfg_scale=7, sampler="Euler", scheduler="Automatic",
                  width=64, height=64, seed=4, batch_size=1, batch_count=1, enable_hr=False, hr_scale=2,
                  hr_upscaler="Latent", hr_second_pass_steps=0, denoising_strength=0.7)
    values.update(changes)
    return [values[k] for k in forms.GEN_FIELDS]


def test_section_values_round_trip():
    from supermerger.ui import xyplot_section as xs

    plot = XYZPlot(x=Axis("pinpoint blocks", "IN01,OUT11"), y=Axis("alpha", "0,1"), z=Axis("seed", "1"),
                   swap_xy=True, zero_stock=True)
    values = xs.values_from_plot(plot)
    assert values[0] == "pinpoint blocks (alpha or beta must be selected for another axis)"
    assert values[6] == ["swap XY", "0 stock"]
    assert xs.plot_from_values(*values) == plot
    assert xs.minus_ones(3) == "-1,-1,-1" and xs.minus_ones(0) == ""
    assert xs.block_choices("sdxl")[-1] == "OUT08"


def test_app_registers_the_section_and_the_tab(app_ctx):
    from supermerger.ui.app import TABS

    assert ("Reservation", "reservation_tab") in TABS
    for name in ("xyz.xtype", "xyz.xvalues", "xyz.settings", "xyz.run", "xyz.reserve", "xyz.blocks",
                 "queue.table", "queue.start", "queue.delete"):
        assert name in app_ctx.components
    assert app_ctx.components["xyz.xvalues"].value == "0.25,0.5,0.75"


def test_run_reserve_split_and_the_reservation_tab(app_ctx):
    from supermerger.ui import reservation_tab, xyplot_section as xs

    ctx = app_ctx
    xyz = ["mbw alpha", "FLAT_25\nFLAT_75", "seed", "4|5", "none", "", []]
    ctx.last_result, ctx.last_recipe = object(), object()  # as after a merge from the Merge tab
    items, text = xs.run_plot(ctx, xyz, merge_values(ctx, use_mbw=True, mbw_alpha="FLAT_25"), gen_values())
    assert ctx.last_result is None and ctx.last_recipe is None  # the live model is a plot cell's merge now
    # the first part ran, the second was queued and ran right after (spec §6)
    assert "XYZ plot done: 2 of 2 cells" in text and "the others were queued" in text
    assert "Reservation 1: finished" in text and len(items) == 2
    grid = np.asarray(items[0][0])
    assert grid.shape[1] > 128 and grid.shape[0] > 64
    assert [e.status for e in ReservationQueue().list()] == ["finished"]
    recipe = ReservationQueue().list()[0].recipe
    assert recipe.mbw_alpha == "FLAT_25" and recipe.model_a.endswith("demoA.safetensors")

    msg = xs.reserve(ctx, ["calcmode", "normal,cosineQ", "none", "", "none", "", []], merge_values(ctx),
                     gen_values())
    assert msg.startswith("Reserved: No. 2 (1 waiting)")
    xs.reserve(ctx, ["seed", "1,2", "alpha", "0.5", "none", "", ["not save grid"]], merge_values(ctx), gen_values())
    rows = reservation_tab.table_rows()
    assert [r[:4] for r in rows] == [["1", "finished", "mbw alpha", "FLAT_25\nFLAT_75"], ["2", "waiting", "calcmode", "normal,cosineQ"],
                                     ["3", "waiting", "seed", "1,2"]]
    ctx.last_recipe = object()
    items, text = reservation_tab.start(ctx)
    assert ctx.last_recipe is None
    assert "Reservation 2: error (X axis (calcmode), item 2 ('cosineQ')" in text
    assert "Reservation 3: finished" in text and len(items) == 2  # two single images ("not save grid")
    # the box starts empty: Delete without a number deletes nothing
    for empty in (None, "", 0):
        assert reservation_tab.delete(empty).startswith("Type the number") and len(reservation_tab.table_rows()) == 3
    assert reservation_tab.delete(1) == "Deleted 1 reservation."
    assert reservation_tab.delete(-1) == "Deleted 2 reservations." and reservation_tab.table_rows() == []
    assert reservation_tab.start(ctx) == ([], "No reservation is waiting.")


def test_section_errors_are_messages(app_ctx):
    from supermerger.errors import SuperMergerError
    from supermerger.ui import xyplot_section as xs

    with pytest.raises(SuperMergerError, match=r"X axis \(pinpoint blocks\), item 1 \('IN99'\)"):
        xs.run_plot(app_ctx, ["pinpoint blocks", "IN99", "alpha", "1", "none", "", []], merge_values(app_ctx),
                    gen_values())
    assert "Unknown block ID" in app_ctx.message(SuperMergerError("Unknown block ID 'IN99'"))

"""What the History and Weight Analysis tabs show, as plain data: table rows and page notes, the
typed ID, the mean ± σ chart (geometry and pixels), and a restore that names a missing model."""

from __future__ import annotations

import shutil

import pytest

import supermerger
from supermerger import history
from supermerger.history import History, HistoryError, ModelRef, Record, chart, table
from supermerger.history.analysis import WeightStats
from supermerger.history.locate import restore_record
from supermerger.merge.recipe import Recipe


def _record(rid: int, name: str, mode="weight_sum", a="modelA", short_a="0123456789", **kw) -> Record:
    return Record(id=rid, time="2025-01-02 03:04:05", name=name, mode=mode, alpha=0.25, beta=0.5, gamma=1.5,
                  models={"A": ModelRef(name=a, short=short_a), "B": ModelRef(name="modelB")}, **kw)


def test_row_is_a_few_columns_to_scan_and_the_detail_has_everything():
    rec = _record(7, "A x 0.75 + B x 0.25 " + "long " * 20, include_mode="Exclude", include_exclude="IN01 VAE",
                  seed=42, weights_alpha="0,1,0.5", calcmode="cosineA")
    row = table.row(rec)
    assert table.HEADERS[:2] == ("ID", "Time") and len(row) == len(table.HEADERS)
    cells = dict(zip(table.HEADERS, row))
    assert cells["ID"] == "7" and cells["Time"] == "2025-01-02 03:04:05" and cells["Mode"] == "Weight sum"
    assert cells["Model A"] == "modelA" and cells["Model B"] == "modelB" and cells["Model C"] == ""
    assert cells["alpha"] == "0.25" and cells["beta"] == "0.5" and cells["Calcmode"] == "cosineA"
    assert len(cells["Name"]) == table.NAME_CHARS and cells["Name"].endswith("…")
    assert cells["Name"].startswith("A x 0.75 + B x 0.25")
    assert table.row(_record(8, "x"))[table.HEADERS.index("Calcmode")] == ""  # normal: nothing to read
    text = "\n".join(table.detail_lines(rec))
    for part in ("ID              : 7", rec.name, "weights alpha   : 0,1,0.5", "exclude         : IN01 VAE",
                 "seed            : 42", "gamma: 0.25 0.5 1.5", "0123456789"):
        assert part in text, part


def test_page_notes(tmp_path):
    hist = History(tmp_path / "h.csv")
    assert table.page_note(hist.search(), "") == "No merge history yet: every merge is recorded here."
    for i in range(45):
        hist.append(_record(0, f"merge {i}"))
    page = hist.search(page=2, per_page=20)
    assert [r.id for r in page.records] == list(range(25, 5, -1))  # newest first
    assert table.page_note(page) == "Records 21-40 of 45 (page 2 of 3), newest first."
    assert table.page_note(hist.search(page=3, per_page=20)) == "Records 41-45 of 45 (page 3 of 3), newest first."
    assert table.page_note(hist.search("nothing-like-this"), "nothing-like-this") == "No result."
    assert "past the last page (3)" in table.page_note(hist.search(page=4, per_page=20))


@pytest.mark.parametrize("text, expected", [("-1", -1), (" 12 ", 12), ("3.0", 3), (-2, -2)])
def test_id_from_box(text, expected):
    assert table.id_from_box(text) == expected


@pytest.mark.parametrize("text, match", [("abc", "'abc' is not a number"), ("", "'' is not a number"),
                                         ("1.5", "whole numbers"), ("0", "whole numbers")])
def test_id_from_box_refuses(text, match):
    with pytest.raises(HistoryError, match=match):
        table.id_from_box(text)


# -- the chart ------------------------------------------------------------------------------------
STATS = WeightStats([1, 2], ("BASE", "IN00", "IN01", "M00", "OUT00"), [0.8, 0.4, -0.2, 0.0, 0.6],
                    [0.1, 0.0, 0.05, 0.2, 0.3])


def test_chart_geometry_is_proportional_to_the_weights():
    g = chart.layout(STATS, width=500, height=300)
    bars = {b.block: b for b in g.bars}
    scale = (g.zero - bars["BASE"].top) / 0.8  # pixels per unit, from the first bar
    assert scale > 50
    # other bars: height from the zero line proportional to their mean (±1 px of rounding)
    assert abs((g.zero - bars["IN00"].top) - 0.4 * scale) <= 1
    assert abs((g.zero - bars["OUT00"].top) - 0.6 * scale) <= 1
    assert bars["IN01"].top == g.zero and abs((bars["IN01"].bottom - g.zero) - 0.2 * scale) <= 1  # hangs below
    assert bars["M00"].top == bars["M00"].bottom == g.zero  # mean 0: no bar, only the error bar
    # error bars span mean ± σ
    for b, s in zip(g.bars, STATS.std):
        assert abs((b.err_bottom - b.err_top) - 2 * s * scale) <= 1
    # left to right, no overlap, all inside the plot area
    assert all(a.right <= b.left for a, b in zip(g.bars, g.bars[1:]))
    assert all(g.plot_top <= b.err_top and b.err_bottom <= g.plot_bottom for b in g.bars)
    assert g.plot_left <= g.bars[0].left and g.bars[-1].right <= g.plot_right


def test_chart_pixels():
    img = chart.render(STATS, width=500, height=300)
    assert img.size == (500, 300)
    g = chart.layout(STATS, width=500, height=300)
    px = img.load()
    for b, m, s in zip(g.bars, STATS.mean, STATS.std):
        x = b.left + 1
        if b.bottom - b.top > 2:
            assert px[x, b.top + 1] == chart.BAR and px[x, b.bottom - 2] == chart.BAR
        # just beyond the bar's end: no bar colour
        outside = b.top - 2 if m > 0 else b.bottom + 2
        assert px[x, outside] != chart.BAR
        mid = (b.left + b.right - 1) // 2
        if s > 0:
            assert px[mid, b.err_top] == chart.ERROR and px[mid, b.err_bottom] == chart.ERROR
        # a label under every bar: dark text pixels below the plot, within the bar's columns
        below = [px[xx, yy] for xx in range(b.left, b.right) for yy in range(g.plot_bottom + 2, 300)]
        assert any(sum(p) < 300 for p in below), b.block
    assert chart.png_bytes(STATS, 200, 120).startswith(b"\x89PNG")


# -- restore with a missing model --------------------------------------------------------------
def test_restore_allow_missing_names_the_model_and_keeps_the_rest(models, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    a = shutil.copy(models[("sd1", "A")], folder / "A.safetensors")
    b = shutil.copy(models[("sd1", "B")], folder / "B.safetensors")
    supermerger.merge(Recipe(model_a=str(a), model_b=str(b), alpha=0.3, elemental="OUT03:attn2:0.5"))
    (folder / "B.safetensors").unlink()
    rec = history.get(-1)
    restored = restore_record(rec, [folder], allow_missing=True)
    assert restored.recipe.model_a == str(a) and restored.recipe.model_b is None
    assert restored.recipe.alpha == 0.3 and restored.recipe.elemental == "OUT03:attn2:0.5"
    assert restored.missing == ["model B ('B', sha256 " + rec.models["B"].short + ")"]
    assert restored.message.startswith("model B ('B', sha256") and str(folder) in restored.message
    with pytest.raises(supermerger.errors.ModelFileError, match=r"cannot be restored: model B \('B'"):
        restore_record(rec, [folder])

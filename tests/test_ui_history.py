"""History, "IDs from images" and Weight Analysis tabs: their callbacks as plain functions
(restore into the Merge tab's values, search pages, IDs from PNGs written by the hosts, the
analysis text and chart)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import supermerger
from supermerger.history import History, ModelRef, Record, model_field_with_id, table
from supermerger.merge.recipe import Recipe

pytest.importorskip("gradio")

from supermerger.hosts.infotext import format_infotext  # noqa: E402
from supermerger.hosts.mergeinfo import merge_fields, save_png  # noqa: E402
from supermerger.ui import forms, history_tab, ids_tab, weight_analysis_tab  # noqa: E402
from supermerger.ui.context import UIContext  # noqa: E402


class ListHost:
    """A host's listing: the checkpoints of one folder, by file name."""

    def __init__(self, folder: Path):
        self.folder = folder

    def list_checkpoints(self):
        return sorted(p.name for p in self.folder.glob("*.safetensors"))

    def checkpoint_path(self, name):
        return str(self.folder / name)


@pytest.fixture
def ctx(models, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for label in ("A", "B", "C"):
        shutil.copy(models[("sd1", label)], folder / f"sd1_{label}.safetensors")
    return UIContext(ListHost(folder))


def values(updates) -> dict:
    """The Merge-tab values a list of updates sets (fields left alone are absent)."""
    assert len(updates) == len(forms.MERGE_FIELDS)
    return {name: u["value"] for name, u in zip(forms.MERGE_FIELDS, updates) if "value" in u}


def test_restore_fills_the_merge_tab(ctx):
    folder = ctx.host.folder
    recipe = Recipe(model_a=str(folder / "sd1_A.safetensors"), model_b=str(folder / "sd1_B.safetensors"),
                    model_c=str(folder / "sd1_C.safetensors"), mode="add_difference", calcmode="trainDifference",
                    alpha=0.35, mbw_alpha=[0.1] * 26, elemental="OUT03:attn2:0.5", exclude="IN01", seed=7)
    supermerger.merge(recipe)
    supermerger.merge(Recipe(model_a=str(folder / "sd1_B.safetensors"), model_b=str(folder / "sd1_C.safetensors"),
                             alpha=0.9))
    updates, message = history_tab.restore_id(ctx, " 1 ")
    v = values(updates)
    assert v["model_a"] == "sd1_A.safetensors" and v["model_b"] == "sd1_B.safetensors"
    assert v["model_c"] == "sd1_C.safetensors"
    assert v["mode"] == "Add difference" and v["calcmode"] == "trainDifference" and v["alpha"] == 0.35
    assert v["use_mbw"] is True and v["mbw_alpha"] == ",".join(["0.1"] * 26)
    assert v["elemental"] == "OUT03:attn2:0.5" and (v["filter_mode"], v["filter_text"]) == ("Exclude", "IN01")
    assert v["merge_seed"] == 7
    assert message.startswith("Restored history ID 1 (") and "Not found" not in message
    # -1 is the last merge; the values round-trip into the same recipe the form would build
    updates, _ = history_tab.restore_id(ctx, "-1")
    v = values(updates)
    assert (v["model_a"], v["model_b"], v["alpha"], v["use_mbw"]) == ("sd1_B.safetensors", "sd1_C.safetensors",
                                                                     0.9, False)
    again = ctx.recipe_from_ui(*[v.get(k, d) for k, d in forms.MERGE_FIELDS.items()])
    assert (again.model_a, again.model_b, again.alpha) == (str(folder / "sd1_B.safetensors"),
                                                           str(folder / "sd1_C.safetensors"), 0.9)


def test_restore_finds_a_renamed_model_by_hash_and_names_a_missing_one(ctx):
    folder = ctx.host.folder
    supermerger.merge(Recipe(model_a=str(folder / "sd1_A.safetensors"), model_b=str(folder / "sd1_B.safetensors"),
                             alpha=0.2))
    (folder / "sd1_A.safetensors").rename(folder / "renamed.safetensors")
    (folder / "sd1_B.safetensors").unlink()
    updates, message = history_tab.restore_id(ctx, "-1")
    v = values(updates)
    assert v["model_a"] == "renamed.safetensors" and v["model_b"] is None and v["alpha"] == 0.2
    assert "Model A: renamed.safetensors (found by hash)." in message
    assert "Not found: model B ('sd1_B', sha256 " in message and str(folder) in message


@pytest.mark.parametrize("text, error", [("abc", "'abc' is not a number"), ("5", "ID 5 does not exist"),
                                         ("-1", "no merge history yet")])
def test_restore_errors_leave_the_merge_tab_alone(ctx, text, error, tmp_path):
    if text == "5":
        History().append(Record(id=0, time="t", name="only", recipe_json=Recipe(model_a="a", model_b="b").to_json()))
    updates, message = history_tab.restore_id(ctx, text)
    assert values(updates) == {} and message.startswith("Error: ") and error in message


@pytest.mark.parametrize("text", ["", "   ", None])
def test_restore_with_no_id_restores_nothing(ctx, text):
    """An empty ID box restores nothing (it once meant -1, the newest merge, so one click replaced the
    Merge tab's settings with a merge the user never picked)."""
    supermerger.merge(Recipe(model_a=str(ctx.host.folder / "sd1_A.safetensors"),
                             model_b=str(ctx.host.folder / "sd1_B.safetensors"), alpha=0.2))
    updates, message = history_tab.restore_id(ctx, text)
    assert values(updates) == {} and message.startswith("Pick a merge first")
    assert history_tab.detail(text) == ""
    assert history_tab.detail("1").startswith("ID              : 1\n")


def _append(name, mode="weight_sum", a="alpha_model", weights=None):
    recipe = Recipe(model_a=f"/m/{a}.safetensors", model_b="/m/other.safetensors", mode=mode)
    History().append(Record(id=0, time="2025-01-01 00:00:00", name=name, mode=mode, architecture="sd1",
                            models={"A": ModelRef(a, f"/m/{a}.safetensors", "ab" * 32)},
                            effective_alpha=tuple(weights) if weights else None,
                            recipe_json=recipe.to_json(indent=None)))


def test_search_pages_filters_and_words():
    for i in range(25):
        _append(("cat" if i % 2 else "dog") + (" spotted" if i % 3 == 0 else " plain"), mode="add_difference" if i % 5 == 0 else "weight_sum",
                a="xl_base" if i < 3 else "anime")
    rows, note, page = history_tab.search_page(per_page=10)
    assert [r[0] for r in rows] == [str(i) for i in range(25, 15, -1)] and page == 1
    assert note == "Records 1-10 of 25 (page 1 of 3), newest first."
    rows, note, page = history_tab.search_page(per_page="10", page=9)  # past the end: the last page
    assert page == 3 and [r[0] for r in rows] == ["5", "4", "3", "2", "1"]
    rows, _, _ = history_tab.search_page("Dog SPOTTED", how="and", per_page=50)
    assert [int(r[0]) for r in rows] == [i + 1 for i in range(24, -1, -1) if i % 2 == 0 and i % 3 == 0]
    rows, _, _ = history_tab.search_page("cat spotted", how="or", per_page=50)
    assert [int(r[0]) for r in rows] == [i + 1 for i in range(24, -1, -1) if i % 2 or i % 3 == 0]
    rows, _, _ = history_tab.search_page(mode="Add difference", per_page=50)
    mode = table.HEADERS.index("Mode")
    assert [r[0] for r in rows] == ["21", "16", "11", "6", "1"] and {r[mode] for r in rows} == {"Add difference"}
    rows, _, _ = history_tab.search_page(model="XL_BASE", mode=history_tab.ANY_MODE, per_page=50)
    assert [r[0] for r in rows] == ["3", "2", "1"]
    rows, note, _ = history_tab.search_page("zebra")
    assert rows == [] and note == "No result."


def test_id_of_a_clicked_row():
    rows = [["12", "t", "name"], ["7", "t", "other"]]
    assert history_tab.id_of_row(rows, 1) == "7" and history_tab.id_of_row(rows, 5) == ""


def test_ids_from_pngs_written_by_the_host(tmp_path):
    from PIL import Image

    def png(name, model_field, extra=None):
        params = {"Steps": 4, "Sampler": "Euler a", "Model": model_field, **(extra or {})}
        return save_png(Image.new("RGB", (8, 8)), tmp_path / name,
                        format_infotext("a cat, <lora:x:1>", "bad", params))

    class Result:
        history_id = 12

    fields = merge_fields("sd1_A x 0.7 + sd1_B x 0.3", Result(), Recipe(model_a="/m/A.safetensors",
                                                                       model_b="/m/B.safetensors", alpha=0.3))
    files = [png("one.png", fields["Model"], {"SuperMerger recipe": fields["SuperMerger recipe"]}),
             png("two.png", model_field_with_id("merged, with comma", 5)), png("again.png", fields["Model"]),
             png("plain.png", "sd1_A")]
    (tmp_path / "fake.png").write_bytes(b"not a png")
    ids, note = ids_tab.ids_from_files([str(f) for f in files] + [{"path": str(tmp_path / "fake.png")}])
    assert ids == "12,5"
    assert note == "2 merge IDs in 5 images. No merge ID in: plain.png. Not a readable PNG: fake.png."
    assert ids_tab.ids_from_files(None) == ("", "Drop PNG images made with a merged model.")


def test_weight_analysis_text_and_chart():
    w1 = [0.1 * (i % 5) for i in range(26)]
    w2 = [1.0 - 0.1 * (i % 3) for i in range(26)]
    _append("first", weights=w1)
    _append("second", weights=w2)
    _append("no mbw")
    text, image = weight_analysis_tab.analyse(UIContext(ListHost(Path("."))), "1, 2")
    lines = text.splitlines()
    assert lines[0] == "IDs 1, 2: 26 blocks"
    out03 = next(line for line in lines if line.startswith("OUT03 ")).split()
    i = 1 + 12 + 1 + 3  # BASE, IN00-IN11, M00, OUT00..OUT03
    mean, sd = (w1[i] + w2[i]) / 2, abs(w1[i] - w2[i]) / 2
    assert [float(x) for x in out03[1:]] == pytest.approx([round(mean, 3), round(sd, 3), round(2 * sd, 3),
                                                           round(3 * sd, 3)], abs=1e-9)
    assert image.size == (900, 360) and image.mode == "RGB"
    text, image = weight_analysis_tab.analyse(UIContext(ListHost(Path("."))), "1,3")
    assert image is None and text.startswith("Error: History record 3 has no alpha block weights")
    text, _ = weight_analysis_tab.analyse(UIContext(ListHost(Path("."))), "1,x")
    assert text.startswith("Error: History IDs '1,x'")


def test_the_tabs_build_inside_the_app(models, tmp_path):
    from supermerger.hosts.diffusers_host import DiffusersHost
    from supermerger.ui import app

    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(models[("sd1", "A")], folder / "sd1_A.safetensors")
    _append("shown at start")
    ctx = UIContext(DiffusersHost(folder))
    app.create_app(ctx)
    titles = [t for t, _ in app.TABS]
    assert {"History", "IDs from images", "Weight Analysis"} <= set(titles)
    for name in ("history.table", "history.id", "ids.files", "analysis.chart"):
        assert name in ctx.components
    # the table is filled each time the tab is shown, with the records of that moment
    fn, inputs, outputs = history_tab.on_show(ctx)
    assert outputs[0] is ctx.components["history.table"]
    _append("recorded after the start")
    rows, note, _ = fn("", "or", "", history_tab.ANY_MODE, "20", 1)
    name = table.HEADERS.index("Name")
    assert [r[name] for r in rows] == ["recorded after the start", "shown at start"] and "of 2" in note

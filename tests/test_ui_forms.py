"""The UI's logic without a browser: Merge-tab values <-> Recipe, which sliders a mode enables, the
elemental live check, block-weight slider helpers, the Metadata and Elements tables, saving."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import block_sd1, load
from supermerger.errors import OutputError, RecipeError, SuperMergerError
from supermerger.merge.recipe import Recipe
from supermerger.ui import forms, mbw

pytest.importorskip("gradio")


class ListHost:
    """The two calls of a host the form uses: its checkpoint names and their files."""

    def __init__(self, folder: Path):
        self.folder = folder

    def list_checkpoints(self):
        return sorted(p.name for p in self.folder.glob("*.safetensors"))

    def checkpoint_path(self, name):
        path = self.folder / name
        if not path.is_file():
            raise SuperMergerError(f"Checkpoint {name!r} was not found.")
        return str(path)

    def samplers(self):
        return ["Euler a"]

    @property
    def vae_dir(self):
        return self.folder / "vae"

    def list_vaes(self):
        return sorted(p.name for p in self.vae_dir.glob("*.safetensors"))


@pytest.fixture
def ctx(models, tmp_path):
    from supermerger.ui.context import UIContext

    folder = tmp_path / "ckpt"
    folder.mkdir()
    for label in ("A", "B", "C"):
        shutil.copy(models[("sd1", label)], folder / f"sd1_{label}.safetensors")
    (folder / "vae").mkdir()
    (folder / "vae" / "my.vae.safetensors").write_bytes(b"")  # only its name and path matter here
    return UIContext(ListHost(folder), output_dir=tmp_path / "out")


def form(**changes):
    values = dict(forms.MERGE_FIELDS)
    values.update(changes)
    return [values[k] for k in forms.MERGE_FIELDS]


def test_recipe_round_trip_through_the_form(ctx):
    folder = ctx.host.folder
    recipe = Recipe(model_a=str(folder / "sd1_A.safetensors"), model_b=str(folder / "sd1_B.safetensors"),
                    model_c=str(folder / "sd1_C.safetensors"), mode="triple_sum", calcmode="normal",
                    alpha=0.3, beta=0.45, gamma=0.3, mbw_alpha="GRAD_V", mbw_beta=[0.1] * 26,
                    elemental="OUT03:attn2:0.2\nNOT IN01::0", exclude="OUT11 VAE", adjust="1,0,0,0,2",
                    dtype="fp16", prune=True, reset_clip_ids=True, seed=1234,
                    bake_vae=str(folder / "vae" / "my.vae.safetensors"),
                    random={"mode": "X", "targets": ["alpha"], "upper": "0.9", "lower": "0.1", "round": 2})
    updates = ctx.apply_recipe(recipe)
    assert len(updates) == len(forms.MERGE_FIELDS)
    values = {k: u.get("value") for k, u in zip(forms.MERGE_FIELDS, updates)}
    # pickers get the host's names; weights lists become text; save choices are left as they are
    assert (values["model_a"], values["model_c"]) == ("sd1_A.safetensors", "sd1_C.safetensors")
    assert values["mode"] == "Triple sum" and values["use_mbw"] is True
    assert values["bake_vae"] == "my.vae.safetensors"
    assert values["mbw_beta"] == ",".join(["0.1"] * 26)
    assert (values["filter_mode"], values["filter_text"]) == ("Exclude", "OUT11 VAE")
    assert "save" not in updates[list(forms.MERGE_FIELDS).index("save")]
    values.update(save=False, save_format="safetensors", custom_name="")
    again = ctx.recipe_from_ui(*[values[k] for k in forms.MERGE_FIELDS])
    expected = recipe.replace(mbw_beta=",".join(["0.1"] * 26),
                              random=dict(recipe.random, custom=forms.MERGE_FIELDS["dice_custom"],
                                          clamp_upper="1", clamp_lower="0"))
    assert again.to_dict() == expected.to_dict()


def test_recipe_from_the_form_leaves_out_what_the_mode_does_not_use(ctx):
    r = ctx.recipe_from_ui(*form(model_a="sd1_A.safetensors", model_b="sd1_B.safetensors",
                                 model_c="sd1_C.safetensors", mbw_alpha="FLAT_25", mbw_beta="ALL_B",
                                 filter_mode="Include", filter_text="IN01", merge_seed=-1))
    assert r.model_a == str(ctx.host.folder / "sd1_A.safetensors")
    assert r.model_c is None  # Weight sum takes no model C
    assert r.mbw_alpha is None and r.mbw_beta is None  # use MBW is off
    assert (r.include, r.exclude, r.seed, r.random) == ("IN01", None, None, None)
    r = ctx.recipe_from_ui(*form(model_a="sd1_A.safetensors", model_b="sd1_B.safetensors", use_mbw=True,
                                 mbw_alpha="FLAT_25", mbw_beta="ALL_B", calcmode="tensor"))
    assert (r.mbw_alpha, r.mbw_beta, r.mode, r.calcmode) == ("FLAT_25", "ALL_B", "weight_sum", "tensor")
    r = ctx.recipe_from_ui(*form(model_a="sd1_A.safetensors", model_b="sd1_B.safetensors", use_mbw=True,
                                 mbw_alpha="FLAT_25", mbw_beta="ALL_B"))
    assert r.mbw_beta is None  # Weight sum with normal: no beta
    with pytest.raises(SuperMergerError, match="'nope.safetensors' was not found"):
        ctx.recipe_from_ui(*form(model_a="nope.safetensors", model_b="sd1_B.safetensors"))
    with pytest.raises(SuperMergerError, match="VAE 'other.pt' was not found in"):
        ctx.recipe_from_ui(*form(bake_vae="other.pt"))
    assert ctx.recipe_from_ui(*form(bake_vae=forms.NO_VAE)).bake_vae is None
    with pytest.raises(RecipeError, match="Unknown calcmode 'cosine'"):
        ctx.recipe_from_ui(*form(calcmode="cosine"))
    with pytest.raises(RecipeError, match="Merge seed must be a whole number"):
        ctx.recipe_from_ui(*form(merge_seed=1.5))


@pytest.mark.parametrize("mode, calcmode, beta, gamma, model_c", [
    ("Weight sum", "normal", False, False, False),
    ("Add difference", "normal", False, False, True),
    ("Triple sum", "normal", True, False, True),
    ("sum Twice", "normal", True, False, True),
    ("Weight sum", "tensor", True, False, False),
    ("Weight sum", "extract", True, True, True),  # extract switches the mode to Add difference
    ("Add difference", "ties", True, False, True),
    ("Weight sum", "trainDifference", False, False, True),
    ("Weight sum", "cosineA", False, False, False),
])
def test_which_sliders_a_mode_enables(mode, calcmode, beta, gamma, model_c):
    use = forms.slider_use(mode, calcmode)
    assert (use.alpha, use.beta, use.gamma, use.model_c) == (True, beta, gamma, model_c)


def _count(path, block, element):
    keys = [k for k, v in load(path).items() if "model" in k and ("weight" in k or "bias" in k)
            and v.is_floating_point()]
    return sum(1 for k in keys if block_sd1(k) == block and element in k), \
        sum(1 for k in keys if block_sd1(k) == block)


def test_elemental_live_check(models):
    from supermerger.api import plan_merge

    a, b = str(models[("sd1", "A")]), str(models[("sd1", "B")])
    recipe = Recipe(model_a=a, model_b=b)
    attn2, out03 = _count(a, "OUT03", "attn2")
    assert attn2 > 0 and out03 > attn2
    text = forms.elemental_check("OUT03::0.1\nOUT03:attn2:0.2", recipe, plan_merge)
    assert text.splitlines() == [
        "SD1.x: 2 entries (the last matching entry wins)",
        f"#1 'OUT03::0.1': OUT03, matches {out03} keys, decides {out03 - attn2}",
        f"#2 'OUT03:attn2:0.2': OUT03, matches {attn2} keys, decides {attn2}",
    ]
    text = forms.elemental_check("OUT03:attn2:0.2, OUT03:attn2:0.4, NOT IN00-IN11:nothing_like_this:1",
                                 recipe, plan_merge)
    assert "#1 'OUT03:attn2:0.2': OUT03, matches" in text and "every match is overridden" in text
    assert ("#3 'NOT IN00-IN11:nothing_like_this:1': BASE M00-OUT11, matches 0 keys, decides 0  "
            "⚠ matches no key"
            in text)
    text = forms.elemental_check("IN02 IN04-IN06 OUT00::0.5, ::0.1, NOT ::0", recipe, plan_merge)
    assert "#1 'IN02 IN04-IN06 OUT00::0.5': IN02 IN04-IN06 OUT00, matches" in text
    assert "#2 '::0.1': all 26 blocks, matches" in text
    assert "#3 'NOT ::0': all 26 blocks, matches" in text  # NOT with no block listed excludes none
    assert forms.block_ranges([], ["BASE", "IN00"]) == "no block"
    assert forms.elemental_check("OUT03:attn2", recipe, plan_merge) == (
        "Error: Elemental entry 1 ('OUT03:attn2', line 1) has 1 ':' but needs exactly 2: BLOCKS:ELEMENTS:RATIO. "
        "Example: OUT03 OUT04:attn2 attn1.to_out:0.5 (leave BLOCKS or ELEMENTS empty for 'all').")
    bad = forms.elemental_check("IN01::0.5\nOUT09:attn:abc", recipe, plan_merge)
    assert bad.startswith("Error: Elemental entry 2 ('OUT09:attn:abc', line 2): ratio 'abc' is not a finite number.")
    # without models: the syntax against the blocks of the chosen architecture
    assert forms.elemental_check("IN11::1", None, plan_merge, "sd1").startswith("SD1.x: 1 entry parsed")
    assert forms.elemental_check("IN11::1", None, plan_merge, "sdxl").startswith(
        "Error: Unknown block ID 'IN11' in elemental entry 1")
    assert forms.elemental_check("  ", recipe, plan_merge).startswith("No elemental entries")


def test_elemental_live_check_with_extended_xl_ids(models):
    import re

    from supermerger.api import plan_merge

    from helpers import load, merged_keys

    a, b = str(models[("sdxl", "A")]), str(models[("sdxl", "B")])
    keys = merged_keys(load(a))
    n = sum(1 for k in keys if re.match(r"model\.diffusion_model\.input_blocks\.7\.1\..*transformer_blocks\.5\.", k)
            and "attn2" in k)
    recipe = Recipe(model_a=a, model_b=b, extended_xl=True)
    text = forms.elemental_check("IN715:attn2:0.2", recipe, plan_merge)
    assert n > 0 and text.splitlines()[1] == f"#1 'IN715:attn2:0.2': IN715, matches {n} keys, decides {n}"
    values = forms.values_from_recipe(recipe)
    assert values["extended_xl"] is True and forms.recipe_from_values(values).extended_xl is True
    assert forms.elemental_check("IN715::1", Recipe(extended_xl=True), plan_merge, "sdxl").startswith(
        "SDXL: 1 entry parsed")
    assert forms.elemental_check("IN7150::1", recipe, plan_merge).startswith(
        "Error: Unknown extended XL ID 'IN7150' in elemental entry 1")


def test_mbw_sliders_text_and_helper():
    from supermerger.arch.presets import master_presets

    presets = master_presets()
    grad_v = [float(x) for x in presets["GRAD_V"].split(",")]
    sliders = mbw.text_to_sliders("GRAD_V", "sd1", presets, [0.5] * 26)
    assert sliders == [round(x, 6) for x in grad_v]
    # SDXL: a 26-value preset maps by block name; the XL list has BASE, IN00-IN08, M00, OUT00-OUT08
    xl = mbw.sliders_to_text(sliders, "sdxl").split(",")
    names = list(mbw.SLIDER_BLOCKS)
    keep = [names.index(b) for b in mbw.visible_blocks("sdxl")]
    assert len(xl) == 20 and [float(x) for x in xl] == [round(grad_v[i], 6) for i in keep]
    assert mbw.text_to_sliders("R,1,U,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1", "sd1", {}, [0.5] * 26)[:3] == \
        [0.0, 1.0, 0.0]
    with pytest.raises(RecipeError, match="Weights alpha have 3 values"):
        mbw.text_to_sliders("1,2,3", "sd1", {}, [0.5] * 26)
    out = mbw.apply_helper([0.5] * 26, ["IN"], "Set", 0.2, "sdxl")
    assert [b for b, v in zip(names, out) if v == 0.2] == [f"IN{i:02d}" for i in range(9)]
    out = mbw.apply_helper(list(range(26)), ["BASE", "MID"], "Multiply", 2.0)
    assert (out[0], out[names.index("M00")], out[1]) == (0.0, 26.0, 1.0)
    out = mbw.apply_helper([0.5] * 26, ["OUT"], "Add", 0.25)
    assert out[names.index("OUT11")] == 0.75 and out[names.index("IN11")] == 0.5
    choices = mbw.preset_choices({"x20": ",".join(["1"] * 20), "x26": ",".join(["1"] * 26)}, "sd1")
    assert choices == ["x26"]
    assert mbw.preset_choices({"x20": ",".join(["1"] * 20), "x26": ",".join(["1"] * 26)}, "sdxl") == ["x20", "x26"]


def test_gen_params_and_messages():
    from supermerger.hosts.base import GenParams

    p = forms.gen_params_from_values({"steps": 12.0, "width": 256, "seed": "7", "cfg_scale": 5, "enable_hr": 1,
                                      "prompt": None}, GenParams(prompt="keep"))
    assert (p.steps, p.width, p.seed, p.cfg_scale, p.enable_hr, p.prompt) == (12, 256, 7, 5.0, True, "keep")
    with pytest.raises(RecipeError, match="Steps, batch size and batch count must be at least 1"):
        forms.gen_params_from_values({"steps": 0})
    e = RecipeError("Bad thing in entry 2.", "Do this instead.")
    assert forms.message(e) == "Bad thing in entry 2. Do this instead."
    assert forms.message(ValueError("boom")) == "ValueError: boom (the full error is in the console)"


def test_unexpected_error_is_one_short_line():
    # PyTorch's load_state_dict error: a header line, then one line per parameter
    lines = [f"\tsize mismatch for model.layer{i}.weight: copying a param with shape [4] from checkpoint" for i in range(300)]
    err = RuntimeError("Error(s) in loading state_dict for UNetModel:\n" + "\n".join(lines))
    text = forms.message(err)
    assert "\n" not in text
    assert text == "RuntimeError: Error(s) in loading state_dict for UNetModel: (the full error is in the console)"
    long = RuntimeError("x" * 1000)
    assert forms.message(long) == "RuntimeError: " + "x" * forms.MESSAGE_CHARS + " ... (the full error is in the console)"


def test_output_path(tmp_path):
    assert forms.output_path(tmp_path, "", "safetensors") is None
    assert forms.output_path(tmp_path, "my merge", "safetensors") == tmp_path / "my merge.safetensors"
    assert forms.output_path(tmp_path, "m.ckpt", "ckpt") == tmp_path / "m.ckpt"
    with pytest.raises(RecipeError, match="contains a character"):
        forms.output_path(tmp_path, "a/b", "safetensors")


def test_metadata_and_elements_tables(models, tmp_path):
    from safetensors import safe_open

    from supermerger.api import merge
    from supermerger.ui.elements_tab import element_rows
    from supermerger.ui.metadata_tab import metadata_view

    a, b = models[("sd1", "A")], models[("sd1", "B")]
    out = tmp_path / "m.safetensors"
    merge(Recipe(model_a=str(a), model_b=str(b), alpha=0.3, elemental="OUT03:attn2:0.2"), output=out)
    pretty, rows, note = metadata_view(str(out))
    table = dict(rows)
    assert table["alpha"] == "0.3" and table["elemental"] == "OUT03:attn2:0.2"
    assert table["model_a"] == str(a) and "hashes" in table
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert note == f"m.safetensors: {len(meta)} metadata fields"
    assert '"supermerger_recipe": {' in pretty  # nested JSON shown as structure
    assert metadata_view(str(a))[2] == f"{a.name}: no metadata."
    assert metadata_view(str(models[("sd1", "ckpt")]))[2].endswith("no metadata (not a .safetensors file).")

    sd = load(a)
    rows, summary = element_rows(str(a))
    assert len(rows) == len(sd) and summary == f"{a.name}: SD1.x, {len(sd)} tensors"
    by_key = {r[0]: r for r in rows}
    key = "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"
    assert by_key[key][1:] == ["×".join(map(str, sd[key].shape)), "F16", "OUT03"]
    rows, summary = element_rows(str(a), "OUT03 attn2")
    assert len(rows) == _count(a, "OUT03", "attn2")[0] and summary.endswith(f"{len(rows)} shown")


def test_save_merge_writes_the_live_recipe_with_the_save_options(ctx, models):
    from safetensors.torch import load_file

    from supermerger.api import merge
    from supermerger.ui.actions import save_merge

    recipe = ctx.recipe_from_ui(*form(model_a="sd1_A.safetensors", model_b="sd1_B.safetensors", alpha=0.4))
    path = save_merge(ctx, recipe, {"custom_name": "mine", "save_format": "safetensors", "dtype": "fp32"})
    assert path == ctx.output_dir / "mine.safetensors"
    saved = load_file(str(path))
    expected = merge(recipe.replace(dtype="fp32"), history=False).state_dict
    assert saved.keys() == expected.keys()
    assert all(saved[k].dtype == expected[k].dtype and saved[k].equal(expected[k]) for k in saved)
    with pytest.raises(OutputError):
        save_merge(ctx, recipe, {"custom_name": "mine", "save_format": "safetensors"})
    default = save_merge(ctx, recipe, {"save_format": "ckpt", "dtype": "fp16"})
    assert default.parent == ctx.output_dir and default.name.endswith(".fp16.ckpt")

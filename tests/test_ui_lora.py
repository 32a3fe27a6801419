"""The LoRA tab's callbacks as plain functions: the list (names, dims, filters), ticks <-> spec
lines, get from prompt, and every action (merge into the live model or a file, merge LoRAs, make,
extract) with its errors shown as one message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

pytest.importorskip("gradio")

from supermerger.ui import lora_tab  # noqa: E402
from supermerger.ui.context import UIContext  # noqa: E402

UNET = "model.diffusion_model."
LIN = UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"  # (64, 32) in the tiny SD1 model
K_LIN = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
LIN2 = UNET + "output_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"  # (128, 128)
K_LIN2 = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"


class Host:
    """A host's listings and its live model, recorded."""

    def __init__(self, folder: Path, lora_folder: Path):
        self.folder, self.lora_folder = folder, lora_folder
        self.loaded: list[tuple[dict, str]] = []

    def list_checkpoints(self):
        return sorted(p.name for p in self.folder.glob("*.safetensors"))

    def checkpoint_path(self, name):
        return str(self.folder / name)

    def list_loras(self):
        return sorted(p.relative_to(self.lora_folder).as_posix() for p in self.lora_folder.rglob("*.safetensors"))

    def lora_dirs(self):
        return [str(self.lora_folder)]

    def load_state_dict(self, state_dict, name, *, recipe=None):
        self.loaded.append((state_dict, name))


def kohya(name, up, down, alpha):
    return {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(alpha)}


@pytest.fixture
def ctx(models, tmp_path):
    folder, loras = tmp_path / "ckpt", tmp_path / "loras"
    folder.mkdir()
    (loras / "sub").mkdir(parents=True)
    for label in ("A", "B"):
        shutil.copy(models[("sd1", label)], folder / f"sd1_{label}.safetensors")
    g = torch.Generator().manual_seed(3)
    save_file(kohya(K_LIN, torch.randn(64, 2, generator=g), torch.randn(2, 32, generator=g), 1.0),
              str(loras / "style.safetensors"))
    save_file(kohya(K_LIN, torch.randn(64, 4, generator=g), torch.randn(4, 32, generator=g), 2.0) |
              kohya(K_LIN2, torch.randn(128, 4, generator=g), torch.randn(4, 128, generator=g), 4.0),
              str(loras / "sub" / "detail.safetensors"))
    return UIContext(Host(folder, loras), output_dir=tmp_path / "out")


def delta(path, name):
    t = load_file(str(path))
    up, down, alpha = t[f"{name}.lora_up.weight"], t[f"{name}.lora_down.weight"], float(t[f"{name}.alpha"])
    return (up.float() @ down.float()) * (alpha / up.shape[1])


# -- the list ------------------------------------------------------------------------------------
def test_list_names_dims_and_filters(ctx):
    names, dim_choices, note = lora_tab.list_choices(ctx, False)
    where = ctx.host.lora_folder
    assert names == ["style", "sub/detail"] and dim_choices == [] and note == f"2 LoRAs in {where}."
    labels, dim_choices, note = lora_tab.list_choices(ctx, True)
    assert labels == ["style[2,SD1]", "sub/detail[4,SD1]"] and dim_choices == ["SD1 2", "SD1 4"]
    assert [lora_tab.label_name(x) for x in labels] == ["style", "sub/detail"]
    labels, _, note = lora_tab.list_choices(ctx, True, [], ["SD1 4"])
    assert labels == ["sub/detail[4,SD1]"] and note == f"1 of 2 LoRAs shown in {where}."
    assert lora_tab.list_choices(ctx, True, ["LoCon"], [])[0] == []


def test_ticks_add_and_remove_spec_lines():
    text = "style:0.5:OUTD\nmine:0.3\nbroken:strong"
    added, removed = lora_tab.tick_changes(["style[2,SD1]"], ["sub/detail[4,SD1]"], ["style[2,SD1]", "sub/detail"])
    assert (added, removed) == (["sub/detail"], ["style"])
    assert lora_tab.sync_spec(text, added, removed, 0.75) == "mine:0.3\nbroken:strong\nsub/detail:0.75"
    # a ticked LoRA hidden by a filter keeps its line; ticking one that has a line keeps its ratio
    assert lora_tab.tick_changes(["style", "sub/detail"], ["sub/detail"], ["sub/detail"]) == ([], [])
    assert lora_tab.sync_spec("style:0.5", ["style"], [], 1.0) == "style:0.5"


def test_get_from_prompt_fills_the_box_and_ticks_the_list():
    listed = ["style[2,SD1]", "sub/detail[4,SD1]"]
    text, ticked, note = lora_tab.from_prompt(
        "a cat <lora:detail:0.5:lbw=OUTD>, <lyco:style:te=0.2:unet=1.2> <lora:absent:1> <lora:style:0.1>", listed)
    assert text == "sub/detail:0.5:OUTD\nstyle:1.2\nabsent:1\nstyle:0.1"
    assert ticked == ["sub/detail[4,SD1]", "style[2,SD1]"]
    assert note == "4 LoRAs in the prompt. Not in the list: absent."
    assert lora_tab.from_prompt("no tags", listed) == ("", [], "No <lora:...> or <lyco:...> tag in the prompt.")
    from supermerger.errors import RecipeError

    with pytest.raises(RecipeError, match="no closing '>'"):
        lora_tab.from_prompt("<lora:style:1", listed)


# -- the actions ---------------------------------------------------------------------------------
def test_merge_to_checkpoint_into_the_live_model_and_to_a_file(ctx):
    a = load_file(str(ctx.host.folder / "sd1_A.safetensors"))
    lora = ctx.host.lora_folder
    d_style, d_detail = delta(lora / "style.safetensors", K_LIN), delta(lora / "sub" / "detail.safetensors", K_LIN)
    ctx.last_result, ctx.last_recipe = object(), object()  # as after a merge from the Merge tab
    msg = lora_tab.guarded(ctx, lora_tab.to_checkpoint, "style:0.5\nsub/detail:-1", "sd1_A.safetensors",
                           lora_tab.TARGETS[0], "", False)
    assert msg.startswith("Loaded sd1_A+style+detail as the live model") and "nothing was saved" in msg
    # the live model is no longer that merge: its ID and recipe (Save current merge) are forgotten
    assert ctx.last_result is None and ctx.last_recipe is None
    sd, name = ctx.host.loaded[-1]
    assert name == "sd1_A+style+detail"
    expected = a[LIN].float() + 0.5 * d_style - d_detail
    assert torch.allclose(sd[LIN].float(), expected.to(a[LIN].dtype).float(), atol=2e-3)
    assert not torch.equal(sd[LIN], a[LIN])
    msg = lora_tab.guarded(ctx, lora_tab.to_checkpoint, "style:0.5", "sd1_A.safetensors", lora_tab.TARGETS[1],
                           "", False)
    out = ctx.output_dir / "sd1_A+style.safetensors"
    assert msg.startswith(f"Merged model saved in {out}") and out.is_file()
    saved = load_file(str(out))
    assert torch.allclose(saved[LIN].float(), (a[LIN].float() + 0.5 * d_style).to(a[LIN].dtype).float(), atol=2e-3)
    # saving again refuses to overwrite, as one message
    msg = lora_tab.guarded(ctx, lora_tab.to_checkpoint, "style:0.5", "sd1_A.safetensors", lora_tab.TARGETS[1],
                           "", False)
    assert msg.startswith("Error: ") and "exists" in msg and "\n" not in msg.strip()
    assert len(ctx.host.loaded) == 1


def test_merge_make_and_extract_write_loras_into_the_lora_folder(ctx):
    lora = ctx.host.lora_folder
    msg = lora_tab.guarded(ctx, lora_tab.merge_loras_action, "style:0.5", "no", True, "create new", "fp32", "full",
                           "", False)
    out = lora / "style_0.5.safetensors"
    assert msg.startswith("Merged LoRA (") and str(out) in msg
    assert torch.allclose(delta(out, K_LIN), 0.5 * delta(lora / "style.safetensors", K_LIN), atol=1e-5)

    msg = lora_tab.guarded(ctx, lora_tab.make_lora_action, "sd1_A.safetensors", "sd1_B.safetensors", 1.0, 1.0, "4",
                           "fp16", "full", "", False)
    made = lora / "lora_sd1_A-sd1_B.safetensors"
    assert msg.startswith("LoRA (dim 4) (") and made.is_file()
    with safe_open(str(made), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"
        assert f.get_tensor(f"{K_LIN}.lora_down.weight").shape == (4, 32)

    msg = lora_tab.guarded(ctx, lora_tab.extract_action, "style:1\nstyle_0.5:1", 1.0, 1.0, 1.0, False,
                           "create new", "fp16", "only_detail", False)
    assert msg.startswith("Extracted LoRA (") and (lora / "only_detail.safetensors").is_file()


@pytest.mark.parametrize("action, args, text", [
    (lora_tab.to_checkpoint, ("nope:1", "sd1_A.safetensors", lora_tab.TARGETS[0], "", False),
     "LoRA 'nope' not found"),
    (lora_tab.to_checkpoint, ("style:1", "", lora_tab.TARGETS[0], "", False), "Pick model A"),
    (lora_tab.to_checkpoint, ("style:strong", "sd1_A.safetensors", lora_tab.TARGETS[0], "", False),
     "LoRA item 'style:strong'"),
    (lora_tab.merge_loras_action, ("\n \n", "no", False, "create new", "fp16", "full", "", False), "No LoRA given"),
    (lora_tab.merge_loras_action, ("style:1:OUTDD", "no", False, "create new", "fp16", "full", "", False),
     "unknown LBW preset 'OUTDD'"),
    (lora_tab.make_lora_action, ("sd1_A.safetensors", None, 1, 1, "no", "fp16", "full", "", False),
     "Pick model A (the tuned model) and model B"),
])
def test_errors_are_one_message(ctx, action, args, text):
    msg = lora_tab.guarded(ctx, action, *args)
    assert msg.startswith("Error: ") and text in msg and "Traceback" not in msg
    assert ctx.host.loaded == []


def test_the_tab_builds_with_the_merge_tabs_prompt(models, tmp_path):
    from supermerger.hosts.diffusers_host import DiffusersHost
    from supermerger.ui import app

    folder, loras = tmp_path / "ckpt", tmp_path / "loras"
    folder.mkdir()
    loras.mkdir()
    shutil.copy(models[("sd1", "A")], folder / "sd1_A.safetensors")
    save_file(kohya(K_LIN, torch.ones(64, 1), torch.ones(1, 32), 1.0), str(loras / "one.safetensors"))
    ctx = UIContext(DiffusersHost(folder, lora_dir=loras))
    app.create_app(ctx)
    assert ("LoRA", "lora_tab") in app.TABS
    assert "merge.gen.prompt" in ctx.components and "lora.specs" in ctx.components
    first = ctx.components["lora.list"].choices[0]
    assert (first[0] if isinstance(first, tuple) else first) == "one"


def test_the_standalone_app_has_a_lora_folder_the_made_loras_go_to(models, tmp_path):
    """Without --lora-dir, Make LoRA once wrote into the checkpoint folder and the list stayed at 0: the
    app's LoRA folder is now Lora in the data folder; the list (shown again with the tab) finds the LoRA."""
    from supermerger import paths
    from supermerger.ui import app
    from supermerger.ui.standalone import make_context

    folder = tmp_path / "ckpt"
    folder.mkdir()
    for label in ("A", "B"):
        shutil.copy(models[("sd1", label)], folder / f"sd1_{label}.safetensors")
    ctx = make_context(folder)
    lora_dir = paths.data_dir() / "Lora"
    assert ctx.host.lora_dirs() == [str(lora_dir)] and lora_dir.is_dir()
    app.create_app(ctx)
    assert lora_tab.list_choices(ctx, False)[2] == f"0 LoRAs in {lora_dir}."
    msg = lora_tab.guarded(ctx, lora_tab.make_lora_action, "sd1_A.safetensors", "sd1_B.safetensors", 1.0, 1.0, "4",
                           "fp16", "full", "", False)
    assert str(lora_dir / "lora_sd1_A-sd1_B.safetensors") in msg and not list(folder.glob("lora_*"))
    fn, inputs, outputs = lora_tab.on_show(ctx)
    assert outputs[0] is ctx.components["lora.list"]
    listed, _, note = fn(False, [], [], [])
    assert listed["choices"] in (["lora_sd1_A-sd1_B"], [("lora_sd1_A-sd1_B", "lora_sd1_A-sd1_B")])
    assert note == f"1 LoRA in {lora_dir}."


def test_stop_interrupts_long_actions_and_writes_nothing(ctx):
    seen = []

    def press_stop_at_once(fraction, text):  # the page's progress report; Stop is pressed meanwhile
        seen.append((fraction, text))
        ctx.stop.set()

    msg = lora_tab.guarded(ctx, lora_tab.make_lora_action, "sd1_A.safetensors", "sd1_B.safetensors", 1.0, 1.0, "4",
                           "fp16", "full", "", False, report=press_stop_at_once)
    assert msg == "Error: Stopped: SVD of module was interrupted; nothing was written or loaded."
    assert len(seen) == 1 and seen[0][1].startswith("SVD of module 1/") and 0 < seen[0][0] < 1
    assert list(ctx.host.lora_folder.glob("lora_*")) == []
    msg = lora_tab.guarded(ctx, lora_tab.to_checkpoint, "style:1", "sd1_A.safetensors", lora_tab.TARGETS[0], "",
                           False, report=press_stop_at_once)
    assert msg.startswith("Error: Stopped: merging the LoRAs into the model was interrupted")
    assert ctx.host.loaded == []
    # the next action starts afresh (Stop is cleared at its start)
    msg = lora_tab.guarded(ctx, lora_tab.to_checkpoint, "style:1", "sd1_A.safetensors", lora_tab.TARGETS[0], "",
                           False)
    assert msg.startswith("Loaded sd1_A+style") and len(ctx.host.loaded) == 1


def test_dims_saved_as_csv(ctx, _isolated_data_dir):
    import csv

    assert lora_tab.save_dims_csv(ctx) == f"Dims of 2 LoRAs saved in {_isolated_data_dir / 'loradims.csv'}."
    with open(_isolated_data_dir / "loradims.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[:4] for r in rows] == [["name", "dim", "type", "version"], ["style", "2", "LoRA", "SD1"],
                                     ["sub/detail", "4", "LoRA", "SD1"]]

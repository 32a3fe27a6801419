"""The extension tab inside the WebUI, built against the same WebUI test double as the host tests:
``scripts/supermerger.py`` loaded the way the WebUI loads it registers the tab once, the tab is built
on the WebUI host with txt2img's defaults, and a merge from the tab reaches the live model with its
history ID in the images' infotext."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("gradio")

from supermerger.errors import SuperMergerError  # noqa: E402
from test_hosts_webui import build_webui, weights  # noqa: E402  (the WebUI test double)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "supermerger.py"


@pytest.fixture
def webui(monkeypatch, tmp_path):
    """The double with real files for A and B, plus the modules the tab uses: script_callbacks,
    sd_samplers, paths, and a ui-config.json with the user's txt2img defaults."""

    def install(forge: bool = False):
        files = {}
        for name, value in (("A", 1.0), ("B", 3.0)):
            path = tmp_path / f"{name}.safetensors"
            save_file(weights(value), str(path))
            files[str(path)] = weights(value)
        mods, log = build_webui(files, forge)
        callbacks = []
        mods["script_callbacks"] = types.ModuleType("modules.script_callbacks")
        mods["script_callbacks"].on_ui_tabs = callbacks.append
        mods["sd_samplers"] = types.ModuleType("modules.sd_samplers")
        mods["sd_samplers"].samplers = [types.SimpleNamespace(name=n) for n in ("DPM++ 2M", "Euler a", "UniPC")]
        mods["paths"] = types.ModuleType("modules.paths")
        mods["paths"].models_path = str(tmp_path / "models")
        mods["call_queue"] = types.ModuleType("modules.call_queue")
        mods["call_queue"].queue_lock = threading.Lock()
        mods["shared"].state.interrupt = lambda: log.append("interrupt")
        config = tmp_path / "ui-config.json"
        config.write_text(json.dumps({"txt2img/Sampling steps/value": 33, "txt2img/Width/value": 640,
                                      "txt2img/Sampling method/value": "UniPC", "txt2img/CFG Scale/value": 4.5,
                                      "txt2img/Prompt/value": "a castle"}))
        mods["shared"].cmd_opts.ui_config_file = str(config)
        mods["shared"].cmd_opts.ckpt_dir = None
        mods["shared"].opts.data["CLIP_stop_at_last_layers"] = 2
        if forge:
            mods["sd_models"].forge_model_reload = lambda: None
        package = types.ModuleType("modules")
        package.__path__ = []
        monkeypatch.setitem(sys.modules, "modules", package)
        for name, mod in mods.items():
            setattr(package, name, mod)
            monkeypatch.setitem(sys.modules, "modules." + name, mod)
        monkeypatch.setattr(sys, "path", list(sys.path))
        return mods, log, callbacks
    return install


def names(component) -> list:
    """A dropdown's choices as plain values (Gradio 4+ keeps (label, value) pairs, 3.x the values)."""
    return [c[1] if isinstance(c, (tuple, list)) else c for c in component.choices]


def load_script(name: str):
    """Import scripts/supermerger.py as the WebUI's script loader does (module name with '.py', not in
    sys.modules) or as another extension would ('scripts.supermerger')."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_registers_the_tab_once_and_puts_modules_on_the_path(webui):
    mods, _, callbacks = webui()
    load_script("supermerger.py")
    assert len(callbacks) == 1
    assert str(SCRIPT.parents[1] / "modules") in sys.path
    load_script("scripts.supermerger")  # imported again under the shared scripts. name: no second tab
    assert len(callbacks) == 1
    # the WebUI's own `modules` package is untouched: ours is importable only as `supermerger`
    assert sys.modules["modules"].script_callbacks is mods["script_callbacks"]


def test_data_folder_is_the_extension_folder_unless_supermerger_home_is_set(webui, monkeypatch, _isolated_data_dir):
    from supermerger import paths

    webui()
    load_script("supermerger.py")
    assert paths.data_dir() == _isolated_data_dir  # $SUPERMERGER_HOME (set by the test fixture) wins
    monkeypatch.delenv("SUPERMERGER_HOME")
    load_script("supermerger.py")
    assert paths.data_dir() == SCRIPT.parents[1]  # the extension folder, as the original kept its files


def _tab(webui, forge=False):
    import gradio as gr

    mods, log, callbacks = webui(forge)
    load_script("supermerger.py")
    tabs = callbacks[0]()
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert isinstance(blocks, gr.Blocks) and (title, elem_id) == ("SuperMerger", "supermerger")
    return mods, log, callbacks[0].context


def test_tab_is_built_on_the_webui_host_with_txt2img_defaults(webui, tmp_path):
    from supermerger.hosts.webui import WebUIHost
    from supermerger.ui import forms

    mods, log, ctx = _tab(webui)
    assert type(ctx.host) is WebUIHost
    titles = ctx.host.list_checkpoints()
    assert names(ctx.components["merge.model_a"]) == titles
    gen = {name: ctx.components[f"merge.gen.{name}"].value for name in forms.GEN_FIELDS}
    assert (gen["steps"], gen["width"], gen["sampler"], gen["cfg_scale"], gen["prompt"]) == \
        (33, 640, "UniPC", 4.5, "a castle")
    assert gen["height"] == 512  # not in ui-config: txt2img's default
    assert names(ctx.components["merge.gen.sampler"]) == ["DPM++ 2M", "Euler a", "UniPC"]
    params = ctx.params_from_ui(*[gen[n] for n in forms.GEN_FIELDS])
    assert (params.steps, params.width, params.clip_skip, params.sampler) == (33, 640, 2, "UniPC")
    assert ctx.output_dir == tmp_path / "models" / "Stable-diffusion"
    # every tab of TABS is there, and the merge inputs are bound in the contract's order
    assert len(ctx.merge_inputs) == len(forms.MERGE_FIELDS) and len(ctx.gen_inputs) == len(forms.GEN_FIELDS)
    assert names(ctx.components["metadata.model"]) == titles
    assert "elements.table" in ctx.components
    # VAE names are the WebUI's VAE list
    assert names(ctx.components["merge.bake_vae"]) == ["None", "good.vae.pt"]
    assert ctx.vae_path("good.vae.pt") == mods["sd_vae"].vae_dict["good.vae.pt"]
    with pytest.raises(SuperMergerError, match="The WebUI knows no VAE 'x.pt'"):
        ctx.vae_path("x.pt")
    # merges take the WebUI's queue lock; Stop also interrupts the WebUI's generation
    assert ctx.lock is mods["call_queue"].queue_lock
    ctx.request_stop()
    assert ctx.stop.is_set() and log[-1] == "interrupt"


def test_tab_in_forge_uses_the_forge_host(webui):
    from supermerger.hosts.forge import ForgeHost

    _, _, ctx = _tab(webui, forge=True)
    assert type(ctx.host) is ForgeHost


def test_merge_from_the_tab_reaches_the_live_model_with_its_id(webui):
    from supermerger import history
    from supermerger.ui import forms
    from supermerger.ui.actions import merge_now, status_text

    mods, log, ctx = _tab(webui)
    sd_models = mods["sd_models"]
    a_title, b_title = ctx.host.list_checkpoints()[:2]
    live = sd_models.load_model(sd_models.checkpoint_aliases[a_title])
    values = dict(forms.MERGE_FIELDS, model_a=a_title, model_b=b_title, alpha=0.25)
    lines = merge_now(ctx, [values[k] for k in forms.MERGE_FIELDS])
    assert lines[0].startswith("Merged in")
    hid = ctx.last_result.history_id
    assert hid is not None and status_text(ctx).endswith(f"· ID {hid}")
    # in place, under the merge's own registered checkpoint info; the double's tensors are named "w"
    # (no weight/bias in the name), which the merge rule keeps from model A (all ones)
    assert sd_models.model_data.sd_model is live
    info = live.sd_checkpoint_info
    # named as the file "Save current merge" would write (spaces out, ".fp16" for fp16), so that an
    # image's "Model:" names the file it can be found as once saved
    fp16 = values["dtype"] == "fp16"
    stem = ctx.last_result.name.replace(" ", "") + (".fp16" if fp16 else "")
    assert ctx.host.model_name == info.name == stem and info.name_for_extra == f"{stem} ID {hid}"
    assert info.title in sd_models.checkpoints_list and info.filename.startswith(ctx.model_path(a_title) + "#")
    out = ctx.host.generate(ctx.params_from_ui(*[ctx.components[f"merge.gen.{n}"].value for n in forms.GEN_FIELDS]))
    assert out.images[0] == (3.0, 4.0, 2.0)  # te 3×1, unet 4×1, vae 2×1
    assert f"Model: {stem} ID {hid}," in out.infotexts[0]
    assert "SuperMerger recipe: " in out.infotexts[0]
    assert history.get(hid).recipe().alpha == 0.25
    # a recipe restored into the tab gives the pickers' names back, not paths
    updates = ctx.apply_recipe(history.get(hid).recipe())
    restored = dict(zip(forms.MERGE_FIELDS, updates))
    assert restored["model_a"]["value"] == a_title and restored["alpha"]["value"] == 0.25
    _ = torch  # the double's tensors


def test_install_hook_installs_only_what_is_missing(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("sm_install", SCRIPT.parents[1] / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    real_check = install.installed
    assert real_check("pytest", "pytest") and not real_check("no-such-dist-x", "no_such_mod_x")
    calls = []
    launch = types.ModuleType("launch")
    launch.run_pip = lambda args, desc: calls.append(args)
    monkeypatch.setitem(sys.modules, "launch", launch)
    monkeypatch.chdir(tmp_path)
    present = {"numpy", "tqdm", "safetensors", "diffusers"}
    monkeypatch.setattr(install, "installed", lambda dist, module: dist in present)
    install.main()
    assert calls == ['install "Pillow"']  # an A1111 WebUI: diffusers is not needed there
    (tmp_path / "modules_forge").mkdir()
    present.discard("diffusers")
    calls.clear()
    install.main()
    assert calls == ['install "Pillow"', 'install "diffusers==0.31.0"']  # Forge's own pin
    assert not any("torch" in c for c in calls)

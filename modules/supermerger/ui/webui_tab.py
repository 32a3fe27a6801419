"""The UI inside the AUTOMATIC1111 WebUI and Forge: the "SuperMerger" tab that
``scripts/supermerger.py`` registers with ``script_callbacks.on_ui_tabs``.

WebUI modules are imported inside the functions (``modules`` here is the WebUI's package).
"""

from __future__ import annotations

import json
import os
from typing import Any

import gradio as gr

from ..hosts.base import GenParams
from .app import build_tabs
from .context import UIContext

# GenParams field -> the txt2img control's label in the WebUI's ui-config.json ("txt2img/<label>/value")
TXT2IMG_LABELS = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "steps": "Sampling steps",
    "sampler": "Sampling method", "scheduler": "Schedule type", "cfg_scale": "CFG Scale", "width": "Width",
    "height": "Height", "batch_size": "Batch size", "batch_count": "Batch count", "seed": "Seed",
    "enable_hr": "Hires. fix", "hr_scale": "Upscale by", "hr_upscaler": "Upscaler",
    "hr_second_pass_steps": "Hires steps", "denoising_strength": "Denoising strength",
}
WEBUI_DEFAULTS = GenParams(sampler="DPM++ 2M")  # txt2img's own defaults (v1.10) where ui-config says nothing


def use_extension_folder(root: str | os.PathLike) -> None:
    """Inside the WebUI the extension's own folder holds SuperMerger's data (merge history, presets,
    XYZ presets, reservations, hash cache), as the original's did — unless $SUPERMERGER_HOME says otherwise."""
    from .. import paths

    if not os.environ.get("SUPERMERGER_HOME"):
        paths.set_data_dir(root)


def make_host():
    """ForgeHost inside Forge, else WebUIHost."""
    from ..hosts.forge import ForgeHost, is_forge
    from ..hosts.webui import WebUIHost

    return ForgeHost() if is_forge() else WebUIHost()


def txt2img_defaults() -> GenParams:
    """The generation defaults the user gave txt2img (ui-config.json), and the WebUI's clip skip."""
    from modules import shared  # type: ignore

    values: dict[str, Any] = {}
    path = getattr(shared.cmd_opts, "ui_config_file", None)
    if path and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            config = {}
        for field, label in TXT2IMG_LABELS.items():
            key = f"txt2img/{label}/value"
            if key in config and config[key] is not None:
                values[field] = config[key]
    clip_skip = getattr(shared.opts, "data", {}).get("CLIP_stop_at_last_layers")
    if isinstance(clip_skip, int) and clip_skip >= 1:
        values["clip_skip"] = clip_skip
    from .forms import gen_params_from_values

    params = gen_params_from_values({k: v for k, v in values.items() if k != "clip_skip"}, WEBUI_DEFAULTS)
    return params.with_(clip_skip=values.get("clip_skip", params.clip_skip))


def output_dir() -> str:
    """Where merges are saved: ``--ckpt-dir`` if given, else the WebUI's Stable-diffusion models folder."""
    from modules import shared  # type: ignore

    folder = getattr(shared.cmd_opts, "ckpt_dir", None)
    if folder:
        return folder
    try:
        from modules import paths  # type: ignore

        return os.path.join(paths.models_path, "Stable-diffusion")
    except (ImportError, AttributeError):
        return os.path.join(os.getcwd(), "models", "Stable-diffusion")


def grids_dir() -> str:
    """Where the WebUI puts txt2img grids (Settings → Paths: the grids folder, else txt2img-grids), so the
    XYZ plot's grids land beside them."""
    from modules import shared  # type: ignore

    data = getattr(shared.opts, "data", {})
    folder = data.get("outdir_grids") or data.get("outdir_txt2img_grids") or os.path.join("outputs", "txt2img-grids")
    return os.path.abspath(folder)


def sampler_names() -> list[str]:
    from modules import sd_samplers  # type: ignore

    return [s.name for s in sd_samplers.samplers]


def vae_path(name: str) -> str:
    from modules import sd_vae  # type: ignore

    from ..errors import ModelFileError

    path = sd_vae.vae_dict.get(name)
    if path is None:
        raise ModelFileError(f"The WebUI knows no VAE {name!r}.", "Refresh the VAE list, or pick None.")
    return path


def make_context() -> UIContext:
    """The tab's context: merges and generations take the WebUI's queue lock (so they never run beside
    a txt2img job); Stop also interrupts a generation (``WebUIHost.interrupt``)."""
    ctx = UIContext(make_host(), gen_defaults_fn=txt2img_defaults, samplers_fn=sampler_names,
                    vae_path_fn=vae_path, output_dir=output_dir(), grids_dir_fn=grids_dir)
    try:
        from modules.call_queue import queue_lock  # type: ignore

        ctx.lock = queue_lock
    except ImportError:
        pass
    return ctx


def watch_model_loads(host) -> None:
    """The WebUI tells the host of every model it loads (the user's checkpoint dropdown, an infotext's
    model, a VAE change): a load the host did not make replaces the live merge."""
    try:
        from modules import script_callbacks  # type: ignore
    except ImportError:
        return
    register = getattr(script_callbacks, "on_model_loaded", None)
    if register is not None and hasattr(host, "model_loaded"):
        register(host.model_loaded)


CHECKPOINT_DROPDOWN = "setting_sd_model_checkpoint"  # the WebUI's quicksettings checkpoint dropdown


def checkpoint_dropdown_update() -> dict:
    """The WebUI's checkpoint dropdown as the WebUI itself refreshes it: the live model's title, among the
    registered checkpoints (a live merge is one of them)."""
    from modules import sd_models, shared  # type: ignore

    from .compat import update

    use_short = getattr(shared.opts, "data", {}).get("sd_checkpoint_dropdown_use_short", False)
    return update(value=shared.opts.data.get("sd_model_checkpoint"), choices=sd_models.checkpoint_tiles(use_short))


def after_component(component, **kwargs) -> None:
    """The WebUI's ``on_after_component`` callback. When its checkpoint dropdown is made (in the page's root
    Blocks, after the tabs were built), it follows the Merge tab's status: every action that changes the
    live model changes the status, and the page load fills it, so the dropdown shows the merge after a
    merge and after a reload, as it shows a checkpoint the WebUI loaded."""
    if getattr(component, "elem_id", None) != CHECKPOINT_DROPDOWN:
        return
    ctx = getattr(on_ui_tabs, "context", None)
    if ctx is None or ctx.status is None:
        return
    from .compat import GRADIO_MAJOR

    # not queued: a quick read of the registry, and a page reloaded meanwhile leaves no queue join pending
    ctx.status.change(checkpoint_dropdown_update, None, component, queue=False,
                      show_progress=False if GRADIO_MAJOR < 4 else "hidden")


def on_ui_tabs():
    """The ``on_ui_tabs`` callback: [(blocks, title, elem_id)]."""
    ctx = make_context()
    watch_model_loads(ctx.host)
    with gr.Blocks(analytics_enabled=False) as tab:
        build_tabs(ctx)
    on_ui_tabs.context = ctx  # for tests and other callbacks
    return [(tab, "SuperMerger", "supermerger")]

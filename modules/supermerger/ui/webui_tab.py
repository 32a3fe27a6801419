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
                    vae_path_fn=vae_path, output_dir=output_dir())
    try:
        from modules.call_queue import queue_lock  # type: ignore

        ctx.lock = queue_lock
    except ImportError:
        pass
    return ctx


def on_ui_tabs():
    """The ``on_ui_tabs`` callback: [(blocks, title, elem_id)]."""
    ctx = make_context()
    with gr.Blocks(analytics_enabled=False) as tab:
        build_tabs(ctx)
    on_ui_tabs.context = ctx  # for tests and other callbacks
    return [(tab, "SuperMerger", "supermerger")]

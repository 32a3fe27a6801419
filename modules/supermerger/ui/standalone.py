"""The UI as a standalone app on the diffusers host: its context (``make_context``). The ``supermerger ui``
command (options, checks, launch) is supermerger.cli.ui.

Without ``--models-dir`` it offers the built-in tiny demo models (made on first use), so the app
works on a fresh machine; their images are noise.
"""

from __future__ import annotations

from pathlib import Path


DEMO_PARAMS = dict(width=128, height=128, steps=4, prompt="a cat")


def make_context(models_dir=None, *, vae_dir=None, lora_dir=None, output_dir=None, images_dir=None,
                 device: str = "cpu"):
    """The UIContext of the standalone app (on a DiffusersHost)."""
    from ..errors import SuperMergerError
    from ..hosts.base import GenParams
    from ..hosts.diffusers_host import DiffusersHost
    from .context import UIContext

    demo = models_dir is None
    if demo:
        from ..demo import demo_dir, demo_models

        demo_models("sd1")
        demo_models("sdxl")  # model A's architecture picks the sliders: 26 for SD1, 20 for SDXL
        models_dir = demo_dir()
    elif not Path(models_dir).is_dir():
        raise SuperMergerError(f"Models folder {str(models_dir)!r} does not exist.")
    from ..paths import data_dir

    if lora_dir is None:  # LoRAs the app makes go here and are listed (not into the checkpoint folder)
        lora_dir = data_dir() / "Lora"
        lora_dir.mkdir(parents=True, exist_ok=True)
    dtype = "float32" if device == "cpu" else "float16"
    host = DiffusersHost(models_dir, vae_dir=vae_dir, lora_dir=lora_dir, device=device, dtype=dtype)
    defaults = GenParams(**DEMO_PARAMS) if demo else GenParams()

    return UIContext(host, gen_defaults=defaults, device=device, output_dir=output_dir or models_dir, demo=demo,
                     images_dir=images_dir or data_dir() / "outputs")

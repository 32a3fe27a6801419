"""`supermerger ui`: the UI as a standalone app on the diffusers host.

Without ``--models-dir`` it offers the built-in tiny demo models (made on first use), so the app
works on a fresh machine; their images are noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_PARAMS = dict(width=128, height=128, steps=4, prompt="a cat")


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="start the UI in the browser (standalone, on diffusers)",
                       description="Serve the SuperMerger UI (Merge, Metadata, Elements, ... tabs) on this machine. "
                                   "Without --models-dir, the built-in tiny demo models are offered.")
    p.add_argument("--models-dir", metavar="DIR", help="folder of checkpoints to offer (searched recursively)")
    p.add_argument("--vae-dir", metavar="DIR", help="folder of VAEs for 'Bake in VAE'")
    p.add_argument("--lora-dir", metavar="DIR", help="folder of LoRAs; LoRAs the app makes are written there "
                   "(default: Lora in the data folder)")
    p.add_argument("--output-dir", metavar="DIR", help="where saved merges go (default: the models folder)")
    p.add_argument("--images-dir", metavar="DIR", help="where generated images are written (default: outputs "
                   "in the data folder, as `supermerger gen`)")
    p.add_argument("--listen", action="store_true", help="listen on every network interface (0.0.0.0), "
                   "not only 127.0.0.1: anyone who can reach this machine can use the app")
    p.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (merging and generating)")


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


def run(args: argparse.Namespace) -> int:
    from ..gen_cli import check_standalone

    check_standalone()
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        from ..errors import SuperMergerError

        raise SuperMergerError("The UI needs Gradio, which is not installed.",
                               'Install it: pip install "gradio>=4" (in a checkout: pip install -e ".[standalone]").')
    from .app import create_app, launch

    ctx = make_context(args.models_dir, vae_dir=args.vae_dir, lora_dir=args.lora_dir,
                       output_dir=args.output_dir, images_dir=args.images_dir, device=args.device)
    app = create_app(ctx)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    print(f"SuperMerger UI on http://{host}:{args.port or 7860} (Ctrl+C to stop)")
    launch(app, host=host, port=args.port)
    return 0

"""`supermerger ui`: the UI as a standalone app on the diffusers host (the app and its context:
supermerger.ui.app, supermerger.ui.standalone).

Without ``--models-dir`` it offers the built-in tiny demo models (made on first use), so the app
works on a fresh machine; their images are noise. Building the parser imports no gradio.
"""

from __future__ import annotations

import argparse

from ..hosts.requirements import check_standalone


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


def cmd_ui(args: argparse.Namespace) -> int:
    check_standalone()
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        from ..errors import SuperMergerError

        raise SuperMergerError("The UI needs Gradio, which is not installed.",
                               'Install it: pip install "gradio>=4" (in a checkout: pip install -e ".[standalone]").')
    from ..ui.app import create_app, launch
    from ..ui.standalone import make_context

    ctx = make_context(args.models_dir, vae_dir=args.vae_dir, lora_dir=args.lora_dir,
                       output_dir=args.output_dir, images_dir=args.images_dir, device=args.device)
    app = create_app(ctx)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    print(f"SuperMerger UI on http://{host}:{args.port or 7860} (Ctrl+C to stop)")
    launch(app, host=host, port=args.port)
    return 0

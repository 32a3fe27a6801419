"""The SuperMerger UI, built once and mounted twice: the standalone app (``create_app``, served by
``supermerger ui``) and the WebUI / Forge tab (``scripts/supermerger.py`` calls ``build_tabs``).

A tab is a module in ``supermerger.ui`` with ``build(ctx)``; to add one, append one line to TABS.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import gradio as gr

from . import compat
from .context import UIContext

# (title, module in supermerger.ui), in the order the tabs appear
TABS: list[tuple[str, str]] = [
    ("Merge", "merge_tab"),
    ("Metadata", "metadata_tab"),
    ("Elements", "elements_tab"),
    ("Reservation", "reservation_tab"),
    ("History", "history_tab"),
    ("IDs from images", "ids_tab"),
    ("Weight Analysis", "weight_analysis_tab"),
    ("LoRA", "lora_tab"),
]

ROOT = Path(__file__).resolve().parents[3]  # the repository (extension) folder


def build_tabs(ctx: UIContext) -> None:
    """One ``gr.Tab`` per TABS entry, each filled by its module's ``build(ctx)``. A module with
    ``on_show(ctx) -> (fn, inputs, outputs)`` has ``fn`` run each time its tab is shown, so what it lists
    (records, files) is the state of now, not of when the server started."""
    for title, module_name in TABS:
        module = importlib.import_module(f"{__package__}.{module_name}")
        with gr.Tab(title, elem_id=f"supermerger_tab_{module_name}") as tab:
            module.build(ctx)
        on_show = getattr(module, "on_show", None)
        if on_show is not None:
            fn, inputs, outputs = on_show(ctx)
            tab.select(fn, inputs, outputs)


def style_css() -> str:
    path = ROOT / "style.css"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def client_js() -> str:
    """javascript/*.js, in name order (the WebUI loads the same files itself)."""
    folder = ROOT / "javascript"
    if not folder.is_dir():
        return ""
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.js")))


def create_app(ctx: UIContext) -> gr.Blocks:
    """The standalone app: every tab, the stylesheet and the client-side helpers. Launch it with
    ``launch(app, ...)`` so that the CSS and JavaScript reach the page on every Gradio version."""
    with gr.Blocks(title="SuperMerger", analytics_enabled=False,
                   **compat.blocks_kwargs(style_css(), client_js())) as app:
        gr.Markdown("## SuperMerger", elem_id="supermerger_title")
        build_tabs(ctx)
        compat.run_js_on_load(app, client_js())
    app.queue(**compat.queue_kwargs(1))
    return app


def launch(app: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True, **kwargs):
    """Serve ``app`` (``block=False`` returns at once, for tests)."""
    return app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, inbrowser=False,
                      show_error=False, quiet=True, **compat.launch_kwargs(style_css(), client_js()), **kwargs)

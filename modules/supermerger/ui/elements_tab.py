"""The Elements tab: every tensor of a checkpoint with its shape, dtype and the block it belongs to
(the same table that MBW, elemental and include/exclude use), filterable by text."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .. import arch as archmod
from ..errors import SuperMergerError
from . import compat, metadata_tab
from .context import UIContext
from .metadata_tab import model_list_update

HEADERS = ["Key", "Shape", "Dtype", "Block"]


def element_rows(path: str, text_filter: str = "") -> tuple[list[list[str]], str]:
    """(rows, summary) for a checkpoint's tensors; ``text_filter``: space-separated substrings that
    must all occur in the key or be its block."""
    from ..io.sources import open_model

    with open_model(path) as src:
        infos = {k: (tuple(v.shape), v.dtype) for k, v in src.tensors.items()}
    architecture = archmod.detect(list(infos), {k: s for k, (s, _) in infos.items()}, Path(path).name)
    words = text_filter.split()
    rows = []
    for key, (shape, dtype) in infos.items():
        merged = key.startswith("model.diffusion_model.") or ("model" in key and ("weight" in key or "bias" in key))
        block = architecture.block_of(key) if merged else "(not merged)"
        if all(w in key or w == block for w in words):
            rows.append([key, "×".join(map(str, shape)) or "scalar", str(dtype), block])
    summary = (f"{Path(path).name}: {architecture.label}, {len(infos)} tensors"
               + (f", {len(rows)} shown" if words else ""))
    return rows, summary


def build(ctx: UIContext) -> None:
    with gr.Row():
        names = _models(ctx)
        model = gr.Dropdown(names, value=names[0] if names else None, label="Checkpoint",
                            elem_id="supermerger_elements_model", **compat.dropdown_kwargs(custom=True))
        words = gr.Textbox("", label="Filter (key parts or a block ID, e.g. OUT03 attn2)",
                           elem_id="supermerger_elements_filter")
        refresh = gr.Button("↻", elem_classes=["sm-tool"], min_width=40, elem_id="supermerger_elements_refresh")
        load = gr.Button("List keys", variant="primary", elem_id="supermerger_elements_load")
    note = gr.Markdown("", elem_id="supermerger_elements_note")
    table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, elem_id="supermerger_elements_table",
                         wrap=True)
    for name, comp in (("model", model), ("filter", words), ("note", note), ("table", table)):
        ctx.register(f"elements.{name}", comp)

    refresh.click(lambda current: model_list_update(ctx, current), model, model)

    def show(name, text):
        if not name:
            return "Pick a checkpoint.", []
        try:
            rows, summary = element_rows(ctx.model_path(name), text or "")
        except SuperMergerError as e:
            return "Error: " + ctx.message(e), []
        return summary, rows

    load.click(show, [model, words], [note, table])
    words.submit(show, [model, words], [note, table])


def on_show(ctx: UIContext):
    """(fn, inputs, outputs) run each time the tab is shown: the checkpoint list of now."""
    model = ctx.components["elements.model"]
    return (lambda current: model_list_update(ctx, current)), [model], [model]


def _models(ctx: UIContext) -> list[str]:
    return metadata_tab._models(ctx)

"""The Weight Analysis tab (spec §7): history IDs -> per-block mean and σ of their alpha block
weights, as text (mean, σ, 2σ, 3σ) and as a bar chart of mean ± 1σ."""

from __future__ import annotations

import gradio as gr

from .. import history
from ..errors import SuperMergerError
from ..history import chart
from .context import UIContext


def analyse(ctx: UIContext, ids_text: str):
    """(text, PIL image or None) for the comma-separated history IDs ``ids_text``."""
    try:
        stats = history.weight_stats(ids_text or "")
    except SuperMergerError as e:
        return "Error: " + ctx.message(e), None
    head = f"IDs {', '.join(str(i) for i in stats.ids)}: {len(stats.blocks)} blocks"
    return head + "\n" + stats.text(), chart.render(stats)


def build(ctx: UIContext) -> None:
    with gr.Row():
        ids = gr.Textbox("", label="History IDs (comma-separated; -1 = the last merge)",
                         elem_id="supermerger_analysis_ids")
        run = gr.Button("Analyse", variant="primary", elem_id="supermerger_analysis_run")
        from_images = gr.Button("IDs from images ↓", elem_id="supermerger_analysis_from_images",
                                visible="ids.ids" in ctx.components)
    image = gr.Image(label="Mean ± 1σ per block", type="pil", interactive=False,
                     elem_id="supermerger_analysis_chart")
    text = gr.Textbox("", label="Mean, σ, 2σ, 3σ", lines=12, interactive=False, elem_id="supermerger_analysis_text")
    for name, comp in (("ids", ids), ("chart", image), ("text", text)):
        ctx.register(f"analysis.{name}", comp)
    run.click(lambda t: analyse(ctx, t), ids, [text, image])
    if "ids.ids" in ctx.components:  # the "IDs from images" tab's result, when that tab is built first
        from_images.click(lambda t: t, ctx.components["ids.ids"], ids)
    ids.submit(lambda t: analyse(ctx, t), ids, [text, image])

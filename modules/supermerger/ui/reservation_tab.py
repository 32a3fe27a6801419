"""The Reservation tab (spec §6): the queue of reserved XYZ plots as a table, Reload, Start (runs
every waiting reservation in order), Delete one (its number) or all (-1; the box starts empty). The queue lives on disk
(``supermerger.xyplot.queue``), so it survives a restart and the CLI's `supermerger queue` sees it too.
"""

from __future__ import annotations

import logging

import gradio as gr

from ..errors import SuperMergerError
from ..xyplot.queue import COLUMNS, ReservationQueue, plot_runner
from . import compat
from .context import UIContext

log = logging.getLogger("supermerger.ui")


def table_rows() -> list[list]:
    return [[str(v) for v in row] for row in ReservationQueue().table()]


def delete(number) -> str:
    """Delete reservation ``number`` (-1: all of them); with no number, nothing (the box starts empty, so
    one click never wipes the queue)."""
    if number is None or str(number).strip() == "" or float(number) == 0:  # an empty box reads 0 in some Gradios
        return "Type the number of the reservation to delete (-1 deletes them all)."
    n = int(number)
    gone = ReservationQueue().delete(-1 if n < 0 else n)
    return f"Deleted {gone} reservation{'s' if gone != 1 else ''}."


def start(ctx: UIContext, progress=None) -> tuple[list, str]:
    """Run every waiting reservation in order; an error marks that one and the next runs."""
    from .xyplot_section import _images_of, output_folder

    queue = ReservationQueue()
    if queue.pending() == 0:
        return [], "No reservation is waiting."
    folder = output_folder(ctx)
    items, lines = [], []
    with ctx.lock:
        ctx.stop.clear()
        ctx.live_model_replaced()  # each plot merges into the live model
        for entry in queue.run(plot_runner(ctx.host, folder, stop=ctx.stop), stop=ctx.stop):
            lines.append(f"Reservation {entry.id}: {entry.status}" + (f" ({entry.error})" if entry.error else ""))
            items += _images_of(entry.outputs)
            if progress is not None:
                progress(0.5, desc=f"reservation {entry.id} {entry.status}")
    return items, "\n".join(lines)


def build(ctx: UIContext) -> None:
    with gr.Row():
        reload_btn = gr.Button("Reload list", elem_id="supermerger_queue_reload")
        start_btn = gr.Button("Start XY plot", variant="primary", elem_id="supermerger_queue_start")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="supermerger_queue_stop")
        number = gr.Number(None, label="Reservation No. to delete (-1: all)", precision=0,
                           elem_id="supermerger_queue_number")
        delete_btn = gr.Button("Delete", elem_id="supermerger_queue_delete")
    status = gr.Textbox("", label="Status", interactive=False, lines=2, elem_id="supermerger_queue_status")
    table = gr.Dataframe(headers=list(COLUMNS), value=_safe_rows(), interactive=False, wrap=True,
                         elem_id="supermerger_queue_table")
    gallery = gr.Gallery(label="Grids", elem_id="supermerger_queue_gallery", **compat.gallery_kwargs(2, 420))
    for name, comp in (("table", table), ("status", status), ("number", number), ("gallery", gallery),
                       ("start", start_btn), ("reload", reload_btn), ("delete", delete_btn)):
        ctx.register(f"queue.{name}", comp)

    def on_reload():
        try:
            return table_rows(), ""
        except SuperMergerError as e:
            return compat.update(), "Error: " + ctx.message(e)

    def on_delete(n):
        try:
            return table_rows(), delete(n)
        except SuperMergerError as e:
            return compat.update(), "Error: " + ctx.message(e)

    from .actions import status_text

    merge_status = [ctx.status] if ctx.status is not None else []  # the Merge tab's: the live model changed

    def on_start(progress=gr.Progress()):
        try:
            items, text = start(ctx, progress)
            out = [items or compat.update(), text, table_rows()]
        except SuperMergerError as e:
            out = [compat.update(), "Error: " + ctx.message(e), compat.update()]
        except Exception as e:  # noqa: BLE001
            log.exception("reservations failed")
            out = [compat.update(), "Error: " + ctx.message(e), compat.update()]
        return out + [status_text(ctx) for _ in merge_status]

    reload_btn.click(on_reload, None, [table, status])
    delete_btn.click(on_delete, number, [table, status])
    start_btn.click(on_start, None, [gallery, status, table] + merge_status)
    stop_btn.click(lambda: ctx.stop.set(), None, None, queue=False)


def _safe_rows() -> list[list]:
    try:
        return table_rows()
    except SuperMergerError:
        return []

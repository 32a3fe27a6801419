"""The History tab (spec §7): every recorded merge, newest first, a page at a time; search across
all records (words joined by or / and) with model and mode filters; a clicked row, or a typed ID
(-1 = the last merge), restores that merge into the Merge tab, its models found by hash first,
then by name (a model found nowhere is named, and everything else is still restored).

The callbacks are plain functions of the form values (``search_page``, ``restore_id``), tested
without a browser; ``build`` only wires them.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from .. import history
from ..errors import SuperMergerError
from ..history import table
from . import compat, forms
from .context import UIContext

ANY_MODE = "Any mode"


def search_page(query: str = "", how: str = "or", model: str = "", mode: str = ANY_MODE, per_page=20,
                page=1) -> tuple[list[list[str]], str, int]:
    """(rows, note, page) of one result page; the page is clamped to the last one."""
    per_page = int(per_page or 20)
    page = max(1, int(page or 1))
    mode_filter = None if not mode or mode == ANY_MODE else mode
    query = query or ""
    result = history.search(query, how or "or", (model or "").strip() or None, mode_filter, page=page,
                            per_page=per_page)
    if not result.records and result.total and page > result.pages:
        page = result.pages
        result = history.search(query, how or "or", (model or "").strip() or None, mode_filter, page=page,
                                per_page=per_page)
    return table.rows(result.records), table.page_note(result, query), page


def model_folders(ctx: UIContext) -> list[Path]:
    """Where the host's checkpoints are: each listed file's folder, the outermost ones only (the
    restore search walks sub-folders)."""
    folders: list[Path] = []
    try:
        names = ctx.host.list_checkpoints()
    except Exception:  # noqa: BLE001 - a host that cannot list: the records' own paths are still tried
        names = []
    for name in names:
        try:
            folders.append(Path(ctx.model_path(name)).resolve().parent)
        except Exception:  # noqa: BLE001 - a listed model that vanished
            continue
    out: list[Path] = []
    for f in sorted(set(folders), key=lambda p: len(p.parts)):
        if not any(f == o or o in f.parents for o in out):
            out.append(f)
    return out


def detail(id_text) -> str:
    """The whole record ``id_text`` names (the table shows a few columns of it), or why there is none."""
    if not str(id_text or "").strip():
        return ""
    try:
        return "\n".join(table.detail_lines(history.get(table.id_from_box(id_text))))
    except SuperMergerError as e:
        return "Error: " + forms.message(e)


def restore_id(ctx: UIContext, id_text) -> tuple[list, str]:
    """(Merge-tab updates in ``ctx.merge_inputs`` order, message) for the record ``id_text``.
    On an error, or with no ID given, nothing in the Merge tab changes."""
    from ..history.locate import restore_record

    n = len(forms.MERGE_FIELDS)
    if not str(id_text if id_text is not None else "").strip():
        return [compat.skip()] * n, "Pick a merge first: click its row, or type its ID (-1 = the last merge)."
    try:
        record = history.get(table.id_from_box(id_text))
        restored = restore_record(record, model_folders(ctx), allow_missing=True)
    except SuperMergerError as e:
        return [compat.skip()] * n, "Error: " + ctx.message(e)
    lines = [f"Restored history ID {record.id} ({record.name}) into the Merge tab."]
    for label, (path, how) in restored.found.items():
        if how not in ("recorded path", "recorded path, sha256 checked"):
            lines.append(f"Model {label}: {os.path.basename(path)} ({how}).")
    if restored.missing:
        lines.append(f"Not found: {restored.message} Pick the missing model in the Merge tab.")
    return ctx.apply_recipe(restored.recipe), "\n".join(lines)


def id_of_row(rows, row_index) -> str:
    """The ID cell of a clicked table row ("" when there is none)."""
    try:
        value = rows[row_index][0]
    except (IndexError, KeyError, TypeError):
        return ""
    return str(value).strip()


def build(ctx: UIContext) -> None:
    reg = ctx.register
    with gr.Row():
        query = gr.Textbox("", label="Search (words separated by spaces)", elem_id="supermerger_history_query")
        how = gr.Radio(["or", "and"], value="or", label="Words", elem_id="supermerger_history_how")
        model = gr.Textbox("", label="Model (name or hash)", elem_id="supermerger_history_model")
        mode = gr.Dropdown([ANY_MODE] + list(forms.MODE_LABELS), value=ANY_MODE, label="Mode",
                           elem_id="supermerger_history_mode")
        per_page = gr.Dropdown([str(n) for n in table.PAGE_SIZES], value="20", label="Per page",
                               elem_id="supermerger_history_per_page")
    with gr.Row():
        search_btn = gr.Button("Search", variant="primary", elem_id="supermerger_history_search")
        newest = gr.Button("Newest", elem_id="supermerger_history_newest")
        newer = gr.Button("◀ Newer", elem_id="supermerger_history_newer")
        older = gr.Button("Older ▶", elem_id="supermerger_history_older")
        page = gr.Number(1, label="Page", precision=0, elem_id="supermerger_history_page")
    # filled when the tab is shown (``on_show``), so it is never the state of when the server started
    note = gr.Markdown("", elem_id="supermerger_history_note")
    grid = gr.Dataframe(headers=list(table.HEADERS), value=[], type="array", interactive=False, wrap=False,
                        elem_id="supermerger_history_table")
    with gr.Row():
        record_id = gr.Textbox("", label="History ID (click a row, or type one; -1 = the last merge)",
                               elem_id="supermerger_history_id")
        restore_btn = gr.Button("Restore into the Merge tab", variant="primary",
                                elem_id="supermerger_history_restore")
    message = gr.Textbox("", label="Message", interactive=False, lines=2, elem_id="supermerger_history_message")
    record = gr.Textbox("", label="Record (the row picked, whole)", interactive=False, lines=12, max_lines=40,
                        elem_id="supermerger_history_record")
    for name, comp in (("query", query), ("how", how), ("model", model), ("mode", mode), ("per_page", per_page),
                       ("page", page), ("note", note), ("table", grid), ("id", record_id), ("message", message),
                       ("record", record)):
        reg(f"history.{name}", comp)

    filters = [query, how, model, mode, per_page]

    def show(q, h, m, mo, pp, pg):
        try:
            rows, text, pg = search_page(q, h, m, mo, pp, pg)
        except SuperMergerError as e:
            return [], "Error: " + ctx.message(e), pg
        return rows, text, pg

    outs = [grid, note, page]
    search_btn.click(lambda *v: show(*v, 1), filters, outs)
    query.submit(lambda *v: show(*v, 1), filters, outs)
    newest.click(lambda *v: show(*v, 1), filters, outs)
    newer.click(lambda *v: show(*v[:-1], max(1, int(v[-1] or 1) - 1)), filters + [page], outs)
    older.click(lambda *v: show(*v[:-1], int(v[-1] or 1) + 1), filters + [page], outs)
    if hasattr(page, "submit"):
        page.submit(show, filters + [page], outs)

    merge_outputs = ctx.merge_inputs + [message]

    def restore(id_text):
        updates, text = restore_id(ctx, id_text)
        return updates + [text, detail(id_text)]

    restore_btn.click(restore, record_id, merge_outputs + [record])
    record_id.submit(restore, record_id, merge_outputs + [record])

    def on_select(rows, evt: gr.SelectData):
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        rid = id_of_row(rows, index)
        if not rid:
            return [compat.skip()] + [compat.skip()] * len(ctx.merge_inputs) + ["", ""]
        updates, text = restore_id(ctx, rid)
        return [rid] + updates + [text, detail(rid)]

    grid.select(on_select, grid, [record_id] + merge_outputs + [record])


def on_show(ctx: UIContext):
    """(fn, inputs, outputs) run each time the tab is shown: the page of records as the filters say, now."""
    c = ctx.components
    filters = [c[f"history.{n}"] for n in ("query", "how", "model", "mode", "per_page", "page")]

    def refresh(*values):
        try:
            return search_page(*values)
        except SuperMergerError as e:
            return [], "Error: " + ctx.message(e), values[-1]

    return refresh, filters, [c["history.table"], c["history.note"], c["history.page"]]

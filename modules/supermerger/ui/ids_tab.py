"""The "IDs from images" tab (spec §7): drop generated PNGs, get the merge IDs their infotext
names (``Model: <name> ID <n>``), each once, comma-joined for the History and Weight Analysis tabs."""

from __future__ import annotations

import os
import zlib

import gradio as gr

from ..history.images import id_from_text, png_text_chunks
from . import compat
from .context import UIContext


def file_path(item) -> str:
    """A gr.File value's path: a string (Gradio 4+), a dict, or a temp-file object (Gradio 3)."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, dict):
        return item.get("path") or item.get("name") or ""
    return getattr(item, "name", "") or ""


def ids_from_files(files) -> tuple[str, str]:
    """(IDs comma-joined, a note naming the files without one)."""
    paths = [file_path(f) for f in (files or [])]
    paths = [p for p in paths if p]
    if not paths:
        return "", "Drop PNG images made with a merged model."
    ids: list[int] = []
    without, unreadable = [], []
    for p in paths:
        name = os.path.basename(p)
        try:
            text = png_text_chunks(p).get("parameters", "")
        except (OSError, ValueError, zlib.error):
            unreadable.append(name)
            continue
        found = id_from_text(text) if text else None
        if found is None:
            without.append(name)
        elif found not in ids:
            ids.append(found)
    lines = [f"{len(ids)} merge ID{'s' if len(ids) != 1 else ''} in {len(paths)} image{'s' if len(paths) != 1 else ''}."]
    if without:
        lines.append("No merge ID in: " + ", ".join(without) + ".")
    if unreadable:
        lines.append("Not a readable PNG: " + ", ".join(unreadable) + ".")
    return ",".join(str(i) for i in ids), " ".join(lines)


def build(ctx: UIContext) -> None:
    files = gr.File(label="PNG images", file_count="multiple", file_types=[".png"], **compat.file_kwargs(),
                    elem_id="supermerger_ids_files")
    with gr.Row():
        ids = gr.Textbox("", label="Merge IDs", interactive=False, elem_id="supermerger_ids_out")
        note = gr.Markdown("", elem_id="supermerger_ids_note")
    ctx.register("ids.files", files)
    ctx.register("ids.ids", ids)
    ctx.register("ids.note", note)
    files.change(ids_from_files, files, [ids, note])

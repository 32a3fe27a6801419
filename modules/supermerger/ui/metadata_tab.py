"""The Metadata tab: a checkpoint's safetensors metadata, pretty-printed, and the merge recipe it
carries (SuperMerger's own, else the WebUI merger's ``sd_merge_recipe``) as a readable table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import SuperMergerError
from . import compat
from .context import UIContext

RECIPE_HEADERS = ["Field", "Value"]


def _maybe_json(text: str) -> Any:
    """Metadata values are strings; many hold JSON, shown as structure."""
    if isinstance(text, str) and text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def recipe_rows(metadata: dict[str, str]) -> list[list[str]]:
    """The merge recipe in ``metadata`` as (field, value) rows; [] when the file carries none."""
    from ..merge.metadata import RECIPE_KEY
    from ..merge.recipe import Recipe

    if metadata.get(RECIPE_KEY):
        recipe = Recipe.from_json(metadata[RECIPE_KEY], "the file's SuperMerger recipe")
        default = Recipe().to_dict()
        rows = []
        for key, value in recipe.to_dict().items():
            if key in ("model_a", "model_b") or (value != default.get(key) and value not in (None, "", {})):
                rows.append([key, _cell(value)])
        return rows
    other = _maybe_json(metadata.get("sd_merge_recipe", ""))
    if isinstance(other, dict):
        return [[str(k), _cell(v)] for k, v in other.items()]
    return []


def metadata_view(path: str) -> tuple[str, list[list[str]], str]:
    """(pretty JSON of the metadata, recipe rows, a note) for one checkpoint file."""
    from ..io.safetensors_format import read_header

    if not str(path).lower().endswith(".safetensors"):
        return "", [], f"{Path(path).name}: no metadata (not a .safetensors file)."
    metadata = read_header(path).metadata or {}
    if not metadata:
        return "", [], f"{Path(path).name}: no metadata."
    pretty = json.dumps({k: _maybe_json(v) for k, v in metadata.items()}, indent=2, ensure_ascii=False)
    try:
        rows = recipe_rows(metadata)
        note = f"{Path(path).name}: {len(metadata)} metadata fields" + ("" if rows else "; no merge recipe.")
    except SuperMergerError as e:
        rows, note = [], f"{Path(path).name}: the recipe cannot be read: {e.message}"
    return pretty, rows, note


def build(ctx: UIContext) -> None:
    names = _models(ctx)
    with gr.Row():
        model = gr.Dropdown(names, value=names[0] if names else None, label="Checkpoint",
                            elem_id="supermerger_meta_model", **compat.dropdown_kwargs(custom=True))
        refresh = gr.Button("↻", elem_classes=["sm-tool"], min_width=40, elem_id="supermerger_meta_refresh")
        load = gr.Button("Read metadata", variant="primary", elem_id="supermerger_meta_load")
    note = gr.Markdown("", elem_id="supermerger_meta_note")
    table = gr.Dataframe(headers=RECIPE_HEADERS, value=[], label="Merge recipe", interactive=False,
                         elem_id="supermerger_meta_recipe", wrap=True)
    raw = gr.Code("", language="json", label="Metadata", elem_id="supermerger_meta_json")
    for name, comp in (("model", model), ("note", note), ("recipe", table), ("json", raw)):
        ctx.register(f"metadata.{name}", comp)

    refresh.click(lambda current: model_list_update(ctx, current), model, model)

    def read(name):
        if not name:
            return "Pick a checkpoint.", [], ""
        try:
            pretty, rows, text = metadata_view(ctx.model_path(name))
        except SuperMergerError as e:
            return "Error: " + ctx.message(e), [], ""
        return text, rows, pretty

    load.click(read, model, [note, table, raw])


def model_list_update(ctx: UIContext, current):
    """The checkpoint dropdown as the host lists its models now; the choice kept while it is listed."""
    names = _models(ctx)
    return compat.update(choices=names, value=current if current in names else (names[0] if names else None))


def on_show(ctx: UIContext):
    """(fn, inputs, outputs) run each time the tab is shown: the checkpoint list of now."""
    model = ctx.components["metadata.model"]
    return (lambda current: model_list_update(ctx, current)), [model], [model]


def _models(ctx: UIContext) -> list[str]:
    try:
        return ctx.host.list_checkpoints()
    except Exception:  # noqa: BLE001
        return []

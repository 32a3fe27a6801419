"""The XYZ Plot section of the Merge tab (spec §5): axis types and values, settings, Run / Stop /
Reserve, XYZ presets, and helper rows (block IDs, calcmodes, checkpoints) that fill a values box.

Every action snapshots the Merge tab with ``ctx.recipe_from_ui`` / ``ctx.params_from_ui`` and hands
the plot to ``supermerger.xyplot``; the functions below the layout are plain and unit-tested.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from .. import arch as archmod
from ..errors import SuperMergerError
from ..merge.calcmodes import calcmode_names
from ..xyplot import presets as xyz_presets
from ..xyplot.axes import AXIS_TYPES, axis_type
from ..xyplot.plan import Axis, XYZPlot
from . import compat
from .context import UIContext

log = logging.getLogger("supermerger.ui")

TYPE_CHOICES = [t.label for t in AXIS_TYPES]
SETTINGS = ("swap XY", "save model", "save csv", "save anime gif", "not save grid", "0 stock")
_SETTING_FIELDS = {"swap XY": "swap_xy", "save model": "save_model", "save csv": "save_csv",
                   "save anime gif": "save_gif", "not save grid": "no_grid", "0 stock": "zero_stock"}
XYZ_FIELDS = ("xtype", "xvalues", "ytype", "yvalues", "ztype", "zvalues", "settings")


# -- plain functions ----------------------------------------------------------------------------------
def label_of(type_name: str) -> str:
    """The dropdown's label for a type (stored presets/reservations hold short names)."""
    return axis_type(type_name).label


def plot_from_values(xtype, xvalues, ytype, yvalues, ztype, zvalues, settings) -> XYZPlot:
    plot = XYZPlot(x=Axis(axis_type(xtype or "none", "X").id, xvalues or ""),
                   y=Axis(axis_type(ytype or "none", "Y").id, yvalues or ""),
                   z=Axis(axis_type(ztype or "none", "Z").id, zvalues or ""))
    for label in settings or ():
        setattr(plot, _SETTING_FIELDS[label], True)
    return plot


def values_from_plot(plot: XYZPlot) -> list:
    """The section's values for ``plot`` (XYZ_FIELDS order)."""
    settings = [label for label, f in _SETTING_FIELDS.items() if getattr(plot, f)]
    return [label_of(plot.x.type), plot.x.values, label_of(plot.y.type), plot.y.values, label_of(plot.z.type),
            plot.z.values, settings]


def minus_ones(n) -> str:
    """"number of -1": that many random seeds for a seed axis."""
    n = int(n or 0)
    return ",".join(["-1"] * max(n, 0))


def output_folder(ctx: UIContext | None = None) -> Path:
    """Where XYZ grids (and their csv, gif, models) go: the host's grid folder (inside the WebUI, its
    txt2img-grids), else ``outputs/xyz`` in the data folder."""
    from ..paths import data_dir

    folder = (ctx.grids_dir() if ctx is not None else None) or data_dir() / "outputs" / "xyz"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _settings_of(ctx: UIContext, xyz_values, merge_values, gen_values):
    plot = plot_from_values(*xyz_values)
    recipe = ctx.recipe_from_ui(*merge_values)
    params = ctx.params_from_ui(*gen_values)
    return plot, recipe, params


def run_plot(ctx: UIContext, xyz_values, merge_values, gen_values, progress=None) -> tuple[list, str]:
    """Run the plot with the Merge tab's current settings, then every waiting reservation (the first
    part of a '|' split runs now, the others are queued first). Returns (gallery items, status)."""
    from ..xyplot import ReservationQueue, plot_runner, run
    from ..xyplot.plan import arch_for, plan, split_reservations

    plot, recipe, params = _settings_of(ctx, xyz_values, merge_values, gen_values)
    folder = output_folder(ctx)
    lines: list[str] = []
    items: list = []
    with ctx.lock:
        ctx.stop.clear()
        parts = split_reservations(plot, arch_for(plot, recipe, ctx.model_path), recipe)
        queue = ReservationQueue()
        if len(parts) > 1:
            for part in parts[1:]:
                queue.add(part, recipe, params, split=False)
            lines.append(f"'|' split the plot in {len(parts)}: the first runs now, the others were queued.")
        p = plan(parts[0], recipe, params, resolve_model=ctx.model_path)

        def on_cell(i, n, cell):
            if progress is not None:
                progress((i + 1) / n, desc=f"XYZ plot: cell {i + 1}/{n}")

        result = run(ctx.host, p, stop=ctx.stop, outdir=folder, on_cell=on_cell)
        ctx.live_model_replaced()  # the live model is the plot's last cell now
        shown = result.grids or result.images
        items += [(im, f"grid {k + 1}") for k, im in enumerate(shown)]
        state = "stopped" if result.stopped else "done"
        lines.insert(0, f"XYZ plot {state}: {len(result.cells)} of {len(p.cells)} cells in {result.seconds:.1f} s.")
        for diffs in result.differences:
            lines += [f"{d.label.replace(chr(10), ' ')}: {d.percent:.3f}% changed" for d in diffs]
        lines += [f"Written: {path}" for path in result.paths]
        lines += [f"Notice: {n}" for n in result.notices]
        if not result.stopped and queue.pending():
            for entry in queue.run(plot_runner(ctx.host, folder, stop=ctx.stop), stop=ctx.stop):
                lines.append(f"Reservation {entry.id}: {entry.status}" + (f" ({entry.error})" if entry.error else ""))
                items += _images_of(entry.outputs)
    return items, "\n".join(lines)


def _images_of(paths) -> list:
    from PIL import Image

    out = []
    for p in paths:
        if str(p).lower().endswith(".png"):
            with Image.open(p) as im:
                out.append((im.copy(), Path(p).name))
    return out


def reserve(ctx: UIContext, xyz_values, merge_values, gen_values) -> str:
    from ..xyplot import ReservationQueue
    from ..xyplot.plan import arch_for, split_reservations

    plot, recipe, params = _settings_of(ctx, xyz_values, merge_values, gen_values)
    parts = split_reservations(plot, arch_for(plot, recipe, ctx.model_path), recipe)
    queue = ReservationQueue()
    added = [e for part in parts for e in queue.add(part, recipe, params, split=False)]
    return (f"Reserved: No. {', '.join(str(e.id) for e in added)} ({queue.pending()} waiting). "
            "They run after the next XYZ plot, or from the Reservation tab.")


def block_choices(arch_id: str | None) -> list[str]:
    return list(archmod.get(arch_id or "sd1").blocks)


# -- the layout ----------------------------------------------------------------------------------------
def build(ctx: UIContext) -> None:
    reg = ctx.register
    c: dict[str, object] = {}
    with gr.Accordion("XYZ Plot", open=False, elem_id="supermerger_xyz_accordion"):
        with gr.Row():
            c["xtype"] = gr.Dropdown(TYPE_CHOICES, value="alpha", label="X type", elem_id="supermerger_xyz_xtype")
            c["xvalues"] = gr.Textbox("0.25,0.5,0.75", label="X values", lines=1, elem_id="supermerger_xyz_xvalues")
            minus = gr.Number(3, label="number of -1", precision=0, min_width=80, elem_id="supermerger_xyz_minus")
        with gr.Row():
            c["ytype"] = gr.Dropdown(TYPE_CHOICES, value="none", label="Y type", elem_id="supermerger_xyz_ytype")
            c["yvalues"] = gr.Textbox("", label="Y values", lines=1, visible=False, elem_id="supermerger_xyz_yvalues")
        with gr.Row():
            c["ztype"] = gr.Dropdown(TYPE_CHOICES, value="none", label="Z type", elem_id="supermerger_xyz_ztype")
            c["zvalues"] = gr.Textbox("", label="Z values", lines=1, visible=False, elem_id="supermerger_xyz_zvalues")
        c["settings"] = gr.CheckboxGroup(list(SETTINGS), value=[], label="XYZ settings",
                                         elem_id="supermerger_xyz_settings")
        with gr.Row():
            run_btn = gr.Button("Run XYZ Plot", variant="primary", elem_id="supermerger_xyz_run")
            stop_btn = gr.Button("Stop XYZ Plot", variant="stop", elem_id="supermerger_xyz_stop")
            reserve_btn = gr.Button("Reserve XYZ Plot", elem_id="supermerger_xyz_reserve")
        status = gr.Textbox("", label="XYZ plot", interactive=False, lines=3, elem_id="supermerger_xyz_status")
        with gr.Accordion("XYZ presets", open=False, elem_id="supermerger_xyz_presets"):
            with gr.Row():
                preset = gr.Dropdown(_preset_names(), value=None, label="Preset", elem_id="supermerger_xyz_preset")
                load_btn = gr.Button("Load", elem_id="supermerger_xyz_preset_load")
                delete_btn = gr.Button("Delete", elem_id="supermerger_xyz_preset_delete")
                refresh_btn = gr.Button("↻", elem_classes=["sm-tool"], min_width=40,
                                        elem_id="supermerger_xyz_preset_refresh")
            with gr.Row():
                preset_name = gr.Textbox("", label="Save as", placeholder="name", elem_id="supermerger_xyz_preset_name")
                overwrite = gr.Checkbox(False, label="Overwrite", elem_id="supermerger_xyz_preset_overwrite")
                save_btn = gr.Button("Save", elem_id="supermerger_xyz_preset_save")
        with gr.Accordion("Helpers: block IDs, calcmodes, checkpoints", open=False,
                          elem_id="supermerger_xyz_helpers"):
            blocks = gr.CheckboxGroup(block_choices("sd1"), value=[], label="Block IDs (pinpoint blocks, include / "
                                      "exclude; add VAE or Adjust by hand)", elem_id="supermerger_xyz_blocks")
            calcmodes = gr.CheckboxGroup(calcmode_names(), value=[], label="Calcmodes",
                                         elem_id="supermerger_xyz_calcmodes")
            checkpoints = gr.CheckboxGroup(_checkpoints(ctx), value=[], label="Checkpoints (model_A/B/C)",
                                           elem_id="supermerger_xyz_checkpoints")
            selected = gr.Textbox("", label="Selected", elem_id="supermerger_xyz_selected")
            with gr.Row():
                to_x = gr.Button("↑ Set as X values", elem_id="supermerger_xyz_to_x")
                to_y = gr.Button("↑ Set as Y values", elem_id="supermerger_xyz_to_y")
                to_z = gr.Button("↑ Set as Z values", elem_id="supermerger_xyz_to_z")
                refresh_ckpt = gr.Button("↻ checkpoints", elem_id="supermerger_xyz_refresh_checkpoints")

    for name in XYZ_FIELDS:
        reg(f"xyz.{name}", c[name])
    for name, comp in (("minus", minus), ("run", run_btn), ("stop", stop_btn), ("reserve", reserve_btn),
                       ("status", status), ("preset", preset), ("preset_name", preset_name),
                       ("blocks", blocks), ("calcmodes", calcmodes), ("checkpoints", checkpoints),
                       ("selected", selected)):
        reg(f"xyz.{name}", comp)

    xyz_inputs = [c[n] for n in XYZ_FIELDS]
    n_xyz, n_merge = len(xyz_inputs), len(ctx.merge_inputs)
    inputs = xyz_inputs + ctx.merge_inputs + ctx.gen_inputs

    def split(values):
        return values[:n_xyz], values[n_xyz:n_xyz + n_merge], values[n_xyz + n_merge:]

    from .actions import status_text

    def do_run(*values, progress=gr.Progress()):
        try:
            items, text = run_plot(ctx, *split(values), progress=progress)
            out = [(items or compat.update()), text]
        except SuperMergerError as e:
            out = [compat.update(), "Error: " + ctx.message(e)]
        except Exception as e:  # noqa: BLE001 - a bug: logged with its traceback, shown as one line
            log.exception("XYZ plot failed")
            out = [compat.update(), "Error: " + ctx.message(e)]
        return out + ([status_text(ctx)] if ctx.status is not None else [])

    def do_reserve(*values):
        try:
            return reserve(ctx, *split(values))
        except SuperMergerError as e:
            return "Error: " + ctx.message(e)

    # the Merge tab's status too: the live model is the plot's last cell now
    run_btn.click(do_run, inputs, [ctx.gallery, status] + ([ctx.status] if ctx.status is not None else []))
    reserve_btn.click(do_reserve, inputs, status)
    stop_btn.click(lambda: ctx.stop.set(), None, None, queue=False)
    minus.change(lambda n: minus_ones(n), minus, c["xvalues"])
    for t, v in (("ytype", "yvalues"), ("ztype", "zvalues")):
        c[t].change(lambda kind: compat.update(visible=axis_type(kind or "none").id != "none"), c[t], c[v])

    def on_save(name, over, *values):
        try:
            xyz_presets.save(name, plot_from_values(*values), overwrite=bool(over))
        except SuperMergerError as e:
            return "Error: " + ctx.message(e), compat.update()
        return f"XYZ preset {name.strip()!r} saved.", compat.update(choices=_preset_names(), value=name.strip())

    def on_load(name, *current):
        try:
            plot = xyz_presets.load(name or "")
        except SuperMergerError as e:
            return [compat.update()] * 6 + ["Error: " + ctx.message(e)]
        values = values_from_plot(plot)[:6]
        return [compat.update(value=v) for v in values] + [f"XYZ preset {name!r} loaded."]

    def on_delete(name):
        try:
            xyz_presets.delete(name or "")
        except SuperMergerError as e:
            return "Error: " + ctx.message(e), compat.update()
        return f"XYZ preset {name!r} deleted.", compat.update(choices=_preset_names(), value=None)

    save_btn.click(on_save, [preset_name, overwrite] + xyz_inputs, [status, preset])
    load_btn.click(on_load, [preset] + xyz_inputs[:6], xyz_inputs[:6] + [status])
    delete_btn.click(on_delete, preset, [status, preset])
    refresh_btn.click(lambda: compat.update(choices=_preset_names()), None, preset)

    for group in (blocks, calcmodes, checkpoints):
        group.change(lambda chosen: ",".join(chosen or []), group, selected)
    for button, target in ((to_x, "xvalues"), (to_y, "yvalues"), (to_z, "zvalues")):
        button.click(lambda text: text, selected, c[target])
    refresh_ckpt.click(lambda: compat.update(choices=_checkpoints(ctx)), None, checkpoints)
    model_a = ctx.components.get("merge.model_a")
    if model_a is not None:
        from .merge_tab import arch_of

        model_a.change(lambda name: compat.update(choices=block_choices(arch_of(ctx, name)), value=[]),
                       model_a, blocks)


def _preset_names() -> list[str]:
    try:
        return xyz_presets.names()
    except SuperMergerError:
        return []


def _checkpoints(ctx: UIContext) -> list[str]:
    try:
        return ctx.host.list_checkpoints()
    except Exception:  # noqa: BLE001
        return []

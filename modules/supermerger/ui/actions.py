"""The Merge tab's actions, apart from its layout: merge into the host's live model (recorded in the
history), generate, save the live merge, and the status line. Each returns what the tab shows; a
SuperMergerError becomes the status's last line, never a traceback."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import SuperMergerError
from . import compat, forms
from .context import UIContext

log = logging.getLogger("supermerger.ui")


def status_text(ctx: UIContext) -> str:
    """What the live model is, computed each time (on page load too): the merge, or none."""
    ctx.merge_is_live()
    name = ctx.host.model_name
    if not name:
        live = getattr(ctx.host, "live_checkpoint", lambda: None)()
        return "No merged model loaded." + (f" The live model is {live}." if live else "")
    hid = getattr(ctx.last_result, "history_id", None)
    return f"Current model: {name}" + (f" · ID {hid}" if hid is not None else " · No ID")


def run_action(ctx: UIContext, do_merge: bool, do_gen: bool, merge_values, gen_values, progress=None,
               draw_id: bool = False):
    """Merge and/or generate; returns (gallery, infotext, status) for the Merge tab's outputs. Errors
    become the status's last line (a SuperMergerError as its message; a bug as one line, logged).
    ``draw_id``: write the live merge's history ID on the images (top left), as well as in their infotext."""
    lines = []
    images, info = compat.update(), compat.update()
    try:
        with ctx.lock:
            if do_merge:
                lines += merge_now(ctx, merge_values, progress)
            if do_gen:
                params = ctx.params_from_ui(*gen_values)
                if progress is not None:
                    def report(done: float, total: int) -> None:
                        progress(done / total, desc=f"Generating {min(int(done) + 1, total)}/{total}")

                    params = params.with_(extra={**params.extra, "progress": report})
                out = ctx.host.generate(params)
                hid = getattr(ctx.last_result, "history_id", None) if ctx.merge_is_live() else None
                if draw_id and hid is not None and ctx.host.model_name:
                    from ..hosts.mergeinfo import draw_id as draw

                    out.images = [draw(image, hid) for image in out.images]
                images = list(zip(out.images, [f"seed {s}" for s in out.seeds])) if out.seeds else out.images
                info = out.infotexts[0] if out.infotexts else ""
                ctx.last_infotexts = list(out.infotexts)
                if ctx.images_dir is not None and out.images:
                    lines.append(save_generated(ctx, out))
    except SuperMergerError as e:
        lines.append("Error: " + ctx.message(e))
    except Exception as e:  # noqa: BLE001 - a bug: logged with its traceback, shown as one line
        log.exception("SuperMerger action failed")
        lines.append("Error: " + ctx.message(e))
    return images, info, "\n".join([status_text(ctx)] + lines)


def save_generated(ctx: UIContext, out) -> str:
    """Write the images to ``ctx.images_dir`` (PNG with infotext); the status line that says where."""
    from ..hosts.mergeinfo import save_images

    try:
        written = save_images(ctx.images_dir, out.images, out.infotexts, out.seeds or [0] * len(out.images))
    except OSError as e:
        return f"Notice: the images could not be saved in {ctx.images_dir}: {e.strerror or e}."
    names = written[0].name if len(written) == 1 else f"{written[0].name} ... {written[-1].name}"
    return f"Images saved in {ctx.images_dir} ({names})."


def merge_now(ctx: UIContext, values, progress=None) -> list[str]:
    """Merge the form's recipe into the host's live model (recorded in the history); save if asked.
    Returns the status lines after the first (notices, the saved file)."""
    recipe = ctx.recipe_from_ui(*values)
    ctx.stop.clear()

    def report(done: int, total: int) -> None:
        if progress is not None and total:
            progress(done / total, desc=f"Merging {done}/{total}")

    result = ctx.host.merge_and_load(recipe, progress=report, stop=ctx.stop, history=True)
    ctx.last_result = result
    ctx.last_recipe = result.plan.recipe  # with the seed actually drawn: a save replays it exactly
    lines = [f"Merged in {result.seconds:.1f} s."] + [f"Notice: {n}" for n in result.notices]
    form = ctx.merge_values(values)
    recorded = getattr(ctx.host, "merge_recorded", None)
    if recorded is not None:  # the WebUI names the live merge as the file "Save" would write
        try:
            stem = save_path(ctx, ctx.last_recipe, form, result.plan).stem
        except SuperMergerError:  # a custom name no file can have: the Save reports it
            stem = None
        recorded(result, name=stem)
    if form.get("save"):
        path = save_merge(ctx, ctx.last_recipe, form)
        lines.append(f"Merged model saved in {path}")
    return lines


def _save_recipe(recipe, form: dict):
    return recipe.replace(dtype=form.get("dtype") or recipe.dtype, prune=bool(form.get("prune")),
                          overwrite=bool(form.get("overwrite")))


def save_path(ctx: UIContext, recipe, form: dict, plan=None) -> Path:
    """The file "Save" writes for ``recipe`` with the form's options: the custom name, else the merge's
    default file name (``plan``: the merge's plan, when there is one; else it is planned here)."""
    from ..api import plan_merge
    from ..merge.naming import default_filename

    recipe = _save_recipe(recipe, form)
    fmt = form.get("save_format") or "safetensors"
    folder = ctx.output_dir
    path = forms.output_path(folder, form.get("custom_name") or "", fmt)
    if path is None:
        if plan is None:
            plan = plan_merge(recipe)
            for s in plan.sources.values():
                s.close()
        ext = ".safetensors" if fmt == "safetensors" else ".ckpt"
        name = default_filename(plan.name, ext, fp16=recipe.dtype == "fp16", variant=plan.variant)
        path = (folder or Path.cwd()) / name
    return path


def save_merge(ctx: UIContext, recipe, form: dict) -> Path:
    """Write ``recipe`` (the live merge's) to a file with the form's save options: format, precision,
    prune, overwrite, custom name. The merge is computed again from the files (same seed, same result).
    A host that lists checkpoints learns of the file (``merge_saved``: the WebUI shows the live merge as
    that checkpoint, with its hash)."""
    from ..api import merge

    path = save_path(ctx, recipe, form)
    recipe = _save_recipe(recipe, form)
    path.parent.mkdir(parents=True, exist_ok=True)
    merge(recipe, output=path, overwrite=recipe.overwrite, history=False)
    saved = getattr(ctx.host, "merge_saved", None)
    if saved is not None and ctx.merge_is_live():
        saved(path)
    return path

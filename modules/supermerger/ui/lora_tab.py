"""The LoRA tab (spec §10): merge LoRAs into a checkpoint (into the live model, or saved), merge
LoRAs together, make a LoRA from two checkpoints, extract from two LoRAs, and the LoRA list with
its dims and type filters, "get from prompt" and the LBW presets.

The spec box holds one ``name:ratio[:blocks]`` per line; ticking LoRAs in the list adds their
lines (at the default multiplier) and unticking removes them; other lines stay as typed. The
callbacks are plain functions of the form values, tested without a browser; ``build`` wires them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import gradio as gr

from ..errors import RecipeError, SuperMergerError
from ..io.sources import model_name
from ..lora import dims as dimsmod
from ..lora.blocks import LoraSpec, load_lbw_presets, parse_specs, user_lbw_presets_path
from ..lora.formats import LORA_EXTS
from ..lora.prompt import spec_items, specs_from_prompt
from ..merge.naming import default_filename
from . import compat
from .context import UIContext

REMAKE_DIMS = ("no", "auto", "4", "8", "16", "32", "64", "128", "256", "512", "768", "1024")
METADATA_MODES = ("create new", "create new without output_name", "merge", "save all", "use first lora")
PRECISIONS = ("fp16", "bf16", "fp32")
TARGETS = ("load into the live model", "save to a file")
_LABEL = re.compile(r"\[[^\[\]]*\]$")


# -- the LoRA list ---------------------------------------------------------------------------------
def _strip_ext(name: str) -> str:
    p = Path(name)
    return str(p.with_suffix("")).replace("\\", "/") if p.suffix.lower() in LORA_EXTS else name


def label_name(label: str) -> str:
    """The LoRA name of a list label (``sub/name[32,SD1]`` -> ``sub/name``)."""
    return _LABEL.sub("", label) if label.endswith("]") else label


def lora_infos(ctx: UIContext) -> list[dimsmod.LoraInfo]:
    """Every LoRA of the host's folders, named by its path in the folder without the extension
    (how the spec box and the prompt name it), with dims, type and family (headers only, cached)."""
    out = []
    for folder in ctx.host.lora_dirs():
        root = Path(folder)
        for info in dimsmod.lora_dims(root):
            rel = Path(info.path).resolve().relative_to(root.resolve())
            out.append(dataclasses.replace(info, name=_strip_ext(rel.as_posix())))
    return sorted(out, key=lambda i: (i.name.lower(), i.name))


def list_choices(ctx: UIContext, with_dims: bool, types=None, dim_labels=None) -> tuple[list[str], list[str], str]:
    """(list labels, family-and-dim choices, note). Without dims only names are shown (no file is read)."""
    if not with_dims:
        names = [_strip_ext(n) for n in ctx.host.list_loras()]
        return names, [], _count_note(ctx, len(names), len(names))
    infos = lora_infos(ctx)
    shown = dimsmod.filter_infos(infos, types, dim_labels)
    return [i.label() for i in shown], dimsmod.dim_choices(infos), _count_note(ctx, len(shown), len(infos))


def _count_note(ctx: UIContext, shown: int, total: int) -> str:
    """"3 of 5 LoRAs shown, in /models/Lora." — where they were looked for, so 0 says where to put them."""
    dirs = ctx.host.lora_dirs()
    where = f" in {', '.join(dirs)}" if dirs else " (no LoRA folder: start the app with --lora-dir DIR)"
    count = f"{shown} of {total} LoRAs shown" if shown != total else f"{total} LoRA{'s' if total != 1 else ''}"
    return count + where + "."


def tick_changes(before, after, shown) -> tuple[list[str], list[str]]:
    """(added, removed) LoRA names between two tick states of the list. A LoRA that only left the
    list (hidden by a filter) is not removed: its line stays in the spec box."""
    shown_names = {label_name(x) for x in shown or ()}
    old = [label_name(x) for x in before or ()]
    new = [label_name(x) for x in after or ()]
    return [n for n in new if n not in old], [n for n in old if n not in new and n in shown_names]


def sync_spec(text: str, added, removed, default_ratio: float) -> str:
    """The spec box after ticks changed: the lines of ``removed`` LoRAs go, each of ``added`` without
    a line gets ``name:default_ratio``; every other line stays (one that does not parse too: the
    actions report it)."""
    removed = set(removed or ())
    lines, present = [], set()
    for line in spec_items(text):
        try:
            specs = parse_specs(line)
        except SuperMergerError:
            lines.append(line)
            continue
        for s in specs:
            if s.name in removed:
                continue
            lines.append(s.text())
            present.add(s.name)
    lines += [LoraSpec(n, float(default_ratio)).text() for n in added or () if n not in present]
    return "\n".join(lines)


def from_prompt(prompt: str, listed) -> tuple[str, list[str], str]:
    """(spec text, list labels to tick, note) from a prompt's ``<lora:...>`` / ``<lyco:...>`` tags.
    A tag names a LoRA by file name; a listed LoRA of that name (in any sub-folder) is used."""
    specs = specs_from_prompt(prompt or "")
    by_name: dict[str, str] = {}
    for label in listed or ():
        name = label_name(label)
        by_name.setdefault(name, label)
        by_name.setdefault(name.rsplit("/", 1)[-1], label)
    lines, ticked, unknown = [], [], []
    for s in specs:
        label = by_name.get(s.name)
        if label is None:
            unknown.append(s.name)
        elif label not in ticked:
            ticked.append(label)
        lines.append(dataclasses.replace(s, name=label_name(label) if label else s.name).text())
    note = f"{len(specs)} LoRA{'s' if len(specs) != 1 else ''} in the prompt."
    if not specs:
        note = "No <lora:...> or <lyco:...> tag in the prompt."
    if unknown:
        note += " Not in the list: " + ", ".join(unknown) + "."
    return "\n".join(lines), ticked, note


def save_dims_csv(ctx: UIContext) -> str:
    """Every LoRA's dims as ``loradims.csv`` (rows ``name,dim,type,version,conv_dim,path``) in the data folder."""
    from ..paths import data_dir

    infos = lora_infos(ctx)
    if not infos:
        return "No LoRA to list: the host has no LoRA folder, or it is empty."
    path = data_dir() / "loradims.csv"
    dimsmod.write_csv(infos, path)
    return f"Dims of {len(infos)} LoRAs saved in {path}."


def presets_text() -> str:
    return "\n".join(f"{name}:{values}" for name, values in load_lbw_presets().items())


# -- the actions -----------------------------------------------------------------------------------
def _items(text: str) -> list[str]:
    items = spec_items(text)
    if not items:
        raise RecipeError("No LoRA given.", "Tick LoRAs in the list or type name:ratio[:blocks], one per line.")
    return items


def relist_update(ctx: UIContext, dims_on, types, dim_labels, selected) -> tuple:
    """Updates of the LoRA list (ticks kept where the LoRA is still listed), the dim filter and the note."""
    try:
        choices, dim_choices, note = list_choices(ctx, dims_on, types, dim_labels)
    except SuperMergerError as e:
        return compat.skip(), compat.skip(), "Error: " + ctx.message(e)
    names = {label_name(c): c for c in choices}
    kept = [names[label_name(s)] for s in selected or () if label_name(s) in names]
    dim_update = compat.update(choices=dim_choices, value=[d for d in dim_labels or () if d in dim_choices]) \
        if dims_on else compat.skip()
    return compat.update(choices=choices, value=kept), dim_update, note


def on_show(ctx: UIContext):
    """(fn, inputs, outputs) run each time the tab is shown: the LoRA list as the folder is now."""
    c = ctx.components
    ins = [c["lora.with_dims"], c["lora.type_filter"], c["lora.dim_filter"], c["lora.list"]]
    return (lambda *v: relist_update(ctx, *v)), ins, [c["lora.list"], c["lora.dim_filter"], c["lora.list_note"]]


def _output(filename: str, folder: Path | None, default: str) -> Path:
    """The output file: the typed name (relative: in ``folder``) or the default name in ``folder``,
    which is made if missing (the app's output folder may not exist yet; a typed folder must)."""
    name = (filename or "").strip() or default
    if not name.lower().endswith(".safetensors"):
        name += ".safetensors"
    path = Path(name)
    if path.is_absolute() or folder is None:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / path


def _lora_folder(ctx: UIContext) -> Path | None:
    dirs = ctx.host.lora_dirs()
    return Path(dirs[0]) if dirs else ctx.output_dir


def _progress(ctx: UIContext, report, what: str):
    """A progress callback for the engine: reports to the page (``report(fraction, text)``) and
    stops the action, writing nothing, once Stop was pressed."""
    def update(done: int, total: int) -> None:
        if ctx.stop.is_set():
            raise SuperMergerError(f"Stopped: {what} was interrupted; nothing was written or loaded.")
        if report is not None and total:
            report(done / total, f"{what} {done}/{total}" if total < 10_000 else what)

    return update


def _unmatched(unmatched: dict) -> list[str]:
    return [f"Not applied: {name}: {len(mods)} modules ({', '.join(mods[:3])}{' ...' if len(mods) > 3 else ''})."
            for name, mods in unmatched.items()]


def to_checkpoint(ctx: UIContext, spec_text: str, model: str, target: str, filename: str, overwrite: bool,
                  report=None) -> str:
    """Merge the LoRAs into model A: into the live model (hot swap), or saved beside model A /
    in the output folder."""
    from ..lora.to_checkpoint import merge_to_checkpoint

    if not model:
        raise RecipeError("Pick model A, the checkpoint the LoRAs go into.")
    items = _items(spec_text)
    path = ctx.model_path(model)
    dirs = ctx.host.lora_dirs()
    names = [model_name(path)] + [Path(s.name).name for s in parse_specs(items)]
    merged_name = "+".join(names)
    with ctx.lock:
        ctx.stop.clear()
        progress = _progress(ctx, report, "merging the LoRAs into the model")
        if target == TARGETS[1]:
            folder = ctx.output_dir or Path(path).parent
            out = _output(filename, folder, default_filename(merged_name, ext=""))
            result = merge_to_checkpoint(path, items, out, overwrite=bool(overwrite), device=ctx.device,
                                         lora_dirs=dirs, progress=progress)
            head = f"Merged model saved in {result.path} ({result.seconds:.1f} s)."
        else:
            result = merge_to_checkpoint(path, items, None, device=ctx.device, lora_dirs=dirs, progress=progress)
            ctx.host.load_state_dict(result.state_dict, merged_name)
            ctx.live_model_replaced()
            result.state_dict = None
            head = f"Loaded {merged_name} as the live model ({result.seconds:.1f} s); nothing was saved."
    applied = [f"{lo.name} ratio {lo.spec.ratio:g}: {lo.applied} modules" for lo in result.plan.loras]
    return "\n".join([head, "; ".join(applied) + "."] + _unmatched(result.unmatched) + result.notices)


def _report(result, what: str) -> str:
    n = sum(1 for k in result.state_dict if k.endswith(".alpha"))
    lines = [f"{what} ({result.mode}, {n} modules, {result.arch.label}) saved in {result.path} "
             f"({result.seconds:.1f} s)."]
    return "\n".join(lines + _unmatched(result.unmatched) + list(result.notices))


def _remake(remake: str) -> int | str | None:
    remake = str(remake or "no")
    if remake == "no":
        return None
    return remake if remake == "auto" else int(remake)


def merge_loras_action(ctx: UIContext, spec_text: str, remake: str, same_to_strength: bool, metadata: str,
                       precision: str, svd: str, filename: str, overwrite: bool) -> str:
    from ..lora.merge_loras import merge_loras

    items = _items(spec_text)
    default = "+".join(f"{Path(s.name).name}_{s.ratio:g}" for s in parse_specs(items))
    out = _output(filename, _lora_folder(ctx), default_filename(default, ext=""))
    with ctx.lock:
        result = merge_loras(items, out, dim=_remake(remake), same_to_strength=bool(same_to_strength),
                             precision=precision, metadata_mode=metadata, svd=svd, device=ctx.device,
                             overwrite=bool(overwrite), lora_dirs=ctx.host.lora_dirs())
    return _report(result, "Merged LoRA")


def make_lora_action(ctx: UIContext, model_a: str, model_b: str, alpha: float, beta: float, remake: str,
                     precision: str, svd: str, filename: str, overwrite: bool, report=None) -> str:
    from ..lora.make import make_lora

    if not model_a or not model_b:
        raise RecipeError("Pick model A (the tuned model) and model B (the original) to make a LoRA from.")
    a, b = ctx.model_path(model_a), ctx.model_path(model_b)
    dim = _remake(remake)
    dim = dim if isinstance(dim, int) else 128
    out = _output(filename, _lora_folder(ctx), f"lora_{model_name(a)}-{model_name(b)}")
    with ctx.lock:
        ctx.stop.clear()
        result = make_lora(a, b, out, alpha=float(alpha), beta=float(beta), dim=dim, svd=svd, precision=precision,
                           device=ctx.device, overwrite=bool(overwrite),
                           progress=_progress(ctx, report, "SVD of module"))
    return _report(result, f"LoRA (dim {dim})")


def extract_action(ctx: UIContext, spec_text: str, alpha: float, beta: float, gamma: float, same_to_strength: bool,
                   metadata: str, precision: str, filename: str, overwrite: bool) -> str:
    from ..lora.merge_loras import extract_loras

    items = _items(spec_text)
    default = "extract_" + "+".join(f"{Path(s.name).name}_{s.ratio:g}" for s in parse_specs(items)[:2])
    out = _output(filename, _lora_folder(ctx), default_filename(default, ext=""))
    with ctx.lock:
        result = extract_loras(items, out, alpha=float(alpha), beta=float(beta), gamma=float(gamma),
                               same_to_strength=bool(same_to_strength), precision=precision, metadata_mode=metadata,
                               device=ctx.device, overwrite=bool(overwrite), lora_dirs=ctx.host.lora_dirs())
    return _report(result, "Extracted LoRA")


def guarded(ctx: UIContext, fn, *args, **kwargs) -> str:
    """Run an action; a SuperMergerError becomes the one message the tab shows."""
    try:
        return fn(ctx, *args, **kwargs)
    except SuperMergerError as e:
        return "Error: " + ctx.message(e)


# -- the tab ---------------------------------------------------------------------------------------
def _models(ctx: UIContext) -> list[str]:
    try:
        return ctx.host.list_checkpoints()
    except Exception:  # noqa: BLE001
        return []


def build(ctx: UIContext) -> None:
    reg = ctx.register
    models = _models(ctx)
    try:
        first_list, _, first_note = list_choices(ctx, False)
    except SuperMergerError as e:
        first_list, first_note = [], "Error: " + ctx.message(e)
    message = gr.Textbox("", label="Message", interactive=False, lines=3, elem_id="supermerger_lora_message")
    with gr.Row():
        to_ckpt_btn = gr.Button("Merge to checkpoint (model A)", variant="primary", elem_id="supermerger_lora_to_ckpt")
        merge_btn = gr.Button("Merge LoRAs", variant="primary", elem_id="supermerger_lora_merge")
        make_btn = gr.Button("Make LoRA (alpha · A − beta · B)", variant="primary", elem_id="supermerger_lora_make")
        extract_btn = gr.Button("Extract from two LoRAs", variant="primary", elem_id="supermerger_lora_extract")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="supermerger_lora_stop")
    with gr.Row():
        model_a = gr.Dropdown(models, value=None, label="Model A", elem_id="supermerger_lora_model_a",
                              **compat.dropdown_kwargs(custom=True))
        model_b = gr.Dropdown(models, value=None, label="Model B (Make LoRA: the original)",
                              elem_id="supermerger_lora_model_b", **compat.dropdown_kwargs(custom=True))
        target = gr.Radio(list(TARGETS), value=TARGETS[0], label="Merge to checkpoint",
                          elem_id="supermerger_lora_target")
    with gr.Row():
        alpha = gr.Slider(-1.0, 2.0, value=1.0, step=0.001, label="alpha", elem_id="supermerger_lora_alpha")
        beta = gr.Slider(-1.0, 2.0, value=1.0, step=0.001, label="beta", elem_id="supermerger_lora_beta")
        gamma = gr.Slider(-1.0, 20.0, value=1.0, step=0.001, label="gamma (smooth, extract)",
                          elem_id="supermerger_lora_gamma")
    with gr.Row():
        remake = gr.Radio(list(REMAKE_DIMS), value="no", label="Remake dimension (Make LoRA: no/auto = 128)",
                          elem_id="supermerger_lora_remake")
        svd = gr.Radio(["full", "lowrank"], value="full", label="SVD", elem_id="supermerger_lora_svd")
    with gr.Row():
        same = gr.Checkbox(False, label="same to Strength", elem_id="supermerger_lora_same")
        overwrite = gr.Checkbox(False, label="overwrite", elem_id="supermerger_lora_overwrite")
        filename = gr.Textbox("", label="File name (optional)", elem_id="supermerger_lora_filename")
        precision = gr.Radio(list(PRECISIONS), value="fp16", label="Save precision (LoRAs)",
                             elem_id="supermerger_lora_precision")
        metadata = gr.Dropdown(list(METADATA_MODES), value=METADATA_MODES[0], label="Metadata",
                               elem_id="supermerger_lora_metadata")
    specs = gr.Textbox("", lines=5, label="LoRAs: name:ratio[:blocks], one per line (blocks: a preset or 12/17/20/26 "
                       "values)", elem_id="supermerger_lora_specs")
    with gr.Row():
        default_ratio = gr.Slider(-1.0, 2.0, value=1.0, step=0.001, label="Default LoRA multiplier",
                                  elem_id="supermerger_lora_default_ratio")
        from_prompt_btn = gr.Button("Get from prompt", elem_id="supermerger_lora_from_prompt")
        select_all = gr.Button("Select all", elem_id="supermerger_lora_select_all")
        deselect_all = gr.Button("Deselect all", elem_id="supermerger_lora_deselect_all")
        update_btn = gr.Button("Update list", elem_id="supermerger_lora_update")
        dims_btn = gr.Button("Calculate dimensions", elem_id="supermerger_lora_dims")
        csv_btn = gr.Button("Save dims as CSV", elem_id="supermerger_lora_dims_csv")
    with gr.Row():
        type_filter = gr.CheckboxGroup(list(dimsmod.TYPE_GROUPS), value=[], label="Type filter",
                                       elem_id="supermerger_lora_type_filter")
        dim_filter = gr.CheckboxGroup([], value=[], label="Family and dim filter (after Calculate dimensions)",
                                      elem_id="supermerger_lora_dim_filter")
    list_note = gr.Markdown(first_note, elem_id="supermerger_lora_list_note")
    loras = gr.CheckboxGroup(first_list, value=[], label="LoRAs", elem_id="supermerger_lora_list")
    with_dims = gr.State(False)
    ticks = gr.State([])  # the list's ticks before the last change
    with gr.Accordion("LBW presets", open=False):
        gr.Markdown(f"Shipped presets, then yours from `{user_lbw_presets_path()}` (lines `NAME:w1,w2,...`).")
        gr.Textbox(presets_text(), lines=8, label="Presets", interactive=False, elem_id="supermerger_lora_presets")

    for name, comp in (("message", message), ("model_a", model_a), ("model_b", model_b), ("target", target),
                       ("alpha", alpha), ("beta", beta), ("gamma", gamma), ("remake", remake), ("svd", svd),
                       ("same", same), ("overwrite", overwrite), ("filename", filename), ("precision", precision),
                       ("metadata", metadata), ("specs", specs), ("default_ratio", default_ratio),
                       ("type_filter", type_filter), ("dim_filter", dim_filter), ("list", loras),
                       ("list_note", list_note), ("with_dims", with_dims)):
        reg(f"lora.{name}", comp)

    # -- the list
    def relist(*values):
        return relist_update(ctx, *values)

    list_ins, list_outs = [with_dims, type_filter, dim_filter, loras], [loras, dim_filter, list_note]

    # -- actions (a LoRA written into the LoRA folder shows in the list at once)
    def run_to_checkpoint(*v, progress=gr.Progress()):
        return guarded(ctx, to_checkpoint, *v, report=lambda f, d: progress(f, desc=d))

    def run_make(*v, progress=gr.Progress()):
        return guarded(ctx, make_lora_action, *v, report=lambda f, d: progress(f, desc=d))

    to_ckpt_btn.click(run_to_checkpoint, [specs, model_a, target, filename, overwrite], message)
    merge_btn.click(lambda *v: guarded(ctx, merge_loras_action, *v),
                    [specs, remake, same, metadata, precision, svd, filename, overwrite], message) \
        .then(relist, list_ins, list_outs)
    make_btn.click(run_make, [model_a, model_b, alpha, beta, remake, precision, svd, filename, overwrite], message) \
        .then(relist, list_ins, list_outs)
    stop_btn.click(lambda: ctx.stop.set(), None, None, queue=False)
    extract_btn.click(lambda *v: guarded(ctx, extract_action, *v),
                      [specs, alpha, beta, gamma, same, metadata, precision, filename, overwrite], message) \
        .then(relist, list_ins, list_outs)

    update_btn.click(relist, list_ins, list_outs)
    dims_btn.click(lambda t, d, s: relist(True, t, d, s), [type_filter, dim_filter, loras], list_outs) \
        .then(lambda: True, None, with_dims)
    csv_btn.click(lambda: guarded(ctx, lambda c: save_dims_csv(c)), None, message)
    type_filter.change(relist, list_ins, list_outs)
    dim_filter.change(relist, list_ins, list_outs)

    def on_ticks(text, selected, before, ratio, dims_on, types, dim_labels):
        try:
            shown = list_choices(ctx, dims_on, types, dim_labels)[0]
        except SuperMergerError:
            shown = list(selected or ())
        added, removed = tick_changes(before, selected, shown)
        return sync_spec(text, added, removed, ratio), list(selected or ())

    loras.change(on_ticks, [specs, loras, ticks, default_ratio, with_dims, type_filter, dim_filter], [specs, ticks])

    def all_of(dims_on, types, dim_labels):
        try:
            return list_choices(ctx, dims_on, types, dim_labels)[0]
        except SuperMergerError:
            return []

    select_all.click(all_of, [with_dims, type_filter, dim_filter], loras)
    deselect_all.click(lambda: [], None, loras)

    prompt = ctx.components.get("merge.gen.prompt")

    def get_from_prompt(prompt_text, dims_on, types, dim_labels):
        try:
            listed = list_choices(ctx, dims_on, types, dim_labels)[0]
            text, ticked, note = from_prompt(prompt_text, listed)
        except SuperMergerError as e:
            return compat.skip(), compat.skip(), "Error: " + ctx.message(e)
        return text, ticked, note

    if prompt is not None:
        from_prompt_btn.click(get_from_prompt, [prompt, with_dims, type_filter, dim_filter], [specs, loras, message])
    else:
        from_prompt_btn.click(lambda: "There is no prompt box to read (the Merge tab is not built).", None, message)

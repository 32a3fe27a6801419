"""The Merge tab: models, mode, calcmode, ratios, block weights, elemental, include/exclude, adjust,
dice, save options, generation parameters, and the Merge / Gen / Merge & Gen / Stop buttons.

It builds recipes (``ctx.recipe_from_ui``) and hands them to the host; it holds no merge logic.
Components other tabs may use are registered as ``merge.<field>`` (see ``forms.MERGE_FIELDS``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from .. import arch as archmod
from ..arch.presets import load_presets, save_user_preset
from ..errors import SuperMergerError
from ..merge.calcmodes import CALCMODES, calcmode_names, describe
from ..merge.dice import RANDOM_MODES
from ..merge.recipe import DTYPE_CHOICES, Recipe
from . import compat, forms, mbw
from .actions import merge_now, run_action, save_merge, status_text
from .context import UIContext

log = logging.getLogger("supermerger.ui")
MODEL_C_UNUSED = "Model C (not used by this mode)"


def arch_of(ctx: UIContext, name: str | None) -> str | None:
    """Model A's architecture id from its header (safetensors only: a .ckpt would have to be loaded)."""
    if not name:
        return None
    from ..io.safetensors_format import read_header

    try:
        path = ctx.model_path(name)
        if not str(path).lower().endswith(".safetensors"):
            return None
        header = read_header(path)
        return archmod.detect(header.tensors, {k: v.shape for k, v in header.tensors.items()}, name).id
    except SuperMergerError:
        return None


def _models(ctx: UIContext) -> list[str]:
    try:
        return ctx.host.list_checkpoints()
    except Exception as e:  # noqa: BLE001 - a host that cannot list shows an empty list, not a crash
        log.warning("listing checkpoints failed: %s", e)
        return []


def build(ctx: UIContext) -> None:
    reg = ctx.register
    models = _models(ctx)
    # the first two models start picked (the WebUI's lists them by name): a tab whose pickers start empty
    # reads as if it found no models
    first_a = models[0] if models else None
    first_b = models[1] if len(models) > 1 else None
    start_arch = arch_of(ctx, first_a) or "sd1"
    comps: dict[str, object] = {}
    presets = load_presets()
    D = forms.MERGE_FIELDS

    with gr.Row(elem_id="supermerger_main"):
        with gr.Column(scale=3, elem_id="supermerger_controls"):
            with gr.Row():
                comps["model_a"] = gr.Dropdown(models, value=first_a, label="Model A", elem_id="supermerger_model_a",
                                               **compat.dropdown_kwargs(custom=True))
                comps["model_b"] = gr.Dropdown(models, value=first_b, label="Model B", elem_id="supermerger_model_b",
                                               **compat.dropdown_kwargs(custom=True))
                # always interactive: Gradio 4+ draws a disabled dropdown without its arrow, like a text box;
                # the label says when the mode ignores it (forms.recipe_from_values drops it then)
                comps["model_c"] = gr.Dropdown(models, value=None, label=MODEL_C_UNUSED, elem_id="supermerger_model_c",
                                               **compat.dropdown_kwargs(custom=True))
                refresh = gr.Button("↻", elem_id="supermerger_refresh_models", elem_classes=["sm-tool"],
                                    min_width=40)
            with gr.Row():
                comps["mode"] = gr.Radio(list(forms.MODE_LABELS), value=D["mode"], label="Merge mode",
                                         elem_id="supermerger_mode", scale=3)
                comps["calcmode"] = gr.Dropdown(calcmode_names(), value=D["calcmode"], label="Calculation mode",
                                                elem_id="supermerger_calcmode", scale=1)
            calc_info = gr.Markdown(_calc_info("normal"), elem_id="supermerger_calcmode_info")
            with gr.Row():
                comps["alpha"] = gr.Slider(-1.0, 2.0, value=D["alpha"], step=0.001, label="alpha (α)",
                                           elem_id="supermerger_alpha")
                comps["beta"] = gr.Slider(-1.0, 2.0, value=D["beta"], step=0.001, label="beta (β)",
                                          elem_id="supermerger_beta", interactive=False)
                comps["gamma"] = gr.Slider(0.0, 4.0, value=D["gamma"], step=0.001, label="gamma (γ)",
                                           elem_id="supermerger_gamma", interactive=False)
            with gr.Row(elem_id="supermerger_buttons"):
                merge_btn = gr.Button("Merge", variant="primary", elem_id="supermerger_merge")
                gen_btn = gr.Button("Gen", elem_id="supermerger_gen")
                merge_gen_btn = gr.Button("Merge & Gen", variant="primary", elem_id="supermerger_merge_gen")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="supermerger_stop")
            # computed on each page load: the live model may have changed since the UI was built
            status = gr.Textbox(lambda: status_text(ctx), label="Status", interactive=False, lines=2,
                                elem_id="supermerger_status")

            # -- block weights
            with gr.Accordion("Block weights (MBW)", open=False, elem_id="supermerger_mbw_accordion"):
                comps["use_mbw"] = gr.Checkbox(value=D["use_mbw"], label="use MBW (per-block ratios from the "
                                               "weight lists below)", elem_id="supermerger_use_mbw")
                arch_state = gr.State(start_arch)
                arch_md = gr.Markdown(_arch_note(start_arch), elem_id="supermerger_mbw_arch")
                comps["mbw_alpha"] = gr.Textbox(D["mbw_alpha"], label="Weights for alpha (BASE,IN00,...,OUT11)",
                                                elem_id="supermerger_mbw_alpha")
                comps["mbw_beta"] = gr.Textbox(D["mbw_beta"], label="Weights for beta", elem_id="supermerger_mbw_beta")
                with gr.Row():
                    preset = gr.Dropdown(mbw.preset_choices(presets, start_arch), value=None,
                                         label="Preset → sliders", elem_id="supermerger_mbw_preset")
                    set_a = gr.Button("↑ Set alpha", elem_id="supermerger_mbw_set_alpha")
                    set_b = gr.Button("↑ Set beta", elem_id="supermerger_mbw_set_beta")
                    read_a = gr.Button("↓ Read alpha", elem_id="supermerger_mbw_read_alpha")
                    read_b = gr.Button("↓ Read beta", elem_id="supermerger_mbw_read_beta")
                with gr.Row():
                    range_lo = gr.Number(-1.0, label="Slider minimum", elem_id="supermerger_mbw_min")
                    range_hi = gr.Number(2.0, label="Slider maximum", elem_id="supermerger_mbw_max")
                sliders = []
                visible = set(mbw.visible_blocks(start_arch))
                with gr.Row(elem_id="supermerger_mbw_sliders", elem_classes=["sm-sliders"]):
                    for block in mbw.SLIDER_BLOCKS:
                        sliders.append(gr.Slider(-1.0, 2.0, value=0.5, step=0.0001, label=block, min_width=104,
                                                 visible=block in visible,
                                                 elem_id=f"supermerger_mbw_slider_{block}"))
                with gr.Row():
                    helper_value = gr.Slider(-1.0, 2.0, value=0.5, step=0.0001, label="Helper value",
                                             elem_id="supermerger_helper_value")
                    helper_groups = gr.CheckboxGroup(list(mbw.GROUPS), value=["IN", "OUT"], label="Block groups",
                                                     elem_id="supermerger_helper_groups")
                    helper_op = gr.Radio(list(mbw.OPERATIONS), value="Set", label="Operation",
                                         elem_id="supermerger_helper_op")
                    helper_btn = gr.Button("Apply to sliders", elem_id="supermerger_helper_apply")
                with gr.Row():
                    quick = [gr.Button(str(v), elem_id=f"supermerger_helper_quick_{i}", min_width=40)
                             for i, v in enumerate(mbw.QUICK_VALUES)]
                with gr.Row():
                    preset_name = gr.Textbox("", label="Save sliders as user preset", placeholder="name",
                                             elem_id="supermerger_preset_name")
                    preset_save = gr.Button("Save preset", elem_id="supermerger_preset_save")
                preset_msg = gr.Markdown("", elem_id="supermerger_preset_msg")

            with gr.Accordion("Elemental merge", open=False, elem_id="supermerger_elemental_accordion"):
                comps["elemental"] = gr.Textbox(D["elemental"], lines=3, label="Blocks:Elements:Ratio, ...",
                                                placeholder="OUT03 OUT04:attn2 attn1.to_out:0.5",
                                                elem_id="supermerger_elemental")
                comps["extended_xl"] = gr.Checkbox(D["extended_xl"], label="use extended XL (SDXL: blocks are the "
                                                   "110 sub-block IDs such as IN715, MID10, OUT9)",
                                                   elem_id="supermerger_extended_xl")
                elemental_check = gr.Textbox("", label="Check", interactive=False, lines=3,
                                             elem_id="supermerger_elemental_check")

            with gr.Accordion("Include / Exclude, Adjust", open=False):
                with gr.Row():
                    comps["filter_mode"] = gr.Radio(list(forms.FILTER_MODES), value=D["filter_mode"],
                                                    label="Include / Exclude", elem_id="supermerger_filter_mode")
                    comps["filter_text"] = gr.Textbox("", label="Blocks and elements (e.g. IN01 OUT02 attn2 VAE)",
                                                      elem_id="supermerger_filter_text")
                comps["adjust"] = gr.Textbox("", label="Adjust: IN,OUT,OUT2,Contrast,Brightness,COL1,COL2,COL3",
                                             placeholder="0,0,0,0,0,0,0,0", elem_id="supermerger_adjust")

            with gr.Accordion("Let the dice roll", open=False):
                with gr.Row():
                    comps["dice_mode"] = gr.Dropdown(list(RANDOM_MODES), value=D["dice_mode"], label="Random mode",
                                                     elem_id="supermerger_dice_mode")
                    comps["dice_targets"] = gr.CheckboxGroup(["alpha", "beta"], value=D["dice_targets"],
                                                             label="Targets", elem_id="supermerger_dice_targets")
                    comps["merge_seed"] = gr.Number(D["merge_seed"], label="Merge seed (-1: draw)", precision=0,
                                                    elem_id="supermerger_merge_seed")
                comps["dice_custom"] = gr.Textbox(D["dice_custom"], label="Custom tokens (mode custom)",
                                                  elem_id="supermerger_dice_custom")
                with gr.Row():
                    comps["dice_upper"] = gr.Textbox(D["dice_upper"], label="Upper (X) / midpoint (D)")
                    comps["dice_lower"] = gr.Textbox(D["dice_lower"], label="Lower (X) / range (D)")
                    comps["dice_clamp_upper"] = gr.Textbox(D["dice_clamp_upper"], label="Clamp upper")
                    comps["dice_clamp_lower"] = gr.Textbox(D["dice_clamp_lower"], label="Clamp lower")
                    comps["dice_round"] = gr.Number(D["dice_round"], label="Round (decimals)", precision=0)

            with gr.Accordion("Save", open=False, elem_id="supermerger_save_accordion"):
                with gr.Row():
                    comps["save"] = gr.Checkbox(D["save"], label="save model after merging",
                                                elem_id="supermerger_save")
                    comps["save_format"] = gr.Radio(list(forms.SAVE_FORMATS), value=D["save_format"], label="Format",
                                                    elem_id="supermerger_save_format")
                    comps["dtype"] = gr.Dropdown(list(DTYPE_CHOICES), value=D["dtype"], label="Precision",
                                                 elem_id="supermerger_dtype")
                with gr.Row():
                    comps["prune"] = gr.Checkbox(D["prune"], label="prune (drop EMA and buffers)")
                    comps["overwrite"] = gr.Checkbox(D["overwrite"], label="overwrite")
                    comps["reset_clip_ids"] = gr.Checkbox(D["reset_clip_ids"], label="reset CLIP ids")
                    comps["metadata"] = gr.Checkbox(D["metadata"], label="save metadata",
                                                    elem_id="supermerger_save_metadata")
                with gr.Row():
                    comps["custom_name"] = gr.Textbox("", label="Custom name (optional)",
                                                      elem_id="supermerger_custom_name")
                    comps["bake_vae"] = gr.Dropdown([forms.NO_VAE] + _vaes(ctx), value=forms.NO_VAE,
                                                    label="Bake in VAE", elem_id="supermerger_bake_vae")
                gr.Markdown("*save metadata* writes the recipe, the input models' names and hashes and "
                            "`modelspec.*` fields into a .safetensors file (so the merge can be replayed); "
                            "without it the file says only `format: pt`.")
                save_current = gr.Button("Save current merge", elem_id="supermerger_save_current")

            gen = _gen_section(ctx)

        with gr.Column(scale=2, elem_id="supermerger_output"):
            gallery = gr.Gallery(label="Output", elem_id="supermerger_gallery", **compat.gallery_kwargs(2, 420))
            infotext = gr.Textbox("", label="Infotext", lines=6, interactive=False, elem_id="supermerger_infotext")

    for name in forms.MERGE_FIELDS:
        reg(f"merge.{name}", comps[name])
    for name in forms.GEN_FIELDS:
        reg(f"merge.gen.{name}", gen[name])
    for i, block in enumerate(mbw.SLIDER_BLOCKS):
        reg(f"merge.slider.{block}", sliders[i])
    for name, comp in (("status", status), ("gallery", gallery), ("infotext", infotext), ("merge", merge_btn),
                       ("gen", gen_btn), ("merge_gen", merge_gen_btn), ("stop", stop_btn), ("arch", arch_state),
                       ("elemental_check", elemental_check), ("preset", preset)):
        reg(f"merge.{name}", comp)
    ctx.merge_inputs = [comps[n] for n in forms.MERGE_FIELDS]
    ctx.gen_inputs = [gen[n] for n in forms.GEN_FIELDS]
    ctx.gallery, ctx.infotext, ctx.status = gallery, infotext, status

    for button, value in zip(quick, mbw.QUICK_VALUES):
        button.click(lambda v=value: v, None, helper_value)

    def on_range(lo, hi):
        if lo is None or hi is None or not lo < hi:
            return [compat.update()] * (len(sliders) + 1)
        return [compat.update(minimum=lo, maximum=hi)] * (len(sliders) + 1)

    for box in (range_lo, range_hi):
        box.change(on_range, [range_lo, range_hi], sliders + [helper_value])
    _wire_models(ctx, comps, refresh, arch_state, arch_md, sliders, preset, elemental_check)
    _wire_sliders(comps, calc_info)
    _wire_mbw(comps, arch_state, sliders, preset, set_a, set_b, read_a, read_b, helper_value, helper_groups,
              helper_op, helper_btn, preset_name, preset_save, preset_msg)
    _wire_actions(ctx, merge_btn, gen_btn, merge_gen_btn, stop_btn, save_current, comps)
    from . import xyplot_section

    xyplot_section.build(ctx)  # the XYZ Plot accordion, under the merge controls


# -- sections -------------------------------------------------------------------------------------
def _gen_section(ctx: UIContext) -> dict:
    d = ctx.gen_defaults
    samplers = _samplers(ctx) or [d.sampler]
    g: dict[str, object] = {}
    with gr.Accordion("Generation parameters", open=True, elem_id="supermerger_gen_accordion"):
        g["prompt"] = gr.Textbox(d.prompt, label="Prompt", lines=2, elem_id="supermerger_prompt")
        g["negative_prompt"] = gr.Textbox(d.negative_prompt, label="Negative prompt", lines=1,
                                          elem_id="supermerger_negative_prompt")
        with gr.Row():
            g["sampler"] = gr.Dropdown(samplers, value=d.sampler if d.sampler in samplers else samplers[0],
                                       label="Sampling method", elem_id="supermerger_sampler")
            g["scheduler"] = gr.Dropdown(_schedulers(), value=d.scheduler, label="Schedule type",
                                         elem_id="supermerger_scheduler", **compat.dropdown_kwargs(custom=True))
            g["steps"] = gr.Slider(1, 150, value=d.steps, step=1, label="Steps", elem_id="supermerger_steps")
            g["cfg_scale"] = gr.Slider(0.0, 30.0, value=d.cfg_scale, step=0.5, label="CFG scale",
                                       elem_id="supermerger_cfg")
        with gr.Row():
            g["width"] = gr.Slider(64, 2048, value=d.width, step=8, label="Width", elem_id="supermerger_width")
            g["height"] = gr.Slider(64, 2048, value=d.height, step=8, label="Height", elem_id="supermerger_height")
            g["seed"] = gr.Number(d.seed, label="Seed (-1: random)", precision=0, elem_id="supermerger_seed")
            g["batch_size"] = gr.Slider(1, 8, value=d.batch_size, step=1, label="Batch size",
                                        elem_id="supermerger_batch_size")
            g["batch_count"] = gr.Slider(1, 100, value=d.batch_count, step=1, label="Batch count",
                                         elem_id="supermerger_batch_count")
        with gr.Row():
            g["enable_hr"] = gr.Checkbox(d.enable_hr, label="Hires. fix", elem_id="supermerger_enable_hr")
            g["hr_upscaler"] = gr.Dropdown(["Latent", "Latent (nearest)", "Latent (bilinear)"], value=d.hr_upscaler,
                                           label="Upscaler", elem_id="supermerger_hr_upscaler",
                                           **compat.dropdown_kwargs(custom=True))
            g["hr_scale"] = gr.Slider(1.0, 4.0, value=d.hr_scale, step=0.05, label="Upscale by")
            g["hr_second_pass_steps"] = gr.Slider(0, 150, value=d.hr_second_pass_steps, step=1, label="Hires steps")
            g["denoising_strength"] = gr.Slider(0.0, 1.0, value=d.denoising_strength, step=0.01,
                                                label="Denoising strength")
        # not a generation parameter: the action draws the ID after generating (the infotext always has it)
        ctx.components["merge.draw_id"] = gr.Checkbox(False, label="draw the merge ID on the images",
                                                      elem_id="supermerger_draw_id")
    return g


def _calc_info(name: str) -> str:
    cm = CALCMODES.get(name)
    if cm is None:
        return ""
    return f"**{cm.id}**: {cm.summary}. _{describe(cm)}_"


def _arch_note(arch_id: str) -> str:
    a = archmod.get(arch_id)
    return f"Sliders for **{a.label}** ({a.n_blocks} blocks, from model A)."


def _vaes(ctx: UIContext) -> list[str]:
    try:
        return ctx.host.list_vaes()
    except Exception:  # noqa: BLE001
        return []


def _samplers(ctx: UIContext) -> list[str]:
    return ctx.samplers()


def _schedulers() -> list[str]:
    from ..hosts.samplers import SCHEDULE_TYPES

    return list(SCHEDULE_TYPES)


# -- wiring -----------------------------------------------------------------------------------------
def _wire_models(ctx, comps, refresh, arch_state, arch_md, sliders, preset, elemental_check):
    def on_refresh(a, b, c, vae):
        names = _models(ctx)
        vaes = [forms.NO_VAE] + _vaes(ctx)
        return [compat.update(choices=names, value=v if v in names else None) for v in (a, b, c)] + \
            [compat.update(choices=vaes, value=vae if vae in vaes else forms.NO_VAE)]

    pickers = [comps["model_a"], comps["model_b"], comps["model_c"], comps["bake_vae"]]
    refresh.click(on_refresh, pickers, pickers)

    def on_model_a(name, current):
        arch_id = arch_of(ctx, name) or current or "sd1"
        visible = set(mbw.visible_blocks(arch_id))
        choices = mbw.preset_choices(load_presets(), arch_id)
        return [arch_id, _arch_note(arch_id), compat.update(choices=choices, value=None)] + \
            [compat.update(visible=b in visible) for b in mbw.SLIDER_BLOCKS]

    comps["model_a"].change(on_model_a, [comps["model_a"], arch_state], [arch_state, arch_md, preset] + sliders)

    def on_elemental(text, a, b, arch_id, extended):
        try:
            recipe = forms.recipe_from_values({"model_a": a, "model_b": b, "extended_xl": extended},
                                              ctx.model_path) if a and b else None
        except SuperMergerError as e:
            return "Error: " + ctx.message(e)
        if recipe is None and extended:
            recipe = Recipe(extended_xl=True)  # no models yet: the text is still checked against the extended IDs
        return forms.elemental_check(text, recipe, _plan_safetensors, arch_id or "sd1")

    inputs = [comps["elemental"], comps["model_a"], comps["model_b"], arch_state, comps["extended_xl"]]
    for source in ("elemental", "model_a", "model_b", "extended_xl"):
        comps[source].change(on_elemental, inputs, elemental_check, **_one_check_at_a_time())


def _one_check_at_a_time() -> dict:
    """The live check's events run one after another, in the order they were triggered (so an older
    check never overwrites a newer one), and only the latest of a burst of keystrokes runs."""
    if compat.GRADIO_MAJOR < 4:
        return {"show_progress": False}
    return {"show_progress": "hidden", "trigger_mode": "always_last", "concurrency_id": "supermerger_check",
            "concurrency_limit": 1}


def _plan_safetensors(recipe):
    """plan_merge for the live check, on safetensors headers only (a .ckpt would be loaded whole)."""
    from ..api import plan_merge
    from ..errors import ModelFileError

    for path in (recipe.model_a, recipe.model_b):
        if not str(path).lower().endswith(".safetensors"):
            raise ModelFileError(f"{Path(str(path)).name}: the live check reads only .safetensors headers.",
                                 "The merge itself checks the text.")
    return plan_merge(recipe)


def _wire_sliders(comps, calc_info):
    """alpha / beta / gamma are enabled only where the mode and calcmode use them (model C's label says
    so); with MBW on, the weight lists replace alpha and beta."""
    def on_mode(mode, calcmode, use_mbw):
        try:
            use = forms.slider_use(mode, calcmode)
        except SuperMergerError:
            return [compat.update()] * 5
        return [compat.update(interactive=not use_mbw), compat.update(interactive=use.beta and not use_mbw),
                compat.update(interactive=use.gamma),
                compat.update(label="Model C" if use.model_c else MODEL_C_UNUSED),
                _calc_info(calcmode)]

    inputs = [comps["mode"], comps["calcmode"], comps["use_mbw"]]
    outs = [comps["alpha"], comps["beta"], comps["gamma"], comps["model_c"], calc_info]
    for name in ("mode", "calcmode", "use_mbw"):
        comps[name].change(on_mode, inputs, outs)


def _wire_mbw(comps, arch_state, sliders, preset, set_a, set_b, read_a, read_b, helper_value, helper_groups,
              helper_op, helper_btn, preset_name, preset_save, preset_msg):
    n = len(sliders)

    def to_text(arch_id, *values):
        return mbw.sliders_to_text(values, arch_id or "sd1")

    set_a.click(to_text, [arch_state] + sliders, comps["mbw_alpha"])
    set_b.click(to_text, [arch_state] + sliders, comps["mbw_beta"])

    def from_text(text, arch_id, *values):
        try:
            return mbw.text_to_sliders(text, arch_id or "sd1", load_presets(), values) + [""]
        except SuperMergerError as e:
            return list(values) + ["Error: " + forms.message(e)]

    read_a.click(from_text, [comps["mbw_alpha"], arch_state] + sliders, sliders + [preset_msg])
    read_b.click(from_text, [comps["mbw_beta"], arch_state] + sliders, sliders + [preset_msg])
    preset.change(lambda name, arch_id, *values: from_text(name, arch_id, *values) if name else
                  list(values) + [""], [preset, arch_state] + sliders, sliders + [preset_msg])

    def helper(value, groups, op, arch_id, *values):
        return mbw.apply_helper(values, groups or [], op, float(value), arch_id or "sd1")

    helper_btn.click(helper, [helper_value, helper_groups, helper_op, arch_state] + sliders, sliders)

    def save(name, arch_id, *values):
        try:
            path = save_user_preset(str(name or "").strip(), mbw.sliders_to_text(values, arch_id or "sd1"))
        except SuperMergerError as e:
            return "Error: " + forms.message(e), compat.update()
        choices = mbw.preset_choices(load_presets(), arch_id or "sd1")
        return f"Preset {name!r} saved in {path}.", compat.update(choices=choices)

    preset_save.click(save, [preset_name, arch_state] + sliders, [preset_msg, preset])
    assert n == len(mbw.SLIDER_BLOCKS)


def _wire_actions(ctx: UIContext, merge_btn, gen_btn, merge_gen_btn, stop_btn, save_current, comps):
    n_merge, n_gen = len(ctx.merge_inputs), len(ctx.gen_inputs)
    inputs = ctx.merge_inputs + ctx.gen_inputs + [ctx.components["merge.draw_id"]]
    outputs = [ctx.gallery, ctx.infotext, ctx.status]

    def run(do_merge: bool, do_gen: bool, values, progress):
        return run_action(ctx, do_merge, do_gen, values[:n_merge], values[n_merge:n_merge + n_gen], progress,
                          draw_id=bool(values[n_merge + n_gen]))

    def do_merge(*values, progress=gr.Progress()):
        return run(True, False, values, progress)

    def do_gen(*values, progress=gr.Progress()):
        return run(False, True, values, progress)

    def do_merge_gen(*values, progress=gr.Progress()):
        return run(True, True, values, progress)

    merge_btn.click(do_merge, inputs, outputs)
    gen_btn.click(do_gen, inputs, outputs)
    merge_gen_btn.click(do_merge_gen, inputs, outputs)
    stop_btn.click(ctx.request_stop, None, None, queue=False)

    def do_save_current(*values):
        try:
            if not ctx.merge_is_live() or ctx.last_recipe is None:
                return status_text(ctx) + ("\nNothing to save: the live model is not a merge from this tab "
                                           "(none yet, or another checkpoint, the XYZ plot or the LoRA tab replaced it); merge first.")
            with ctx.lock:
                path = save_merge(ctx, ctx.last_recipe, ctx.merge_values(values))
            return status_text(ctx) + f"\nMerged model saved in {path}"
        except SuperMergerError as e:
            return status_text(ctx) + "\nError: " + ctx.message(e)

    save_current.click(do_save_current, ctx.merge_inputs, ctx.status)

    def on_select(evt: gr.SelectData):
        """The infotext of the image clicked in the gallery."""
        index = evt.index if isinstance(evt.index, int) else 0
        return ctx.last_infotexts[index] if 0 <= index < len(ctx.last_infotexts) else compat.update()

    ctx.gallery.select(on_select, None, ctx.infotext)


__all__ = ["build", "arch_of", "merge_now", "run_action", "save_merge", "status_text"]

"""`supermerger gen` (merge, then generate with the merge at once, no model file written) and
`supermerger demo` (the same on the built-in tiny demo models).

Images are PNGs with the infotext in their ``parameters`` text chunk, as the WebUI writes them:
the ``Model`` field ends in `` ID <n>`` (the merge's history ID) and ``SuperMerger recipe`` holds the
recipe; ``supermerger history ids IMAGE.png`` reads the ID back.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import textwrap
import time
from pathlib import Path

from .errors import RecipeError, SuperMergerError

PIP_STANDALONE = ('pip install "diffusers>=0.30" "transformers>=4.40" "accelerate>=0.26" Pillow safetensors '
                  '&& pip install --no-deps open-clip-torch')

GEN_EXAMPLES = textwrap.dedent("""\
    examples:
      supermerger gen -a A.safetensors -b B.safetensors --alpha 0.3 --prompt "a cat" --seed 1
      supermerger gen --models-dir ~/models -a A.safetensors -b B.safetensors --mbw-alpha GRAD_V --prompt "a cat" \\
          --negative-prompt "blurry" --steps 20 --cfg 7 --sampler "DPM++ 2M" --scheduler Karras --draw-id
      supermerger gen --recipe recipe.json --prompt "a cat" --seed 1 --batch-size 2 --batch-count 2 --outdir out
      supermerger gen --from-history -1 --models-dir ~/models --prompt "a cat"
    """)

NOISE_NOTE = ("The demo models have random weights, so their images are noise: this shows that merging and "
              "generating work, not what a merge looks like.")


def real_models_hint() -> str:
    return textwrap.dedent("""\
        To merge and generate with real models:
          supermerger gen --model-a /path/to/A.safetensors --model-b /path/to/B.safetensors --alpha 0.5 \\
              --prompt "a photo of a cat" --seed 1 --width 512 --height 512 --steps 20
        or keep them in a folder and name them: --models-dir ~/models -a A.safetensors -b B.safetensors
        (inside the WebUI or Forge, SuperMerger uses the WebUI's own model folders).""")


def add_parsers(sub) -> None:
    from .cli import _add_merge_args

    g = sub.add_parser("gen", help="merge and generate images with the merge at once (no model file written)",
                       description="Merge checkpoints into a diffusers pipeline in memory and generate with it "
                                   "(txt2img, standalone, offline). PNGs carry the WebUI's infotext with the merge's "
                                   "history ID and recipe. Without any model, uses the built-in demo models.",
                       epilog=GEN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_merge_args(g, gen=True)
    _add_image_args(g, size=512, steps=20, prompt="", seed=-1)
    d = sub.add_parser("demo", help="merge the two built-in demo models and generate an image (no models needed)",
                       description="Merge the two built-in tiny demo models (random weights; made on first use in "
                                   "the data folder) and generate one small image from the merge. " + NOISE_NOTE)
    d.add_argument("--sdxl", action="store_true", help="use the SDXL-layout demo models (default: SD1)")
    d.add_argument("--alpha", type=float, default=0.5, help="the merge ratio (default 0.5)")
    d.add_argument("--no-history", action="store_true", help="do not record the merge in the merge history")
    d.add_argument("--device", help="cpu (default) or cuda")
    _add_image_args(d, size=128, steps=4, prompt="a photo of a cat", seed=1)


def _add_image_args(p: argparse.ArgumentParser, size: int, steps: int, prompt: str, seed: int) -> None:
    g = p.add_argument_group("image")
    g.add_argument("--prompt", default=prompt, help=f"the prompt (default {prompt!r})")
    g.add_argument("--negative-prompt", default="", help="the negative prompt")
    g.add_argument("--seed", type=int, default=seed, help=f"image seed; -1 draws one (default {seed}); image k of "
                   "a batch uses seed + k")
    g.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")
    g.add_argument("--cfg", "--cfg-scale", dest="cfg", type=float, default=7.0, help="CFG scale (default 7)")
    g.add_argument("--sampler", default="Euler a", help="a WebUI sampler name: Euler a (default), Euler, DPM++ 2M, "
                   "DDIM, ... (the old '... Karras' names work too)")
    g.add_argument("--scheduler", "--schedule-type", dest="scheduler", default="Automatic",
                   help="schedule type: Automatic (default), Karras, Exponential, ...")
    g.add_argument("--width", type=int, default=size, help=f"width in pixels, a multiple of 8 (default {size})")
    g.add_argument("--height", type=int, default=size, help=f"height in pixels, a multiple of 8 (default {size})")
    g.add_argument("--batch-size", type=int, default=1, help="images per batch (default 1)")
    g.add_argument("--batch-count", type=int, default=1, help="batches (default 1)")
    g.add_argument("--clip-skip", type=int, default=1, help="the WebUI's clip skip (default 1)")
    g.add_argument("--draw-id", action="store_true", help="write 'ID <n>' (the merge's history ID) top-left on each "
                   "image, as the original does")
    g.add_argument("--outdir", metavar="DIR", help="where the PNGs go (default: outputs/ in the data folder)")


# -- checks -------------------------------------------------------------------------------------------
def check_standalone() -> None:
    """A clear message (which pip command to run) when the standalone host's libraries are missing."""
    missing = [m for m in ("diffusers", "transformers", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        names = ", ".join("Pillow" if m == "PIL" else m for m in missing)
        raise SuperMergerError(f"Generating needs the standalone host's libraries, and {names} "
                               f"{'is' if len(missing) == 1 else 'are'} not installed.",
                               f'Install them: {PIP_STANDALONE} (in a checkout: pip install -e ".[standalone]" '
                               "&& pip install --no-deps open-clip-torch).")
    from .hosts.clip_tokenizer import find_bpe_file

    find_bpe_file()
    # transformers warns about torchvision (an image processor the pipelines here never use)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _image_params(args):
    from .hosts import GenParams
    from .hosts import samplers

    for name in ("width", "height"):
        v = getattr(args, name)
        if v < 8 or v % 8:
            raise RecipeError(f"--{name} {v}: the size must be a positive multiple of 8.")
    for name in ("steps", "batch_size", "batch_count", "clip_skip"):
        if getattr(args, name) < 1:
            raise RecipeError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)}).")
    samplers.resolve(args.sampler, args.scheduler)  # an unknown name fails here, before the merge
    return GenParams(prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
                     cfg_scale=args.cfg, sampler=args.sampler, scheduler=args.scheduler, width=args.width,
                     height=args.height, batch_size=args.batch_size, batch_count=args.batch_count,
                     clip_skip=args.clip_skip)


def _find_in_dirs(recipe, dirs):
    """Model names not found as given, looked up in the --models-dir folders."""
    changes = {}
    for field in ("model_a", "model_b", "model_c", "bake_vae"):
        value = getattr(recipe, field)
        if not value or Path(value).exists():
            continue
        for d in dirs or ():
            folder = Path(d).expanduser()
            candidates = [folder / value] + [folder / (value + ext) for ext in (".safetensors", ".ckpt")]
            found = next((c for c in candidates if c.is_file()), None)
            if found is not None:
                changes[field] = str(found)
                break
        else:
            where = f" (looked in {', '.join(map(str, dirs))})" if dirs else ""
            raise SuperMergerError(f"Model {value!r} was not found{where}.",
                                   "Give a path to the file, or the folder that holds it with --models-dir.")
    return recipe.replace(**changes) if changes else recipe


# -- running -------------------------------------------------------------------------------------------
def _outdir(args) -> Path:
    from .paths import data_dir

    folder = Path(args.outdir).expanduser() if args.outdir else data_dir() / "outputs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SuperMergerError(f"Cannot create the output folder {str(folder)!r}: {e.strerror or e}.") from None
    return folder


def _merge_and_generate(recipe, params, args, *, device: str):
    """Merge into a fresh standalone host, generate, write the PNGs; returns (result, paths, seconds)."""
    from .hosts.diffusers_host import DiffusersHost
    from .hosts.mergeinfo import draw_id, save_images

    dtype = "float16" if device.startswith("cuda") else "float32"
    host = DiffusersHost(device=device, dtype=dtype, cache=False)
    t0 = time.perf_counter()
    result = host.merge_and_load(recipe, history=not args.no_history)
    t_merge = time.perf_counter() - t0
    gen = host.generate(params)
    images = gen.images
    if args.draw_id and result.history_id is not None:
        images = [draw_id(image, result.history_id) for image in images]
    written = save_images(_outdir(args), images, gen.infotexts, gen.seeds)
    return result, written, (t_merge, gen.seconds)


def recipe_and_params(args):
    """The recipe and the image parameters of `gen`-like options; the demo models (and images sized
    for them) when no model is named."""
    from .cli import _demo_models, _recipe_from_args

    params = _image_params(args)
    recipe = _recipe_from_args(args)
    if not recipe.model_a and not recipe.model_b and not args.recipe and not args.recipe_from \
            and args.from_history is None:
        a, b = _demo_models()
        recipe = recipe.replace(model_a=a, model_b=b)
        print(f"No models given: using the built-in demo models (tiny, random weights: the images are noise)\n"
              f"  {a}\n  {b}")
        if (params.width, params.height, params.steps) == (512, 512, 20):  # the defaults, sized for real models
            params = params.with_(width=128, height=128, steps=4)
            print("  images 128x128, 4 steps, as `supermerger demo` (give --width/--height/--steps to change)")
    elif args.from_history is None:
        recipe = _find_in_dirs(recipe, args.models_dir)
    return recipe, params


def cmd_gen(args) -> int:
    from .api import plan_merge

    check_standalone()
    recipe, params = recipe_and_params(args)
    plan = plan_merge(recipe)
    recipe = plan.recipe  # with the seed drawn for random ratios
    for s in plan.sources.values():
        s.close()
    for line in plan.summary_lines():
        print(line)
    if args.save_recipe:
        from .io.atomic import atomic_write_text

        atomic_write_text(args.save_recipe, recipe.to_json())
        print(f"recipe saved : {args.save_recipe}")
    result, written, (t_merge, t_gen) = _merge_and_generate(recipe, params, args, device=recipe.device or "cpu")
    _report(result, written, t_merge, t_gen)
    return 0


def _report(result, written, t_merge, t_gen) -> None:
    for n in result.notices:
        print(f"notice: {n}")
    if result.history_id is not None:
        print(f"history ID   : {result.history_id} (written into each image's infotext; "
              f"supermerger history show {result.history_id})")
    print(f"merged in {t_merge:.1f} s, generated {len(written)} image{'s' if len(written) != 1 else ''} "
          f"in {t_gen:.1f} s:")
    for p in written:
        print(f"  {p}")


def cmd_demo(args) -> int:
    from .cli import _demo_models
    from .merge.recipe import Recipe

    check_standalone()
    params = _image_params(args)
    arch = "sdxl" if args.sdxl else "sd1"
    t0 = time.perf_counter()
    a, b = _demo_models(arch)
    print(f"demo models ({'SDXL' if args.sdxl else 'SD1'} layout, tiny, random weights), in {Path(a).parent}:\n"
          f"  {Path(a).name}\n  {Path(b).name}")
    recipe = Recipe(model_a=a, model_b=b, alpha=args.alpha, device=args.device or "cpu")
    args.draw_id = True
    result, written, (t_merge, t_gen) = _merge_and_generate(recipe, params, args, device=recipe.device)
    print(f"merge        : {result.name}")
    _report(result, written, t_merge, t_gen)
    print(f"(total {time.perf_counter() - t0:.1f} s)")
    print()
    print(textwrap.fill(NOISE_NOTE + " The merge's history ID is drawn top-left and written into the PNG's "
                        "infotext with the recipe.", 100))
    print()
    print(real_models_hint())
    sys.stdout.flush()
    return 0

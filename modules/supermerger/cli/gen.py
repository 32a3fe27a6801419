"""`supermerger gen` (merge, then generate with the merge at once, no model file written) and
`supermerger demo` (the same on the built-in tiny demo models).

Images are PNGs with the infotext in their ``parameters`` text chunk, as the WebUI writes them:
the ``Model`` field ends in `` ID <n>`` (the merge's history ID) and ``SuperMerger recipe`` holds the
recipe; ``supermerger history ids IMAGE.png`` reads the ID back.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from ..errors import SuperMergerError
from ..hosts.requirements import check_standalone
from ..merge.weights import finite_float
from .common import _add_image_args, _add_merge_args, _demo_models, _image_params, recipe_and_params


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
    d.add_argument("--alpha", type=finite_float, default=0.5, help="the merge ratio (default 0.5)")
    d.add_argument("--no-history", action="store_true", help="do not record the merge in the merge history")
    d.add_argument("--device", help="cpu (default) or cuda")
    _add_image_args(d, size=128, steps=4, prompt="a photo of a cat", seed=1)


# -- running -------------------------------------------------------------------------------------------


def _outdir(args) -> Path:
    from ..paths import data_dir

    folder = Path(args.outdir).expanduser() if args.outdir else data_dir() / "outputs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SuperMergerError(f"Cannot create the output folder {str(folder)!r}: {e.strerror or e}.") from None
    return folder


def _merge_and_generate(recipe, params, args, *, device: str):
    """Merge into a fresh standalone host, generate, write the PNGs; returns (result, paths, seconds)."""
    from ..hosts.diffusers_host import DiffusersHost
    from ..hosts.mergeinfo import draw_id, save_images

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


def cmd_gen(args) -> int:
    from ..api import plan_merge

    check_standalone()
    recipe, params = recipe_and_params(args)
    plan = plan_merge(recipe)
    recipe = plan.recipe  # with the seed drawn for random ratios
    for s in plan.sources.values():
        s.close()
    for line in plan.summary_lines():
        print(line)
    if args.save_recipe:
        from ..io.atomic import atomic_write_text

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
    from ..merge.recipe import Recipe

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

"""What several commands share: the parser class (one-line errors), the merge options (`merge`,
`gen`, `xyz`, `queue add`), the image options (`gen`, `demo`, `xyz`, `queue add`), the recipe built from
them (with --recipe / --recipe-from / --from-history and the dice-roll options), the demo models and
the merge progress bar.

Imports nothing of the command modules (supermerger.cli.*): they import from here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import RecipeError, SuperMergerError
from ..merge.weights import finite_float


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line and a pointer to --help (not the whole usage, which
    for `merge` is twenty lines that bury the one that matters)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\nRun `{self.prog} --help` for the options.\n")


def _add_merge_args(p: argparse.ArgumentParser, gen: bool = False) -> None:
    """The merge options; ``gen``: for `supermerger gen` (no output file; --seed is the image seed, so the
    merge's seed is --random-seed only)."""
    g = p.add_argument_group("models")
    g.add_argument("-a", "--model-a", help="model A (.safetensors or .ckpt); the base, whose dtypes are kept")
    g.add_argument("-b", "--model-b", help="model B")
    g.add_argument("-c", "--model-c", help="model C (Add difference, Triple sum, sum Twice); defaults to A")
    g = p.add_argument_group("how to merge")
    g.add_argument("-m", "--mode", help='weight_sum (default), add_difference, triple_sum, sum_twice, or the '
                   'original labels "Weight sum", "Add difference", "Triple sum", "sum Twice"')
    g.add_argument("--calcmode", metavar="NAME", help="calculation mode, default normal; the list is at the end of "
                   "this help (case, spaces and '_' do not matter: smoothadd_mt = \"smoothAdd MT\")")
    g.add_argument("--alpha", type=finite_float, help="alpha ratio (default 0.5)")
    g.add_argument("--beta", type=finite_float, help="beta ratio for Triple sum / sum Twice, and the calcmodes that use it "
                   "(tensor band start, extract, density of ties/dare) (default 0.25)")
    g.add_argument("--gamma", type=finite_float, help="gamma for calcmodes that use it (default 0.3)")
    g.add_argument("--mbw-alpha", metavar="WEIGHTS", help="block weights for alpha: 26 values (SD1/SD2), 20 (SDXL; "
                   "26 are converted) or a preset name (see `supermerger presets`); BASE first")
    g.add_argument("--mbw-beta", metavar="WEIGHTS", help="block weights for beta, same form")
    g.add_argument("--elemental", metavar="TEXT", help='elemental merge: "BLOCKS:ELEMENTS:RATIO,..." e.g. '
                   '"OUT03 OUT04:attn2 attn1.to_out:0.5"; or @FILE to read it from a file')
    g.add_argument("--extended-xl", action="store_true", default=None,
                   help="SDXL: elemental BLOCKS are the 110 extended XL IDs (IN715, MID10, OUT9, TIME, ...; "
                        "`supermerger blocks --arch sdxl` lists them)")
    g.add_argument("--time-embed-block", metavar="BLOCK", help="the block whose ratio the U-Net's time embedding "
                   "takes (default IN00); OUT11 replays block-weight merges of the original's releases that put it "
                   "there")
    g.add_argument("--include", metavar="LIST", help='merge only these blocks / key substrings, e.g. "IN04 OUT05 attn2"')
    g.add_argument("--exclude", metavar="LIST", help='keep these blocks / key substrings from A, e.g. "BASE VAE"')
    g.add_argument("--adjust", metavar="8 VALUES", help="IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3 detail/colour tweak")
    g.add_argument(*(("--random-seed",) if gen else ("--seed", "--random-seed")), dest="random_seed", type=int,
                   help="seed of every random draw (dice roll, plus random, dare); -1 draws one, which is recorded "
                   "in the output's recipe")
    g.add_argument("--device", help="cpu (default) or cuda")
    g = p.add_argument_group("let the dice roll (random block ratios, replayable from the seed)")
    g.add_argument("--random-mode", metavar="MODE", help="off, R, U, X, D, ER, EU, EX or custom: fill the weights with "
                   "this token (R 0..1, U -0.5..1.5, X between the limits, D midpoint±range/2, E*: per key)")
    g.add_argument("--random-targets", metavar="alpha,beta", help="which weights the random mode fills (default alpha)")
    g.add_argument("--random-custom", metavar="WEIGHTS", help="the weights for --random-mode custom, tokens and numbers "
                   "mixed (default U,0,...,0,R,...,R)")
    g.add_argument("--random-upper", metavar="LIST", help="upper limit for X, midpoint for D: one value or one per block")
    g.add_argument("--random-lower", metavar="LIST", help="lower limit for X, range for D; 0.2R0.5 = 0.2 with "
                   "probability 0.5, else 0")
    g.add_argument("--random-clamp-upper", metavar="LIST", help="every drawn block ratio is at most this (default 1)")
    g.add_argument("--random-clamp-lower", metavar="LIST", help="every drawn block ratio is at least this (default 0)")
    g.add_argument("--round", type=int, metavar="N", help="decimals of the drawn ratios (default 3)")
    g = p.add_argument_group("output" if not gen else "merged model")
    if gen:
        p.set_defaults(output=None, overwrite=None, dry_run=False, explain=False)
    else:
        g.add_argument("-o", "--output", help="output file (.safetensors or .ckpt); default: a name built from the "
                       "merge, in the current folder")
    g.add_argument("--dtype", choices=("fp16", "bf16", "fp32", "keep"), help="cast float tensors (default keep A's)")
    g.add_argument("--prune", action="store_true", default=None, help="keep only U-Net, text encoder and VAE keys")
    g.add_argument("--reset-clip-ids", action="store_true", default=None, help="rewrite CLIP position_ids as 0..76")
    g.add_argument("--bake-vae", metavar="VAE", help="replace the merged VAE by this VAE file")
    g.add_argument("--no-metadata", dest="metadata", action="store_false", default=None,
                   help="write no recipe, model names or hashes into the saved file (only format: pt); "
                        "such a file cannot be replayed with --recipe-from")
    if not gen:
        g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output file")
    g = p.add_argument_group("recipes and checks")
    g.add_argument("--recipe", metavar="R.json", help="read the recipe from a JSON file; other options override it")
    g.add_argument("--recipe-from", metavar="MERGED", help="replay the recipe stored in a merged .safetensors")
    g.add_argument("--from-history", metavar="ID", type=int, help="replay merge ID of the merge history (-1 = the "
                   "last, -2 = the one before); its models are found by hash; other options override")
    g.add_argument("--models-dir", metavar="DIR", action="append", help=(
        "a folder of checkpoints: model names not found as given are looked up there (and, with --from-history, "
        "the recorded models are searched there with its subfolders); repeatable") if gen else (
        "with --from-history: a folder (searched with its subfolders) where the recorded models may be; repeatable"))
    g.add_argument("--no-history", action="store_true", help="do not record this merge in the merge history")
    g.add_argument("--save-recipe", metavar="R.json", help="write the effective recipe as JSON")
    if not gen:
        g.add_argument("--dry-run", action="store_true", help="validate and print the plan; read no tensor, write "
                       "nothing")
        g.add_argument("--explain", action="store_true", help="print the ratio and rule that apply to every key")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_image_args(p: argparse.ArgumentParser, size: int, steps: int, prompt: str, seed: int) -> None:
    g = p.add_argument_group("image")
    g.add_argument("--prompt", default=prompt, help=f"the prompt (default {prompt!r})")
    g.add_argument("--negative-prompt", default="", help="the negative prompt")
    g.add_argument("--seed", type=int, default=seed, help=f"image seed; -1 draws one (default {seed}); image k of "
                   "a batch uses seed + k")
    g.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")
    g.add_argument("--cfg", "--cfg-scale", dest="cfg", type=finite_float, default=7.0, help="CFG scale (default 7)")
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


def _recipe_from_args(args) -> "Recipe":
    from ..api import recipe_from_file
    from ..merge.recipe import Recipe

    if sum(x is not None for x in (args.recipe, args.recipe_from, args.from_history)) > 1:
        raise SuperMergerError("Give only one of --recipe, --recipe-from and --from-history.")
    if args.from_history is not None:
        recipe = _recipe_from_history(args)
    else:
        recipe = Recipe.load(args.recipe) if args.recipe else recipe_from_file(args.recipe_from) if args.recipe_from \
            else Recipe()
    mapping = {"model_a": "model_a", "model_b": "model_b", "model_c": "model_c", "mode": "mode",
               "calcmode": "calcmode", "alpha": "alpha", "beta": "beta", "gamma": "gamma", "mbw_alpha": "mbw_alpha",
               "mbw_beta": "mbw_beta", "elemental": "elemental", "extended_xl": "extended_xl",
               "time_embed_block": "time_embed_block",
               "include": "include", "exclude": "exclude",
               "adjust": "adjust", "dtype": "dtype", "prune": "prune", "reset_clip_ids": "reset_clip_ids", "metadata": "metadata",
               "bake_vae": "bake_vae", "output": "output", "overwrite": "overwrite", "random_seed": "seed",
               "device": "device"}
    changes = {}
    for attr, field in mapping.items():
        value = getattr(args, attr)
        if value is not None:
            changes[field] = value
    if isinstance(changes.get("elemental"), str) and changes["elemental"].startswith("@"):
        path = Path(changes["elemental"][1:])
        try:
            changes["elemental"] = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SuperMergerError(f"Cannot read elemental file {str(path)!r}: {e.strerror or e}.") from None
    dice = _dice_from_args(args, recipe.random)
    if dice is not None:
        changes["random"] = dice
    if "include" in changes and recipe.exclude:
        changes["exclude"] = None
    if "exclude" in changes and recipe.include:
        changes["include"] = None
    recipe = recipe.replace(**changes)
    recipe.check_types("options")
    return recipe


def _recipe_from_history(args) -> "Recipe":
    from ..history import restore_detail

    given = {"A": args.model_a, "B": args.model_b, "C": args.model_c, "VAE": args.bake_vae}
    restored = restore_detail(args.from_history, args.models_dir or (), given)
    rec = restored.record
    print(f"history ID {rec.id} ({rec.time}): {rec.name}")
    for label, (path, how) in restored.found.items():
        print(f"  model {label:<3}: {path} ({how})")
    return restored.recipe


_DICE_OPTIONS = {"random_mode": "mode", "random_targets": "targets", "random_custom": "custom",
                 "random_upper": "upper", "random_lower": "lower", "random_clamp_upper": "clamp_upper",
                 "random_clamp_lower": "clamp_lower", "round": "round"}


def _dice_from_args(args, base: dict | None) -> dict | None:
    """The recipe's dice-roll settings with the --random-* options laid over them (None if none)."""
    given = {name: getattr(args, opt) for opt, name in _DICE_OPTIONS.items() if getattr(args, opt, None) is not None}
    if not given:
        return None
    return dict(base or {}, **given)


def _demo_models(arch: str = "sd1") -> tuple[str, str]:
    """The built-in demo models (tiny, random weights, the full CLIP vocabulary), made on first use."""
    from ..demo import demo_models

    return demo_models(arch)


def _image_params(args):
    from ..hosts import GenParams
    from ..hosts import samplers

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


def recipe_and_params(args):
    """The recipe and the image parameters of `gen`-like options; the demo models (and images sized
    for them) when no model is named."""
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


class _progress_bar:
    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="merging", file=sys.stderr,
                        dynamic_ncols=True)

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()

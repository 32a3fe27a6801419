"""The ``supermerger`` command line.

    supermerger merge --model-a A.safetensors --model-b B.safetensors --alpha 0.3 --output out.safetensors
    supermerger merge --recipe-from out.safetensors --output replay.safetensors
    supermerger merge --from-history -1 --models-dir /models --output again.safetensors
    supermerger history list | search WORDS | show ID
    supermerger gen --model-a A.safetensors --model-b B.safetensors --alpha 0.3 --prompt "a cat" --seed 1
    supermerger demo
    supermerger xyz --x "alpha:0.25,0.5,0.75" --y "seed:1,2" --prompt "a cat" --out grid.png
    supermerger queue add | list | run | rm
    supermerger lora to-checkpoint | merge | make | extract | dims | presets ...
    supermerger presets | blocks | calcmodes

Errors print one paragraph and exit with status 2 (bad input) or 1 (other problems); only bugs
show a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from .errors import SuperMergerError

EXAMPLES = textwrap.dedent("""\
    examples:
      supermerger merge -a A.safetensors -b B.safetensors --alpha 0.3 -o AB.safetensors
      supermerger merge -a A.safetensors -b B.safetensors -c C.safetensors --mode "Add difference" --alpha 1 -o out.safetensors
      supermerger merge -a A.safetensors -b B.safetensors --mbw-alpha GRAD_V -o out.safetensors
      supermerger merge -a A.safetensors -b B.safetensors --mbw-alpha "0,1,1,1,1,1,1,1,1,1,1,1,1,0.5,0,0,0,0,0,0,0,0,0,0,0,0" -o out.safetensors
      supermerger merge -a A.safetensors -b B.safetensors --elemental "OUT03 OUT04:attn2 attn1.to_out:0.5" --dry-run
      supermerger merge --recipe recipe.json --explain --dry-run
      supermerger merge --recipe-from merged.safetensors -o replayed.safetensors
      supermerger merge --from-history 42 --models-dir ~/models -o again.safetensors   (see `supermerger history`)
      supermerger merge -a A.safetensors -b B.safetensors -c C.safetensors --calcmode trainDifference --alpha 1 -o out.safetensors
      supermerger merge -a A.safetensors -b B.safetensors --random-mode R --seed -1 -o dice.safetensors
      supermerger merge            (no models: merges two built-in tiny demo models)
    """)


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
    g.add_argument("--alpha", type=float, help="alpha ratio (default 0.5)")
    g.add_argument("--beta", type=float, help="beta ratio for Triple sum / sum Twice, and the calcmodes that use it "
                   "(tensor band start, extract, density of ties/dare) (default 0.25)")
    g.add_argument("--gamma", type=float, help="gamma for calcmodes that use it (default 0.3)")
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


def _calcmode_list() -> str:
    """The calcmodes for the end of `merge --help`: one line each, from the registry."""
    from .merge.calcmodes import CALCMODES

    width = max(len(cm.id) for cm in CALCMODES.values()) + 2
    lines = ["", "calculation modes (--calcmode NAME; details: `supermerger calcmodes`, calcmode_en.md):"]
    lines += [f"  {cm.id:<{width}}{cm.summary}" for cm in CALCMODES.values()]
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line and a pointer to --help (not the whole usage, which
    for `merge` is twenty lines that bury the one that matters)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\nRun `{self.prog} --help` for the options.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="supermerger",
        description="SuperMerger: merge Stable Diffusion checkpoints (SD1.x, SD2.x, SDXL) with block weights, "
                    "elemental merge and calculation modes, streaming with little memory.",
        epilog="Run `supermerger merge --help` for every merge option.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    m = sub.add_parser("merge", help="merge two or three checkpoints into a file", epilog=EXAMPLES + _calcmode_list(),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Merge checkpoints. Without any model, merges two built-in tiny demo models.")
    _add_merge_args(m)
    sub.add_parser("presets", help="list the MBW weight presets (master and user file)")
    b = sub.add_parser("blocks", help="list the block IDs of an architecture, or of a model file's keys")
    b.add_argument("model", nargs="?", help="a checkpoint: list its keys with their block")
    b.add_argument("--arch", default=None, help="sd1, sd2 or sdxl")
    sub.add_parser("calcmodes", help="list the calculation modes")
    _add_lora_parser(sub)
    _add_history_parser(sub)
    _add_gen_parsers(sub)
    _add_ui_parser(sub)
    _add_xyz_parsers(sub)
    return parser


def _add_history_parser(sub) -> None:
    h = sub.add_parser("history", help="list, search and show recorded merges (every merge is recorded)",
                       description="The merge history: every merge gets an ID and a record (mergehistory.csv in "
                                   "the data folder). Replay one with `supermerger merge --from-history ID`.")
    h.set_defaults(history_parser=h)
    hs = h.add_subparsers(dest="history_command", metavar="ACTION")

    def paging(p):
        p.add_argument("--page", type=int, default=1, help="page number, 1 = newest (default 1)")
        p.add_argument("--per-page", type=int, default=20, help="records per page (default 20)")

    paging(hs.add_parser("list", help="the records, newest first, one page"))
    s = hs.add_parser("search", help="records whose text holds the words (case-insensitive), newest first")
    s.add_argument("words", nargs="*", help="words, each a substring of the record's text (names, models, hashes, "
                   "mode, weights, elemental, ...)")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--or", dest="how", action="store_const", const="or", help="any word matches (default)")
    how.add_argument("--and", dest="how", action="store_const", const="and", help="every word matches")
    s.add_argument("--model", metavar="NAME", help="only merges of a model whose name contains NAME or whose hash "
                   "starts with it")
    s.add_argument("--mode", help="only merges in this mode (weight_sum, \"Add difference\", ...)")
    s.add_argument("--calcmode", help="only merges with this calcmode")
    paging(s)
    sh = hs.add_parser("show", help="one record in full, with its recipe")
    sh.add_argument("id", type=int, help="the ID; -1 = the last merge, -2 = the one before")
    sh.add_argument("--json", action="store_true", help="print the record as JSON")
    st = hs.add_parser("stats", help="per-block mean and standard deviation of the alpha weights of some merges")
    st.add_argument("ids", nargs="+", help="IDs separated by spaces or commas, e.g. 12 15 -1 or 12,15,-1")
    ids = hs.add_parser("ids", help="the merge IDs written into PNG images' parameters (' ID <n>')")
    ids.add_argument("images", nargs="+", help="PNG files")
    imp = hs.add_parser("import", help="append the records of the original extension's mergehistory.csv")
    imp.add_argument("file", help="the original's mergehistory.csv")


def _recipe_from_args(args) -> "Recipe":
    from .api import recipe_from_file
    from .merge.recipe import Recipe

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
    from .history import restore_detail

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
    from .demo import demo_models

    return demo_models(arch)


def cmd_merge(args) -> int:
    from .api import merge, plan_merge

    recipe = _recipe_from_args(args)
    if not recipe.model_a and not recipe.model_b and not args.recipe and not args.recipe_from \
            and args.from_history is None:
        a, b = _demo_models()
        recipe = recipe.replace(model_a=a, model_b=b)
        print(f"No models given: merging the built-in demo models (tiny synthetic SD1 checkpoints)\n  {a}\n  {b}")
    plan = plan_merge(recipe)
    recipe = plan.recipe  # with the seed drawn for random ratios, so the merge below uses the same draws
    for line in plan.summary_lines():
        print(line)
    if args.explain:
        print()
        for line in plan.explain_lines():
            print(line)
    if args.save_recipe:
        from .io.atomic import atomic_write_text

        atomic_write_text(args.save_recipe, recipe.to_json())
        print(f"recipe saved : {args.save_recipe}")
    for s in plan.sources.values():
        s.close()
    output = recipe.output
    if output is None:
        from .merge.naming import default_filename

        output = default_filename(plan.name, variant=plan.variant, fp16=recipe.dtype == "fp16")
        print(f"output       : {output} (use --output to choose)")
    if args.dry_run:
        from .io.atomic import check_output_path

        check_output_path(output, bool(recipe.overwrite))  # the real run would refuse it: so does the dry run
        print("dry run: nothing was read or written.")
        return 0
    progress = None if args.quiet else _progress_bar()
    try:
        result = merge(recipe, output=output, progress=progress, history=not args.no_history)
    finally:
        if progress is not None:
            progress.close()
    for n in result.notices:
        if n not in plan.notices:
            print(f"notice: {n}")
    print(f"Merged model saved in {result.path} ({result.seconds:.1f} s)")
    if result.history_id is not None:
        print(f"history ID   : {result.history_id} (supermerger history show {result.history_id})")
    return 0


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


def cmd_presets(args) -> int:
    from .arch.presets import load_presets, user_presets_path

    for name, weights in load_presets().items():
        n = len(weights.split(","))
        print(f"{name:<28} ({n:2d}) {weights}")
    print(f"\nuser presets file: {user_presets_path()} (same format: NAME<TAB>w1,w2,...)")
    return 0


def cmd_blocks(args) -> int:
    from . import arch as archmod

    if args.model:
        from .io.sources import open_model

        with open_model(args.model) as src:
            a = archmod.detect(src.tensors, {k: v.shape for k, v in src.tensors.items()}, args.model)
            print(f"{args.model}: {a.label}")
            for key, info in src.tensors.items():
                print(f"{a.block_of(key):<6} {key:<90} {list(info.shape)} {info.dtype}")
        return 0
    archs = [archmod.get(args.arch)] if args.arch else list(archmod.architectures().values())
    for a in archs:
        print(f"{a.id:<5} {a.label:<7} {a.n_blocks} blocks: {' '.join(a.blocks)}")
        if a.fine_blocks:
            print(f"{'':<5} {'':<7} {len(a.fine_blocks)} extended: {' '.join(a.fine_blocks)}")
    return 0


def cmd_calcmodes(args) -> int:
    from .merge.calcmodes import CALCMODES, describe

    for cm in CALCMODES.values():
        print(f"{cm.id:<16} {cm.summary}")
        print(f"{'':<16}   {describe(cm)}")
    return 0


def cmd_history(args) -> int:
    from . import history

    action = args.history_command
    if action is None:
        args.history_parser.print_help()
        return 0
    hist = history.History()
    if action in ("list", "search"):
        q = " ".join(args.words) if action == "search" else ""
        page = hist.search(q, getattr(args, "how", None) or "or", getattr(args, "model", None),
                           getattr(args, "mode", None), getattr(args, "calcmode", None), args.page, args.per_page)
        _warn(hist.problems())
        if not page.records:
            if not hist.count():
                print(f"no merge recorded yet ({hist.path})")
            elif page.total:
                print(f"no result: page {page.page} is past the last page ({page.pages})")
            else:
                print("no result")
            return 0
        print(f"{'ID':>5}  {'time':<19}  {'mode':<14}  {'calcmode':<14}  name")
        for r in page.records:
            name = r.name if len(r.name) <= 90 else r.name[:89] + "…"
            print(f"{r.id:>5}  {r.time:<19}  {r.mode:<14}  {r.calcmode:<14}  {name}")
        more = f"; --page {page.page + 1} for older ones" if page.page < page.pages else ""
        print(f"page {page.page} of {page.pages} ({page.total} records, newest first){more}")
    elif action == "show":
        rec = hist.get(args.id)
        _warn(hist.problems())
        if args.json:
            print(json.dumps(rec.to_dict(), indent=2, ensure_ascii=False))
        else:
            from .history.table import detail_lines

            print("\n".join(detail_lines(rec)))
    elif action == "stats":
        print(history.weight_stats(",".join(args.ids), hist).text())
    elif action == "ids":
        found = history.ids_from_png(args.images)
        print(",".join(map(str, found)) if found else "no merge ID in these images")
    elif action == "import":
        records, notes = history.import_original(args.file, hist)
        _warn(notes)
        if records:
            print(f"imported {len(records)} records as IDs {records[0].id}-{records[-1].id}")
        else:
            print("nothing imported")
    return 0


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _add_lora_parser(sub) -> None:
    """`supermerger lora ...`: the LoRA tools; their options live in supermerger.lora.cli."""
    from .lora.cli import add_parser

    add_parser(sub)


def _add_gen_parsers(sub) -> None:
    """`supermerger gen` and `supermerger demo`: their options live in supermerger.gen_cli."""
    from .gen_cli import add_parsers

    add_parsers(sub)


def _add_ui_parser(sub) -> None:
    """`supermerger ui`: the standalone app; its options live in supermerger.ui.standalone (no gradio import)."""
    from .ui.standalone import add_parser

    add_parser(sub)


def _add_xyz_parsers(sub) -> None:
    """`supermerger xyz` and `supermerger queue`: their options live in supermerger.xyplot.cli."""
    from .xyplot.cli import add_parsers

    add_parsers(sub)


def cmd_xyz(args) -> int:
    from .xyplot.cli import cmd_xyz as run

    return run(args)


def cmd_queue(args) -> int:
    from .xyplot.cli import cmd_queue as run

    return run(args)


def cmd_ui(args) -> int:
    from .ui.standalone import run

    return run(args)


def cmd_gen(args) -> int:
    from .gen_cli import cmd_gen as run

    return run(args)


def cmd_demo(args) -> int:
    from .gen_cli import cmd_demo as run

    return run(args)


def cmd_lora(args) -> int:
    from .lora.cli import run

    return run(args)


THP_ENV = "THP_MEM_ALLOC_ENABLE"


def main(argv: list[str] | None = None) -> int:
    if argv is None and "torch" not in sys.modules:
        # Run as the program: let torch back its large CPU tensors with transparent huge pages.
        # A fresh 59 MB temporary otherwise costs ~22 ms of page faults (1.5 ns per value, more than
        # the arithmetic on it); with huge pages ~6 ms. torch reads this once, before its first
        # allocation, so it must be set before torch is imported; an explicit setting wins.
        os.environ.setdefault(THP_ENV, "1")
    code = _main(argv)
    if argv is None and "torch" in sys.modules:
        # Run as the program (not called with arguments from Python): skip the interpreter's
        # teardown of torch, which takes ~0.4 s — a sixth of a whole SD1.5 merge. Everything the
        # command wrote is closed and renamed already; only stdio buffers remain to flush.
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = {"merge": cmd_merge, "presets": cmd_presets, "blocks": cmd_blocks, "calcmodes": cmd_calcmodes,
               "history": cmd_history, "lora": cmd_lora, "gen": cmd_gen, "demo": cmd_demo,
               "ui": cmd_ui, "xyz": cmd_xyz, "queue": cmd_queue}[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        # the reader went away (`supermerger lora presets | head`): stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except SuperMergerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written.", file=sys.stderr)
        return 130

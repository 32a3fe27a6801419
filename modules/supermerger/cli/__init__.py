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

The package holds one module per command group: merge (`merge`), listings (`presets`, `blocks`,
`calcmodes`), history (`history`), lora (`lora`), gen (`gen`, `demo`), ui (`ui`), xyz (`xyz`, `queue`);
what they share (the merge and image options, the recipe from the options, the parser class) is in
supermerger.cli.common. Imports point one way: this package → its modules → common → the engine and
the UI; neither imports from supermerger.cli (only ``python -m supermerger`` and the ``supermerger``
console script call ``main``).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import SuperMergerError
from .common import _Parser
from .common import _recipe_from_args  # noqa: F401  (re-exported: tests build recipes from parsed options)


def build_parser() -> argparse.ArgumentParser:
    from . import gen, history, listings, lora, merge, ui, xyz

    parser = _Parser(
        prog="supermerger",
        description="SuperMerger: merge Stable Diffusion checkpoints (SD1.x, SD2.x, SDXL) with block weights, "
                    "elemental merge and calculation modes, streaming with little memory.",
        epilog="Run `supermerger merge --help` for every merge option.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    merge.add_parser(sub)         # merge
    listings.add_parsers(sub)     # presets, blocks, calcmodes
    lora.add_parser(sub)          # lora ...
    history.add_parser(sub)       # history ...
    gen.add_parsers(sub)          # gen, demo
    ui.add_parser(sub)            # ui (imports no gradio)
    xyz.add_parsers(sub)          # xyz, queue ...
    return parser


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
    handler = _handlers()[args.command]
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


def _handlers() -> dict:
    from . import gen, history, listings, lora, merge, ui, xyz

    return {"merge": merge.cmd_merge, "presets": listings.cmd_presets, "blocks": listings.cmd_blocks,
            "calcmodes": listings.cmd_calcmodes, "history": history.cmd_history, "lora": lora.cmd_lora,
            "gen": gen.cmd_gen, "demo": gen.cmd_demo, "ui": ui.cmd_ui, "xyz": xyz.cmd_xyz, "queue": xyz.cmd_queue}

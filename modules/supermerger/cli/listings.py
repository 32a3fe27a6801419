"""`supermerger presets`, `supermerger blocks` and `supermerger calcmodes`: what there is to choose from
(the MBW weight presets, the block IDs of an architecture or a model file, the calculation modes).
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    sub.add_parser("presets", help="list the MBW weight presets (master and user file)")
    b = sub.add_parser("blocks", help="list the block IDs of an architecture, or of a model file's keys")
    b.add_argument("model", nargs="?", help="a checkpoint: list its keys with their block")
    b.add_argument("--arch", default=None, help="sd1, sd2 or sdxl")
    sub.add_parser("calcmodes", help="list the calculation modes")


def cmd_presets(args) -> int:
    from ..arch.presets import load_presets, user_presets_path

    for name, weights in load_presets().items():
        n = len(weights.split(","))
        print(f"{name:<28} ({n:2d}) {weights}")
    print(f"\nuser presets file: {user_presets_path()} (same format: NAME<TAB>w1,w2,...)")
    return 0


def cmd_blocks(args) -> int:
    from .. import arch as archmod

    if args.model:
        from ..io.sources import open_model

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
    from ..merge.calcmodes import CALCMODES, describe

    for cm in CALCMODES.values():
        print(f"{cm.id:<16} {cm.summary}")
        print(f"{'':<16}   {describe(cm)}")
    return 0

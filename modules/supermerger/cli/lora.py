"""``supermerger lora ...``: the LoRA tools on the command line (wired in by ``supermerger.cli``)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from ..merge.weights import finite_float


EXAMPLES = textwrap.dedent("""\
    examples:
      supermerger lora to-checkpoint -m model.safetensors style.safetensors:0.8 detail.safetensors:0.5:OUTD -o out.safetensors
      supermerger lora to-checkpoint -m model.safetensors "a:1:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0" --lora-dir ~/loras --dry-run
      supermerger lora merge a.safetensors:1 b.safetensors:0.5 --same-to-strength -o ab.safetensors
      supermerger lora merge a.safetensors:1 b.safetensors:1 --dim auto --svd lowrank -o ab.safetensors
      supermerger lora make -a tuned.safetensors -b base.safetensors --dim 64 --conv-dim 32 -o diff.safetensors
      supermerger lora extract a.safetensors:1 b.safetensors:1 --alpha 1 --beta 1 --gamma 1 -o only_b.safetensors
      supermerger lora dims ~/loras --csv loradims.csv
    LoRA items are name[:ratio[:blocks]]; blocks = an LBW preset (`supermerger lora presets`) or 12/17/20/26 values.
    """)


MAX_LISTED = 20


def add_parser(sub) -> None:
    """Add the ``lora`` command and its sub-commands to the main parser's subparsers."""
    p = sub.add_parser("lora", help="LoRA tools: merge into a checkpoint, merge LoRAs, make / extract LoRAs, dims",
                       description="LoRA tools (kohya LoRA/LoCon, LyCORIS LoHa/LoKr, diffusers/PEFT; SD1, SD2, SDXL).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    lsub = p.add_subparsers(dest="lora_command", metavar="ACTION")

    def common(q, output_help: str) -> None:
        q.add_argument("-o", "--output", help=output_help)
        q.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        q.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        q.add_argument("--lora-dir", action="append", metavar="DIR",
                       help="folder to find LoRAs given by name (repeatable; default $SUPERMERGER_LORA_DIR)")

    def lora_items(q) -> None:
        q.add_argument("loras", nargs="+", metavar="LORA[:RATIO[:BLOCKS]]",
                       help="LoRA files or names with ratio and optional block weights; comma lists work too")

    def svd_opts(q) -> None:
        q.add_argument("--svd", choices=("full", "lowrank"), default="full",
                       help="full SVD (exact truncation, default) or randomised low-rank SVD (faster, seeded)")
        q.add_argument("--seed", type=int, default=0, help="seed of the low-rank SVD (default 0)")
        q.add_argument("--clamp-quantile", type=finite_float, default=0.99, metavar="Q",
                       help="clamp factors to this quantile of their values, as kohya does (default 0.99; 1 = off)")

    def save_opts(q) -> None:
        q.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16", help="save precision (fp16)")
        q.add_argument("--metadata", default="create new", metavar="MODE",
                       help='"create new" (default), "create new without output_name", "use first lora", '
                            '"save all" or "merge"')
        q.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), help="the LoRAs' model family (default: detected)")

    q = lsub.add_parser("to-checkpoint", help="merge LoRAs into a checkpoint (W + ratio·ΔW, with block weights)")
    q.add_argument("-m", "--model", required=True, help="the checkpoint (.safetensors or .ckpt)")
    lora_items(q)
    common(q, "output .safetensors (default: MODEL+LORA1+... in the current folder)")
    q.add_argument("--dtype", choices=("keep", "fp16", "bf16", "fp32"), default="keep",
                   help="dtype of the saved weights (default keep the model's; fp8 stays fp8)")
    q.add_argument("--strict", action="store_true", help="refuse LoRAs with modules the model does not have")
    q.add_argument("--dry-run", action="store_true", help="match and check everything, read no tensor, write nothing")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    q = lsub.add_parser("merge", help="merge LoRAs into one LoRA (sum, concat or SVD re-rank)")
    lora_items(q)
    common(q, "output .safetensors (default: the LoRA items joined by +)")
    q.add_argument("--mode", choices=("auto", "sum", "concat", "svd"), default="auto",
                   help="auto (default: sum, or SVD when --dim is given), sum (the original's), concat (exact, "
                        "dims add up), svd")
    q.add_argument("--dim", help="re-rank through SVD to this dim, or 'auto' (the largest, only where dims differ)")
    q.add_argument("--same-to-strength", action="store_true",
                   help="sum merge: each LoRA comes out at its ratio (sqrt on both factors, sign on down) "
                        "instead of ratio²")
    save_opts(q)
    svd_opts(q)

    q = lsub.add_parser("make", help="make a LoRA from two checkpoints: alpha·A − beta·B")
    q.add_argument("-a", "--model-a", required=True, help="model A, the tuned model")
    q.add_argument("-b", "--model-b", required=True, help="model B, the original")
    common(q, "output .safetensors (default lora_A-B.safetensors)")
    q.add_argument("--alpha", type=finite_float, default=1.0, help="multiplier of A (default 1)")
    q.add_argument("--beta", type=finite_float, default=1.0, help="multiplier of B (default 1)")
    q.add_argument("--dim", type=int, default=128, help="rank of the LoRA (default 128)")
    q.add_argument("--conv-dim", type=int, help="also extract the 3×3 convolutions at this rank (a LoCon)")
    q.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16", help="save precision (fp16)")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    svd_opts(q)

    q = lsub.add_parser("extract", help="extract from two LoRAs: lerp(a, b, alpha)·lerp(d, 1−d, beta)")
    lora_items(q)
    common(q, "output .safetensors (default extract_A-B.safetensors)")
    q.add_argument("--alpha", type=finite_float, default=1.0, help="alpha (default 1)")
    q.add_argument("--beta", type=finite_float, default=1.0, help="beta (default 1)")
    q.add_argument("--gamma", type=finite_float, default=1.0, help="gamma, the smoothness (default 1)")
    q.add_argument("--same-to-strength", action="store_true", help="scale each LoRA exactly by its ratio")
    save_opts(q)

    q = lsub.add_parser("dims", help="list the dim, type and family of every LoRA in a folder (headers only)")
    q.add_argument("folder", help="the LoRA folder (searched recursively)")
    q.add_argument("--no-cache", action="store_true", help="read every file again")
    q.add_argument("--csv", metavar="FILE", help="also write name,dim,type,version rows to FILE")

    lsub.add_parser("presets", help="list the LBW presets (shipped and user file)")
    p.set_defaults(lora_parser=p)


def cmd_lora(args) -> int:
    handlers = {"to-checkpoint": _to_checkpoint, "merge": _merge, "make": _make, "extract": _extract,
                "dims": _dims, "presets": _presets}
    if args.lora_command is None:
        args.lora_parser.print_help()
        return 0
    return handlers[args.lora_command](args)


def _specs(args) -> list[str]:
    """One item per argument (each may still be a comma list), so a comma in one path stays in it."""
    return list(args.loras)


def _print_unmatched(unmatched: dict[str, list[str]]) -> None:
    for name, modules in unmatched.items():
        print(f"not applied  : {name}: {len(modules)} modules:")
        for m in modules[:MAX_LISTED]:
            print(f"    {m}")
        if len(modules) > MAX_LISTED:
            print(f"    ... and {len(modules) - MAX_LISTED} more")


def _progress(quiet: bool, desc: str, unit: str = "B"):
    if quiet:
        return None
    from tqdm import tqdm

    bar = tqdm(total=0, unit=unit, unit_scale=unit == "B", desc=desc, file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    update.close = bar.close  # type: ignore[attr-defined]
    return update


def _to_checkpoint(args) -> int:
    from ..merge.naming import default_filename
    from ..lora.to_checkpoint import close_plan, merge_to_checkpoint, plan_to_checkpoint

    if args.dry_run:
        plan = plan_to_checkpoint(args.model, _specs(args), lora_dirs=args.lora_dir, strict=args.strict)
        try:
            for line in plan.summary_lines():
                if not line.startswith("not applied"):
                    print(line)
            _print_unmatched(plan.unmatched())
        finally:
            close_plan(plan)
        print("dry run: nothing was read or written.")
        return 0
    output = args.output
    if output is None:
        from ..lora.files import find_lora
        from ..lora.blocks import parse_specs
        from ..io.sources import model_name

        names = [model_name(args.model)]
        for s in parse_specs(_specs(args)):
            names.append(model_name(find_lora(s.name, args.lora_dir)))
        output = default_filename("+".join(names))
        print(f"output       : {output} (use --output to choose)")
    progress = _progress(args.quiet, "merging")
    try:
        result = merge_to_checkpoint(args.model, _specs(args), output, overwrite=args.overwrite, dtype=args.dtype,
                                     device=args.device, strict=args.strict, lora_dirs=args.lora_dir,
                                     progress=progress)
    finally:
        if progress is not None:
            progress.close()
    for line in result.plan.summary_lines():
        if not line.startswith("not applied"):
            print(line)
    _print_unmatched(result.unmatched)
    print(f"Merged model saved in {result.path} ({result.seconds:.1f} s)")
    return 0


def _default_lora_output(args, prefix: str = "") -> str:
    from ..io.sources import model_name
    from ..merge.naming import default_filename
    from ..lora.blocks import parse_specs

    parts = []
    for s in parse_specs(_specs(args)):
        parts.append(f"{model_name(s.name)}_{s.ratio:g}")
    name = prefix + "+".join(parts)
    out = default_filename(name)
    print(f"output       : {out} (use --output to choose)")
    return out


def _report(result, what: str) -> int:
    _print_unmatched(result.unmatched)
    for n in result.notices:
        print(f"notice: {n}")
    n = sum(1 for k in result.state_dict if k.endswith((".alpha",)))
    print(f"{what} ({result.mode}, {n} modules, {result.arch.label}) saved in {result.path} ({result.seconds:.1f} s)")
    return 0


def _merge(args) -> int:
    from ..lora.merge_loras import merge_loras

    output = args.output or _default_lora_output(args)
    result = merge_loras(_specs(args), output, mode=args.mode, dim=args.dim, same_to_strength=args.same_to_strength,
                         arch=args.arch, precision=args.precision, metadata_mode=args.metadata, svd=args.svd,
                         seed=args.seed, clamp_quantile=_clamp(args.clamp_quantile), device=args.device,
                         overwrite=args.overwrite, lora_dirs=args.lora_dir)
    return _report(result, "Merged LoRA")


def _clamp(q: float) -> float | None:
    return None if q >= 1 else q


def _make(args) -> int:
    from ..io.sources import model_name
    from ..lora.make import make_lora

    output = args.output
    if output is None:
        output = f"lora_{model_name(args.model_a)}-{model_name(args.model_b)}.safetensors"
        print(f"output       : {output} (use --output to choose)")
    progress = _progress(args.quiet, "svd", unit="module")
    try:
        result = make_lora(args.model_a, args.model_b, output, alpha=args.alpha, beta=args.beta, dim=args.dim,
                           conv_dim=args.conv_dim, svd=args.svd, seed=args.seed,
                           clamp_quantile=_clamp(args.clamp_quantile), precision=args.precision, device=args.device,
                           overwrite=args.overwrite, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    return _report(result, "LoRA")


def _extract(args) -> int:
    from ..lora.merge_loras import extract_loras

    output = args.output or _default_lora_output(args, "extract_")
    result = extract_loras(_specs(args), output, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
                           same_to_strength=args.same_to_strength, arch=args.arch, precision=args.precision,
                           metadata_mode=args.metadata, device=args.device, overwrite=args.overwrite,
                           lora_dirs=args.lora_dir)
    return _report(result, "Extracted LoRA")


def _dims(args) -> int:
    from ..lora.dims import lora_dims, write_csv

    found = lora_dims(args.folder, use_cache=not args.no_cache)
    infos = [i for i in found if i.is_lora]
    others = len(found) - len(infos)
    width = max((len(i.name) for i in infos), default=4)
    print(f"{'name':<{width}}  {'dim':>5} {'conv':>5}  {'type':<7} {'version':<8} modules")
    for i in infos:
        dim = "?" if i.dim is None else str(i.dim)
        conv = "" if i.conv_dim is None else str(i.conv_dim)
        line = f"{i.name:<{width}}  {dim:>5} {conv:>5}  {i.type:<7} {i.version:<8} {i.modules}"
        print(line + (f"  ({i.error})" if i.error else ""))
    print(f"{len(infos)} LoRA files in {args.folder}"
          + (f" ({others} other file{'s' if others != 1 else ''} there, not LoRAs, left out)" if others else ""))
    if args.csv:
        write_csv(infos, args.csv)
        print(f"written: {args.csv}")
    return 0


def _presets(args) -> int:
    from ..lora.blocks import lbw_formats, load_lbw_presets, user_lbw_presets_path

    for name, weights in load_lbw_presets().items():
        print(f"{name:<12} ({len(weights.split(',')):2d}) {weights}")
    print("\nlist lengths: " + "; ".join(f"{n} = {','.join(ids)}" for n, ids in sorted(lbw_formats().items())
                                         if n in (12, 17)) + "; 20 = SDXL blocks; 26 = SD1/SD2 blocks")
    print(f"user presets file: {user_lbw_presets_path()} (same format: NAME:w1,w2,...)")
    return 0

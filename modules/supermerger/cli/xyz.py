"""`supermerger xyz` (merge-and-generate grids over up to three axes) and `supermerger queue`
(reservations: add, list, run, rm). Merge options and image options are those of `supermerger gen`.
"""

from __future__ import annotations

import argparse
import textwrap
import threading
from pathlib import Path

from ..errors import SuperMergerError
from ..hosts.requirements import check_standalone
from ..xyplot.axes import XYZError, axis_type, type_names
from .common import _add_image_args, _add_merge_args, recipe_and_params


XYZ_EXAMPLES = textwrap.dedent("""\
    examples:
      supermerger xyz --recipe R.json --x "alpha:0.25,0.5,0.75" --y "pinpoint blocks:IN01,OUT10 OUT11" \\
          --prompt "a cat" --seed 1 --out grid.png
      supermerger xyz -a A.safetensors -b B.safetensors --mbw-alpha FLAT_25 --x "seed:1,2,3" --y "mbw alpha:@weights.txt"
      supermerger xyz --models-dir ~/models -a A -b B --x "model_B:B1,B2,B3" --y "calcmode:normal,cosineA"
      supermerger xyz -a A.safetensors -b B.safetensors --x "effective elemental checker:ALL" --y "alpha:1" --gif --csv
      supermerger xyz --x "alpha:0,0.5,1" --width 128 --height 128 --steps 4     (no models: the demo models)
      supermerger xyz ... --reserve            (queue it; `supermerger queue run` runs the queue)

    axes: --x/--y/--z "TYPE:VALUES"; VALUES may be @FILE (multi-line values: mbw, elemental, prompt2).
    '|' in VALUES splits the plot: the first part runs now, the others are queued as reservations.
    types: """) + ", ".join(type_names()[1:]) + "\n"


def add_parsers(sub) -> None:
    x = sub.add_parser("xyz", help="XYZ plot: merge and generate a grid over up to three axes",
                       description="Merge and generate each cell over up to three axes (X columns, Y rows, "
                                   "Z grids; one grid per image index with --batch-size/--batch-count) with the standalone host; the grid is a PNG with the plot in its metadata. "
                                   "Without any model, uses the built-in demo models.",
                       epilog=XYZ_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_plot_args(x)
    x.add_argument("--reserve", action="store_true", help="queue the plot as a reservation instead of running it")
    q = sub.add_parser("queue", help="XYZ plot reservations: add, list, run, rm (kept across restarts)",
                       description="The reservation queue of XYZ plots (xyz_reservations.json in the data folder).")
    q.set_defaults(queue_parser=q)
    qs = q.add_subparsers(dest="queue_command", metavar="ACTION")
    _add_plot_args(qs.add_parser("add", help="queue a plot (the options of `supermerger xyz`)",
                                 epilog=XYZ_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter))
    qs.add_parser("list", help="the reservations and their states")
    r = qs.add_parser("run", help="run every waiting reservation in order (an error marks it and goes on)")
    r.add_argument("--outdir", metavar="DIR", help="where the grids go (default: outputs/xyz in the data folder)")
    r.add_argument("--models-dir", metavar="DIR", action="append", help="a folder of checkpoints (for model axes)")
    r.add_argument("--device", help="cpu (default) or cuda")
    r.add_argument("--no-history", action="store_true", help="do not record the merges in the merge history")
    rm = qs.add_parser("rm", help="delete a reservation by its number in `queue list`, or 'all'")
    rm.add_argument("number", help="the number (1 = the first), or all")


def _add_plot_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("axes")
    for pos in "xyz":
        g.add_argument(f"--{pos}", metavar="TYPE:VALUES", help=f"the {pos.upper()} axis, e.g. \"alpha:0,0.5,1\"")
    g.add_argument("--preset", metavar="NAME", help="take the axes from a saved XYZ preset (--x/--y/--z override)")
    g.add_argument("--save-preset", metavar="NAME", help="save the axes as an XYZ preset (refuses an existing name)")
    g = p.add_argument_group("plot settings")
    g.add_argument("--swap-xy", action="store_true", help="transpose the grid (X values as rows)")
    g.add_argument("--save-model", action="store_true", help="also save every merged model (under --outdir/models)")
    g.add_argument("--no-grid", action="store_true", help="write each cell's image instead of a grid")
    g.add_argument("--zero-stock", action="store_true", help="cells that merge to model A unchanged reuse one image")
    g.add_argument("--gif", action="store_true", help="effective elemental checker: a 2-frame GIF per item")
    g.add_argument("--csv", action="store_true", help="effective elemental checker: append the differences to a CSV")
    g.add_argument("--out", metavar="GRID.png", help="the grid file (more grids: GRID-2.png, ...); default: "
                   "xyz_grid-NNNN.png in --outdir")
    _add_merge_args(p, gen=True)
    _add_image_args(p, size=512, steps=20, prompt="", seed=-1)


# -- building the plot ------------------------------------------------------------------------------------


def parse_axis_arg(text: str, pos: str):
    """``TYPE:VALUES`` (VALUES may be ``@FILE``) as an Axis."""
    from ..xyplot.plan import Axis

    name, sep, values = text.partition(":")
    if not sep:
        raise XYZError(f"--{pos} {text!r}: expected TYPE:VALUES, e.g. \"alpha:0,0.5,1\".")
    t = axis_type(name.strip(), pos.upper())
    if values.startswith("@"):
        path = Path(values[1:]).expanduser()
        try:
            values = path.read_text(encoding="utf-8")
        except OSError as e:
            raise XYZError(f"--{pos}: cannot read values file {str(path)!r}: {e.strerror or e}.") from None
    return Axis(t.id, values)


def plot_from_args(args):
    from ..xyplot import presets
    from ..xyplot.plan import XYZPlot

    plot = presets.load(args.preset) if args.preset else XYZPlot(x=_none())
    for pos in "xyz":
        value = getattr(args, pos)
        if value is not None:
            setattr(plot, pos, parse_axis_arg(value, pos))
    if not plot.x.on:
        raise XYZError("Give the X axis: --x TYPE:VALUES (e.g. --x \"alpha:0,0.5,1\"), or --preset NAME.")
    plot.swap_xy, plot.save_model, plot.no_grid = args.swap_xy, args.save_model, args.no_grid
    plot.zero_stock, plot.save_gif, plot.save_csv = args.zero_stock, args.gif, args.csv
    if args.save_preset:
        presets.save(args.save_preset, plot)
        print(f"XYZ preset {args.save_preset!r} saved.")
    return plot


def _none():
    from ..xyplot.plan import Axis

    return Axis()


def _settings(args):
    """(plot, recipe, params) from the options; the demo models when no model is named."""
    plot = plot_from_args(args)  # a malformed axis fails first
    recipe, params = recipe_and_params(args)
    return plot, recipe, params


def _host(device: str | None, models_dirs):
    from ..hosts.cache import ModelCache
    from ..hosts.diffusers_host import DiffusersHost

    check_standalone()
    device = device or "cpu"
    dtype = "float16" if device.startswith("cuda") else "float32"
    return DiffusersHost(models_dir=models_dirs[0] if models_dirs else None, device=device, dtype=dtype,
                         cache=ModelCache(max_models=3))


def _outdir(args) -> Path:
    from ..paths import data_dir

    folder = Path(args.outdir).expanduser() if getattr(args, "outdir", None) else data_dir() / "outputs" / "xyz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SuperMergerError(f"Cannot create the output folder {str(folder)!r}: {e.strerror or e}.") from None
    return folder


def _grid_paths(out: Path, n: int) -> list[Path]:
    return [out] + [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(2, n + 1)]


# -- commands ----------------------------------------------------------------------------------------------


def cmd_xyz(args) -> int:
    from ..io.atomic import check_output_path
    from ..xyplot.plan import arch_for, plan, split_reservations
    from ..xyplot.queue import ReservationQueue
    from ..xyplot.runner import model_resolver, run

    plot, recipe, params = _settings(args)
    if args.reserve:
        added = ReservationQueue().add(plot, recipe, params)
        print(f"queued {len(added)} reservation{'s' if len(added) != 1 else ''} "
              f"(No. {', '.join(str(e.id) for e in added)}); run them with `supermerger queue run`.")
        return 0
    host = _host(recipe.device, args.models_dir or [])
    resolve = model_resolver(host, args.models_dir or ())
    first = split_reservations(plot, arch_for(plot, recipe, resolve), recipe)
    p = plan(first[0], recipe, params, resolve_model=resolve, models_dirs=args.models_dir or ())
    if len(first) > 1:
        ReservationQueue().add(first[1], recipe, params, split=False)
        for rest in first[2:]:
            ReservationQueue().add(rest, recipe, params, split=False)
        print(f"'|' split the plot in {len(first)}: this runs the first part, {len(first) - 1} "
              f"{'is' if len(first) == 2 else 'are'} queued (`supermerger queue run`).")
    cols, rows, grids = p.shape()
    counts = p.counts()
    print(f"XYZ plot: {cols} x {rows}" + (f" x {grids}" if grids > 1 else "") + f" cells, {counts['merge']} merges, "
          f"seed {p.params.seed}" + (f", {counts['stock']} from stock" if counts["stock"] else ""))
    grid_paths = None
    if args.out and not p.plot.no_grid:
        grid_paths = _grid_paths(Path(args.out).expanduser(), grids)
        for g in grid_paths:
            check_output_path(g, False)
    outdir = _outdir(args)
    stop = threading.Event()

    def progress(i, n, cell):
        if args.quiet:
            return
        c = cell.cell
        what = {"merge": f"merged {cell.merge_seconds:.1f} s, ", "reuse": "", "stock": "from stock"}[c.action]
        gen = f"generated {cell.gen_seconds:.1f} s" if c.action != "stock" else ""
        labels = " ".join(f"{ax}={lab!r}" for ax, lab in zip("xyz", c.labels) if lab)
        print(f"  cell {i + 1}/{n} {labels}: {what}{gen}", flush=True)

    try:
        result = run(host, p, stop=stop, outdir=outdir, on_cell=progress, history=not args.no_history,
                     save_grids=grid_paths is None)
    except KeyboardInterrupt:
        print("interrupted: no grid was written.")
        return 130
    if grid_paths is not None:
        from ..xyplot.grid import save_grid
        from ..xyplot.runner import plot_parameters

        text, data = plot_parameters(result)
        for k, (grid, path) in enumerate(zip(result.grids, grid_paths)):
            result.paths.insert(k, save_grid(grid, path, text, dict(data, grid=k)))
    for n in result.notices:
        print(f"notice: {n}")
    for k, diffs in enumerate(result.differences):
        for d in diffs:
            print(f"  {d.label.replace(chr(10), ' ')}: {d.percent:.3f}% of the image changed")
    print(f"{len(result.cells)} cells in {result.seconds:.1f} s; written:")
    for path in result.paths:
        print(f"  {path}")
    return 0


def cmd_queue(args) -> int:
    from ..xyplot.queue import COLUMNS, ReservationQueue, plot_runner

    q = ReservationQueue()
    if args.queue_command is None:
        args.queue_parser.print_help()
        return 0
    if args.queue_command == "add":
        plot, recipe, params = _settings(args)
        added = q.add(plot, recipe, params)
        print(f"queued {len(added)} reservation{'s' if len(added) != 1 else ''} (No. "
              f"{', '.join(str(e.id) for e in added)}).")
        return 0
    if args.queue_command == "list":
        rows = q.table()
        if not rows:
            print("The reservation queue is empty.")
            return 0
        for row in rows:
            r = dict(zip(COLUMNS, row))
            axes = "; ".join(f"{k[0].upper()}: {r[k]} {r[k[0] + 'values']!r}" for k in ("xtype", "ytype", "ztype")
                             if r[k] != "none")
            print(f"{r['No.']:>3}  {r['status']:<9} {axes}  ({r['model A']} / {r['model B']}, {r['mode']}, "
                  f"alpha {r['alpha']:g})")
        return 0
    if args.queue_command == "rm":
        text = args.number.strip().lower()
        if text not in ("all", "-1") and not text.isdigit():
            raise XYZError(f"queue rm {args.number!r}: give a number from `supermerger queue list`, or all.")
        n = q.delete(-1 if text in ("all", "-1") else int(text))
        print(f"deleted {n} reservation{'s' if n != 1 else ''}.")
        return 0
    # run
    if q.pending() == 0:
        print("No reservation is waiting.")
        return 0
    host = _host(args.device, args.models_dir or [])
    outdir = _outdir(args)
    failed = 0
    for entry in q.run(plot_runner(host, outdir, history=not args.no_history, models_dirs=args.models_dir or ())):
        if entry.status == "finished":
            print(f"reservation {entry.id}: finished; " + ", ".join(entry.outputs))
        else:
            failed += 1
            print(f"reservation {entry.id}: error: {entry.error}")
    return 1 if failed else 0

"""What an XYZ plot costs beyond its merges and generations, and whether its memory stays flat.

    python bench/xyplot_bench.py                      # 5x5 plot, tiny SD1 demo models, 64 px, 2 steps
    python bench/xyplot_bench.py --size 128 --steps 4 --threads 2 --json bench/out/xyplot.json

A 5x5 plot (X = alpha, 5 values; Y = pinpoint blocks, 5 items: every cell is a different merge) runs
on the standalone diffusers host after one warm-up merge (the pipeline is built then). Reported:

  overhead per cell  the plot's wall time minus the time spent inside the host's merge_and_load and
                     generate, per cell (planning, cache protection, bookkeeping, the grid): the
                     target is under 10% of a cell's merge + generation time;
  loop comparison    the same 25 merges and generations called directly in a loop, and the plot's
                     extra time over that loop, per cell (best of two each, alternating; noisier);
  memory             resident set size after every cell, and its linear trend over cells 2..25
                     (flat = a few KiB per cell at most), plus the process's peak RSS; a second
                     5x5 plot in the same process shows that nothing accumulates across plots.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modules"))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def slope(ys: list[float]) -> float:
    n = len(ys)
    xs = range(n)
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = Path(tempfile.mkdtemp(prefix="xyz_bench_"))
    from supermerger import paths

    paths.set_data_dir(work)
    from supermerger import Recipe, xyplot
    from supermerger.demo import demo_models
    from supermerger.hosts import GenParams
    from supermerger.hosts.diffusers_host import DiffusersHost

    a, b = demo_models("sd1")
    recipe = Recipe(model_a=a, model_b=b, mbw_alpha="FLAT_25")
    params = GenParams(prompt="a photo of a cat", seed=1, steps=args.steps, sampler="Euler", width=args.size,
                       height=args.size)
    host = DiffusersHost()
    host.merge_and_load(recipe, history=False)  # warm-up: builds the pipeline
    host.generate(params)

    plot = xyplot.XYZPlot(x=xyplot.Axis("alpha", "0,0.25,0.5,0.75,1"),
                          y=xyplot.Axis("pinpoint blocks", "IN01 IN02,IN04-IN08,M00,OUT03-OUT05,OUT09-OUT11"))
    cells = xyplot.plan(plot, recipe, params).cells
    runs, loops = [], []
    for rep in range(2):  # loop and plot alternate, so that a busy machine hurts both alike
        t0 = time.perf_counter()
        for c in cells:  # the same cells, merged and generated directly
            host.merge_and_load(c.recipe, history=False)
            host.generate(c.params)
        loops.append(time.perf_counter() - t0)
        rss = []
        t0 = time.perf_counter()
        result = xyplot.run(host, plot, recipe, params, history=False,
                            on_cell=lambda i, n, c: rss.append(rss_mib()))
        wall = time.perf_counter() - t0
        inside = sum(c.merge_seconds + c.gen_seconds for c in result.cells)
        n = len(result.cells)
        runs.append(dict(wall=wall, inside=inside, n=n, rss=rss, merges=sum(c.cell.action == "merge"
                                                                             for c in result.cells)))
    loop = min(loops)
    r = runs[0]
    cell_time = r["inside"] / r["n"]
    overhead = (r["wall"] - r["inside"]) / r["n"]
    figures = {
        "cells": r["n"], "merges": r["merges"], "size": args.size, "steps": args.steps, "threads": args.threads,
        "cell_merge_gen_s": round(cell_time, 4),
        "overhead_per_cell_s": round(overhead, 5),
        "overhead_pct_of_cell": round(100 * overhead / cell_time, 2),
        "loop_per_cell_s": round(loop / len(cells), 4),
        "plot_minus_loop_per_cell_s": round((min(x["wall"] for x in runs) - loop) / r["n"], 4),
        "rss_mib_after_cells_1_5_10_25": [round(r["rss"][i], 1) for i in (0, 4, 9, 24)],
        "rss_trend_kib_per_cell": round(1024 * slope(r["rss"][1:]), 1),
        "second_plot_rss_mib_first_last": [round(runs[1]["rss"][0], 1), round(runs[1]["rss"][-1], 1)],
        "second_plot_rss_trend_kib_per_cell": round(1024 * slope(runs[1]["rss"][1:]), 1),
        "second_plot_overhead_pct": round(100 * (runs[1]["wall"] - runs[1]["inside"]) / runs[1]["inside"], 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    for k, v in figures.items():
        print(f"{k:<36} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

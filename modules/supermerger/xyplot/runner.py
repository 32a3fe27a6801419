"""Running an XYZ plot on a host: merge (or reuse) and generate each cell, then draw the grids.

    from supermerger import xyplot
    from supermerger.hosts.diffusers_host import DiffusersHost
    result = xyplot.run(DiffusersHost(), xyplot.XYZPlot(x=xyplot.Axis("alpha", "0,0.5,1")), recipe, params)
    result.grids[0].save("grid.png")

Models the plot holds constant are protected in the host's model cache for the whole run. A set
``stop`` event ends the plot after the current cell; the grids then show the cells made so far.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..merge.modes import get_mode
from ..merge.recipe import Recipe
from . import checker as checkermod
from .axes import XYZError
from .grid import GridLayout, draw_grid, free_path, save_grid
from .plan import Cell, PlotPlan, XYZPlot, plan as make_plan

MAX_CELL_IMAGES = 100  # "not save grid": at most this many single images per grid


@dataclass
class CellResult:
    cell: Cell
    images: list = field(default_factory=list)  # batch size × batch count images, in the host's order
    infotexts: list[str] = field(default_factory=list)
    merge_seconds: float = 0.0
    gen_seconds: float = 0.0
    seconds: float = 0.0  # the whole cell, overhead included
    history_id: int | None = None

    @property
    def image(self):
        """The cell's first image (the one in the first grid)."""
        return self.images[0] if self.images else None

    @property
    def infotext(self) -> str:
        return self.infotexts[0] if self.infotexts else ""


@dataclass
class PlotResult:
    plan: PlotPlan
    cells: list[CellResult] = field(default_factory=list)  # execution order; missing ones after a Stop
    grids: list[Any] = field(default_factory=list)  # one per Z value (checker grids for the checker)
    layouts: list[GridLayout] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)  # "not save grid": the cells' images instead
    paths: list[Path] = field(default_factory=list)  # files written (grids, models, GIFs, CSV)
    differences: list[list[checkermod.Difference]] = field(default_factory=list)  # checker, per Z
    stopped: bool = False
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return len(self.cells) == len(self.plan.cells)


def model_resolver(host=None, models_dirs: Sequence[str | os.PathLike] = ()) -> Callable[[str], str]:
    """Name → checkpoint path: the host's own lookup first, then the folders, then the name as a path."""
    def resolve(name: str) -> str:
        if Path(name).is_file():
            return str(Path(name))
        for d in models_dirs:
            for cand in (Path(d).expanduser() / name, Path(d).expanduser() / (name + ".safetensors")):
                if cand.is_file():
                    return str(cand)
        if host is not None:
            return host.checkpoint_path(name)
        from ..errors import ModelFileError

        raise ModelFileError(f"Checkpoint {name!r} was not found.", "Give a path, or the folder with --models-dir.")
    return resolve


def run(host, plot: XYZPlot | PlotPlan, recipe: Recipe | None = None, params=None, *,
        stop: threading.Event | None = None, outdir: str | os.PathLike | None = None,
        on_cell: Callable[[int, int, CellResult], None] | None = None, history: bool = True,
        models_dirs: Sequence[str | os.PathLike] = (), presets: Mapping[str, str] | None = None,
        grid_name: str = "xyz_grid", save_grids: bool = True) -> PlotResult:
    """Run ``plot`` (or an already made plan) on ``host``; returns the grids and every cell.

    ``outdir``: where grids (and saved models, checker GIF/CSV) are written; None writes nothing;
    ``save_grids=False``: the grids are returned but not written (the caller saves them).
    ``on_cell(i, n, cell_result)`` is called after each cell (progress)."""
    if isinstance(plot, PlotPlan):
        p = plot
    else:
        if recipe is None or params is None:
            raise XYZError("run() needs the base recipe and generation parameters with a plot.")
        p = make_plan(plot, recipe, params, presets=presets, resolve_model=model_resolver(host, models_dirs),
                      models_dirs=[str(d) for d in models_dirs])
    result = PlotResult(p)
    t_start = time.perf_counter()
    cache = getattr(host, "cache", None)
    guard = cache.protect(p.constant_models()) if cache is not None and hasattr(cache, "protect") \
        else contextlib.nullcontext()
    batched = _prompt3_batches(p)
    with guard:
        i = 0
        while i < len(p.cells):
            if stop is not None and stop.is_set():
                result.stopped = True
                break
            batch_mates = p.cells[i + 1:i + batched.get(i, 1)]
            made = _run_cell(host, p, p.cells[i], result, history, outdir, batch_mates)
            for k, cell_result in enumerate(made):
                result.cells.append(cell_result)
                if on_cell is not None:
                    on_cell(i + k, len(p.cells), cell_result)
            i += len(made)
    build_outputs(result, outdir, grid_name, save_grids)
    result.seconds = time.perf_counter() - t_start
    return result


def _prompt3_batches(p: PlotPlan) -> dict[int, int]:
    """{first cell: cells in its batch}: a prompt3 X axis generates each row's prompts as ONE batch
    (spec §5.1; seeds seed, seed+1, ...). Its cells are consecutive and share the model (the row's
    first merges, the others reuse it). On Y or Z the prompts would be far apart in the run, with
    other merges in between, so there each cell generates its own prompt."""
    xa = p.axis("x")
    if xa is None or xa.type.id != "prompt3" or len(xa.values) < 2:
        return {}
    n = len(xa.values)
    groups = {}
    for i, cell in enumerate(p.cells):
        row = p.cells[i:i + n]
        if cell.index[0] == 0 and len(row) == n and all(c.action == "reuse" for c in row[1:]) \
                and all(c.index[1:] == cell.index[1:] for c in row):
            groups[i] = n
    return groups


def _run_cell(host, p: PlotPlan, cell: Cell, result: PlotResult, history: bool, outdir,
              batch_mates: Sequence[Cell] = ()) -> list[CellResult]:
    """Run one cell and return its result — or, with ``batch_mates`` (the rest of a prompt3 row),
    generate the row's prompts as one batch and return every cell's result."""
    t0 = time.perf_counter()
    out = CellResult(cell)
    if cell.action == "stock":
        src = result.cells[cell.same_as]
        out.images, out.infotexts = list(src.images), list(src.infotexts)
        out.seconds = time.perf_counter() - t0
        return [out]
    if cell.action == "merge":
        merged = host.merge_and_load(cell.recipe, history=history)
        out.history_id = getattr(merged, "history_id", None)
        result.notices += [n for n in getattr(merged, "notices", []) if n not in result.notices]
        out.merge_seconds = time.perf_counter() - t0
        if p.plot.save_model and outdir is not None:
            result.paths.append(_save_model(cell.recipe, merged, outdir))
    t1 = time.perf_counter()
    if batch_mates:
        row = [cell, *batch_mates]
        params = cell.params.with_(prompts=tuple(c.params.prompt for c in row), batch_size=len(row), batch_count=1)
        gen = host.generate(params)
        seconds = time.perf_counter() - t1
        outs = [out] + [CellResult(c) for c in batch_mates]
        for k, o in enumerate(outs):
            o.images = [gen.images[k]] if k < len(gen.images) else []
            o.infotexts = [gen.infotexts[k]] if k < len(gen.infotexts or []) else []
            o.gen_seconds = seconds / len(row)
        out.seconds = time.perf_counter() - t0
        return outs
    gen = host.generate(cell.params)
    out.gen_seconds = time.perf_counter() - t1
    out.images = list(gen.images)
    out.infotexts = list(gen.infotexts or [])
    out.seconds = time.perf_counter() - t0
    return [out]



def _save_model(recipe: Recipe, merged, outdir) -> Path:
    from ..api import merge
    from ..merge.naming import default_filename

    folder = Path(outdir) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    name = default_filename(getattr(merged, "name", None) or "merged", fp16=recipe.dtype == "fp16")
    path = folder / name
    n = 1
    while path.exists():
        path = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
        n += 1
    return merge(recipe.replace(output=None), output=path, history=False).path


# -- grids ------------------------------------------------------------------------------------------------
def describe_merge(p: PlotPlan) -> str:
    """The corner text: the formula, the models and the ratios, with the axes' letters where varied."""
    varied: dict[str, str] = {}
    for a in p.axes:
        letter = a.pos.upper()
        t = a.type.id
        if t in ("alpha", "alpha and beta", "random") and not (p.checker() and t == "alpha"):
            varied.setdefault("alpha", letter)
        if t in ("beta", "alpha and beta"):
            varied.setdefault("beta", letter)
        if t.startswith("mbw") or t == "pinpoint blocks":
            varied.setdefault("weights", letter)
        for label in a.type.models:
            varied.setdefault(f"model {label}", letter)
        if t == "calcmode":
            varied.setdefault("calcmode", letter)
    r = p.cells[0].recipe if p.cells else p.recipe
    mode = get_mode(r.mode)
    formula = mode.formula.replace("α", "alpha").replace("β", "beta").replace("·", " x ")  # the font's glyphs
    lines = [f"{mode.label}: {formula}"]
    for label, path in (("A", r.model_a), ("B", r.model_b), ("C", r.model_c)):
        if label in mode.models and (path or f"model {label}" in varied):
            shown = varied.get(f"model {label}")
            lines.append(f"{label} = {shown if shown else Path(str(path)).stem}")
    if "weights" in varied or r.mbw_alpha is not None:
        lines.append(f"weights = {varied.get('weights', 'MBW')}")
    else:
        lines.append(f"alpha = {varied.get('alpha', format(p.recipe.alpha, 'g'))}")
    uses_beta = mode.uses_beta
    lines.append(f"beta = {varied.get('beta', format(p.recipe.beta, 'g')) if uses_beta else 'not used'}")
    cm = varied.get("calcmode", r.calcmode)
    if cm != "normal":
        lines.append(f"calcmode = {cm}")
    return "\n".join(lines)


def build_outputs(result: PlotResult, outdir=None, grid_name: str = "xyz_grid", save_grids: bool = True) -> None:
    """Grids (or single images, or checker grids) from the cells made so far; written to ``outdir``.

    One grid per Z value and, when the generation makes several images per cell (batch size or
    count above 1), per image index: grid k holds every cell's k-th image."""
    p = result.plan
    cols, rows, depth = p.shape()
    by_index = {c.cell.index: c for c in result.cells}
    xa, ya, za = p.axis("x"), p.axis("y"), p.axis("z")
    corner = describe_merge(p)
    folder = Path(outdir) if outdir is not None else None
    chk = p.checker()
    per_cell = max((len(c.images) for c in result.cells), default=1)
    for zi, k in itertools.product(range(depth), range(per_cell)):
        z_corner = corner + (f"\n{za.type.id} = {za.values[zi].label}" if za else "")
        if per_cell > 1:
            z_corner += f"\nimage {k + 1} of {per_cell}"

        def kth(cell):
            return cell.images[k] if cell is not None and k < len(cell.images) else None

        images = [[kth(by_index.get((x, y, zi))) for x in range(cols)] for y in range(rows)]
        if p.plot.no_grid:
            made = [im for row in images for im in row if im is not None]
            result.images += made[:MAX_CELL_IMAGES]
            continue
        if chk is not None:
            if k == 0:  # the checker compares the first images
                _checker_outputs(result, chk, images, z_corner, folder)
            continue
        col_labels = [v.label for v in xa.values]
        col_labels[0] = f"{xa.type.id} = {col_labels[0]}"
        row_labels = None
        if ya is not None:
            row_labels = [v.label for v in ya.values]
            row_labels[0] = f"{ya.type.id} = {row_labels[0]}"
        if p.plot.swap_xy:
            images = [list(r) for r in zip(*images)]
            col_labels, row_labels = (row_labels or [""]), col_labels
        grid, layout = draw_grid(images, col_labels, row_labels, z_corner)
        result.grids.append(grid)
        result.layouts.append(layout)
    if folder is not None and save_grids:
        _write(result, folder, grid_name)


def _checker_outputs(result: PlotResult, chk, images, corner: str, folder: Path | None) -> None:
    along_y = chk.pos == "y"
    line = [row[0] for row in images] if along_y else images[0]
    if not line or line[0] is None:
        return
    made = [im for im in line if im is not None]
    labels = [v.label for v in chk.values][1:len(made)]
    diffs = checkermod.analyse(made[0], made[1:], labels)
    result.differences.append(diffs)
    grid, layout = checkermod.checker_grid(made[0], diffs, along_y, corner)
    result.grids.append(grid)
    result.layouts.append(layout)
    if folder is not None and (result.plan.plot.save_gif or result.plan.plot.save_csv):
        r = result.plan.recipe
        pair = "+".join(Path(str(m)).stem for m in (r.model_a, r.model_b) if m)
        where = folder / "difgif" / (pair or "models")
        if result.plan.plot.save_gif:
            result.paths += checkermod.save_gifs(made[0], diffs, where)
        if result.plan.plot.save_csv:
            result.paths.append(checkermod.append_csv(diffs, where / "difference.csv"))


def plot_parameters(result: PlotResult) -> tuple[str, dict]:
    """(readable text, JSON) describing the plot, for the grid PNG's metadata."""
    from ..hosts.mergeinfo import compact_recipe

    p = result.plan
    lines = [f"XYZ plot {a.pos.upper()}: {a.type.id}: " + ", ".join(v.label.replace("\n", " ") for v in a.values)
             for a in p.axes]
    lines.append(f"Base recipe: {compact_recipe(p.recipe)}")
    first = next((c.infotext for c in result.cells if c.infotext), "")
    if first:
        lines.append(first)
    if result.stopped:
        lines.append(f"Stopped after {len(result.cells)} of {len(p.cells)} cells.")
    data = {"plot": p.plot.to_dict(), "recipe": p.recipe.to_dict(),
            "params": {k: v for k, v in dataclasses.asdict(p.params).items() if k != "extra"},
            "cells": len(result.cells), "of": len(p.cells)}
    return "\n".join(lines), data


def _write(result: PlotResult, folder: Path, grid_name: str) -> None:
    text, data = plot_parameters(result)
    folder.mkdir(parents=True, exist_ok=True)
    for k, grid in enumerate(result.grids):
        result.paths.append(save_grid(grid, free_path(folder, grid_name), text, dict(data, grid=k)))
    for im in result.images:
        result.paths.append(save_grid(im, free_path(folder, grid_name + "_cell"), text, data))

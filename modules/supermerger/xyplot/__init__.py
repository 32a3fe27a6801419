"""XYZ plots (spec §5): merge-and-generate grids over up to three axes, the effective elemental
checker, XYZ presets and the reservation queue (spec §6).

    from supermerger import Recipe, xyplot
    from supermerger.hosts import GenParams
    from supermerger.hosts.diffusers_host import DiffusersHost

    plot = xyplot.XYZPlot(x=xyplot.Axis("alpha", "0.25,0.5,0.75"),
                          y=xyplot.Axis("pinpoint blocks", "IN01,OUT10 OUT11"))
    recipe = Recipe(model_a="A.safetensors", model_b="B.safetensors", mbw_alpha="FLAT_25")
    params = GenParams(prompt="a cat", seed=1, steps=20)
    p = xyplot.plan(plot, recipe, params)          # checks every value; which cells merge or reuse
    result = xyplot.run(DiffusersHost(), p)        # result.grids: one PIL image per Z value

Axis types, their value syntax and ``ALL``/``NOT``: ``xyplot.axes.AXIS_TYPES`` (and spec §5.1).
"""

from .axes import AXIS_TYPES, AxisType, AxisValue, XYZError, axis_type, type_names
from .plan import Axis, Cell, PlotPlan, XYZPlot, parse_axes, plan, split_reservations
from .queue import Reservation, ReservationQueue, plot_runner
from .runner import CellResult, PlotResult, model_resolver, run

parse = parse_axes

__all__ = ["AXIS_TYPES", "AxisType", "AxisValue", "XYZError", "axis_type", "type_names", "Axis", "Cell", "PlotPlan",
           "XYZPlot", "parse", "parse_axes", "plan", "split_reservations", "Reservation", "ReservationQueue",
           "plot_runner", "CellResult", "PlotResult", "model_resolver", "run"]

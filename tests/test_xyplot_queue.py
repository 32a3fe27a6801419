"""Reservations (persistent queue: states, errors that do not stop the queue, restart, '|' split),
XYZ presets, and sample.txt (every sample parses against the SD1 tables and names real elements)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from supermerger import arch as archmod
from supermerger.arch.presets import load_presets
from supermerger.hosts import GenParams
from supermerger.hosts.base import Generated, Host
from supermerger.merge.elemental import parse_elemental
from supermerger.merge.recipe import Recipe
from supermerger.xyplot import Axis, ReservationQueue, XYZError, XYZPlot, axis_type, plot_runner
from supermerger.xyplot import presets as xyz_presets
from supermerger.xyplot.axes import ParseContext
from supermerger.xyplot.plan import split_reservations

ROOT = Path(__file__).resolve().parents[1]
PARAMS = GenParams(prompt="p", seed=3, steps=2, width=64, height=64)


class FakeHost(Host):
    """Merges nothing; each image's colour encodes the live recipe's alpha and the seed."""

    def __init__(self):
        self.merged = []
        self._alpha = None

    def list_checkpoints(self):
        return []

    def checkpoint_path(self, name):
        from supermerger.errors import ModelFileError

        raise ModelFileError(f"Checkpoint {name!r} was not found.")

    def load_state_dict(self, state_dict, name, *, recipe=None):
        pass

    def merge_and_load(self, recipe, *, models=None, name=None, **kw):
        self.merged.append(recipe.alpha)
        self._alpha = recipe.alpha
        return None

    @property
    def model_name(self):
        return "fake"

    def generate(self, params):
        from PIL import Image

        im = Image.new("RGB", (16, 16), (int(self._alpha * 200), params.seed % 256, 0))
        return Generated([im], [f"Seed: {params.seed}"], [params.seed])

    def unload(self):
        pass


def recipe_of(models):
    return Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]))


def test_queue_states_restart_delete_and_table(models, _isolated_data_dir):
    q = ReservationQueue()
    added = q.add(XYZPlot(x=Axis("alpha", "0.1,0.2|0.3"), y=Axis("seed", "1")), recipe_of(models), PARAMS)
    assert [(e.id, e.plot.x.values, e.status) for e in added] == [(1, "0.1,0.2", "waiting"), (2, "0.3", "waiting")]
    q.add(XYZPlot(x=Axis("calcmode", "normal,cosineA")), recipe_of(models).replace(mbw_alpha="FLAT_25"), PARAMS)
    again = ReservationQueue()  # a restart: a new object reads the file
    assert [(e.id, e.plot.x.type, e.params.seed) for e in again.list()] == [(1, "alpha", 3), (2, "alpha", 3),
                                                                           (3, "calcmode", 3)]
    assert again.list()[2].recipe.mbw_alpha == "FLAT_25"
    table = again.table()
    assert table[0][:8] == [1, "waiting", "alpha", "0.1,0.2", "seed", "1", "none", ""]
    assert table[0][8:10] == ["sd1_A", "sd1_B"] and table[2][15:17] == [True, "FLAT_25"]
    assert again.delete(2) == 1 and [e.id for e in q.list()] == [1, 3]
    with pytest.raises(XYZError, match="No reservation number 5: the queue has 2"):
        q.delete(5)
    assert q.delete(-1) == 2 and q.list() == []
    data = json.loads((_isolated_data_dir / "xyz_reservations.json").read_text())
    assert data == {"version": 1, "reservations": []}


def test_a_failing_reservation_does_not_stop_the_next(models, tmp_path):
    q = ReservationQueue()
    good = recipe_of(models)
    q.add(XYZPlot(x=Axis("alpha", "0.25,0.5")), good, PARAMS)
    q.add(XYZPlot(x=Axis("alpha", "0.5")), good.replace(model_a=str(tmp_path / "gone.safetensors")), PARAMS)
    q.add(XYZPlot(x=Axis("pinpoint blocks", "IN01")), good, PARAMS)  # no alpha axis: refused when it runs
    q.add(XYZPlot(x=Axis("seed", "4,5"), y=Axis("alpha", "1")), good, PARAMS)
    host = FakeHost()
    seen = []
    done = list(q.run(plot_runner(host, tmp_path / "out", history=False), on_done=lambda e, s, m: seen.append(s)))
    assert [e.status for e in done] == seen == ["finished", "error", "error", "finished"]
    assert "gone.safetensors" in done[1].error and "needs an alpha or beta axis" in done[2].error
    assert host.merged == [0.25, 0.5, 1.0]  # the last plot merged once for its two seeds
    stored = ReservationQueue().list()
    assert [e.status for e in stored] == ["finished", "error", "error", "finished"]
    assert all(Path(p).is_file() for p in stored[0].outputs + stored[3].outputs) and len(stored[3].outputs) == 1
    assert stored[1].error == done[1].error
    assert list(q.run(plot_runner(host, tmp_path / "out"))) == []  # nothing waiting


def test_entries_added_while_the_queue_runs_are_run_too(models, tmp_path):
    q = ReservationQueue()
    q.add(XYZPlot(x=Axis("alpha", "0.1")), recipe_of(models), PARAMS)
    ran = []

    def runner(entry):
        ran.append(entry.plot.x.values)
        if len(ran) == 1:
            ReservationQueue().add(XYZPlot(x=Axis("alpha", "0.9")), recipe_of(models), PARAMS)
            assert [e.status for e in ReservationQueue().list()] == ["running", "waiting"]
        return []

    assert [e.status for e in q.run(runner)] == ["finished", "finished"] and ran == ["0.1", "0.9"]


def test_a_running_entry_of_a_dead_process_reads_as_interrupted(models, _isolated_data_dir):
    q = ReservationQueue()
    q.add(XYZPlot(x=Axis("alpha", "0.1")), recipe_of(models), PARAMS)
    path = _isolated_data_dir / "xyz_reservations.json"
    data = json.loads(path.read_text())
    data["reservations"][0].update(status="running", pid=2 ** 22 + 12345)  # beyond any pid in use
    path.write_text(json.dumps(data))
    entry = ReservationQueue().list()[0]
    assert entry.status == "error" and "interrupted" in entry.error
    data["reservations"][0]["pid"] = os.getpid()
    path.write_text(json.dumps(data))
    assert ReservationQueue().list()[0].status == "running"
    path.write_text("{not json")
    with pytest.raises(XYZError, match="cannot be read"):
        ReservationQueue().list()


# -- presets -----------------------------------------------------------------------------------------------------
def test_xyz_presets_save_load_overwrite_delete(_isolated_data_dir):
    plot = XYZPlot(x=Axis("pinpoint blocks (alpha or beta must be selected for another axis)", "IN01,OUT11"),
                   y=Axis("alpha", "0,1"))
    xyz_presets.save("pin", plot)
    stored = json.loads((_isolated_data_dir / "xyzpresets.json").read_text())
    assert stored == {"pin": {"xtype": "pinpoint blocks", "xvalues": "IN01,OUT11", "ytype": "alpha",
                              "yvalues": "0,1", "ztype": "none", "zvalues": ""}}
    with pytest.raises(XYZError, match="exists already"):
        xyz_presets.save("pin", XYZPlot())
    xyz_presets.save("pin", XYZPlot(x=Axis("seed", "1,2")), overwrite=True)
    xyz_presets.save("b", plot)
    assert xyz_presets.names() == ["pin", "b"]
    loaded = xyz_presets.load("b")
    assert (loaded.x.type, loaded.x.values, loaded.y.values, loaded.z.type) == ("pinpoint blocks", "IN01,OUT11",
                                                                                "0,1", "none")
    assert xyz_presets.load("pin").x.values == "1,2"
    xyz_presets.delete("pin")
    with pytest.raises(XYZError, match="(?s)No XYZ preset named 'pi'.*Presets: b"):
        xyz_presets.load("pi")
    # the original's file (UI labels as types) loads too
    (_isolated_data_dir / "xyzpresets.json").write_text(json.dumps({"old": {
        "xtype": "beta (if Triple or Twice is not selected,Twice automatically enable)", "xvalues": "0.1",
        "ytype": "none", "yvalues": "", "ztype": "none", "zvalues": ""}}))
    assert xyz_presets.load("old").x.type == "beta"


# -- sample.txt ---------------------------------------------------------------------------------------------------
def _sd1_keys():
    from supermerger.testing.synthetic import key_shapes

    sd1 = archmod.get("sd1")
    return [(k, sd1.block_of(k)) for k, _ in key_shapes("sd1") if k.startswith("model.diffusion_model.")]


def test_every_sample_parses_against_the_sd1_tables_and_names_real_elements():
    samples = xyz_presets.parse_samples((ROOT / "sample.txt").read_text(encoding="utf-8"))
    assert list(samples) == [f"sample{i}" for i in range(1, 10)]
    sd1, keys = archmod.get("sd1"), _sd1_keys()
    counts = {}
    for name, (type_, text) in samples.items():
        plots = split_reservations(XYZPlot(x=Axis(type_, text)))
        values = []
        for p in plots:
            ctx = ParseContext(sd1, load_presets(), Recipe(), "X", rng=random.Random(0))
            values += axis_type(type_).parse(p.x.values, ctx)
        counts[name] = (len(plots), len(values))
        for v in values:
            if type_ in ("elemental", "pinpoint element", "effective elemental checker") and v.data:
                text_ = v.data if type_ == "elemental" else f"{v.data}:1"
                for entry in parse_elemental(text_, sd1):
                    hits = sum(entry.matches(k, b) for k, b in keys)
                    assert hits > 0, f"{name}: {entry.text!r} matches no SD1 key"
    assert counts["sample1"] == (1, 6) and samples["sample1"][1].startswith("\nOUT05::1")  # baseline first
    assert counts["sample2"] == (1, 4) and counts["sample3"] == (1, 5) and counts["sample4"] == (1, 4)
    assert counts["sample5"] == (2, 2 + 25)  # two runs, each with its baseline
    assert counts["sample7"] == (1, 5) and counts["sample9"] == (2, 10)
    assert counts["sample6"][1] > 300  # every element of every block


def test_sample_file_format_errors():
    with pytest.raises(XYZError, match="NAME: TYPE"):
        xyz_presets.parse_samples("### broken\n---\n1")
    with pytest.raises(XYZError, match="unknown axis type 'alhpa'"):
        xyz_presets.parse_samples("### s: alhpa\n---\n1")


def test_host_extras_that_are_not_json_are_left_out(models):
    q = ReservationQueue()
    params = PARAMS.with_(extra={"script_args": [1, "a"], "live_object": object()})
    q.add(XYZPlot(x=Axis("alpha", "0.5")), recipe_of(models), params)
    assert ReservationQueue().list()[0].params.extra == {"script_args": [1, "a"]}

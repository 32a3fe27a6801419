"""Reservations (spec §6): XYZ plots queued with every setting, run in order, kept on disk.

Each entry snapshots the plot, the recipe and the generation parameters. States: ``waiting`` →
``running`` → ``finished`` or ``error`` (an error marks that entry, and the queue goes on). The
queue is ``xyz_reservations.json`` in the data folder: rewritten atomically under a lock (as the
merge history is), so entries added by the UI while the CLI runs the queue are not lost, and the
queue survives a restart. An entry left ``running`` by a process that no longer exists is marked
``error`` (interrupted) when the queue is read.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import SuperMergerError
from ..history.lock import LockTimeout, locked
from ..io.atomic import atomic_write_text
from ..merge.recipe import Recipe
from .axes import XYZError
from .plan import XYZPlot, split_reservations

FILE_NAME = "xyz_reservations.json"
STATES = ("waiting", "running", "finished", "error")
COLUMNS = ("No.", "status", "xtype", "xvalues", "ytype", "yvalues", "ztype", "zvalues", "model A", "model B",
           "model C", "alpha", "beta", "mode", "calcmode", "use MBW", "weights alpha", "weights beta")


@dataclass
class Reservation:
    id: int
    plot: XYZPlot
    recipe: Recipe
    params: Any  # GenParams
    status: str = "waiting"
    created: str = ""
    error: str = ""
    outputs: list[str] = field(default_factory=list)
    pid: int | None = None

    def to_dict(self) -> dict:
        params = dataclasses.asdict(self.params)
        # host extras (e.g. WebUI script arguments) are kept where they are plain JSON data
        params["extra"] = {k: v for k, v in params.get("extra", {}).items() if _jsonable(v)}
        return {"id": self.id, "status": self.status, "created": self.created, "error": self.error,
                "outputs": self.outputs, "pid": self.pid, "plot": self.plot.to_dict(),
                "recipe": self.recipe.to_dict(), "params": params}

    @classmethod
    def from_dict(cls, d: dict) -> "Reservation":
        from ..hosts.base import GenParams

        names = {f.name for f in dataclasses.fields(GenParams)}
        params = GenParams(**{k: v for k, v in d.get("params", {}).items() if k in names})
        return cls(int(d["id"]), XYZPlot.from_dict(d["plot"], f"reservation {d['id']}"),
                   Recipe.from_dict(d["recipe"], f"reservation {d['id']}"), params, d.get("status", "waiting"),
                   d.get("created", ""), d.get("error", ""), list(d.get("outputs", [])), d.get("pid"))

    def row(self, number: int) -> list:
        """One line of the queue table (the original's columns; 'use MBW' tells whether MBW is on)."""
        r, p = self.recipe, self.plot
        name = lambda m: Path(str(m)).stem if m else ""  # noqa: E731
        return [number, self.status + (f": {self.error}" if self.status == "error" and self.error else ""),
                p.x.type, p.x.values, p.y.type, p.y.values, p.z.type, p.z.values, name(r.model_a), name(r.model_b),
                name(r.model_c), r.alpha, r.beta, r.mode, r.calcmode, r.mbw_alpha is not None,
                _weights(r.mbw_alpha), _weights(r.mbw_beta)]


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _weights(w) -> str:
    if w is None:
        return ""
    return w if isinstance(w, str) else ",".join(map(str, w))


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


class ReservationQueue:
    """The reservation queue in ``path`` (default: the data folder's ``xyz_reservations.json``)."""

    def __init__(self, path: str | os.PathLike | None = None):
        from ..paths import data_dir

        self.path = Path(path) if path else data_dir() / FILE_NAME
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._running_here: set[int] = set()
        self._guard = threading.Lock()

    # -- storage -----------------------------------------------------------------------------------
    def _read(self) -> list[Reservation]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise XYZError(f"The reservation queue {str(self.path)!r} cannot be read: {e}.",
                           "Move the file away to start an empty queue.") from None
        if not isinstance(data, dict) or not isinstance(data.get("reservations"), list):
            raise XYZError(f"The reservation queue {str(self.path)!r} is not a SuperMerger queue file.")
        out = []
        for d in data["reservations"]:
            try:
                out.append(Reservation.from_dict(d))
            except (SuperMergerError, KeyError, TypeError, ValueError) as e:
                raise XYZError(f"The reservation queue {str(self.path)!r} holds a damaged entry "
                               f"({d.get('id') if isinstance(d, dict) else d!r}): {e}.") from None
        for r in out:
            if r.status == "running" and not _alive(r.pid):
                r.status, r.error = "error", "interrupted (the program running it stopped)"
        return out

    def _write(self, entries: list[Reservation]) -> None:
        atomic_write_text(self.path, json.dumps({"version": 1, "reservations": [e.to_dict() for e in entries]},
                                                indent=1, ensure_ascii=False))

    def _update(self, change: Callable[[list[Reservation]], Any]) -> Any:
        try:
            with locked(self.lock_path):
                entries = self._read()
                out = change(entries)
                self._write(entries)
                return out
        except LockTimeout as e:
            raise XYZError(f"The reservation queue is busy: {e}.") from None

    # -- the public operations ---------------------------------------------------------------------------
    def list(self) -> list[Reservation]:
        try:
            with locked(self.lock_path):
                return self._read()
        except LockTimeout as e:
            raise XYZError(f"The reservation queue is busy: {e}.") from None

    def table(self) -> list[list]:
        return [r.row(i) for i, r in enumerate(self.list(), 1)]

    def add(self, plot: XYZPlot, recipe: Recipe, params, *, split: bool = True) -> list[Reservation]:
        """Queue a plot (split at '|' into several, in order); returns the entries added."""
        plots = split_reservations(plot) if split else [plot]
        recipe.check_types()
        now = datetime.datetime.now().isoformat(timespec="seconds")

        def change(entries):
            next_id = max((e.id for e in entries), default=0) + 1
            added = []
            for k, p in enumerate(plots):
                added.append(Reservation(next_id + k, p, dataclasses.replace(recipe),
                                         dataclasses.replace(params), created=now))
            entries += added
            return added
        return self._update(change)

    def delete(self, number: int) -> int:
        """Delete the entry at 1-based position ``number`` (-1: every entry not running). Returns how many."""
        def change(entries):
            if number == -1:
                keep = [e for e in entries if e.status == "running"]
                gone = len(entries) - len(keep)
                entries[:] = keep
                return gone
            if not 1 <= number <= len(entries):
                raise XYZError(f"No reservation number {number}: the queue has {len(entries)}.")
            if entries[number - 1].status == "running":
                raise XYZError(f"Reservation {number} is running; it can be deleted once it ends.")
            del entries[number - 1]
            return 1
        return self._update(change)

    def _claim(self) -> Reservation | None:
        def change(entries):
            for e in entries:
                if e.status == "waiting":
                    e.status, e.pid, e.error = "running", os.getpid(), ""
                    return e
            return None
        return self._update(change)

    def _finish(self, rid: int, status: str, error: str = "", outputs: list[str] | None = None) -> None:
        def change(entries):
            for e in entries:
                if e.id == rid:
                    e.status, e.error, e.pid = status, error, None
                    e.outputs = list(outputs or [])
        self._update(change)

    def pending(self) -> int:
        return sum(1 for e in self.list() if e.status == "waiting")

    def run(self, runner: Callable[[Reservation], list[str]], stop: threading.Event | None = None,
            on_done: Callable[[Reservation, str, str], None] | None = None) -> Iterator[Reservation]:
        """Run every waiting entry in order (also those added meanwhile) with ``runner(entry) ->
        written paths``; a SuperMergerError (or any other exception) marks the entry ``error`` and the
        queue goes on. Yields each entry once it has ended, with its final status."""
        while not (stop is not None and stop.is_set()):
            entry = self._claim()
            if entry is None:
                return
            try:
                outputs = runner(entry)
                status, error = "finished", ""
            except SuperMergerError as e:
                status, error, outputs = "error", str(e).replace("\n", " "), []
            except Exception as e:  # noqa: BLE001 - one bad reservation must not stop the queue
                status, error, outputs = "error", f"{type(e).__name__}: {e}", []
            self._finish(entry.id, status, error, [str(o) for o in outputs])
            entry.status, entry.error, entry.outputs = status, error, [str(o) for o in outputs]
            if on_done is not None:
                on_done(entry, status, error)
            yield entry


def plot_runner(host, outdir: str | os.PathLike, *, history: bool = True, stop: threading.Event | None = None,
                models_dirs=()) -> Callable[[Reservation], list[str]]:
    """A queue runner that plots each reservation on ``host`` and writes its grids to ``outdir``."""
    from .runner import run

    def run_one(entry: Reservation) -> list[str]:
        result = run(host, entry.plot, entry.recipe, entry.params, stop=stop, outdir=outdir, history=history,
                     models_dirs=models_dirs)
        if result.stopped:
            raise XYZError(f"stopped after {len(result.cells)} of {len(result.plan.cells)} cells")
        return [str(p) for p in result.paths]
    return run_one

"""Merge history: every merge recorded, searchable, restorable exactly (spec §7).

    from supermerger import history
    page = history.search("cosine xl", how="and", mode="weight_sum")   # newest first, page 1
    rec = history.get(-1)                                               # the last merge
    recipe = history.restore(42, models_dirs=["/models"])               # models found by hash
    supermerger.merge(recipe, output="again.safetensors")               # the same tensors

``supermerger.merge()`` records every merge unless called with ``history=False`` (the same merge into
memory repeated unchanged keeps the record it has: ``History.same_merge``); a history that
cannot be written never costs the merge (the result's notices say so). Files, in the data folder:
``mergehistory.csv`` (the records, a spreadsheet can open it), ``mergehistory.index`` (derived,
for fast search) and ``mergehistory.csv.lock``. A ``mergehistory.csv`` of the original extension
is converted in place on first use (IDs kept, the old file kept beside it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import SuperMergerError
from .analysis import WeightStats, parse_ids, weight_stats_of
from .images import id_from_text, ids_from_png, ids_from_png_text, model_field_with_id, png_text_chunks
from .record import COLUMNS, ModelRef, Record
from .store import FILE_NAME, History, Page


class HistoryError(SuperMergerError):
    """The history cannot answer: no such ID, no history yet, a record that cannot be replayed."""


__all__ = ["HistoryError", "History", "Record", "ModelRef", "Page", "WeightStats", "COLUMNS", "FILE_NAME",
           "get", "search", "restore", "restore_detail", "weight_stats", "import_original", "start", "finish",
           "ids_from_png", "ids_from_png_text", "id_from_text", "model_field_with_id", "png_text_chunks"]


def get(record_id: int, history: History | None = None) -> Record:
    """The record with ID ``record_id`` (-1 = the newest, -2 = the one before)."""
    return (history or History()).get(record_id)


def search(query: str = "", how: str = "or", model: str | None = None, mode: str | None = None,
           calcmode: str | None = None, page: int = 1, per_page: int = 20, history: History | None = None) -> Page:
    """All records, newest first, whose text holds any (``or``) / all (``and``) of the words of
    ``query``, whose models' names or hashes contain ``model``, of ``mode`` and ``calcmode``."""
    return (history or History()).search(query, how, model, mode, calcmode, page, per_page)


def restore_detail(record_id: int, models_dirs: Iterable[str | os.PathLike] = (),
                   given: Mapping[str, str] | None = None, history: History | None = None):
    """The recipe of a record with its models found on this machine, and how each was found.
    ``given``: model paths by label ("A", "B", "C", "VAE") that need no search."""
    from .locate import restore_record

    return restore_record(get(record_id, history), models_dirs, given)


def restore(record_id: int, models_dirs: Iterable[str | os.PathLike] = (), given: Mapping[str, str] | None = None,
            history: History | None = None):
    """The recipe of a recorded merge, ready to merge again (no output file: choose one)."""
    return restore_detail(record_id, models_dirs, given, history).recipe


def weight_stats(ids: str | Iterable[int], history: History | None = None) -> WeightStats:
    """Per-block mean and standard deviation of the alpha weights of the records ``ids``."""
    hist = history or History()
    return weight_stats_of([hist.get(i) for i in parse_ids(ids)])


def import_original(path: str | os.PathLike, history: History | None = None) -> tuple[list[Record], list[str]]:
    """Append the records of an original extension's ``mergehistory.csv`` (new IDs; each record's
    note names its old ID). Returns the records and what could not be read."""
    from .legacy import read_original

    path = Path(path)
    records, notes = read_original(path)
    for r in records:
        r.note = f"imported from {path.name} (its ID {r.id}); {r.note}"
    (history or History()).append_many(records)
    return records, notes


# -- recording merges (called by api.merge) ---------------------------------------------------
def start(plan, saving: bool):
    """Begin recording a merge (before it runs). Never raises: a failure shows at ``finish``."""
    from .capture import PendingRecord

    try:
        return PendingRecord(plan, saving)
    except Exception as e:  # noqa: BLE001 - a history problem must never stop a merge
        return e


def finish(pending, result, history: History | None = None) -> Record | None:
    """Record the merge ``result``; on any failure add a notice to it instead. Never raises."""
    try:
        if isinstance(pending, BaseException):
            raise pending
        hist = history or History()
        rec = pending.record(result.metadata or None, result.path)
        same = hist.same_merge(rec)
        if same is not None:
            result.history_id = same.id
            return same
        hist.append(rec)
        result.history_id = rec.id
        result.notices += [f"history: {n}" for n in hist.notices]
        return rec
    except Exception as e:  # noqa: BLE001
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        result.notices.append(f"This merge was not recorded in the merge history ({reason}); the merge itself "
                              "is complete.")
        return None

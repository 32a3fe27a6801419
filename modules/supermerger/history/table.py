"""The History tab's table: a page of records as rows of text (newest first), and the ID a
clicked row or a typed box names. Plain data: the UI shows it, the tests read it."""

from __future__ import annotations

from .record import Record, _num

HEADERS = ("ID", "Time", "Name", "Mode", "Calcmode", "alpha", "beta", "gamma", "Weights alpha", "Weights beta",
           "Model A", "Model B", "Model C", "Elemental", "Include/Exclude", "Adjust", "Seed", "Output", "Note")
PAGE_SIZES = (20, 30, 40, 50, 100)


def row(rec: Record) -> list[str]:
    """One record as the table shows it (model names with their short hash)."""
    def model(label: str) -> str:
        ref = rec.models.get(label)
        if ref is None:
            return ""
        return f"{ref.name} [{ref.short}]" if ref.short else ref.name

    include = "" if rec.include_mode == "Off" else f"{rec.include_mode}: {rec.include_exclude}"
    return [str(rec.id), rec.time, rec.name, rec.mode, rec.calcmode, _num(rec.alpha), _num(rec.beta),
            _num(rec.gamma), rec.weights_alpha, rec.weights_beta, model("A"), model("B"), model("C"), rec.elemental,
            include, rec.adjust, "" if rec.seed is None else str(rec.seed), rec.output, rec.note]


def rows(records: list[Record]) -> list[list[str]]:
    return [row(r) for r in records]


def page_note(page, query: str = "") -> str:
    """``"records 21-40 of 57 (page 2 of 3)"``, or why there is nothing to show."""
    if page.total == 0:
        return "No result." if query.strip() else "No merge history yet: every merge is recorded here."
    first = (page.page - 1) * page.per_page + 1
    last = first + len(page.records) - 1
    if not page.records:
        return f"Page {page.page} is past the last page ({page.pages}); {page.total} records."
    return f"Records {first}-{last} of {page.total} (page {page.page} of {page.pages}), newest first."


def id_from_box(text) -> int:
    """The history ID typed in a box: a whole number, -1 for the newest."""
    from . import HistoryError

    value = str(text if text is not None else "").strip()
    try:
        f = float(value)
    except ValueError:
        raise HistoryError(f"History ID {value!r} is not a number.", "Type a record's ID, or -1 for the last merge.") \
            from None
    if f != int(f) or f == 0:
        raise HistoryError(f"History ID {value!r}: IDs are whole numbers from 1 (or -1 for the last merge).")
    return int(f)

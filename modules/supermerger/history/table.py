"""The History tab's table: a page of records as rows of text (newest first), and the ID a
clicked row or a typed box names. Plain data: the UI shows it, the tests read it."""

from __future__ import annotations

from .record import Record, _num

HEADERS = ("ID", "Time", "Model A", "Model B", "Model C", "Mode", "Calcmode", "alpha", "beta", "Name")
PAGE_SIZES = (20, 30, 40, 50, 100)
NAME_CHARS = 48  # a long merge name is cut here in the table; the record's detail has it whole
MODE_LABELS = {"weight_sum": "Weight sum", "add_difference": "Add difference", "triple_sum": "Triple sum",
               "sum_twice": "sum Twice"}


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1].rstrip() + "…"


def row(rec: Record) -> list[str]:
    """One record as the table shows it, to be scanned: ID and time first, the models by name, the mode,
    the ratios, a short name. Everything else is in ``detail_lines`` (shown when a row is picked)."""
    def model(label: str) -> str:
        ref = rec.models.get(label)
        return ref.name if ref is not None else ""

    return [str(rec.id), rec.time, model("A"), model("B"), model("C"), MODE_LABELS.get(rec.mode, rec.mode),
            "" if rec.calcmode == "normal" else rec.calcmode, _num(rec.alpha), _num(rec.beta),
            _short(rec.name, NAME_CHARS)]


def detail_lines(rec: Record) -> list[str]:
    """The whole record, a field a line, its recipe last (``history show`` and the History tab)."""
    import json

    from .analysis import block_names

    def weights(values) -> str:
        names = block_names(rec.architecture, len(values))
        return " ".join(f"{b}={v:g}" for b, v in zip(names, values))

    lines = [f"ID              : {rec.id}", f"time            : {rec.time}", f"name            : {rec.name}",
             f"architecture    : {rec.architecture or '?'}", f"mode            : {rec.mode}",
             f"calcmode        : {rec.calcmode}", f"alpha beta gamma: {rec.alpha:g} {rec.beta:g} {rec.gamma:g}"]
    for what, given, eff in (("alpha", rec.weights_alpha, rec.effective_alpha),
                             ("beta", rec.weights_beta, rec.effective_beta)):
        if given:
            lines.append(f"weights {what:<8}: {given}")
        if eff is not None:
            lines.append(f"effective {what:<6}: {weights(eff)}")
    for label, ref in rec.models.items():
        title = f"model {label}" if label != "VAE" else "VAE"
        lines.append(f"{title:<16}: {ref.name or '?'}  sha256 {ref.sha256 or ref.short or '?'}  {ref.path}".rstrip())
    if rec.elemental:
        lines.append("elemental       : " + rec.elemental.replace("\n", "\n" + " " * 18))
    if rec.include_mode != "Off":
        lines.append(f"{rec.include_mode.lower():<16}: {rec.include_exclude}")
    for title, value in (("adjust", rec.adjust), ("seed", rec.seed), ("random", rec.random and json.dumps(rec.random)),
                         ("save settings", rec.save_settings), ("output", rec.output), ("note", rec.note)):
        if value not in (None, ""):
            lines.append(f"{title:<16}: {value}")
    recipe = json.dumps(json.loads(rec.recipe_json), indent=2, ensure_ascii=False) if rec.recipe_json else "(none)"
    return lines + ["recipe          :", recipe]


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

"""``mergehistory.csv`` and its search index: locked appends, reads that survive damage, fast search.

The CSV is the truth: a spreadsheet opens it (UTF-8 with a byte-order mark, a header that names
every column, one record per line). ``mergehistory.index`` beside it is derived data, rebuilt from
the CSV whenever it does not match: for each record its ID, byte span in the CSV, mode, calcmode,
model names/hashes and lower-cased search text, so that a search over 100,000 records reads one
small file and never parses the CSV. Records on a result page are read by byte offset.

Writers hold ``mergehistory.csv.lock`` while they assign an ID and append; a reader that finds
rows the index does not cover takes the lock too, so it never mistakes a row being written for a
damaged one. A line cut short by a kill, or one damaged by hand, is reported and skipped.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import hashlib
import itertools
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import data_dir
from .lock import locked
from .record import COLUMNS, Record

FILE_NAME = "mergehistory.csv"
INDEX_MAGIC = "supermerger-history-index 1"
SAME_MERGE_WINDOW = 50  # how many of the newest records a repeated in-memory merge is looked for in
BOM = b"\xef\xbb\xbf"
LOCK_TIMEOUT = 30.0
_BINARY = getattr(os, "O_BINARY", 0)


@dataclass
class Page:
    records: list[Record]
    total: int  # matching records, all pages
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass
class _Index:
    """The index file's record lines, as read: ``text\tID\toffset\tend\tmode=M\tcalc=C\tmodels``.

    The search text comes first and holds no tab, so a word found in a line before its first tab
    is found in the text. A search scans all lines joined into one string with ``str.find`` (its
    cost grows with the matching lines, not with all lines) and never splits a line; the other
    fields are parsed only for the records shown, and for the model filter."""

    header_sig: str = ""
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # damaged lines inside the covered part
    tail_problems: list[str] = field(default_factory=list)  # an incomplete last line (not covered)
    covered: int = 0  # CSV bytes described (header, records and damaged lines)
    stamp: tuple = ()  # the CSV's (size, mtime_ns) when this was current
    _ids: list[int] | None = None
    _pos: dict[int, int] | None = None
    _blob: str | None = None  # the lines joined by newlines, for searching (None: join when needed)
    _starts: list[int] | None = None  # where each line starts in _blob, and its length at the end

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, rec: Record, offset: int, end: int) -> str:
        line = f"{rec.search_text()}\t{rec.id}\t{offset}\t{end}\tmode={rec.mode}\tcalc={rec.calcmode}\t{rec.model_text()}"
        self.lines.append(line)
        self._blob = self._starts = None
        if self._ids is not None:
            self._ids.append(rec.id)
        self._pos = None
        self.covered = max(self.covered, end)
        return line + "\n"

    def add_problem(self, message: str, offset: int, end: int) -> str:
        self.problems.append(message)
        self.covered = max(self.covered, end)
        return f"\t!\t{offset}\t{end}\t{message}\n"

    def fields(self, i: int) -> tuple[int, int, int]:
        """ID, offset and end of the ``i``-th record."""
        _text, rid, offset, end, _ = self.lines[i].split("\t", 4)
        return int(rid), int(offset), int(end)

    @property
    def ids(self) -> list[int]:
        if self._ids is None:
            self._ids = [int(line.split("\t", 2)[1]) for line in self.lines]
        return self._ids

    @property
    def max_id(self) -> int:
        return max(self.ids, default=0)

    def blob(self) -> tuple[str, list[int]]:
        if self._blob is None:
            self._blob = "\n".join(self.lines) + "\n"
        if self._starts is None:
            self._starts = list(itertools.accumulate((len(line) + 1 for line in self.lines), initial=0))
        return self._blob, self._starts

    def lines_with(self, needle: str, in_text: bool) -> list[int]:
        """The lines that contain ``needle`` (``in_text``: in their search text), in file order.
        One scan of the joined lines, which costs per matching line, not per line."""
        blob, starts = self.blob()
        find = blob.find
        out = []
        pos = find(needle)
        while pos >= 0:
            i = bisect.bisect_right(starts, pos) - 1
            # The first occurrence in a line is found (each scan starts at a line's start), so the
            # word is in the text iff this occurrence is before the line's first tab.
            if not in_text or pos < find("\t", starts[i]):
                out.append(i)
            pos = find(needle, starts[i + 1])
        return out

    def position(self, record_id: int) -> int | None:
        """Where ID ``record_id`` is (negative: counted from the newest, -1 = last)."""
        if record_id < 0:
            return len(self.lines) + record_id if -record_id <= len(self.lines) else None
        if self._pos is None:
            self._pos = {rid: i for i, rid in enumerate(self.ids)}
        return self._pos.get(record_id)


_cache: dict[str, _Index] = {}
_cache_lock = threading.Lock()


class History:
    """The merge history in ``path`` (default: ``mergehistory.csv`` in the data folder)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else data_dir() / FILE_NAME
        self.index_path = self.path.with_name(self.path.stem + ".index")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.notices: list[str] = []  # what reading found: damaged lines, a converted original file

    # -- writing ------------------------------------------------------------------------------
    def append(self, record: Record) -> Record:
        """Give ``record`` the next ID and append it; returns it with ``id`` set."""
        return self.append_many([record])[0]

    def append_many(self, records: list[Record], keep_ids: bool = False) -> list[Record]:
        """Append several records under one lock (imports); new IDs unless ``keep_ids``."""
        with self._locked():
            try:
                self._append_locked(records, keep_ids)
            except BaseException:
                self._forget()  # the cached index may hold records that were not written
                raise
        return records

    def _append_locked(self, records: list[Record], keep_ids: bool) -> None:
        idx = self._index(locked=True)
        if idx.header_sig and idx.header_sig != _sig(_header_line()):
            self.rewrite(self._records(idx))  # written by another version: bring it to these columns
            idx = self._index(locked=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _BINARY, 0o666)
        try:
            size = os.fstat(fd).st_size
            prefix = b""
            if size == 0:
                prefix = BOM + _header_line()
                idx = _Index(header_sig=_sig(_header_line()), covered=len(prefix))
                self._write_index(idx, [])
            next_id = idx.max_id + 1
            if size and _last_byte(fd, size) != b"\n":
                # A line cut short by a kill: end it, so that it stays one damaged line of its own.
                # (Its ID is not given again, in case the cut only lost the line break.)
                prefix = b"\n"
                os.lseek(fd, idx.covered, os.SEEK_SET)
                cut = re.match(rb"(\d{1,18}),", os.read(fd, 24))
                next_id = max(next_id, int(cut.group(1)) + 1 if cut else 0)
                msg = _damaged(idx, "is incomplete (a write that was interrupted)")
                self.notices.append(msg)
                self._append_index([idx.add_problem(msg, idx.covered, size + 1)])
            lines, chunks, pos = [], [prefix], size + len(prefix)
            for rec in records:
                if not keep_ids:
                    rec.id, next_id = next_id, next_id + 1
                line = rec.to_line()
                chunks.append(line)
                lines.append(idx.add(rec, pos, pos + len(line)))
                pos += len(line)
            _write_all(fd, b"".join(chunks))
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        idx.stamp = (st.st_size, st.st_mtime_ns)
        self._append_index(lines)
        self._remember(idx)

    def rewrite(self, records: list[Record]) -> None:
        """Replace the whole file by ``records`` (IDs kept); used to convert older layouts."""
        from ..io.atomic import atomic_open

        data = BOM + _header_line() + b"".join(r.to_line() for r in records)
        with atomic_open(self.path, overwrite=True, fsync=True) as f:
            f.write(data)
        with contextlib.suppress(OSError):
            self.index_path.unlink()
        with _cache_lock:
            _cache.pop(str(self.path), None)

    # -- reading ------------------------------------------------------------------------------
    def count(self) -> int:
        return len(self._index())

    def last_id(self) -> int | None:
        idx = self._index()
        return idx.fields(len(idx) - 1)[0] if len(idx) else None

    def ids(self) -> list[int]:
        return list(self._index().ids)

    def get(self, record_id: int) -> Record:
        """The record with ``record_id``; -1 is the newest, -2 the one before."""
        from . import HistoryError

        for attempt in (0, 1):
            idx = self._index()
            if not len(idx):
                raise HistoryError(f"There is no merge history yet ({self.path}).",
                                   "Every merge is recorded; merge something first.")
            i = idx.position(record_id)
            if i is None:
                raise HistoryError(f"History ID {record_id} does not exist: the IDs run from {idx.fields(0)[0]} to "
                                   f"{idx.fields(len(idx) - 1)[0]} ({len(idx)} records; -1 is the newest).")
            rid, offset, end = idx.fields(i)
            rec = self._read_at(offset, end)
            if rec is not None and rec.id == rid:
                return rec
            self._forget(rebuild=True)  # the file was edited under the index
        raise HistoryError(f"History record {record_id} cannot be read from {self.path}.")

    def records(self) -> list[Record]:
        """Every readable record, oldest first."""
        return self._records(self._index())

    def _records(self, idx: _Index) -> list[Record]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        header = _parse_header(data)
        out = []
        for i in range(len(idx)):
            _rid, offset, end = idx.fields(i)
            rec = _parse_line(header, data[offset:end])
            if isinstance(rec, Record):
                out.append(rec)
        return out

    def search(self, query: str = "", how: str = "or", model: str | None = None, mode: str | None = None,
               calcmode: str | None = None, page: int = 1, per_page: int = 20) -> Page:
        """Records whose text holds any (``or``) or all (``and``) of the space-separated words of
        ``query`` (case-insensitive substrings), newest first, one page of them."""
        from . import HistoryError

        if how not in ("or", "and"):
            raise HistoryError(f"Search mode {how!r}: use 'or' or 'and'.")
        if per_page < 1 or page < 1:
            raise HistoryError("Pages are counted from 1 and hold at least 1 record.")
        idx = self._index()
        hits = _matches(idx, query.lower().split(), how, model, mode, calcmode)
        start = (page - 1) * per_page
        chosen = hits[start:start + per_page]
        recs = []
        for i in chosen:
            rid, offset, end = idx.fields(i)
            rec = self._read_at(offset, end)
            if rec is None or rec.id != rid:
                self._forget(rebuild=True)
                return self.search(query, how, model, mode, calcmode, page, per_page)
            recs.append(rec)
        return Page(recs, len(hits), page, per_page)

    def same_merge(self, record: Record, recent: int = SAME_MERGE_WINDOW) -> Record | None:
        """A record among the ``recent`` newest of exactly this merge in memory (the same recipe, models of
        the same hashes, no output file), or None. Merge & Gen of an unchanged recipe, or XYZ cells that
        merge the same recipe again, reuse its ID instead of adding a record each time."""
        if record.output or not record.recipe_json or not os.path.exists(self.path):
            return None
        for old in self.search(per_page=recent).records:
            if not old.output and old.recipe_json == record.recipe_json:
                return old
        return None

    def problems(self) -> list[str]:
        """Damaged lines of the file (each is skipped), and what conversion of an older file found."""
        idx = self._index()
        return list(dict.fromkeys(self.notices + idx.problems + idx.tail_problems))

    # -- the index ----------------------------------------------------------------------------
    def _index(self, locked: bool = False) -> _Index:
        st = _stat(self.path)
        if st is None:
            return _Index()
        stamp = (st.st_size, st.st_mtime_ns)
        with _cache_lock:
            cached = _cache.get(str(self.path))
        if cached is not None and cached.stamp == stamp:
            return cached
        if not locked:
            idx = self._load_index(st.st_size)
            if idx is not None and idx.covered == st.st_size:  # current: no lock needed to read
                idx.stamp = stamp
                self._remember(idx)
                return idx
            try:
                with self._locked():
                    return self._index(locked=True)
            except OSError:  # locked too long, or a read-only folder: read what is there (a line
                pass  # being written may then look incomplete)
        return self._build(st, locked)

    def _build(self, st: os.stat_result, locked: bool) -> _Index:
        from .legacy import convert_original_file, is_original_header

        with open(self.path, "rb") as f:
            first = f.readline()
        if is_original_header(first):
            from . import HistoryError

            try:
                if not locked:
                    with self._locked():
                        return self._index(locked=True)
                self.notices += convert_original_file(self)
            except OSError as e:
                raise HistoryError(f"{self.path} was written by the original SuperMerger and could not be converted "
                                   f"to this version's columns: {e.strerror or e}.",
                                   "Make its folder writable, or move the file away and import it with "
                                   "`supermerger history import FILE`.") from None
            return self._index(locked=True)
        idx = self._load_index(st.st_size)
        if idx is not None and idx.covered == st.st_size:
            idx.stamp = (st.st_size, st.st_mtime_ns)
            self._remember(idx)
            return idx
        with open(self.path, "rb") as f:
            data = f.read()
        header_line = _first_line(data)
        header = _parse_header(data)
        fresh = idx is None
        if fresh:
            idx = _Index(header_sig=_sig(header_line), covered=_header_end(data))
        lines = _scan(idx, header, data, idx.covered)
        if locked:
            if fresh:
                self._write_index(idx, lines)
            else:
                self._append_index(lines)
        idx.stamp = (len(data), st.st_mtime_ns) if len(data) == st.st_size else ()
        self._remember(idx)
        return idx

    def _load_index(self, csv_size: int) -> _Index | None:
        """The index file, if it matches the CSV (header and last record); None to rebuild."""
        try:
            text = self.index_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        lines = text.split("\n")
        if not lines or not lines[0].startswith(INDEX_MAGIC + "\t"):
            return None
        idx = _Index(header_sig=lines[0].split("\t")[1])
        idx.lines = lines[1:-1]  # the last piece has no newline: empty, or a line being written
        try:
            if "\n\t!" not in text:
                idx._blob = text[len(lines[0]) + 1:len(text) - len(lines[-1])]  # the lines, joined already
            else:  # damaged CSV lines noted by an earlier scan
                idx.problems = [line.split("\t", 4)[4] for line in idx.lines if line.startswith("\t!")]
                ends = [int(line.split("\t", 4)[3]) for line in idx.lines if line.startswith("\t!")]
                idx.covered = max(ends)
                idx.lines = [line for line in idx.lines if not line.startswith("\t!")]
            if idx.lines:
                idx.covered = max(idx.covered, idx.fields(len(idx) - 1)[2])
        except (ValueError, IndexError):
            return None
        if not self._index_matches(idx, csv_size):
            return None
        return idx

    def _index_matches(self, idx: _Index, csv_size: int) -> bool:
        if idx.covered > csv_size:
            return False
        try:
            with open(self.path, "rb") as f:
                if _sig(_first_line(f.read(1 << 16))) != idx.header_sig:
                    return False
                if not len(idx):
                    return True
                rid, offset, end = idx.fields(len(idx) - 1)
                f.seek(offset)
                line = f.read(end - offset)
        except OSError:
            return False
        return line.startswith(f"{rid},".encode()) and line.endswith(b"\n")

    def _write_index(self, idx: _Index, lines: list[str]) -> None:
        from ..io.atomic import atomic_write_text

        head = f"{INDEX_MAGIC}\t{idx.header_sig}\n"
        with contextlib.suppress(Exception):  # the index is derived data: a failure costs speed only
            atomic_write_text(self.index_path, head + "".join(lines))

    def _append_index(self, lines: list[str]) -> None:
        if not lines:
            return
        with contextlib.suppress(OSError):
            with open(self.index_path, "a", encoding="utf-8", newline="") as f:
                f.write("".join(lines))

    def _remember(self, idx: _Index) -> None:
        with _cache_lock:
            _cache[str(self.path)] = idx

    def _forget(self, rebuild: bool = False) -> None:
        with _cache_lock:
            _cache.pop(str(self.path), None)
        if rebuild:
            with contextlib.suppress(OSError):
                self.index_path.unlink()

    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return locked(self.lock_path, LOCK_TIMEOUT)

    def _read_at(self, offset: int, end: int) -> Record | None:
        try:
            with open(self.path, "rb") as f:
                header = _parse_header(f.read(1 << 16))
                f.seek(offset)
                rec = _parse_line(header, f.read(end - offset))
        except OSError:
            return None
        return rec if isinstance(rec, Record) else None


# -- matching ---------------------------------------------------------------------------------
def _matches(idx: _Index, words: list[str], how: str, model: str | None, mode: str | None,
             calcmode: str | None) -> list[int]:
    """Positions of the matching records, newest first."""
    chosen: set[int] | None = None

    def narrow(found) -> None:
        nonlocal chosen
        chosen = set(found) if chosen is None else chosen.intersection(found)

    if mode:
        from ..merge.modes import get_mode

        narrow(idx.lines_with(f"\tmode={get_mode(mode).id}\t", in_text=False))
    if calcmode:
        from ..merge.calcmodes import get_calcmode

        narrow(idx.lines_with(f"\tcalc={get_calcmode(calcmode).id}\t", in_text=False))
    if model:
        needle = model.strip().lower()
        if len(needle) > 10 and all(ch in "0123456789abcdef" for ch in needle):
            needle = needle[:10]  # a full sha256: the index holds short hashes
        lines = idx.lines
        narrow(i for i in idx.lines_with(needle, in_text=False) if _model_matches(lines[i].rsplit("\t", 1)[1], needle))
    words = list(dict.fromkeys(words))
    if words and how == "and":
        # Scan for one word (the longest: likely the rarest), then test the others on its lines only.
        words.sort(key=len, reverse=True)
        lines = idx.lines
        found = idx.lines_with(words[0], in_text=True)
        for w in words[1:]:
            found = [i for i in found if -1 < lines[i].find(w) < lines[i].find("\t")]
        narrow(found)
    elif words:
        narrow(itertools.chain.from_iterable(idx.lines_with(w, in_text=True) for w in words))
    if chosen is None:
        return list(range(len(idx.lines) - 1, -1, -1))
    return sorted(chosen, reverse=True)


def _model_matches(field: str, needle: str) -> bool:
    """A model name contains ``needle``, or a hash starts with it."""
    return any(item[1:].startswith(needle) if item.startswith("#") else needle in item for item in field.split("\x1f"))


# -- CSV lines --------------------------------------------------------------------------------
def _header_line() -> bytes:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(COLUMNS)
    return buf.getvalue().encode("utf-8")


def _first_line(data: bytes) -> bytes:
    nl = data.find(b"\n")
    return data if nl < 0 else data[:nl + 1]


def _header_end(data: bytes) -> int:
    nl = data.find(b"\n")
    return len(data) if nl < 0 else nl + 1


def _parse_header(data: bytes) -> list[str]:
    line = _first_line(data)
    if line.startswith(BOM):
        line = line[len(BOM):]
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    return next(csv.reader([text]), [])


def _parse_line(header: list[str], line: bytes) -> Record | str | None:
    """The record on ``line``; a reason string when damaged; None for a blank line."""
    text = line.rstrip(b"\r\n")
    if not text.strip():
        return None
    try:
        fields = next(csv.reader([text.decode("utf-8")], strict=True))
        return Record.from_fields(header, fields)
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    except (ValueError, TypeError, KeyError, csv.Error) as e:  # JSONDecodeError is a ValueError
        return f"is damaged ({e})"


def _scan(idx: _Index, header: list[str], data: bytes, start: int) -> list[str]:
    """Index the lines of ``data`` from byte ``start``; returns the index file's new lines."""
    out = []
    idx.tail_problems = []
    pos = start
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:  # no newline yet: a write cut short (or in progress); not covered, so re-read later
            idx.tail_problems.append(_damaged(idx, "is incomplete (a write that was interrupted)"))
            break
        rec = _parse_line(header, data[pos:nl + 1])
        if isinstance(rec, Record):
            out.append(idx.add(rec, pos, nl + 1))
        elif isinstance(rec, str):
            out.append(idx.add_problem(_damaged(idx, rec), pos, nl + 1))
        else:
            idx.covered = nl + 1
        pos = nl + 1
    return out


def _damaged(idx: _Index, what: str) -> str:
    where = f"after record {idx.fields(len(idx) - 1)[0]}" if len(idx) else "before the first record"
    return f"{FILE_NAME}: the line {where} {what}; it is skipped."


def _sig(line: bytes) -> str:
    return hashlib.sha1(line.removeprefix(BOM)).hexdigest()


def _stat(path: Path) -> os.stat_result | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st if st.st_size > 0 else None


def _last_byte(fd: int, size: int) -> bytes:
    os.lseek(fd, size - 1, os.SEEK_SET)
    return os.read(fd, 1)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]

"""Merge IDs in generated images (spec §7): the ``Model:`` field of the infotext carries
`` ID <n>``, and the PNG's ``parameters`` text chunk carries the infotext.

PNG text chunks are read with the standard library (struct + zlib): ``tEXt`` (Latin-1),
``zTXt`` (compressed Latin-1) and ``iTXt`` (UTF-8, maybe compressed). Drawing the ID on the image
is the UI's part.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Iterable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def model_field_with_id(name: str, record_id: int) -> str:
    """The infotext ``Model:`` value for a merged model: its name (commas made spaces) and `` ID <n>``."""
    return f"{name.replace(',', ' ')} ID {record_id}"


def id_from_text(text: str) -> int | None:
    """The ID in an infotext: the text after the last `` ID `` up to the next comma, if it is a number.
    (An earlier `` ID `` is tried when the last one is not followed by a number, e.g. in a prompt.)"""
    end = len(text)
    while True:
        at = text.rfind(" ID ", 0, end)
        if at < 0:
            return None
        value = text[at + 4:].split(",", 1)[0].strip()
        if value.isdigit():
            return int(value)
        end = at


def ids_from_png_text(texts: str | Iterable[str]) -> list[int]:
    """The IDs in one infotext or several, each once, in order of first appearance."""
    if isinstance(texts, str):
        texts = [texts]
    ids = (id_from_text(t) for t in texts if t)
    return list(dict.fromkeys(i for i in ids if i is not None))


def png_text_chunks(path: str | os.PathLike) -> dict[str, str]:
    """Every text chunk of a PNG file, keyword -> text (ValueError if it is not a PNG)."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            raise ValueError(f"{os.fspath(path)!r} is not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind not in (b"tEXt", b"zTXt", b"iTXt"):
                if kind == b"IEND":
                    break
                f.seek(length + 4, os.SEEK_CUR)  # data and CRC
                continue
            data = f.read(length)
            f.read(4)
            parsed = _text_chunk(kind, data)
            if parsed is not None:
                out.setdefault(*parsed)
    return out


def ids_from_png(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[int]:
    """The merge IDs in the ``parameters`` text of PNG files (files without one are skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    texts = []
    for p in paths:
        try:
            texts.append(png_text_chunks(p).get("parameters", ""))
        except (OSError, ValueError, zlib.error):
            continue
    return ids_from_png_text(texts)


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str] | None:
    key, sep, rest = data.partition(b"\0")
    if not sep:
        return None
    try:
        if kind == b"tEXt":
            return key.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            return key.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
        compressed, _method = rest[0], rest[1]
        _lang, _, rest = rest[2:].partition(b"\0")
        _tkey, _, text = rest.partition(b"\0")
        return key.decode("latin-1"), (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (IndexError, zlib.error, UnicodeDecodeError):
        return None

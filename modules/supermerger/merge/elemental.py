"""Elemental merge: ``BLOCKS:ELEMENTS:RATIO`` entries that override the ratio of matching keys.

Syntax (elemental_en.md): entries separated by commas and/or newlines; BLOCKS are space-separated
block IDs of the model's own table, with ranges (``OUT03-OUT06``, either direction) and a leading
``NOT``; empty means every block. ELEMENTS are space-separated substrings of the key (partial
match), also with a leading ``NOT``; empty means every key of those blocks. Entries are applied
in order and the last matching entry wins. RATIO may be R, U or X: a ratio drawn per key with
the recipe's seed (``merge.dice``). With ``extended`` (SDXL only) BLOCKS name the 110 extended-XL IDs
(``IN715``, ``MID10``, ``OUT9``, ``TIME``...; ranges follow their order) and match a key's fine ID.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import Architecture
from ..errors import RecipeError, suggest
from .weights import is_number, number

ELEMENT_TOKENS = ("R", "U", "X")  # random ratios drawn for every matching key (spec §11.2)


@dataclass(frozen=True)
class ElementalEntry:
    index: int  # 1-based position among the entries
    line: int  # 1-based line in the text
    text: str
    blocks: frozenset[str] | None  # None = every block
    blocks_not: bool
    elements: tuple[str, ...]
    elements_not: bool
    ratio: float | None  # None when random
    random_token: str | None = None
    extended: bool = False  # BLOCKS are extended-XL IDs, matched against the key's fine ID

    def matches(self, key: str, block: str, fine: str | None = None) -> bool:
        name = fine if self.extended else block
        if self.blocks is not None and ((name in self.blocks) == self.blocks_not):
            return False
        if not self.elements:
            return True
        hit = any(e in key for e in self.elements)
        return hit != self.elements_not

    def describe(self) -> str:
        return f"elemental #{self.index} '{self.text}'"


def _split_entries(text: str) -> list[tuple[int, str]]:
    out = []
    for lineno, line in enumerate(text.splitlines() or [text], 1):
        for part in line.split(","):
            if part.strip():
                out.append((lineno, part.strip()))
    return out


def _check_fine(arch: Architecture, name: str, where: str) -> str:
    if name in arch.fine_blocks:
        return name
    raise RecipeError(f"Unknown extended XL ID {name!r}{where}.",
                      suggest(name, arch.fine_blocks) or f"Valid IDs: {' '.join(arch.fine_blocks)}")


def _expand_blocks(field: str, arch: Architecture, where: str, extended: bool = False
                   ) -> tuple[frozenset[str] | None, bool]:
    names = arch.fine_blocks if extended else arch.blocks
    check = (lambda tok: _check_fine(arch, tok, where)) if extended else (lambda tok: arch.check_block(tok, where))
    tokens = field.split()
    negate = bool(tokens) and tokens[0].upper() == "NOT"
    if negate:
        tokens = tokens[1:]
    if not tokens:
        return (None, False) if not negate else (frozenset(), True)
    blocks: set[str] = set()
    for tok in tokens:
        if "-" in tok:
            first, _, last = tok.partition("-")
            i, j = names.index(check(first)), names.index(check(last))
            lo, hi = min(i, j), max(i, j)
            blocks.update(names[lo:hi + 1])
        else:
            blocks.add(check(tok))
    return frozenset(blocks), negate


def parse_elemental(text: str | None, arch: Architecture, extended: bool = False) -> list[ElementalEntry]:
    """Parse elemental text against ``arch``'s block table (``extended``: its extended-XL IDs);
    errors name the entry and line."""
    entries: list[ElementalEntry] = []
    if not text or not text.strip():
        return entries
    if extended and not arch.fine_blocks:
        raise RecipeError(f"'use extended XL' names SDXL's 110 sub-block IDs; {arch.label} has none.",
                          "Turn it off (drop --extended-xl) and use the block IDs BASE, IN00 ... OUT11.")
    for index, (lineno, entry) in enumerate(_split_entries(text), 1):
        where = f" in elemental entry {index} ({entry!r}, line {lineno})"
        parts = entry.split(":")
        if len(parts) != 3:
            raise RecipeError(
                f"Elemental entry {index} ({entry!r}, line {lineno}) has {len(parts) - 1} ':' but needs exactly 2: "
                "BLOCKS:ELEMENTS:RATIO.",
                "Example: OUT03 OUT04:attn2 attn1.to_out:0.5 (leave BLOCKS or ELEMENTS empty for 'all').")
        block_field, element_field, ratio_field = (p.strip() for p in parts)
        blocks, blocks_not = _expand_blocks(block_field, arch, where, extended)
        el_tokens = element_field.split()
        el_not = bool(el_tokens) and el_tokens[0].upper() == "NOT"
        if el_not:
            el_tokens = el_tokens[1:]
        ratio: float | None = None
        token = None
        if ratio_field.upper() in ELEMENT_TOKENS:
            token = ratio_field.upper()
        elif is_number(ratio_field):
            ratio = number(ratio_field)
        else:
            raise RecipeError(f"Elemental entry {index} ({entry!r}, line {lineno}): ratio {ratio_field!r} is not a finite number.",
                              "The third field is the ratio, e.g. 0.5 (or R, U, X with the dice roll).")
        entries.append(ElementalEntry(index, lineno, entry, blocks, blocks_not, tuple(el_tokens), el_not, ratio, token,
                                      extended))
    return entries


def random_entries(blocks_by_token: dict[str, list[str]], arch: Architecture, first_index: int,
                   extended: bool = False) -> list[ElementalEntry]:
    """Entries ``<blocks>::R|U|X`` that the dice roll's ER / EU / EX tokens add: every key of
    those blocks gets its own random ratio (blocks the model does not have are left out).
    ``extended``: the names are SDXL's 110 extended IDs (from a 110-value list)."""
    known = arch.fine_blocks if extended else arch.blocks
    entries = []
    for token, names in blocks_by_token.items():
        names = [n for n in names if n in known]
        if not names:
            continue
        text = f"{' '.join(names)}::{token}"
        entries.append(ElementalEntry(first_index + len(entries), 0, text, frozenset(names), False, (), False,
                                      None, token, extended=extended))
    return entries


def resolve(entries: list[ElementalEntry], key: str, block: str, fine: str | None = None) -> ElementalEntry | None:
    """The last entry that matches ``key`` (which lies in ``block``; ``fine``: its extended-XL ID), or None."""
    hit = None
    for e in entries:
        if e.matches(key, block, fine):
            hit = e
    return hit

"""Include / Exclude: which keys take part in the merge at all.

A key is *listed* if its block is listed, or any listed element substring occurs in it, or
``VAE`` is listed and it is a VAE key, or ``Adjust`` is listed and it is one of the Adjust keys.
Exclude keeps listed keys as model A; Include merges only listed keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..arch import Architecture
from ..errors import RecipeError

_BLOCKISH = re.compile(r"^(BASE|IN\d+|M\d+|MID\d*|OUT\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class KeyFilter:
    mode: str  # "include" | "exclude"
    blocks: frozenset[str]
    elements: tuple[str, ...]
    vae: bool
    adjust: bool
    text: str

    def listed(self, key: str, block: str, component: str | None, is_adjust_key: bool) -> str | None:
        """Why the key is listed (for --explain), or None."""
        if block in self.blocks:
            return f"block {block}"
        if self.vae and component == "vae":
            return "VAE"
        if self.adjust and is_adjust_key:
            return "Adjust"
        for e in self.elements:
            if e in key:
                return f"element '{e}'"
        return None

    def merges(self, key: str, block: str, component: str | None, is_adjust_key: bool) -> tuple[bool, str]:
        why = self.listed(key, block, component, is_adjust_key)
        if self.mode == "exclude":
            return (why is None, f"excluded by {why}" if why else "")
        return (why is not None, f"included by {why}" if why else "not included")


def parse_filter(mode: str, text: str, arch: Architecture) -> KeyFilter:
    blocks: set[str] = set()
    elements: list[str] = []
    vae = adjust = False
    for tok in text.replace(",", " ").split():
        up = tok.upper()
        if up == "VAE":
            vae = True
        elif up == "ADJUST":
            adjust = True
        elif up == "PRINT":
            continue  # the original's "log each decision"; --explain does that here
        elif _BLOCKISH.match(tok):
            blocks.add(arch.check_block(up, f" in --{mode}"))
        else:
            elements.append(tok)
    if not (blocks or elements or vae or adjust):
        raise RecipeError(f"--{mode} is empty: list block IDs (e.g. IN04 OUT05), element substrings (attn2), VAE or Adjust.")
    return KeyFilter(mode, frozenset(blocks), tuple(elements), vae, adjust, text)

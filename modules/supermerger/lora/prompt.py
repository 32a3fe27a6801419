"""LoRAs named in a prompt (the LoRA tab's "get from prompt", spec §10.1).

The WebUI's extra-network tags: ``<lora:NAME:MULT>``, ``<lora:NAME:TE:UNET>``, named arguments
``te=``, ``unet=``, ``dyn=``, and the LoRA Block Weight extension's ``lbw=PRESET_OR_LIST`` (plus its
``start=``/``stop=``/``step=``, which change nothing in a merge). ``<lyco:...>`` reads the same way.
The ratio is the U-Net multiplier when one is given (``unet=`` or a 3rd numeric field), else the
text-encoder one (``te=`` or the 2nd field), else 1: a merge has one ratio per LoRA, and the
U-Net carries most of a LoRA. Block weights come from ``lbw=`` (or, as the original read it, a
3rd field that is not a number).
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import RecipeError
from ..merge.weights import is_number
from .blocks import LoraSpec

KINDS = ("lora", "lyco")
_TAG = re.compile(r"<\s*(lora|lyco)\s*:", re.IGNORECASE)
_IGNORED = ("start", "stop", "step", "dyn", "x")  # scheduling / dynamic-dim arguments: no effect on a merge


def specs_from_prompt(prompt: str) -> list[LoraSpec]:
    """Every ``<lora:...>`` / ``<lyco:...>`` tag of ``prompt`` as a LoraSpec, in order."""
    out = []
    for match in _TAG.finditer(prompt or ""):
        start = match.start()
        end = prompt.find(">", match.end())
        nxt = _TAG.search(prompt, match.end())
        if end < 0 or (nxt is not None and nxt.start() < end):
            raise RecipeError(f"The {match.group(1)} tag at character {start + 1} of the prompt has no closing '>': "
                              f"{_excerpt(prompt[start:])}")
        out.append(_parse_tag(prompt[match.end():end], prompt[start:end + 1], start))
    return out


def _parse_tag(body: str, tag: str, at: int) -> LoraSpec:
    where = f"{tag!r} (character {at + 1} of the prompt)"
    fields = [f.strip() for f in body.split(":")]
    name = fields[0]
    if not name:
        raise RecipeError(f"{where} names no LoRA.", "Write <lora:NAME:WEIGHT>.")
    named: dict[str, str] = {}
    positional: list[str] = []
    for f in fields[1:]:
        key, eq, value = f.partition("=")
        if eq:
            key = key.strip().lower()
            if key in ("te", "unet", "lbw"):
                named[key] = value.strip()
            elif key not in _IGNORED:
                raise RecipeError(f"{where}: unknown argument {key!r}.",
                                  "Known: te=, unet=, lbw= (and start=, stop=, step=, dyn=, which a merge ignores).")
        elif f:
            positional.append(f)
    te = named.get("te", positional[0] if positional else None)
    third = positional[1] if len(positional) > 1 else None
    unet = named.get("unet")
    blocks = named.get("lbw")
    if third is not None:
        if is_number(third):
            unet = unet if unet is not None else third
        elif blocks is None:
            blocks = third
    for label, value in (("weight", te), ("unet weight", unet)):
        if value is not None and not is_number(value):
            raise RecipeError(f"{where}: the {label} {value!r} is not a number.")
    ratio = float(unet if unet is not None else te if te is not None else 1.0)
    if blocks is not None and not blocks.strip():
        raise RecipeError(f"{where}: lbw= is empty.", "Give a preset name (e.g. lbw=OUTD) or a list of weights.")
    return LoraSpec(name, ratio, blocks.strip() if blocks else None)


def _excerpt(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def spec_lines(specs: Iterable[LoraSpec]) -> str:
    """The LoRA tab's spec box: one ``name:ratio[:blocks]`` per line."""
    return "\n".join(s.text() for s in specs)


def spec_items(text: str) -> list[str]:
    """The spec box's text as items for the engine: one per non-empty line (a line may itself hold
    several comma-separated items; an inline block list keeps its commas)."""
    return [line.strip().rstrip(",") for line in (text or "").splitlines() if line.strip().strip(",")]

"""Infotext ("PNG info") in the WebUI's format, for hosts that write their own.

    prompt
    Negative prompt: ...
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: <name>, ...

A value holding a comma, a colon or a newline is written as a JSON string, as the WebUI does, so
that its parser reads it back whole.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


def quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _number(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """``params`` in order; None values are left out."""
    fields = ", ".join(f"{k}: {quote(_number(v))}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{fields}".strip()


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, {key: value}) from an infotext (the inverse of ``format_infotext``)."""
    lines = text.strip().split("\n")
    last = lines.pop() if lines else ""
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    fields: dict[str, str] = {}
    i = 0
    while i < len(last):
        colon = last.find(":", i)
        if colon < 0:
            break
        key = last[i:colon].strip()
        j = colon + 1
        while j < len(last) and last[j] == " ":
            j += 1
        if j < len(last) and last[j] == '"':
            decoder = json.JSONDecoder()
            value, end = decoder.raw_decode(last, j)
        else:
            end = last.find(",", j)
            end = len(last) if end < 0 else end
            value = last[j:end].strip()
        fields[key] = value
        i = last.find(",", end)
        i = len(last) if i < 0 else i + 1
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields

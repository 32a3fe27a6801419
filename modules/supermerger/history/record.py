"""One history record, and its row in ``mergehistory.csv``.

A row is one physical line, so that a write cut short by a kill damages that line only and a
reader can always find where the next record starts. Free text typed by the user (weights,
elemental text, include/exclude, adjust, note) keeps its line breaks as ``\\n`` (and a backslash
as ``\\\\``); names and paths, which never hold line breaks in practice, get a space instead. The
complete recipe is stored as one-line JSON in the last column: restore uses it, never the
readable columns.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..merge.recipe import Recipe

MODEL_LABELS = ("A", "B", "C", "VAE")

COLUMNS = (
    "ID", "time", "name", "architecture", "mode", "calcmode", "alpha", "beta", "gamma",
    "weights alpha", "weights beta", "effective alpha", "effective beta",
    "model A", "model A hash", "model B", "model B hash", "model C", "model C hash", "VAE", "VAE hash",
    "elemental", "include/exclude mode", "include/exclude", "adjust", "seed", "random", "save settings",
    "output", "note", "models", "recipe",
)
_ESCAPED = {"weights alpha", "weights beta", "elemental", "include/exclude", "adjust", "note"}


@dataclass
class ModelRef:
    """A model as recorded: what it was called, where it was, and its hashes."""

    name: str = ""
    path: str = ""  # absolute; "" for a state dict that was merged from memory
    sha256: str = ""
    size: int | None = None
    short: str = ""  # the WebUI's 10-hex short hash (all a record of the original extension knows)

    def __post_init__(self) -> None:
        if self.sha256 and not self.short:
            self.short = self.sha256[:10]

    def describe(self) -> str:
        parts = [repr(self.name)] if self.name else []
        if self.short:
            parts.append(f"sha256 {self.short}")
        return ", ".join(parts) or "unknown"


@dataclass
class Record:
    id: int
    time: str
    name: str
    mode: str = "weight_sum"  # the mode's id (filters compare ids)
    calcmode: str = "normal"
    alpha: float = 0.5
    beta: float = 0.25
    gamma: float = 0.3
    architecture: str = ""
    weights_alpha: str = ""  # as given: comma text, a preset name, or "" (no MBW)
    weights_beta: str = ""
    effective_alpha: tuple[float, ...] | None = None  # per block, 0 where include/exclude skipped it
    effective_beta: tuple[float, ...] | None = None
    models: dict[str, ModelRef] = field(default_factory=dict)
    elemental: str = ""
    include_mode: str = "Off"  # Off / Include / Exclude
    include_exclude: str = ""
    adjust: str = ""
    seed: int | None = None
    random: dict | None = None
    save_settings: str = ""
    output: str = ""
    note: str = ""
    recipe_json: str = ""  # the complete recipe; "" when it could not be rebuilt (some imported rows)

    def recipe(self) -> Recipe:
        from . import HistoryError

        if not self.recipe_json:
            raise HistoryError(f"History record {self.id} has no replayable recipe: {self.note or 'unknown reason'}.")
        return Recipe.from_json(self.recipe_json, f"history record {self.id}")

    def search_text(self) -> str:
        """What a search looks in (lower case): the readable columns except paths, the effective
        weights (the name holds the weights as merged) and the JSON columns."""
        parts = [self.time, self.name, self.architecture, self.mode, self.mode.replace("_", " "), self.calcmode,
                 _num(self.alpha), _num(self.beta), _num(self.gamma), self.weights_alpha, self.weights_beta]
        for ref in self.models.values():
            parts += [ref.name, ref.short]
        parts += [self.elemental, self.include_mode, self.include_exclude, self.adjust,
                  "" if self.seed is None else str(self.seed), self.save_settings, _basename(self.output), self.note]
        # A search word holds no space, so it is found in the text iff it is found in one of its
        # space-separated tokens: a part already contained in the text, and a repeated token, add
        # nothing (this keeps the index small: model names and weights repeat in the name).
        text = ""
        for part in parts:
            part = _one_line(part).lower()
            if part and part not in text:
                text += " " + part
        return " ".join(dict.fromkeys(text.split()))

    def model_text(self) -> str:
        """The models' names and short hashes (lower case) for the model filter: items joined by
        \x1f, hashes marked with a leading '#' (a hash matches by prefix, a name by substring)."""
        parts = []
        for ref in self.models.values():
            if ref.name:
                parts.append(_one_line(ref.name).lower())
            if ref.short:
                parts.append("#" + ref.short.lower())
        return "\x1f".join(parts)

    # -- the CSV row --------------------------------------------------------------------------
    def to_row(self) -> list[str]:
        m = {label: self.models.get(label) or ModelRef() for label in MODEL_LABELS}
        values = {
            "ID": str(self.id), "time": self.time, "name": self.name, "architecture": self.architecture,
            "mode": self.mode, "calcmode": self.calcmode, "alpha": _num(self.alpha), "beta": _num(self.beta),
            "gamma": _num(self.gamma), "weights alpha": self.weights_alpha, "weights beta": self.weights_beta,
            "effective alpha": _nums(self.effective_alpha), "effective beta": _nums(self.effective_beta),
            "model A": m["A"].name, "model A hash": m["A"].short, "model B": m["B"].name, "model B hash": m["B"].short,
            "model C": m["C"].name, "model C hash": m["C"].short, "VAE": m["VAE"].name, "VAE hash": m["VAE"].short,
            "elemental": self.elemental, "include/exclude mode": self.include_mode,
            "include/exclude": self.include_exclude, "adjust": self.adjust,
            "seed": "" if self.seed is None else str(self.seed),
            "random": json.dumps(self.random, ensure_ascii=False) if self.random else "",
            "save settings": self.save_settings, "output": self.output, "note": self.note,
            "models": json.dumps({k: _ref_dict(v) for k, v in self.models.items()}, ensure_ascii=False),
            "recipe": self.recipe_json,
        }
        return [_escape(values[c]) if c in _ESCAPED else _one_line(values[c]) for c in COLUMNS]

    def to_line(self) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(self.to_row())
        return buf.getvalue().encode("utf-8")

    @classmethod
    def from_fields(cls, header: list[str], fields: list[str]) -> "Record":
        """The record in a parsed row; ValueError (with a reason) when the row is damaged."""
        if len(fields) != len(header):
            raise ValueError(f"{len(fields)} fields where the header has {len(header)}")
        v = {h: (_unescape(x) if h in _ESCAPED else x) for h, x in zip(header, fields)}
        get = v.get
        recipe_json = get("recipe", "")
        if recipe_json:
            json.loads(recipe_json)  # a line cut inside its last column fails here
        models = {k: ModelRef(**d) for k, d in json.loads(get("models") or "{}").items()}
        return cls(
            id=int(v["ID"]), time=get("time", ""), name=get("name", ""), mode=get("mode", ""),
            calcmode=get("calcmode", "") or "normal", alpha=_float(get("alpha"), 0.5), beta=_float(get("beta"), 0.25),
            gamma=_float(get("gamma"), 0.3), architecture=get("architecture", ""),
            weights_alpha=get("weights alpha", ""), weights_beta=get("weights beta", ""),
            effective_alpha=parse_floats(get("effective alpha", "")),
            effective_beta=parse_floats(get("effective beta", "")),
            models=models, elemental=get("elemental", ""), include_mode=get("include/exclude mode", "") or "Off",
            include_exclude=get("include/exclude", ""), adjust=get("adjust", ""),
            seed=int(get("seed")) if get("seed") else None,
            random=json.loads(get("random")) if get("random") else None,
            save_settings=get("save settings", ""), output=get("output", ""), note=get("note", ""),
            recipe_json=recipe_json)

    def to_dict(self) -> dict[str, Any]:
        """Everything, for ``history show --json`` and the UI (the recipe as an object)."""
        d = {c: x for c, x in zip(COLUMNS, self.to_row())}
        d.update(ID=self.id, alpha=self.alpha, beta=self.beta, gamma=self.gamma, seed=self.seed, random=self.random,
                 elemental=self.elemental, note=self.note, models={k: _ref_dict(r) for k, r in self.models.items()},
                 recipe=json.loads(self.recipe_json) if self.recipe_json else None)
        d["effective alpha"] = list(self.effective_alpha) if self.effective_alpha is not None else None
        d["effective beta"] = list(self.effective_beta) if self.effective_beta is not None else None
        for c in ("weights alpha", "weights beta", "include/exclude", "adjust"):
            d[c] = _unescape(d[c])
        return d


def parse_floats(text: str) -> tuple[float, ...] | None:
    text = text.strip()
    if not text:
        return None
    return tuple(float(t) for t in text.split(","))


def _ref_dict(ref: ModelRef) -> dict:
    return {"name": ref.name, "path": ref.path, "sha256": ref.sha256, "size": ref.size, "short": ref.short}


def _num(x: float) -> str:
    """Shortest exact text of a float: 0.5, 1, 0.1234567."""
    if isinstance(x, float) and math.isfinite(x) and x == int(x):
        return str(int(x))
    return repr(float(x))


def _nums(values) -> str:
    return "" if values is None else ",".join(_num(float(v)) for v in values)


def _float(text: str | None, default: float) -> float:
    return float(text) if text not in (None, "") else default


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text or "\t" in text:
        return " ".join(text.replace("\t", " ").splitlines())
    return text


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]

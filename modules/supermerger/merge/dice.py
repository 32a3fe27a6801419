"""Let the dice roll (spec §11.2): random block ratios and random elemental ratios, from a seed.

Tokens in a weight list, per block:

- ``R``: r, uniform in [0, 1);  ``U``: 1.5 − 2r (−0.5 … 1.5);
- ``X``: between the block's lower and upper limit, ``(lower − upper)·r + upper``;
- ``D``: around a midpoint, ``upper + lower·(r − 0.5)`` (upper = midpoint, lower = range);
- ``ER`` / ``EU`` / ``EX``: the block's ratio becomes 0 and an elemental entry ``<blocks>::R|U|X``
  gives every key of the block its own ratio (R = r, U = 1 − 2r, X between the block's limits).

Block values are then clamped to [clamp_lower, clamp_upper] and rounded to ``round`` decimals
(elemental values are rounded only). A lower limit written ``0.2R0.5`` means "0.2 with
probability 0.5": otherwise X uses 0 for both limits and D uses a range of 0.

Block draws reproduce the original's stream: numpy's legacy generator seeded with the seed,
3000 uniforms, alpha reading from position 0 and beta from position 50. The original drew the
``vRp`` chances from Python's unseeded global generator and the per-key values by key position;
here the chances are the next 3000 numbers of the same stream and each key's value comes from
(seed, key name), so everything replays from the recorded seed whatever the key order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Sequence

from ..errors import RecipeError, suggest
from .seeds import key_uniform

BLOCK_TOKENS = ("R", "U", "X", "D", "ER", "EU", "EX")
RANDOM_MODES = ("off",) + BLOCK_TOKENS + ("custom",)
TARGETS = ("alpha", "beta")
DEFAULT_CUSTOM = "U,0,0,0,0,0,0,0,0,0,0,0,0,R,R,R,R,R,R,R,R,R,R,R,R,R"
DRAWS = 3000
OFFSETS = {"alpha": 0, "beta": 50}

Limits = dict[str, tuple[float, float | None]]  # block -> (value, probability or None)


@dataclass(frozen=True)
class DiceSettings:
    """The dice-roll options of a recipe (``Recipe.random``), validated."""

    mode: str = "off"
    targets: tuple[str, ...] = ("alpha",)
    custom: str = DEFAULT_CUSTOM
    upper: str = "1"  # upper limit for X, midpoint for D: one value or one per block
    lower: str = "0"  # lower limit for X, range for D; 'vRp' = v with probability p
    clamp_upper: str = "1"  # every drawn block ratio is clamped to [clamp_lower, clamp_upper]
    clamp_lower: str = "0"
    round: int = 3

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "recipe") -> "DiceSettings":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: random must be an object of dice-roll settings, got {type(data).__name__}.")
        names = [f.name for f in fields(cls)]
        for k in data:
            if k not in names:
                raise RecipeError(f"{source}: unknown dice-roll setting random.{k}.",
                                  suggest(k, names) or "Settings: " + ", ".join(names))
        values = dict(data)
        mode = str(values.get("mode", "off")).strip()
        match = {m.lower(): m for m in RANDOM_MODES}.get(mode.lower())
        if match is None:
            raise RecipeError(f"{source}: random mode {mode!r} is not one of {', '.join(RANDOM_MODES)}.",
                              suggest(mode, RANDOM_MODES))
        values["mode"] = match
        targets = values.get("targets", ("alpha",))
        if isinstance(targets, str):
            targets = [t for t in targets.replace(" ", ",").split(",") if t]
        targets = tuple(str(t).strip().lower() for t in targets)
        for t in targets:
            if t not in TARGETS:
                raise RecipeError(f"{source}: random target {t!r} is not alpha or beta.")
        values["targets"] = targets
        for name in ("custom", "upper", "lower", "clamp_upper", "clamp_lower"):
            if name in values:
                values[name] = _as_text(values[name], f"{source}: random.{name}")
        rnd = values.get("round", 3)
        if isinstance(rnd, bool) or not isinstance(rnd, int) or not 0 <= rnd <= 15:
            raise RecipeError(f"{source}: random.round must be a whole number of decimals (0-15), got {rnd!r}.")
        return cls(**values)

    def token_list(self, n: int) -> str:
        """The weight list the random mode stands for: ``n`` times its token, or the custom list."""
        return self.custom if self.mode == "custom" else ",".join([self.mode] * n)


def _as_text(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise RecipeError(f"{where} must be a number, a comma list or a list, got {value!r}.")
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    raise RecipeError(f"{where} must be a number, a comma list or a list, got {value!r}.")


def _number(text: str, where: str) -> float:
    from .weights import is_number, number

    if not is_number(text):
        raise RecipeError(f"{where}: {text!r} is not a finite number.", "Use a decimal number such as 0.5.")
    return number(text)


def _limit(text: str, where: str, chance_ok: bool) -> tuple[float, float | None]:
    text = text.strip()
    if chance_ok and "R" in text.upper():
        value, _, p = text.upper().partition("R")
        return _number(value, where), _number(p, where)
    return _number(text, where), None


def limit_items(spec: str) -> list[str]:
    """The values of a limit setting (comma or newline separated)."""
    return [t.strip() for t in spec.replace("\n", ",").split(",") if t.strip()]


def per_block(spec: str, names: Sequence[str], what: str, chance_ok: bool = False, all_names=None) -> Limits:
    """One limit per name in ``names`` from one value (broadcast) or a comma list of limits that
    follows a weight list of the same length (or SD1's 26, matched by block name)."""
    items = limit_items(spec)
    if len(items) == 1:
        items = items * len(names)
    if len(items) == len(names):
        table = dict(zip(names, items))
    else:
        from ..arch import architectures

        by_len = {26: architectures()["sd1"].blocks}
        if all_names is not None:
            by_len[len(all_names)] = tuple(all_names)
        if len(items) not in by_len:
            raise RecipeError(f"Dice roll: {what} has {len(items)} values; give one value, or one per block "
                              f"({len(names)}).")
        table = dict(zip(by_len[len(items)], items))
        missing = [n for n in names if n not in table]
        if missing:
            raise RecipeError(f"Dice roll: {what} has no value for block {missing[0]}.")
    return {n: _limit(table[n], f"dice roll {what} ({n})", chance_ok) for n in names}


_BLOCK_DRAWS: dict[str, Callable[[float, float, float], float]] = {
    "R": lambda r, up, low: r,
    "U": lambda r, up, low: -2 * r + 1.5,
    "X": lambda r, up, low: (low - up) * r + up,
    "D": lambda r, up, low: up + low * (r - 0.5),
}
_ELEMENT_DRAWS: dict[str, Callable[[float, float, float], float]] = {
    "R": lambda r, up, low: r,
    "U": lambda r, up, low: -2 * r + 1,
    "X": lambda r, up, low: (low - up) * r + up,
}


class Dice:
    """The draws of one merge: ``resolve_list`` for weight lists, ``element_ratio`` per key."""

    def __init__(self, seed: int, settings: DiceSettings, arch):
        import numpy as np

        self.seed = seed
        self.settings = settings
        self.arch = arch
        stream = np.random.RandomState(seed)
        self.draws = stream.rand(DRAWS)
        self.chances = stream.rand(DRAWS)
        self._element_limits: tuple[bool, dict[str, tuple[float, float]]] | None = None

    def _element_limits_table(self) -> tuple[bool, dict[str, tuple[float, float]]]:
        """(by extended ID?, name -> (upper, lower)) for elemental draws: per block, or per
        extended ID when a limit is a 110-value extended-XL list."""
        fine = self.arch.fine_blocks
        by_fine = bool(fine) and len(fine) in (len(limit_items(self.settings.upper)),
                                               len(limit_items(self.settings.lower)))
        names = fine if by_fine else self.arch.blocks
        up = per_block(self.settings.upper, names, "upper limit", all_names=names)
        low = per_block(self.settings.lower, names, "lower limit", chance_ok=True, all_names=names)
        return by_fine, {k: (up[k][0], low[k][0]) for k in names}

    def resolve_list(self, items: Sequence[str], names: Sequence[str], which: str) -> tuple[list[str], dict[str, list[str]]]:
        """Replace the tokens of a weight list (positions named ``names``) by drawn numbers.

        Returns the list as text and, per elemental token (R/U/X), the blocks that ER/EU/EX named."""
        s = self.settings
        offset = OFFSETS[which] if len(items) <= OFFSETS["beta"] else (len(items) if which == "beta" else 0)
        up = per_block(s.upper, names, "upper limit", all_names=self.arch.blocks)
        low = per_block(s.lower, names, "lower limit", chance_ok=True, all_names=self.arch.blocks)
        cup = per_block(s.clamp_upper, names, "clamp upper", all_names=self.arch.blocks)
        clow = per_block(s.clamp_lower, names, "clamp lower", all_names=self.arch.blocks)
        out: list[str] = []
        elements: dict[str, list[str]] = {}
        for i, (name, item) in enumerate(zip(names, items)):
            token = str(item).strip().upper()
            if token in ("ER", "EU", "EX"):
                elements.setdefault(token[1], []).append(name)
                out.append("0")
                continue
            draw = _BLOCK_DRAWS.get(token)
            if draw is None:
                out.append(str(item))
                continue
            hi, lo = up[name][0], low[name][0]
            chance = low[name][1]
            if chance is not None and self.chances[i + offset] > chance:
                lo = 0.0
                if token == "X":
                    hi = 0.0
            value = draw(float(self.draws[i + offset]), hi, lo)
            value = max(min(value, cup[name][0]), clow[name][0])
            out.append(repr(round(value, s.round)))
        return out, elements

    def element_ratio(self, token: str, key: str, block: str, fine: str | None = None) -> float:
        """The random ratio of one key for an elemental R / U / X entry (``fine``: the key's
        extended-XL ID, used when the limits are given per extended ID)."""
        if self._element_limits is None:
            self._element_limits = self._element_limits_table()
        by_fine, table = self._element_limits
        hi, lo = table.get(fine if by_fine else block, (1.0, 0.0))
        r = key_uniform(self.seed, key, "elemental")
        return round(_ELEMENT_DRAWS[token](r, hi, lo), self.settings.round)

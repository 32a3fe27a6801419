"""A merge recipe: plain, JSON-serialisable data describing one merge completely.

The recipe is what the CLI and the UI build, what ``--dry-run`` validates, what history stores
and what the output file carries in its metadata, so that any merge can be replayed exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError, suggest
from .calcmodes import get_calcmode
from .dice import DiceSettings
from .seeds import SEED_LIMIT

RECIPE_VERSION = 1
DTYPE_CHOICES = ("keep", "fp16", "bf16", "fp32")


@dataclass
class Recipe:
    model_a: str | None = None
    model_b: str | None = None
    model_c: str | None = None
    mode: str = "weight_sum"
    calcmode: str = "normal"
    alpha: float = 0.5
    beta: float = 0.25
    gamma: float = 0.3
    mbw_alpha: str | list[float] | None = None
    mbw_beta: str | list[float] | None = None
    elemental: str = ""
    # SDXL: elemental BLOCKS name the 110 "extended XL" IDs (IN715, MID10, OUT9, TIME...) instead of the
    # 20 blocks (the original's "use extended XL" checkbox)
    extended_xl: bool = False
    # The block whose ratio the U-Net's time embedding (time_embed.*, 4 tensors) takes: None = IN00, as the
    # spec says; "OUT11" replays MBW merges of the original's releases that put it there (README, MBW).
    time_embed_block: str | None = None
    include: str | None = None
    exclude: str | None = None
    adjust: str = ""
    dtype: str = "keep"
    prune: bool = False
    reset_clip_ids: bool = False
    bake_vae: str | None = None
    output: str | None = None
    overwrite: bool = False
    # Write the recipe, model names and hashes into a saved .safetensors (False: only "format": "pt",
    # for a file that should not say what it was made from; such a file cannot replay its merge).
    metadata: bool = True
    # Seed of every random draw (dice-roll ratios, plus random, dare): None or -1 draws one when the
    # merge needs it, and the recipe recorded with the merge carries the seed that was used.
    seed: int | None = None
    # Dice-roll settings (merge.dice.DiceSettings as a dict): mode, targets, custom, upper, lower,
    # clamp_upper, clamp_lower, round. None = off.
    random: dict | None = None
    device: str = "cpu"
    # Recorded by the engine (hashes of the inputs), so a replay can check it got the same files.
    hashes: dict[str, str] = field(default_factory=dict)
    version: int = RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> "Recipe":
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe must be a JSON object, got {type(data).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            k = unknown[0]
            raise RecipeError(f"{source}: unknown recipe field {k!r}.", suggest(k, names) or
                              "Fields: " + ", ".join(sorted(names)))
        version = data.get("version", RECIPE_VERSION)
        if not isinstance(version, int) or version > RECIPE_VERSION:
            raise RecipeError(f"{source}: recipe version {version!r} is newer than this SuperMerger understands "
                              f"({RECIPE_VERSION}); update SuperMerger.")
        recipe = cls(**data)
        recipe.check_types(source)
        return recipe

    @classmethod
    def from_json(cls, text: str, source: str = "recipe") -> "Recipe":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"Recipe file {str(path)!r} does not exist.") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"Cannot read recipe file {str(path)!r}: {e}.") from None
        return cls.from_json(text, str(path))

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def check_types(self, source: str = "recipe") -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RecipeError(f"{source}: {name} must be a finite number, got {value!r}.")
            setattr(self, name, float(value))
        for name in ("prune", "reset_clip_ids", "overwrite", "metadata", "extended_xl"):
            if not isinstance(getattr(self, name), bool):
                raise RecipeError(f"{source}: {name} must be true or false, got {getattr(self, name)!r}.")
        if self.dtype not in DTYPE_CHOICES:
            raise RecipeError(f"{source}: dtype {self.dtype!r} is not one of {', '.join(DTYPE_CHOICES)}.",
                              suggest(self.dtype, DTYPE_CHOICES))
        if not isinstance(self.calcmode, str):
            raise RecipeError(f"{source}: calcmode must be a name, got {self.calcmode!r}.")
        get_calcmode(self.calcmode)  # an unknown name fails here, with the nearest suggested
        if self.time_embed_block is not None and not isinstance(self.time_embed_block, str):
            raise RecipeError(f"{source}: time_embed_block must be a block ID such as OUT11, "
                              f"got {self.time_embed_block!r}.")
        if self.include and self.exclude:
            raise RecipeError(f"{source}: include and exclude cannot both be set; use one of them.")
        for name in ("mbw_alpha", "mbw_beta"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, list, tuple)):
                raise RecipeError(f"{source}: {name} must be a comma list, a list of numbers or a preset name.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise RecipeError(f"{source}: seed must be an integer, got {self.seed!r}.")
        if self.seed is not None and not -1 <= self.seed <= SEED_LIMIT:
            raise RecipeError(f"{source}: seed must be -1 (draw one) or between 0 and {SEED_LIMIT}, got {self.seed}.")
        if self.random is not None:
            self.random = DiceSettings.from_dict(self.random, source).to_dict()

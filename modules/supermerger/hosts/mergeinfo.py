"""What an image says about the merge it came from: infotext fields, the ID drawn on it, the PNG.

Every image generated from a merge carries, in its infotext (the PNG's ``parameters`` text chunk):

- ``Model: <merge name> ID <n>`` — the WebUI's model field with the merge-history ID appended
  (``history.model_field_with_id``), which ``supermerger history ids IMAGE.png`` reads back;
- ``SuperMerger recipe: {...}`` — the recipe as compact JSON (``RECIPE_FIELD``): only the values
  that differ from the defaults, models by file name (paths stay private; the history record
  under the ID has the full paths and hashes). ``Recipe.from_json`` reads it back.

Host-independent: the standalone host and the WebUI adapter both use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RECIPE_FIELD = "SuperMerger recipe"
_NOT_RECORDED = ("output", "overwrite", "device", "hashes")
_MODELS = ("model_a", "model_b", "model_c", "bake_vae")


def compact_recipe(recipe) -> str:
    """The recipe as one-line JSON: values that differ from the defaults, models by file name."""
    from ..merge.recipe import Recipe

    default = Recipe().to_dict()
    out: dict[str, Any] = {}
    for key, value in recipe.to_dict().items():
        if key in _NOT_RECORDED:
            continue
        if key in _MODELS and value:
            value = Path(str(value)).name
        if key in ("version", "mode") or value != default.get(key):
            out[key] = value
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def merge_fields(name: str, result=None, recipe=None) -> dict[str, str]:
    """Infotext fields for images of the merge ``result`` (an ``api.MergeResult``) named ``name``:
    ``Model`` with the history ID when the merge was recorded, and the recipe."""
    from ..history import model_field_with_id

    fields: dict[str, str] = {}
    history_id = getattr(result, "history_id", None)
    fields["Model"] = model_field_with_id(name, history_id) if history_id is not None else name
    recipe = recipe if recipe is not None else getattr(getattr(result, "plan", None), "recipe", None)
    if recipe is not None:
        fields[RECIPE_FIELD] = compact_recipe(recipe)
    return fields


def draw_id(image, history_id: int | str):
    """The image with ``ID <n>`` written top-left in black on a white box (Pillow's default font), as the
    original does; a new image, the input is left as it is."""
    from PIL import ImageDraw, ImageFont

    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    text = f"ID {history_id}"
    left, top, right, bottom = draw.textbbox((2, 2), text, font=font)
    draw.rectangle((0, 0, right + 2, bottom + 2), fill="white")
    draw.text((2, 2), text, fill="black", font=font)
    return out


def save_png(image, path: str | os.PathLike, infotext: str) -> Path:
    """Write ``image`` as PNG with ``infotext`` in the ``parameters`` text chunk (as the WebUI does;
    UTF-8 text goes into an iTXt chunk)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    try:
        infotext.encode("latin-1")
        info.add_text("parameters", infotext)
    except UnicodeEncodeError:
        info.add_itxt("parameters", infotext)
    path = Path(path)
    image.save(path, format="PNG", pnginfo=info)
    return path


def next_image_number(folder: str | os.PathLike) -> int:
    """The number of the next image in ``folder`` (files are ``NNNNN-SEED.png``, as the WebUI names them)."""
    import re
    from pathlib import Path

    numbers = [int(m.group(1)) for p in Path(folder).glob("*.png") if (m := re.match(r"(\d+)-", p.name))]
    return max(numbers, default=-1) + 1


def save_images(folder: str | os.PathLike, images, infotexts, seeds) -> list:
    """Write generated images as ``NNNNN-SEED.png`` (numbering on from the folder's last) with their infotexts."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = next_image_number(folder)
    return [save_png(image, folder / f"{n + i:05d}-{seed}.png", info)
            for i, (image, info, seed) in enumerate(zip(images, infotexts, seeds))]

"""Architectures as data: block tables, key -> block rules, detection, presets.

Every block ID list in SuperMerger comes from the JSON files in ``arch/data``; MBW, elemental
merge, include/exclude, the UI sliders and the documentation tables all read the same table.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable, Mapping, Sequence

from ..errors import ArchitectureError, suggest

_DATA = "supermerger.arch.data"


def _load_json(name: str) -> dict:
    return json.loads(resources.files(_DATA).joinpath(name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class BlockRule:
    pattern: re.Pattern
    template: str

    def block_for(self, key: str) -> str | None:
        m = self.pattern.match(key)
        if m is None:
            return None
        return self.template.format(*(int(g) for g in m.groups()))


@dataclass(frozen=True)
class Architecture:
    """One model family: its block IDs and how state-dict keys map onto them."""

    id: str
    label: str
    blocks: tuple[str, ...]
    rules: tuple[BlockRule, ...]
    default_block: str
    components: Mapping[str, tuple[str, ...]]
    detect: Mapping[str, Sequence[str]]
    modelspec_architecture: str
    adjust_color_vectors: Mapping[str, Sequence[float]]
    ignored_keys: frozenset[str]
    drop_on_save: tuple[str, ...] = ()
    from_26: tuple[str, ...] | None = None
    clip_position_ids: str | None = None
    fine_blocks: tuple[str, ...] = ()  # SDXL's 110 "extended XL" IDs (first = the base value)
    fine_prefixes: Mapping[str, str] = field(default_factory=dict)
    fine_base_slots: frozenset[str] = frozenset()  # slots listed but not honoured: they take the base value
    raw: Mapping = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def block_of(self, key: str) -> str:
        """The block ID (e.g. ``IN04``) a state-dict key belongs to."""
        for rule in self.rules:
            block = rule.block_for(key)
            if block is not None:
                return block
        return self.default_block

    def fine_of(self, key: str) -> str | None:
        """The extended-XL ID of a key (``IN715``, ``MID10``, ``OUT9``, ``TIME``...), or None
        when the architecture has no fine table or the key lies outside it (it takes the base value)."""
        if not self.fine_blocks:
            return None
        for prefix, fine in self.fine_prefixes.items():
            if key.startswith(prefix):
                return fine
        return fine_unet_id(key)

    def component_of(self, key: str) -> str | None:
        """'unet', 'text_encoder', 'vae' or None (buffers, EMA, anything else)."""
        for name, prefixes in self.components.items():
            if key.startswith(tuple(prefixes)):
                return name
        return None

    def block_index(self, block: str) -> int:
        return self.blocks.index(block)

    def check_block(self, block: str, where: str = "") -> str:
        """Return ``block`` if this architecture has it, else raise with a suggestion."""
        if block in self.blocks:
            return block
        hint = suggest(block, self.blocks)
        valid = f"{self.label} blocks are {self.blocks[0]}, {self.blocks[1]}-{self.blocks[-1]}"
        from ..errors import RecipeError

        raise RecipeError(
            f"Unknown block ID {block!r}{where}. {valid}.",
            hint or f"Valid IDs: {' '.join(self.blocks)}",
        )


_FINE_UNET = re.compile(r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.(\d+)\.?"
                        r"(?:(\d+)\.)?(?:.*?transformer_blocks\.(\d+)\.)?")
_FINE_PART = {"input_blocks": "IN", "middle_block": "MID", "output_blocks": "OUT"}


def fine_unet_id(key: str) -> str | None:
    """The extended-XL naming rule (spec §3.2): part + block index + sub-module index, plus the
    transformer-block index inside ``transformer_blocks.K``: ``input_blocks.7.1.transformer_blocks.5.*``
    is ``IN715``. The middle block has no sub-modules, so ``middle_block.M`` is ``MID<M>0``."""
    m = _FINE_UNET.match(key)
    if m is None:
        return None
    part, first, second, tb = m.groups()
    if part == "middle_block":
        block, sub = first, "0"
    else:
        if second is None:
            return None
        block, sub = first, second
    return f"{_FINE_PART[part]}{block}{sub}{tb if tb is not None else ''}"


def _architecture_from(data: dict) -> Architecture:
    return Architecture(
        id=data["id"],
        label=data["label"],
        blocks=tuple(data["blocks"]),
        rules=tuple(BlockRule(re.compile(r["pattern"]), r["block"]) for r in data["block_rules"]),
        default_block=data["default_block"],
        components={k: tuple(v) for k, v in data["components"].items()},
        detect=data["detect"],
        modelspec_architecture=data["modelspec_architecture"],
        adjust_color_vectors=data["adjust_color_vectors"],
        ignored_keys=frozenset(data.get("ignored_keys", ())),
        drop_on_save=tuple(data.get("drop_on_save", ())),
        from_26=tuple(data["from_26"]) if data.get("from_26") else None,
        clip_position_ids=data.get("clip_position_ids"),
        fine_blocks=tuple(data.get("fine_blocks", ())),
        fine_prefixes=dict(data.get("fine_prefixes", {})),
        fine_base_slots=frozenset(data.get("fine_base_slots", ())),
        raw=data,
    )


@functools.lru_cache(maxsize=None)
def architectures() -> dict[str, Architecture]:
    """All supported architectures by id ('sd1', 'sd2', 'sdxl')."""
    order = _load_json("detection.json")["detect_order"]
    return {name: _architecture_from(_load_json(f"{name}.json")) for name in order}


def get(arch_id: str) -> Architecture:
    archs = architectures()
    if arch_id not in archs:
        raise ArchitectureError(f"Unknown architecture {arch_id!r}.", suggest(arch_id, archs) or
                                f"Known: {', '.join(archs)}")
    return archs[arch_id]


def _matches(rule: Mapping[str, Sequence[str]], keys: Sequence[str]) -> bool:
    ok = True
    if "all_of" in rule:
        ok &= all(any(k.startswith(p) for k in keys) for p in rule["all_of"])
    if "any_contains" in rule:
        ok &= any(s in k for s in rule["any_contains"] for k in keys)
    return ok


def detect(keys: Iterable[str], shapes: Mapping[str, Sequence[int]] | None = None,
           source: str = "model") -> Architecture:
    """Recognise the architecture of a state dict from its key names (and a shape for UNet-only files).

    Raises ArchitectureError for recognised-but-unsupported families (Flux, SD3, SDXL refiner)
    and for files that are not Stable Diffusion checkpoints at all.
    """
    keys = list(keys)
    table = _load_json("detection.json")
    for refused in table["refused"]:
        if _matches(refused["detect"], keys):
            raise ArchitectureError(f"{source}: {refused['reason']}",
                                    "Supported today: SD1.x, SD2.x and SDXL base checkpoints.")
    for arch in architectures().values():
        if _matches(arch.detect, keys):
            return arch
    # UNet-only files: no text encoder keys to go by.
    if any(k.startswith("model.diffusion_model.label_emb.") for k in keys):
        return get("sdxl")
    probe = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if shapes is not None and probe in shapes:
        context = shapes[probe][1]
        return get("sd2" if context == 1024 else "sd1")
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return get("sd1")
    sample = ", ".join(keys[:3]) or "no tensors at all"
    raise ArchitectureError(
        f"{source} does not look like a Stable Diffusion checkpoint (first keys: {sample}).",
        "SuperMerger merges SD1.x, SD2.x and SDXL checkpoints in the original (LDM/SGM) layout; "
        "LoRA files belong in the LoRA tools, diffusers folders must be converted first.")

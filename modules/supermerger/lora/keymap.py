"""The table from LoRA module names to checkpoint keys, built from a checkpoint's own keys.

For every weight a LoRA can target (U-Net linear and conv weights, text-encoder linear layers,
each third of a fused OpenCLIP ``in_proj_weight``) the table holds every name LoRA files give it:
kohya names in both U-Net namings (diffusers and LDM paths), and, through
:func:`lookup_name`, the dotted diffusers / PEFT names (``unet.down_blocks.0...to_q``,
``text_encoder.text_model...``), old diffusers attention-processor names and LDM-dotted names
(``diffusion_model.input_blocks...``). A file's module that is not in the table is reported, never
dropped silently.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Sequence

from .. import arch as archmod
from ..arch import Architecture
from ..errors import ArchitectureError
from .names import diffusers_unet_path, hf_clip_paths, kohya_name

Shape = tuple[int, ...]


@functools.lru_cache(maxsize=None)
def _naming() -> dict:
    return json.loads(resources.files("supermerger.lora.data").joinpath("keymap.json").read_text("utf-8"))


@dataclass(frozen=True)
class Target:
    """One weight (or one third of a fused weight) a LoRA module can change."""

    key: str  # checkpoint key
    shape: Shape  # shape of the part changed (a third of in_proj_weight for q/k/v)
    block: str  # block ID (arch table), for block weights
    kind: str  # "transformer" | "conv" | "other" (U-Net), "text" (text encoders)
    name: str  # canonical kohya module name, used when writing LoRA files
    rows: tuple[int, int] | None = None  # rows [start, end) of the key's weight, for fused q/k/v

    @property
    def id(self) -> tuple[str, tuple[int, int] | None]:
        return self.key, self.rows


_TRANSFORMER = re.compile(r"(?:^|\.)(?:transformer_blocks|proj_in|proj_out)(?:\.|$)")
_CONV = re.compile(r"(?:\.(?:in_layers\.2|out_layers\.3|emb_layers\.1|skip_connection|op|conv))$")


def unet_kind(ldm_path: str) -> str:
    """'transformer' (what a LoRA trains by default), 'conv' (what LoCon adds: ResBlocks,
    down/upsamplers) or 'other' (time/label embedding, input and output convolutions)."""
    if _TRANSFORMER.search(ldm_path):
        return "transformer"
    if _CONV.search(ldm_path) and not ldm_path.startswith("input_blocks.0."):
        return "conv"
    return "other"


class KeyMap:
    """LoRA module name -> :class:`Target` for one architecture and one set of checkpoint keys."""

    def __init__(self, arch: Architecture, items: Iterable[tuple[str, Shape]]):
        self.arch = arch
        naming = _naming()[arch.id]
        self.text_encoders = naming["text_encoders"]
        self.by_name: dict[str, Target] = {}
        self.targets: list[Target] = []  # one per (key, rows), in checkpoint order
        unet_prefix = naming["unet_prefix"]
        for key, shape in items:
            shape = tuple(shape)
            if not key.endswith(".weight") and not key.endswith("in_proj_weight"):
                continue
            if key.startswith(unet_prefix):
                if len(shape) not in (2, 4):
                    continue
                path = key[len(unet_prefix):-len(".weight")]
                ldm = kohya_name("lora_unet", path)
                diff = diffusers_unet_path(path)
                dname = kohya_name("lora_unet", diff) if diff else None
                canonical = dname if naming["unet_naming"] == "diffusers" and dname else ldm
                target = Target(key, shape, arch.block_of(key), unet_kind(path), canonical)
                self._add(target, ldm, dname)
                continue
            for te in self.text_encoders:
                if key.startswith(te["prefix"]):
                    self._add_text(te, key, shape)
                    break

    def _add(self, target: Target, *names: str | None) -> None:
        self.targets.append(target)
        for n in names:
            if n:
                self.by_name.setdefault(n, target)

    def _add_text(self, te: dict, key: str, shape: Shape) -> None:
        rest = key[len(te["prefix"]):]
        block = self.arch.block_of(key)
        if te["layout"] == "hf":
            if len(shape) != 2 or not rest.endswith(".weight") or "embedding" in rest:
                return
            name = kohya_name(te["kohya"], rest[: -len(".weight")])
            self._add(Target(key, shape, block, "text", name), name)
            return
        for path, third in hf_clip_paths(rest):
            rows = None
            part = shape
            if third is not None:
                n = shape[0] // 3
                rows = (third * n, (third + 1) * n)
                part = (n,) + tuple(shape[1:])
            name = kohya_name(te["kohya"], path)
            self._add(Target(key, part, block, "text", name, rows), name)

    # -- lookup ----------------------------------------------------------------------------------
    def lookup(self, module_name: str) -> Target | None:
        return self.by_name.get(lookup_name(module_name, self))

    def peft_prefixes(self) -> dict[str, str]:
        """``text_encoder`` -> ``lora_te`` (SD1/SD2) or ``lora_te1`` (SDXL), ``text_encoder_2`` -> ``lora_te2``."""
        return {te["peft"]: te["kohya"] for te in self.text_encoders}


# Old diffusers attention processors: ``attn1.processor.to_q_lora`` is ``attn1.to_q``.
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")
_WRAPPERS = (".lora_linear_layer", ".lora")  # LoRACompatibleLinear / text-encoder patching


def lookup_name(module_name: str, keymap: KeyMap | None = None) -> str:
    """A file's module name in kohya form (``lora_unet_...`` / ``lora_te*_...``), the table's key.

    kohya names pass through; dotted diffusers / PEFT names are rewritten:
    ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``.
    """
    if module_name.startswith("lora_te1_") and keymap is not None and len(keymap.text_encoders) == 1:
        return keymap.text_encoders[0]["kohya"] + module_name[len("lora_te1"):]  # some SD1 tools write te1
    if module_name.startswith("lora_") or "." not in module_name:
        return module_name
    name = _PROCESSOR.sub(lambda m: "." + m[1] + (".0" if m[1] == "to_out" else ""), module_name)
    for w in _WRAPPERS:
        if name.endswith(w):
            name = name[: -len(w)]
    name = name.removeprefix("base_model.model.")
    te = keymap.peft_prefixes() if keymap else {"text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
    head, _, rest = name.partition(".")
    if head in ("unet", "diffusion_model", "model") and rest:
        rest = rest.removeprefix("diffusion_model.")
        return kohya_name("lora_unet", rest)
    if head in te and rest:
        return kohya_name(te[head], rest)
    if head == "text_model":  # a bare text encoder (PEFT on CLIP alone)
        return kohya_name(te.get("text_encoder", "lora_te"), name)
    return kohya_name("lora_unet", name)  # a bare U-Net (PEFT on the UNet2DConditionModel alone)


@functools.lru_cache(maxsize=8)
def keymap_for(arch_id: str, keys: tuple[tuple[str, Shape], ...] | None = None) -> KeyMap:
    """The table of ``arch_id``; from the given ``(key, shape)`` items, or from the architecture's
    full-size key inventory (real names and shapes) when None."""
    if keys is None:
        from ..testing.synthetic import key_shapes

        keys = tuple(key_shapes(arch_id, "full"))
    return KeyMap(archmod.get(arch_id), keys)


def keymap_from(arch: Architecture, shapes: dict[str, Sequence[int]]) -> KeyMap:
    return keymap_for(arch.id, tuple((k, tuple(s)) for k, s in shapes.items()))


def detect_lora_arch(modules: Iterable, metadata: dict | None = None, source: str = "LoRA") -> Architecture:
    """The family a LoRA was made for, from its module names and ΔW shapes (header only).

    Names tell SDXL from SD1/SD2 (both of which use the same names); shapes, compared with the
    real (full-size) weights, tell SD1 from SD2. A LoRA whose shapes fit no full-size model (tiny
    test files) goes by names, then by its ``ss_v2`` / ``ss_base_model_version`` metadata, then SD1.
    """
    from .formats import LoraMismatchError, fits

    modules = [m for m in modules if m.supported]
    names = [m.name for m in modules]
    if any("double_blocks" in n or "single_blocks" in n for n in names):
        raise ArchitectureError(f"{source} is a Flux LoRA; Flux is not supported yet.")
    meta = metadata or {}
    scores = {}
    for arch_id in ("sd1", "sd2", "sdxl"):
        km = keymap_for(arch_id)
        matched = fit = 0
        for m in modules:
            t = km.lookup(m.name)
            if t is not None:
                matched += 1
                fit += fits(m.delta_shape(), t.shape)
        hint = (arch_id == "sdxl" and meta.get("ss_base_model_version", "").startswith("sdxl")) or \
               (arch_id == "sd2" and meta.get("ss_v2") == "True")
        scores[arch_id] = (fit, matched, hint)
    best = max(scores, key=lambda a: scores[a])  # ties keep the first: sd1
    if scores[best][1] == 0:
        sample = ", ".join(names[:3]) or "no supported modules"
        raise LoraMismatchError(f"{source}: no module name is one of SD1, SD2 or SDXL (e.g. {sample}).",
                                "It may be a LoRA for another model family (Flux, SD3, ...).")
    return archmod.get(best)

"""Module names: LDM (checkpoint) paths to the names LoRA files use, in one place.

LoRA trainers name a module by its path in the model they trained. For the U-Net that is the
diffusers path for SD1/SD2 (kohya converts the checkpoint to diffusers before training:
``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``) and the LDM path for kohya's SDXL
(``input_blocks.4.1.transformer_blocks.0.attn1.to_q``); other trainers use either. For the text
encoders it is always the transformers CLIP path (``text_model.encoder.layers.0.self_attn.q_proj``),
also for the OpenCLIP encoders of SD2 / SDXL, whose checkpoints keep q, k and v fused in
``attn.in_proj_weight`` (rows: q, then k, then v).

Everything here goes from the checkpoint's side to the LoRA's side, so tables are built from the
keys a checkpoint really has (spec §10.2 states the same correspondence the other way round).
"""

from __future__ import annotations

import re
from typing import Callable

# LDM input/output blocks come in groups of three per U-Net level (two ResBlocks and a
# down/upsampler, or three ResBlocks); true for SD1, SD2 and SDXL (layers_per_block = 2).
PER_LEVEL = 3

# Sub-modules of an LDM ResBlock and their diffusers names.
RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}

# U-Net modules outside the numbered blocks.
UNET_TOP = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}


def _resnet(rest: str) -> str | None:
    return RESNET_PARTS.get(rest)


def _in_res(m: re.Match) -> str | None:
    n = int(m[1])
    part = _resnet(m[2])
    return part and f"down_blocks.{(n - 1) // PER_LEVEL}.resnets.{(n - 1) % PER_LEVEL}.{part}"


def _in_attn(m: re.Match) -> str:
    n = int(m[1])
    return f"down_blocks.{(n - 1) // PER_LEVEL}.attentions.{(n - 1) % PER_LEVEL}.{m[2]}"


def _out_res(m: re.Match) -> str | None:
    n = int(m[1])
    part = _resnet(m[2])
    return part and f"up_blocks.{n // PER_LEVEL}.resnets.{n % PER_LEVEL}.{part}"


def _out_attn(m: re.Match) -> str:
    n = int(m[1])
    return f"up_blocks.{n // PER_LEVEL}.attentions.{n % PER_LEVEL}.{m[2]}"


def _mid_res(m: re.Match) -> str | None:
    part = _resnet(m[2])
    return part and f"mid_block.resnets.{int(m[1]) // 2}.{part}"


# (LDM module path pattern, diffusers path builder); the first match wins.
UNET_RULES: tuple[tuple[re.Pattern, Callable[[re.Match], str | None]], ...] = (
    (re.compile(r"^input_blocks\.(\d+)\.0\.op$"), lambda m: f"down_blocks.{int(m[1]) // PER_LEVEL - 1}.downsamplers.0.conv"),
    (re.compile(r"^input_blocks\.(\d+)\.0\.(.+)$"), _in_res),
    (re.compile(r"^input_blocks\.(\d+)\.1\.(.+)$"), _in_attn),
    (re.compile(r"^middle_block\.([02])\.(.+)$"), _mid_res),
    (re.compile(r"^middle_block\.1\.(.+)$"), lambda m: f"mid_block.attentions.0.{m[1]}"),
    (re.compile(r"^output_blocks\.(\d+)\.\d+\.conv$"), lambda m: f"up_blocks.{int(m[1]) // PER_LEVEL}.upsamplers.0.conv"),
    (re.compile(r"^output_blocks\.(\d+)\.0\.(.+)$"), _out_res),
    (re.compile(r"^output_blocks\.(\d+)\.1\.(.+)$"), _out_attn),
)


def diffusers_unet_path(ldm_path: str) -> str | None:
    """``input_blocks.4.1.proj_in`` -> ``down_blocks.1.attentions.0.proj_in``; None if unknown."""
    if ldm_path in UNET_TOP:
        return UNET_TOP[ldm_path]
    for pattern, build in UNET_RULES:
        m = pattern.match(ldm_path)
        if m:
            return build(m)
    return None


# OpenCLIP resblock sub-modules and their transformers CLIP names (q/k/v come out of in_proj).
OPEN_CLIP_PARTS = {
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
QKV = ("q_proj", "k_proj", "v_proj")  # the order of the rows of in_proj_weight

_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def hf_clip_paths(open_clip_key: str) -> list[tuple[str, int | None]]:
    """The transformers CLIP module path(s) of an OpenCLIP weight key (after the encoder prefix),
    each with its third of ``in_proj_weight`` (0, 1, 2) or None for an unfused weight.

    ``transformer.resblocks.3.attn.in_proj_weight`` -> ``[(text_model.encoder.layers.3.self_attn.q_proj, 0), ...]``.
    """
    m = _RESBLOCK.match(open_clip_key)
    if not m:
        return []
    layer, rest = m[1], m[2]
    base = f"text_model.encoder.layers.{layer}."
    if rest == "attn.in_proj_weight":
        return [(f"{base}self_attn.{name}", i) for i, name in enumerate(QKV)]
    if rest.endswith(".weight") and rest[: -len(".weight")] in OPEN_CLIP_PARTS:
        return [(base + OPEN_CLIP_PARTS[rest[: -len(".weight")]], None)]
    return []


def kohya_name(prefix: str, module_path: str) -> str:
    """kohya's module name: a prefix such as ``lora_unet`` and the module path with dots as underscores."""
    return f"{prefix}_{module_path.replace('.', '_')}"

"""Diffusers-format configs for SD1.x / SD2.x / SDXL, derived from an original-layout state dict's shapes.

Nothing here is looked up on the hub: channel counts, layer counts, context width, projection sizes
are read off the tensors; what shapes cannot tell (attention heads, VAE scaling factor, prediction
type) follows the published models of each family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from ..errors import ArchitectureError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer.text_model."
SD2_CLIP = "cond_stage_model.model."
XL_CLIP_L = "conditioner.embedders.0.transformer.text_model."
XL_CLIP_G = "conditioner.embedders.1.model."


@dataclass
class PipelineLayout:
    """Everything needed to create the components of one pipeline (configs are plain dicts)."""
    arch: str  # "sd1" | "sd2" | "sdxl"
    unet: dict
    vae: dict
    text_encoders: list[dict] = field(default_factory=list)  # per encoder: {"kind", "prefix", "config"}
    prediction_type: str = "epsilon"


def _shape(shapes: Mapping, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ArchitectureError(f"The state dict lacks {key!r}, needed to build a pipeline.",
                                "Generate with a complete checkpoint (UNet, VAE and text encoder).")
    return tuple(shapes[key])


def _count(shapes: Mapping, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes for m in [rx.match(k)] if m})


def unet_config(arch: str, shapes: Mapping, pooled_dim: int = 0) -> dict:
    p = UNET
    model_ch, in_ch = _shape(shapes, p + "input_blocks.0.0.weight")[:2]
    out_ch = _shape(shapes, p + "out.2.weight")[0]
    # Walk the input blocks: a resblock changes the width, a ".0.op" downsample ends a level.
    levels: list[dict] = []
    current = {"res": 0, "ch": model_ch, "depth": 0}
    i = 1
    while any(k.startswith(f"{p}input_blocks.{i}.") for k in shapes):
        if f"{p}input_blocks.{i}.0.op.weight" in shapes:
            levels.append(current)
            current = {"res": 0, "ch": current["ch"], "depth": 0}
        else:
            current["res"] += 1
            current["ch"] = _shape(shapes, f"{p}input_blocks.{i}.0.out_layers.3.weight")[0]
            current["depth"] = _count(shapes, rf"{re.escape(p)}input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")
        i += 1
    levels.append(current)
    widths = [lv["ch"] for lv in levels]
    depths = [lv["depth"] for lv in levels]
    layers = levels[0]["res"]
    probe = next((k for k in shapes if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    if probe is None:
        raise ArchitectureError("The UNet has no cross-attention layers; not an SD1/SD2/SDXL UNet.")
    context = _shape(shapes, probe)[1]
    linear = len(_shape(shapes, p + "middle_block.1.proj_in.weight")) == 2
    if arch == "sd1":
        heads: int | list[int] = 8  # SD1 uses 8 heads at every width
    else:  # SD2 and SDXL use 64-channel heads ("attention_head_dim" in diffusers counts heads here)
        heads = [max(1, w // 64) for w in widths]
    config = {
        "sample_size": {"sd1": 64, "sd2": 96, "sdxl": 128}[arch],
        "in_channels": in_ch,
        "out_channels": out_ch,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "cross_attention_dim": context,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": [max(d, 1) for d in depths],
        "norm_num_groups": 32,
    }
    mid_depth = _count(shapes, rf"{re.escape(p)}middle_block\.1\.transformer_blocks\.(\d+)\.")
    if arch == "sdxl":
        adm_in = _shape(shapes, p + "label_emb.0.0.weight")[1]
        config.update(addition_embed_type="text_time", addition_time_embed_dim=(adm_in - pooled_dim) // 6,
                      projection_class_embeddings_input_dim=adm_in)
    if mid_depth != max(depths):
        raise ArchitectureError(f"Unusual UNet: middle block depth {mid_depth}, deepest level {max(depths)}.")
    return config


def vae_config(arch: str, shapes: Mapping) -> dict:
    p = VAE + "encoder."
    ch = _shape(shapes, p + "conv_in.weight")[0]
    n_levels = _count(shapes, rf"{re.escape(p)}down\.(\d+)\.")
    widths = [_shape(shapes, f"{p}down.{i}.block.0.conv1.weight")[0] for i in range(n_levels)]
    layers = _count(shapes, rf"{re.escape(p)}down\.0\.block\.(\d+)\.")
    latent = _shape(shapes, VAE + "post_quant_conv.weight")[0]
    in_ch = _shape(shapes, p + "conv_in.weight")[1]
    if widths[0] != ch:
        raise ArchitectureError(f"Unusual VAE: conv_in gives {ch} channels, the first level {widths[0]}.")
    return {
        "in_channels": in_ch, "out_channels": in_ch, "latent_channels": latent,
        "down_block_types": ["DownEncoderBlock2D"] * n_levels,
        "up_block_types": ["UpDecoderBlock2D"] * n_levels,
        "block_out_channels": widths, "layers_per_block": layers, "norm_num_groups": 32,
        "sample_size": {"sd1": 512, "sd2": 768, "sdxl": 1024}[arch],
        "scaling_factor": 0.13025 if arch == "sdxl" else 0.18215,
    }


def clip_l_config(prefix: str, shapes: Mapping) -> dict:
    vocab, width = _shape(shapes, prefix + "embeddings.token_embedding.weight")
    return {
        "vocab_size": vocab, "hidden_size": width,
        "intermediate_size": _shape(shapes, prefix + "encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": _count(shapes, rf"{re.escape(prefix)}encoder\.layers\.(\d+)\."),
        "num_attention_heads": max(1, width // 64),
        "max_position_embeddings": _shape(shapes, prefix + "embeddings.position_embedding.weight")[0],
        "hidden_act": "quick_gelu", "projection_dim": 768,
        # the published configs' legacy ids: the pooled token is found as the largest id (EOS, 49407)
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }


def open_clip_config(prefix: str, shapes: Mapping, drop_last_layer: bool) -> dict:
    vocab, width = _shape(shapes, prefix + "token_embedding.weight")
    layers = _count(shapes, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    return {
        "vocab_size": vocab, "hidden_size": width,
        "intermediate_size": _shape(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        # SD2 conditions on the penultimate layer: diffusers builds its encoder one layer short
        "num_hidden_layers": layers - 1 if drop_last_layer else layers,
        "num_attention_heads": max(1, width // 64),
        "max_position_embeddings": _shape(shapes, prefix + "positional_embedding")[0],
        "hidden_act": "gelu",
        "projection_dim": _shape(shapes, prefix + "text_projection")[1],
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }


def layout_for(arch: str, shapes: Mapping) -> PipelineLayout:
    """The configs of every component of ``arch``'s pipeline, from {ldm key: shape}."""
    if arch == "sd1":
        te = [{"kind": "clip_l", "prefix": SD1_CLIP, "config": clip_l_config(SD1_CLIP, shapes)}]
        return PipelineLayout(arch, unet_config(arch, shapes), vae_config(arch, shapes), te)
    if arch == "sd2":
        te = [{"kind": "open_clip", "prefix": SD2_CLIP,
               "config": open_clip_config(SD2_CLIP, shapes, drop_last_layer=True)}]
        # Most SD2.x checkpoints are the 768-v models; a "v_pred" key marks them explicitly.
        return PipelineLayout(arch, unet_config(arch, shapes), vae_config(arch, shapes), te, "v_prediction")
    if arch == "sdxl":
        g = open_clip_config(XL_CLIP_G, shapes, drop_last_layer=False)
        te = [{"kind": "clip_l", "prefix": XL_CLIP_L, "config": clip_l_config(XL_CLIP_L, shapes)},
              {"kind": "open_clip_projection", "prefix": XL_CLIP_G, "config": g}]
        return PipelineLayout(arch, unet_config(arch, shapes, pooled_dim=g["projection_dim"]),
                              vae_config(arch, shapes), te)
    raise ArchitectureError(f"The standalone host cannot generate with {arch!r} models.",
                            "Supported: SD1.x, SD2.x and SDXL base.")

"""LoRA test helpers (independent of the engine's name tables) and the spec-syntax tests.

The helpers enumerate the modules LoRA trainers name, from the structure of the diffusers U-Net
and the transformers CLIP text model, and map them to checkpoint keys with the spec's formulas
(§10.2, diffusers -> LDM), the opposite direction from the engine's tables.
"""

from __future__ import annotations

import re

import pytest
import torch

from supermerger.errors import RecipeError
from supermerger.lora.blocks import LoraSpec, parse_specs
from supermerger.testing.synthetic import TINY, key_shapes

UNET = "model.diffusion_model."
RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
          "conv_shortcut": "skip_connection"}
TRANSFORMER_PARTS = ["proj_in", "proj_out"]
ATTN_PARTS = [f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")] + \
             ["ff.net.0.proj", "ff.net.2"]
# diffusers U-Net layout: (down levels with attention depth per level, up levels, mid depth)
LAYOUT = {
    "sd1": {"down_depth": [1, 1, 1, 0], "mid_depth": 1},
    "sd2": {"down_depth": [1, 1, 1, 0], "mid_depth": 1},
    "sdxl": {"down_depth": [0, 2, 10], "mid_depth": 10},
}


def _attention(prefix: str, depth: int) -> list[str]:
    out = [f"{prefix}.{p}" for p in TRANSFORMER_PARTS]
    for k in range(depth):
        out += [f"{prefix}.transformer_blocks.{k}.{p}" for p in ATTN_PARTS]
    return out


def _resnet(prefix: str) -> list[str]:
    return [f"{prefix}.{p}" for p in RESNET]


def diffusers_unet_modules(arch: str) -> list[str]:
    """Every linear / conv module path of the diffusers U-Net of ``arch`` (liberally: a
    conv_shortcut that the model lacks is filtered out later by the checkpoint's keys)."""
    lay = LAYOUT[arch]
    levels = len(lay["down_depth"])
    mods = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
    if arch == "sdxl":
        mods += ["add_embedding.linear_1", "add_embedding.linear_2"]
    for i, depth in enumerate(lay["down_depth"]):
        for j in range(2):
            mods += _resnet(f"down_blocks.{i}.resnets.{j}")
            if depth:
                mods += _attention(f"down_blocks.{i}.attentions.{j}", depth)
        if i < levels - 1:
            mods.append(f"down_blocks.{i}.downsamplers.0.conv")
    mods += _resnet("mid_block.resnets.0") + _resnet("mid_block.resnets.1")
    mods += _attention("mid_block.attentions.0", lay["mid_depth"])
    for i, depth in enumerate(reversed(lay["down_depth"])):
        for j in range(3):
            mods += _resnet(f"up_blocks.{i}.resnets.{j}")
            if depth:
                mods += _attention(f"up_blocks.{i}.attentions.{j}", depth)
        if i < levels - 1:
            mods.append(f"up_blocks.{i}.upsamplers.0.conv")
    return mods


def diffusers_to_ldm(arch: str, path: str) -> str:
    """Spec §10.2: diffusers U-Net module path -> LDM module path (without the U-Net prefix)."""
    top = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
           "add_embedding.linear_2": "label_emb.0.2"}
    if path in top:
        return top[path]

    def res(part: str) -> str:
        return RESNET[part]

    m = re.match(r"down_blocks\.(\d)\.attentions\.(\d)\.(.+)", path)
    if m:
        return f"input_blocks.{1 + 3 * int(m[1]) + int(m[2])}.1.{m[3]}"
    m = re.match(r"down_blocks\.(\d)\.resnets\.(\d)\.(.+)", path)
    if m:
        return f"input_blocks.{1 + 3 * int(m[1]) + int(m[2])}.0.{res(m[3])}"
    m = re.match(r"down_blocks\.(\d)\.downsamplers\.0\.conv", path)
    if m:
        return f"input_blocks.{3 + 3 * int(m[1])}.0.op"
    m = re.match(r"mid_block\.attentions\.0\.(.+)", path)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.match(r"mid_block\.resnets\.(\d)\.(.+)", path)
    if m:
        return f"middle_block.{2 * int(m[1])}.{res(m[2])}"
    m = re.match(r"up_blocks\.(\d)\.resnets\.(\d)\.(.+)", path)
    if m:
        return f"output_blocks.{3 * int(m[1]) + int(m[2])}.0.{res(m[3])}"
    m = re.match(r"up_blocks\.(\d)\.attentions\.(\d)\.(.+)", path)
    if m:
        return f"output_blocks.{3 * int(m[1]) + int(m[2])}.1.{m[3]}"
    m = re.match(r"up_blocks\.(\d)\.upsamplers\.0\.conv", path)
    if m:
        i = int(m[1])
        has_attention = LAYOUT[arch]["down_depth"][::-1][i] > 0
        return f"output_blocks.{2 + 3 * i}.{2 if has_attention else 1}.conv"
    raise AssertionError(path)


def text_modules(arch: str) -> list[tuple[str, str, str, str, tuple[int, int] | None]]:
    """(kohya prefix, diffusers prefix, transformers CLIP module path, checkpoint key, rows)."""
    encoders = {
        "sd1": [("lora_te", "text_encoder", "cond_stage_model.transformer.", "hf", 12, TINY["sd1"].clip_l)],
        "sd2": [("lora_te", "text_encoder", "cond_stage_model.model.", "open_clip", 24, TINY["sd2"].open_clip)],
        "sdxl": [("lora_te1", "text_encoder", "conditioner.embedders.0.transformer.", "hf", 12, TINY["sdxl"].clip_l),
                 ("lora_te2", "text_encoder_2", "conditioner.embedders.1.model.", "open_clip",
                  TINY["sdxl"].open_clip_layers, TINY["sdxl"].open_clip)],
    }[arch]
    out = []
    for kohya, peft, prefix, layout, layers, width in encoders:
        for n in range(layers):
            base = f"text_model.encoder.layers.{n}."
            for i, part in enumerate(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                                      "mlp.fc1", "mlp.fc2")):
                if layout == "hf":
                    key, rows = f"{prefix}{base}{part}.weight", None
                else:
                    rb = f"{prefix}transformer.resblocks.{n}."
                    key, rows = {0: (rb + "attn.in_proj_weight", (0, width)),
                                 1: (rb + "attn.in_proj_weight", (width, 2 * width)),
                                 2: (rb + "attn.in_proj_weight", (2 * width, 3 * width)),
                                 3: (rb + "attn.out_proj.weight", None), 4: (rb + "mlp.c_fc.weight", None),
                                 5: (rb + "mlp.c_proj.weight", None)}[i]
                out.append((kohya, peft, base + part, key, rows))
    return out


def zeros_checkpoint(arch: str, dtype=torch.float32, in_channels: int = 4) -> dict:
    from supermerger.merge.executor import intra_op_threads

    sd = {}
    with intra_op_threads(1):  # module fixtures run before the one_thread fixture
        for key, shape in key_shapes(arch, "tiny", in_channels):
            sd[key] = torch.zeros(shape, dtype=torch.int64 if key.endswith("position_ids") else dtype)
    return sd


def factors(shape, rank: int, gen: torch.Generator, conv_kernel_on_down: bool = True):
    """(up, down) of a kohya LoRA module for a weight of ``shape``."""
    out, inn = shape[0], shape[1]
    if len(shape) == 4:
        down = torch.randn(rank, inn, *shape[2:], generator=gen)
        up = torch.randn(out, rank, 1, 1, generator=gen)
    else:
        down = torch.randn(rank, inn, generator=gen)
        up = torch.randn(out, rank, generator=gen)
    return up, down


def assert_close(actual, expected, tol=1e-5, what=""):
    """max |actual − expected| <= tol·(1 + max |expected|) (torch.testing imports torch.distributed: slow)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = float((actual.float() - expected.float()).abs().max()) if actual.numel() else 0.0
    scale = float(expected.float().abs().max()) if expected.numel() else 0.0
    assert err <= tol * (1 + scale), f"{what}: max error {err} (scale {scale})"


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors on a busy 2-core machine: torch's thread pool costs more than it gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference_delta(up, down, alpha, rank):
    """ΔW = up @ down · alpha/rank, with the kernel of a conv taken from down (written out by hand)."""
    u = up.reshape(up.shape[0], rank)
    if down.ndim == 4:
        r, i, kh, kw = down.shape
        return (u @ down.reshape(r, i * kh * kw)).reshape(up.shape[0], i, kh, kw) * (alpha / rank)
    return (u @ down) * (alpha / rank)


# -- the spec syntax --------------------------------------------------------------------------------

def test_spec_items_with_inline_blocks_and_paths():
    specs = parse_specs("a:0.8:OUTD, b:-0.5 ,c:1:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0,C:\\loras\\x.safetensors:0.25,d")
    assert specs == [LoraSpec("a", 0.8, "OUTD"), LoraSpec("b", -0.5),
                     LoraSpec("c", 1.0, "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0"),
                     LoraSpec("C:\\loras\\x.safetensors", 0.25), LoraSpec("d", 1.0)]
    assert parse_specs(["x:2", LoraSpec("y", 3.0)]) == [LoraSpec("x", 2.0), LoraSpec("y", 3.0)]
    with pytest.raises(RecipeError, match="ratio"):
        parse_specs("a:strong")

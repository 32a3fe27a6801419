"""Synthetic SD1 / SD2 / SDXL checkpoints with the real key names and layer counts.

``scale="full"`` gives the published shapes (SD1.5: 1,066,247,384 values; SDXL base 3,468,837,945);
``scale="tiny"`` keeps every key and layer but shrinks the widths so a whole model is a few MB.
``vocab``: the text encoders' token-embedding rows (default: 49,408 full size, 1,000 tiny); a tiny
model that a diffusers pipeline can run needs the full 49,408 (the CLIP tokenizer's size).
Values are seeded normal noise (std 0.02; norm gains around 1), written one tensor at a time so
even the full-size models need little memory to create.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Widths:
    unet: int  # model channels
    clip_l: int
    clip_l_mlp: int
    open_clip: int
    open_clip_mlp: int
    open_clip_layers: int
    vae: int
    vocab: int = 49408
    ctx: int = 77


FULL = {
    "sd1": Widths(320, 768, 3072, 0, 0, 0, 128),
    "sd2": Widths(320, 0, 0, 1024, 4096, 24, 128),
    "sdxl": Widths(320, 768, 3072, 1280, 5120, 32, 128),
}
TINY = {
    "sd1": Widths(32, 32, 64, 0, 0, 0, 32, vocab=1000),
    "sd2": Widths(32, 0, 0, 32, 64, 24, 32, vocab=1000),
    "sdxl": Widths(32, 32, 64, 32, 64, 32, 32, vocab=1000),
}


def _linear(prefix: str, out_f: int, in_f: int, bias: bool = True) -> Iterator[tuple[str, Shape]]:
    yield prefix + ".weight", (out_f, in_f)
    if bias:
        yield prefix + ".bias", (out_f,)


def _conv(prefix: str, out_c: int, in_c: int, k: int) -> Iterator[tuple[str, Shape]]:
    yield prefix + ".weight", (out_c, in_c, k, k)
    yield prefix + ".bias", (out_c,)


def _norm(prefix: str, c: int) -> Iterator[tuple[str, Shape]]:
    yield prefix + ".weight", (c,)
    yield prefix + ".bias", (c,)


def _resblock(p: str, cin: int, cout: int, emb: int):
    yield from _norm(p + ".in_layers.0", cin)
    yield from _conv(p + ".in_layers.2", cout, cin, 3)
    yield from _linear(p + ".emb_layers.1", cout, emb)
    yield from _norm(p + ".out_layers.0", cout)
    yield from _conv(p + ".out_layers.3", cout, cout, 3)
    if cin != cout:
        yield from _conv(p + ".skip_connection", cout, cin, 1)


def _transformer(p: str, c: int, ctx_dim: int, depth: int, linear: bool):
    yield from _norm(p + ".norm", c)
    proj = (lambda q: _linear(q, c, c)) if linear else (lambda q: _conv(q, c, c, 1))
    yield from proj(p + ".proj_in")
    for d in range(depth):
        t = f"{p}.transformer_blocks.{d}"
        for name, kdim in (("attn1", c), ("attn2", ctx_dim)):
            yield f"{t}.{name}.to_q.weight", (c, c)
            yield f"{t}.{name}.to_k.weight", (c, kdim)
            yield f"{t}.{name}.to_v.weight", (c, kdim)
            yield from _linear(f"{t}.{name}.to_out.0", c, c)
            if name == "attn1":
                yield from _linear(f"{t}.ff.net.0.proj", 8 * c, c)
                yield from _linear(f"{t}.ff.net.2", c, 4 * c)
        for n in ("norm1", "norm2", "norm3"):
            yield from _norm(f"{t}.{n}", c)
    yield from proj(p + ".proj_out")


def _unet(arch: str, w: Widths, in_channels: int = 4):
    mc = w.unet
    emb = 4 * mc
    pre = "model.diffusion_model."
    if arch == "sdxl":
        mults, depths, ctx, linear = (1, 2, 4), (0, 2, 10), w.clip_l + w.open_clip, True
        adm = w.open_clip + 6 * 256
    else:
        mults, depths = (1, 2, 4, 4), (1, 1, 1, 0)
        ctx, linear, adm = (w.clip_l, False, 0) if arch == "sd1" else (w.open_clip, True, 0)
    yield from _linear(pre + "time_embed.0", emb, mc)
    yield from _linear(pre + "time_embed.2", emb, emb)
    if adm:
        yield from _linear(pre + "label_emb.0.0", emb, adm)
        yield from _linear(pre + "label_emb.0.2", emb, emb)
    yield from _conv(pre + "input_blocks.0.0", mc, in_channels, 3)
    chans = [mc]
    ch = mc
    idx = 1
    for level, mult in enumerate(mults):
        for _ in range(2):
            p = f"{pre}input_blocks.{idx}"
            yield from _resblock(p + ".0", ch, mult * mc, emb)
            ch = mult * mc
            if depths[level]:
                yield from _transformer(p + ".1", ch, ctx, depths[level], linear)
            chans.append(ch)
            idx += 1
        if level != len(mults) - 1:
            yield from _conv(f"{pre}input_blocks.{idx}.0.op", ch, ch, 3)
            chans.append(ch)
            idx += 1
    yield from _resblock(pre + "middle_block.0", ch, ch, emb)
    yield from _transformer(pre + "middle_block.1", ch, ctx, depths[-1] or 1, linear)
    yield from _resblock(pre + "middle_block.2", ch, ch, emb)
    idx = 0
    for level, mult in reversed(list(enumerate(mults))):
        for i in range(3):
            p = f"{pre}output_blocks.{idx}"
            skip = chans.pop()
            yield from _resblock(p + ".0", ch + skip, mult * mc, emb)
            ch = mult * mc
            sub = 1
            if depths[level]:
                yield from _transformer(p + ".1", ch, ctx, depths[level], linear)
                sub = 2
            if level and i == 2:
                yield from _conv(f"{p}.{sub}.conv", ch, ch, 3)
            idx += 1
    yield from _norm(pre + "out.0", ch)
    yield from _conv(pre + "out.2", 4, ch, 3)


def _clip_l(pre: str, w: Widths, position_ids: bool = True):
    d, m = w.clip_l, w.clip_l_mlp
    yield pre + "embeddings.token_embedding.weight", (w.vocab, d)
    yield pre + "embeddings.position_embedding.weight", (w.ctx, d)
    if position_ids:
        yield pre + "embeddings.position_ids", (1, w.ctx)
    for i in range(12):
        p = f"{pre}encoder.layers.{i}"
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            yield from _linear(f"{p}.self_attn.{n}", d, d)
        yield from _norm(p + ".layer_norm1", d)
        yield from _linear(p + ".mlp.fc1", m, d)
        yield from _linear(p + ".mlp.fc2", d, m)
        yield from _norm(p + ".layer_norm2", d)
    yield from _norm(pre + "final_layer_norm", d)


def _open_clip(pre: str, w: Widths):
    d, m = w.open_clip, w.open_clip_mlp
    yield pre + "positional_embedding", (w.ctx, d)
    yield pre + "text_projection", (d, d)
    yield pre + "token_embedding.weight", (w.vocab, d)
    yield from _norm(pre + "ln_final", d)
    yield pre + "logit_scale", ()
    for i in range(w.open_clip_layers):
        p = f"{pre}transformer.resblocks.{i}"
        yield from _norm(p + ".ln_1", d)
        yield p + ".attn.in_proj_weight", (3 * d, d)
        yield p + ".attn.in_proj_bias", (3 * d,)
        yield from _linear(p + ".attn.out_proj", d, d)
        yield from _norm(p + ".ln_2", d)
        yield from _linear(p + ".mlp.c_fc", m, d)
        yield from _linear(p + ".mlp.c_proj", d, m)


def _vae(w: Widths):
    pre = "first_stage_model."
    ch, mults = w.vae, (1, 2, 4, 4)

    def res(p, cin, cout):
        yield from _norm(p + ".norm1", cin)
        yield from _conv(p + ".conv1", cout, cin, 3)
        yield from _norm(p + ".norm2", cout)
        yield from _conv(p + ".conv2", cout, cout, 3)
        if cin != cout:
            yield from _conv(p + ".nin_shortcut", cout, cin, 1)

    def attn(p, c):
        yield from _norm(p + ".norm", c)
        for n in ("q", "k", "v", "proj_out"):
            yield from _conv(f"{p}.{n}", c, c, 1)

    top = ch * mults[-1]
    e = pre + "encoder."
    yield from _conv(e + "conv_in", ch, 3, 3)
    cin = ch
    for i, m in enumerate(mults):
        for j in range(2):
            yield from res(f"{e}down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(mults) - 1:
            yield from _conv(f"{e}down.{i}.downsample.conv", cin, cin, 3)
    yield from res(e + "mid.block_1", top, top)
    yield from attn(e + "mid.attn_1", top)
    yield from res(e + "mid.block_2", top, top)
    yield from _norm(e + "norm_out", top)
    yield from _conv(e + "conv_out", 8, top, 3)
    d = pre + "decoder."
    yield from _conv(d + "conv_in", top, 4, 3)
    yield from res(d + "mid.block_1", top, top)
    yield from attn(d + "mid.attn_1", top)
    yield from res(d + "mid.block_2", top, top)
    cin = top
    for i in reversed(range(len(mults))):
        for j in range(3):
            yield from res(f"{d}up.{i}.block.{j}", cin, ch * mults[i])
            cin = ch * mults[i]
        if i != 0:
            yield from _conv(f"{d}up.{i}.upsample.conv", cin, cin, 3)
    yield from _norm(d + "norm_out", ch)
    yield from _conv(d + "conv_out", 3, ch, 3)
    yield from _conv(pre + "quant_conv", 8, 8, 1)
    yield from _conv(pre + "post_quant_conv", 4, 4, 1)


SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")


def key_shapes(arch: str, scale: str = "tiny", in_channels: int = 4, vocab: int | None = None) -> list[tuple[str, Shape]]:
    """Every (key, shape) of a checkpoint of ``arch`` ('sd1', 'sd2', 'sdxl'), in a stable order."""
    w = (FULL if scale == "full" else TINY)[arch]
    if vocab is not None:
        w = replace(w, vocab=vocab)
    items: list[tuple[str, Shape]] = []
    if arch != "sdxl":
        items += [(b, (1000,)) for b in SCHEDULE_BUFFERS]
    items += list(_unet(arch, w, in_channels))
    if arch == "sd1":
        items += list(_clip_l("cond_stage_model.transformer.text_model.", w))
    elif arch == "sd2":
        items += list(_open_clip("cond_stage_model.model.", w))
    else:
        items += list(_clip_l("conditioner.embedders.0.transformer.text_model.", w))
        items += list(_open_clip("conditioner.embedders.1.model.", w))
    items += list(_vae(w))
    return items


def make_state_dict(arch: str, seed: int = 0, scale: str = "tiny", dtype: str = "float16", in_channels: int = 4,
                    vocab: int | None = None) -> dict:
    """A whole synthetic state dict in memory (use ``write_checkpoint`` for big ones)."""
    return dict(iter_tensors(arch, seed, scale, dtype, in_channels, vocab))


def iter_tensors(arch: str, seed: int = 0, scale: str = "tiny", dtype: str = "float16", in_channels: int = 4,
                 vocab: int | None = None):
    import torch

    g = torch.Generator().manual_seed(seed)
    tdtype = getattr(torch, dtype)
    for key, shape in key_shapes(arch, scale, in_channels, vocab):
        if key.endswith("position_ids"):
            yield key, torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
            continue
        if key in SCHEDULE_BUFFERS:
            betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, shape[0], dtype=torch.float64) ** 2
            yield key, (betas if key == "betas" else torch.cumprod(1 - betas, 0)).to(torch.float32)
            continue
        t = torch.randn(shape, generator=g, dtype=torch.float32) * 0.02
        if key.endswith(".weight") and len(shape) == 1 and "norm" in key or "ln_" in key and key.endswith("weight"):
            t += 1.0
        yield key, t.to(tdtype)


def write_checkpoint(path: str | os.PathLike, arch: str, seed: int = 0, scale: str = "tiny", dtype: str = "float16",
                     in_channels: int = 4, metadata: dict | None = None, vocab: int | None = None) -> Path:
    """Write a synthetic checkpoint as .safetensors (streamed) or .ckpt (torch.save)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from ..io.safetensors_format import build_header
        from ..io.sources import dtype_code

        tensors = iter_tensors(arch, seed, scale, dtype, in_channels, vocab)
        import torch

        tdtype = getattr(torch, dtype)
        entries = []
        for key, shape in key_shapes(arch, scale, in_channels, vocab):
            code = "I64" if key.endswith("position_ids") else "F32" if key in SCHEDULE_BUFFERS else dtype_code(tdtype)
            entries.append((key, code, shape))
        header, _ = build_header(entries, metadata)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(header)
            for key, t in tensors:
                f.write(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        os.replace(tmp, path)
    else:
        import torch

        torch.save(make_state_dict(arch, seed, scale, dtype, in_channels, vocab), path)
    return path


def numel(arch: str, scale: str = "full") -> int:
    return sum(math.prod(s) for _, s in key_shapes(arch, scale))

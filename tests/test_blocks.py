"""Block weights, elemental merge, include/exclude and adjust against hand-written expectations."""

from __future__ import annotations

import pytest
import torch

import supermerger
from supermerger import Recipe
from supermerger.errors import RecipeError

from helpers import SD1_BLOCKS, XL_BLOCKS, assert_close_dtype, block_sd1, block_xl, load, merged_keys


def merge(models, arch="sd1", **kw):
    return supermerger.merge(Recipe(model_a=str(models[(arch, "A")]), model_b=str(models[(arch, "B")]), **kw))


def check_per_key(out, A, B, ratio_of):
    for k in merged_keys(A):
        r = ratio_of(k)
        assert_close_dtype(out[k], (1 - r) * A[k].float() + r * B[k].float(), A[k].dtype, k)


def test_mbw_sd1_every_block_gets_its_value(models):
    weights = [round(0.02 + i * 0.037, 4) for i in range(26)]
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    out = merge(models, mbw_alpha=",".join(map(str, weights))).state_dict
    ratio = dict(zip(SD1_BLOCKS, weights))
    check_per_key(out, A, B, lambda k: ratio[block_sd1(k)])
    # text encoder and VAE follow BASE
    k = "first_stage_model.decoder.conv_out.weight"
    assert_close_dtype(out[k], (1 - weights[0]) * A[k].float() + weights[0] * B[k].float(), A[k].dtype)


def test_mbw_sdxl_20_values(models):
    weights = [round(0.9 - i * 0.041, 4) for i in range(20)]
    A, B = load(models[("sdxl", "A")]), load(models[("sdxl", "B")])
    out = merge(models, "sdxl", mbw_alpha=weights).state_dict
    ratio = dict(zip(XL_BLOCKS, weights))
    check_per_key(out, A, B, lambda k: ratio[block_xl(k)])
    assert "model.diffusion_model.label_emb.0.0.weight" in out


def test_mbw_sdxl_accepts_26_values_by_dropping_in09_11_out09_11(models):
    w26 = [i / 100 for i in range(26)]
    A, B = load(models[("sdxl", "A")]), load(models[("sdxl", "B")])
    out = merge(models, "sdxl", mbw_alpha=",".join(map(str, w26))).state_dict
    keep = dict(zip(SD1_BLOCKS, w26))
    check_per_key(out, A, B, lambda k: keep[block_xl(k)])
    # M00 of SDXL is the 26-list's M00 (index 13), OUT00 is index 14
    k = "model.diffusion_model.middle_block.1.proj_in.weight"
    assert_close_dtype(out[k], 0.87 * A[k].float() + 0.13 * B[k].float(), A[k].dtype)


def test_mbw_preset_name(models):
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    out = merge(models, mbw_alpha="OUT12_5").state_dict
    # OUT12_5: M00 = 0.5, OUT00-OUT11 = 1, everything else 0
    def ratio(k):
        b = block_sd1(k)
        return 0.5 if b == "M00" else 1.0 if b.startswith("OUT") else 0.0
    check_per_key(out, A, B, ratio)


def test_user_preset_file(models, _isolated_data_dir):
    (_isolated_data_dir / "mbwpresets.txt").write_text("preset_name\tpreset_weights\nMINE:" + ",".join(["0.25"] * 26) + "\n")
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    out = merge(models, mbw_alpha="MINE").state_dict
    check_per_key(out, A, B, lambda k: 0.25)


def test_elemental_seed_document_examples(models):
    """The seed documents' examples, with expectations written from their prose."""
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    # 1. OUT03 OUT04 OUT05:attn2 attn1.to_out:0.5 -> those elements in those blocks get 0.5, the rest alpha 0.1
    out = merge(models, alpha=0.1, elemental="OUT03 OUT04 OUT05:attn2 attn1.to_out:0.5").state_dict
    def r1(k):
        if block_sd1(k) in ("OUT03", "OUT04", "OUT05") and ("attn2" in k or "attn1.to_out" in k):
            return 0.5
        return 0.1
    check_per_key(out, A, B, r1)
    # 2. OUT06:attn:0.5,OUT06:attn2.to_k:0.2 -> attn2.to_k 0.2, other attn of OUT06 0.5 (last match wins)
    out = merge(models, alpha=0.0, elemental="OUT06:attn:0.5,OUT06:attn2.to_k:0.2").state_dict
    def r2(k):
        if block_sd1(k) == "OUT06" and "attn2.to_k" in k:
            return 0.2
        if block_sd1(k) == "OUT06" and "attn" in k:
            return 0.5
        return 0.0
    check_per_key(out, A, B, r2)
    # 3. NOT OUT04:attn:1 -> attn everywhere except OUT04
    out = merge(models, alpha=0.0, elemental="NOT OUT04:attn:1").state_dict
    check_per_key(out, A, B, lambda k: 1.0 if block_sd1(k) != "OUT04" and "attn" in k else 0.0)
    # 4. OUT05:NOT attn proj:0.2 -> in OUT05, everything that is neither attn nor proj
    out = merge(models, alpha=0.0, elemental="OUT05:NOT attn proj:0.2").state_dict
    check_per_key(out, A, B, lambda k: 0.2 if block_sd1(k) == "OUT05" and "attn" not in k and "proj" not in k else 0.0)


def test_elemental_ranges_newlines_empty_fields_and_mbw(models):
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    text = "OUT06-OUT03::0.3\n\n IN02 :: 0.9 ,\n::0.05\nIN01-IN02:norm:0.7"
    w = [0.6] * 26
    out = merge(models, mbw_alpha=w, elemental=text).state_dict
    def ratio(k):
        b = block_sd1(k)
        r = 0.05  # "::0.05" matches every key after the first two entries
        if b in ("IN01", "IN02") and "norm" in k:
            r = 0.7
        return r
    check_per_key(out, A, B, ratio)


def test_elemental_sdxl_uses_own_block_names(models):
    A, B = load(models[("sdxl", "A")]), load(models[("sdxl", "B")])
    out = merge(models, "sdxl", alpha=0.0, elemental="M00:attn2:1,OUT08::0.5").state_dict
    def ratio(k):
        b = block_xl(k)
        if b == "OUT08":
            return 0.5
        return 1.0 if b == "M00" and "attn2" in k else 0.0
    check_per_key(out, A, B, ratio)
    n_mid = sum(1 for k in merged_keys(A) if block_xl(k) == "M00" and "attn2" in k)
    assert n_mid > 0
    with pytest.raises(RecipeError, match="IN09"):
        merge(models, "sdxl", elemental="IN09::1")


def test_exclude_and_include(models):
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    out = merge(models, alpha=0.6, exclude="BASE OUT11 attn2").state_dict
    excluded = lambda k: block_sd1(k) in ("BASE", "OUT11") or "attn2" in k
    check_per_key(out, A, B, lambda k: 0.0 if excluded(k) else 0.6)
    out = merge(models, alpha=0.6, include="IN04 VAE").state_dict
    included = lambda k: block_sd1(k) == "IN04" or k.startswith("first_stage_model.")
    check_per_key(out, A, B, lambda k: 0.6 if included(k) else 0.0)


def test_adjust_values_1_to_8_sd1(models):
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    out = merge(models, alpha=0.5, adjust="1,2,3,4,5,6,7,8").state_dict
    base = lambda k: 0.5 * A[k].float() + 0.5 * B[k].float()
    pre = "model.diffusion_model."
    # multipliers from the spec's worked example: 0.99, 1.02, 0.98, 1.04, 0.97; bias add [0.08, 0.18, 0.0133, 0.0867]
    for key, mult in (("input_blocks.0.0.weight", 0.99), ("input_blocks.0.0.bias", 1.02), ("out.0.weight", 0.98),
                      ("out.0.bias", 1.04), ("out.2.weight", 0.97)):
        assert_close_dtype(out[pre + key], base(pre + key) * mult, torch.float16, key)
    add = torch.tensor([0.08, 0.18, 0.02 / 1.5, 0.26 / 3])
    assert_close_dtype(out[pre + "out.2.bias"], base(pre + "out.2.bias") + add, torch.float16, "out.2.bias")


def test_adjust_sdxl_colour_vectors_and_exclusion(models):
    A, B = load(models[("sdxl", "A")]), load(models[("sdxl", "B")])
    out = merge(models, "sdxl", alpha=0.5, adjust="0,0,0,2,3,4,5,6").state_dict
    k = "model.diffusion_model.out.2.bias"
    # SDXL: vB=(0,0,1) v1=(1,0,0) v2=(-1,-1,0) v3=(-1,1,0); c = 0.02*(3vB + 4v1 + 5v2 + 6v3)
    c = [0.02 * (4 - 5 - 6), 0.02 * (-5 + 6), 0.02 * 3]
    add = torch.tensor([0.04, *c])
    assert_close_dtype(out[k], 0.5 * A[k].float() + 0.5 * B[k].float() + add, torch.float16, k)
    out = merge(models, "sdxl", alpha=0.5, adjust="0,0,0,2,3,4,5,6", exclude="Adjust").state_dict
    assert torch.equal(out[k], A[k])


def test_explain_and_dry_run_read_no_tensor(models, monkeypatch):
    from supermerger.io import sources

    def boom(*a, **k):
        raise AssertionError("a tensor was read")
    monkeypatch.setattr(sources.SafetensorsSource, "read_bytes", boom)
    plan = supermerger.plan_merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]),
                                         mbw_alpha="GRAD_V", elemental="OUT05:attn2:0.3"))
    lines = plan.explain_lines()
    row = next(l for l in lines if l.startswith("model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k"))
    assert "OUT05" in row and "0.3" in row and "elemental #1" in row
    row = next(l for l in lines if l.startswith("model.diffusion_model.input_blocks.1.0.in_layers.2.weight"))
    assert "weights alpha IN01" in row and "0.9167" in row  # GRAD_V: IN00 = 1, IN01 = 11/12
    text = "\n".join(plan.summary_lines())
    assert "SD1.x" in text and "GiB" in text and "peak memory" in text


def test_dry_run_reports_matches_per_elemental_entry(models):
    plan = supermerger.plan_merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]),
                                         elemental="OUT06:attn:0.5,OUT06:attn2.to_k:0.2,OUT06:attn2.to_k:0.3,OUT03:zzz:1"))
    A = load(models[("sd1", "A")])
    n_attn = sum(1 for k in merged_keys(A) if block_sd1(k) == "OUT06" and "attn" in k)
    lines = [l for l in plan.summary_lines() if l.strip().startswith("#")]
    assert f"matches {n_attn:5d} keys, decides {n_attn - 1:5d}" in lines[0]
    assert "overridden by a later entry" in lines[1]
    assert "decides     1" in lines[2] and "warning" not in lines[2]
    assert "matches no key" in lines[3]


def test_time_embed_block_replays_the_old_convention(models):
    """time_embed takes IN00's ratio (spec); time_embed_block="OUT11" gives it OUT11's, as the original's
    releases before its SDXL rework did: 4 tensors change, nothing else. Checked against (1-r)A + rB with
    r read from the weight list by hand."""
    weights = [0.0] * 26
    weights[1] = 0.25   # IN00
    weights[-1] = 1.0   # OUT11
    a, b = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    base = dict(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]), mbw_alpha=weights)
    new = supermerger.merge(Recipe(**base), history=False).state_dict
    old = supermerger.merge(Recipe(**base, time_embed_block="OUT11"), history=False).state_dict
    te = [k for k in a if k.startswith("model.diffusion_model.time_embed.")]
    assert len(te) == 4
    for k in te:
        for ratio, out in ((0.25, new), (1.0, old)):
            expect = (a[k].float() * (1 - ratio) + b[k].float() * ratio).to(a[k].dtype)
            assert torch.equal(out[k], expect), k
    assert all(torch.equal(new[k], old[k]) for k in a if k not in te)


def test_time_embed_block_must_be_a_block_of_the_model(models):
    with pytest.raises(RecipeError, match="Unknown block ID 'OUT12' \\(time_embed_block\\)"):
        supermerger.plan_merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]),
                                      time_embed_block="OUT12"))

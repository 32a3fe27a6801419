"""Merge LoRAs: the sum (with and without "same to Strength"), concat, SVD re-rank, LoHa alone,
block weights, metadata modes and hashes; Extract from two LoRAs. A merged LoRA is judged by what
it does: applied at 1.0 to a zero checkpoint, compared with the sources applied at their ratios."""

from __future__ import annotations

import hashlib
import json
import math
import struct

import pytest
import torch
from safetensors.torch import save_file

from supermerger.errors import OutputError, RecipeError
from supermerger.lora import merge_loras, extract_loras, merge_to_checkpoint

from test_lora_common import assert_close, factors, one_thread, zeros_checkpoint  # noqa: F401 (fixture)

UNET = "model.diffusion_model."
MODULES = {  # kohya name -> checkpoint key (tiny SD1)
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k":
        UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
    "lora_unet_up_blocks_1_resnets_0_conv1": UNET + "output_blocks.3.0.in_layers.2.weight",
    "lora_unet_mid_block_attentions_0_proj_in": UNET + "middle_block.1.proj_in.weight",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj":
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
}


@pytest.fixture(scope="module")
def zero():
    return zeros_checkpoint("sd1")


def make_lora(seed: int, rank: int = 4, alpha: float = 2.0, names=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    zero_shapes = {k: s for k, s in __import__("supermerger.testing.synthetic", fromlist=["key_shapes"])
                   .key_shapes("sd1", "tiny")}
    lora = {}
    for name in names or MODULES:
        up, down = factors(zero_shapes[MODULES[name]], rank, g)
        lora.update({f"{name}.lora_up.weight": up * 0.3, f"{name}.lora_down.weight": down * 0.3,
                     f"{name}.alpha": torch.tensor(alpha)})
    return lora


def effect(zero: dict, specs) -> dict:
    """ΔW of each touched key: the LoRAs applied to a zero checkpoint."""
    out = merge_to_checkpoint(zero, specs).state_dict
    return {k: v for k, v in out.items() if v is not zero[k]}


def same_effect(x: dict, y: dict, tol=1e-5) -> None:
    """Equal changes (a key one side leaves alone must be unchanged, i.e. zero, on the other)."""
    for k in set(x) | set(y):
        ref = x.get(k, y.get(k))
        assert_close(x.get(k, torch.zeros_like(ref)), y.get(k, torch.zeros_like(ref)), tol, k)


def test_sum_alone_is_r_squared_and_same_to_strength_is_r(zero):
    a = make_lora(1)
    plain = merge_loras([(a, -0.6)], precision="fp32")
    sts = merge_loras([(a, -0.6)], same_to_strength=True, precision="fp32")
    assert plain.mode == sts.mode == "sum"
    same_effect(effect(zero, [(plain.state_dict, 1.0)]), effect(zero, [(a, 0.36)]))
    same_effect(effect(zero, [(sts.state_dict, 1.0)]), effect(zero, [(a, -0.6)]))


def test_same_to_strength_sum_of_two_loras_equals_applying_both(zero):
    names = list(MODULES)
    a = make_lora(1, alpha=2.0, names=names[:2])
    b = make_lora(2, alpha=1.0, names=names[2:])  # other modules, other alpha
    merged = merge_loras([(a, 0.7), (b, -0.4)], same_to_strength=True, precision="fp32")
    same_effect(effect(zero, [(merged.state_dict, 1.0)]), effect(zero, [(a, 0.7), (b, -0.4)]))
    # on shared modules the sum is the original's: up = Σ f·up, down = Σ f·down, f = sqrt(alpha_i/alpha_0)·r
    c = make_lora(3, alpha=4.0)
    d = make_lora(4, alpha=1.0)
    summed = merge_loras([(c, 0.5), (d, 2.0)], precision="fp32").state_dict
    n = names[0]
    fc, fd = 0.5, math.sqrt(1.0 / 4.0) * 2.0
    assert_close(summed[f"{n}.lora_up.weight"], fc * c[f"{n}.lora_up.weight"] + fd * d[f"{n}.lora_up.weight"])
    assert_close(summed[f"{n}.lora_down.weight"], fc * c[f"{n}.lora_down.weight"] + fd * d[f"{n}.lora_down.weight"])
    assert float(summed[f"{n}.alpha"]) == 4.0


def test_concat_and_full_rank_svd_are_exact_for_loras_of_different_dims(zero):
    a, b = make_lora(5, rank=4, alpha=2.0), make_lora(6, rank=2, alpha=3.0)
    both = effect(zero, [(a, 0.8), (b, -1.5)])
    with pytest.raises(RecipeError, match="different dims"):
        merge_loras([(a, 0.8), (b, -1.5)])
    concat = merge_loras([(a, 0.8), (b, -1.5)], mode="concat", precision="fp32")
    assert concat.state_dict[f"{list(MODULES)[0]}.lora_down.weight"].shape[0] == 6
    same_effect(effect(zero, [(concat.state_dict, 1.0)]), both)
    full = merge_loras([(a, 0.8), (b, -1.5)], dim=1000, clamp_quantile=None, precision="fp32")
    assert full.mode == "svd"
    same_effect(effect(zero, [(full.state_dict, 1.0)]), both, tol=1e-4)
    low = merge_loras([(a, 0.8), (b, -1.5)], dim=6, svd="lowrank", clamp_quantile=None, precision="fp32")
    same_effect(effect(zero, [(low.state_dict, 1.0)]), both, tol=1e-3)  # rank 6 holds the sum exactly
    auto = merge_loras([(a, 0.8), (b, -1.5)], dim="auto", precision="fp32")
    assert auto.mode == "svd" and all(t.shape[0] == 4 for k, t in auto.state_dict.items() if "lora_down" in k)


def test_single_loha_is_scaled_exactly_and_lohas_merge_through_svd(zero):
    g = torch.Generator().manual_seed(7)
    n = list(MODULES)[0]
    loha = {f"{n}.hada_w1_a": torch.randn(64, 2, generator=g), f"{n}.hada_w1_b": torch.randn(2, 32, generator=g),
            f"{n}.hada_w2_a": torch.randn(64, 2, generator=g), f"{n}.hada_w2_b": torch.randn(2, 32, generator=g),
            f"{n}.alpha": torch.tensor(1.0)}
    single = merge_loras([(loha, -0.5)], precision="fp32")
    assert single.mode == "scale" and set(single.state_dict) == set(loha)
    same_effect(effect(zero, [(single.state_dict, 1.0)]), effect(zero, [(loha, -0.5)]))
    with pytest.raises(RecipeError, match="LoHa / LoKr"):
        merge_loras([(loha, 1.0), (make_lora(8), 1.0)])
    mixed = merge_loras([(loha, 1.0), (make_lora(8), 0.5)], dim=64, clamp_quantile=None, precision="fp32")
    same_effect(effect(zero, [(mixed.state_dict, 1.0)]), effect(zero, [(loha, 1.0), (make_lora(8), 0.5)]), tol=1e-4)


def test_block_weights_in_a_merge(zero):
    a = make_lora(9)
    merged = merge_loras([(a, 0.5, "OUTD")], same_to_strength=True, precision="fp32")
    same_effect(effect(zero, [(merged.state_dict, 1.0)]), effect(zero, [(a, 0.5, "OUTD")]))
    te = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    mid = UNET + "middle_block.1.proj_in.weight"
    eff = effect(zero, [(merged.state_dict, 1.0)])
    assert te in eff and float(eff[mid].abs().max()) == 0.0  # BASE on, M00 off in OUTD


def test_metadata_modes_and_hashes(tmp_path):
    meta_a = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2", "ss_v2": "False",
              "ss_sd_model_name": "base", "ss_base_model_version": "sd_v1", "ss_other": "x",
              "ss_tag_frequency": json.dumps({"1_cat": {"cat": 3}})}
    meta_b = {"ss_network_module": "networks.lora", "ss_tag_frequency": json.dumps({"2_dog": {"dog": 1}})}
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(make_lora(1), str(pa), metadata=meta_a)
    save_file(make_lora(2), str(pb), metadata=meta_b)
    specs = f"{pa}:1,{pb}:0.5"
    metas = {}
    for mode in ("create new", "create new without output_name", "use first lora", "save all", "merge"):
        out = tmp_path / f"{mode.replace(' ', '_')}.safetensors"
        metas[mode] = merge_loras(specs, out, metadata_mode=mode).metadata
        raw = out.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        on_disk = json.loads(raw[8:8 + n])["__metadata__"]
        assert on_disk == metas[mode]
        assert on_disk["sshs_model_hash"] == hashlib.sha256(raw[8 + n:]).hexdigest()
        assert len(on_disk["sshs_legacy_hash"]) == 8 and on_disk["ss_mixed_precision"] == "fp16"
    new = metas["create new"]
    assert new["ss_network_dim"] == "4" and new["ss_sd_model_name"] == "base" and "ss_other" not in new
    assert new["ss_output_name"] == "create_new"
    assert "ss_output_name" not in metas["create new without output_name"]
    first = metas["use first lora"]
    assert first["ss_other"] == "x" and first["sshs_ratio"] == "1.0" and first["sshs_blocks"].startswith("1,1,")
    assert json.loads(metas["save all"]["sshs_cp1"])["sshs_ratio"] == "0.5"
    assert set(json.loads(metas["merge"]["ss_tag_frequency"])) == {"1_cat", "2_dog"}
    with pytest.raises(OutputError, match="already exists"):  # refused before any work
        merge_loras(specs, tmp_path / "merge.safetensors")
    record = json.loads(new["supermerger_lora_merge"])
    assert record["mode"] == "sum" and [x["ratio"] for x in record["loras"]] == [1.0, 0.5]


def test_extract_from_two_loras():
    a, b = make_lora(11, alpha=2.0), make_lora(12, alpha=2.0)
    alpha, beta, gamma = 0.3, 0.7, 2.0
    out = extract_loras([(a, 1.0), (b, 1.0)], alpha=alpha, beta=beta, gamma=gamma, precision="fp32").state_dict
    for key in a:
        if key.endswith(".alpha"):
            assert float(out[key]) == 2.0
            continue
        x, y = a[key], b[key]
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1, 1).unsqueeze(-1)
        d = ((cos + 1) / 2) ** gamma
        assert_close(out[key], (x + alpha * (y - x)) * (d + beta * (1 - 2 * d)), what=key)
    with pytest.raises(RecipeError, match="needs two LoRAs"):
        extract_loras([(a, 1.0)])

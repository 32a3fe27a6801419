"""Merge to checkpoint: W + r·ΔW for linear, 1×1 and 3×3 conv LoRA modules, LoHa and LoKr, each
ΔW computed here by hand; block weights; fp16 / fp8 / inpainting models; files; bad LoRAs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from supermerger.errors import ModelFileError, RecipeError, SuperMergerError
from supermerger.lora import LoraFileError, LoraMismatchError, merge_to_checkpoint, plan_to_checkpoint

from helpers import block_sd1, block_xl
from test_lora_common import UNET, assert_close, factors, one_thread, zeros_checkpoint  # noqa: F401 (fixture)

LIN = UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"  # linear (64, 32)
CONV1 = UNET + "input_blocks.4.1.proj_in.weight"  # 1×1 conv in SD1 (64, 64, 1, 1)
CONV3 = UNET + "output_blocks.3.0.in_layers.2.weight"  # 3×3 conv (128, 256, 3, 3)
TE = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
K_LIN = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
K_CONV1 = "lora_unet_down_blocks_1_attentions_0_proj_in"
K_CONV3 = "lora_unet_up_blocks_1_resnets_0_conv1"
K_TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


@pytest.fixture(scope="module")
def sd1():
    from supermerger.merge.executor import intra_op_threads
    from supermerger.testing.synthetic import make_state_dict

    with intra_op_threads(1):
        return make_state_dict("sd1", seed=5, dtype="float32")


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    from supermerger.merge.executor import intra_op_threads
    from supermerger.testing.synthetic import write_checkpoint

    with intra_op_threads(1):
        return write_checkpoint(tmp_path_factory.mktemp("lora_ckpt") / "sd1.safetensors", "sd1", seed=1)


def kohya(name: str, up, down, alpha: float) -> dict:
    return {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(alpha)}


def test_linear_and_conv_modules_are_w_plus_r_up_down_alpha_over_dim(sd1):
    g = torch.Generator().manual_seed(0)
    lora = {}
    ups = {}
    for name, key, rank in ((K_LIN, LIN, 4), (K_CONV1, CONV1, 3), (K_CONV3, CONV3, 5), (K_TE, TE, 2)):
        up, down = factors(sd1[key].shape, rank, g)
        lora.update(kohya(name, up, down, alpha=1.5))
        ups[key] = (up, down, rank)
    for r in (0.7, -1.3):
        out = merge_to_checkpoint(sd1, [(lora, r)]).state_dict
        for key, (up, down, rank) in ups.items():
            if down.ndim == 2:
                delta = up @ down
            elif down.shape[2:] == (1, 1):
                delta = (up[:, :, 0, 0] @ down[:, :, 0, 0])[:, :, None, None]
            else:  # 3×3: the sum over the rank, written out
                delta = sum(up[:, j, 0, 0][:, None, None, None] * down[j][None] for j in range(rank))
            assert_close(out[key], sd1[key] + r * delta * 1.5 / rank, what=key)
    # the 3×3 merge behaves as the LoRA does in a network: conv(x, W+ΔW) = conv(x, W) + up(down(x))
    up, down, rank = ups[CONV3]
    x = torch.randn(1, 256, 6, 6, generator=g)
    out = merge_to_checkpoint(sd1, [(lora, 1.0)]).state_dict
    lora_path = F.conv2d(F.conv2d(x, down, padding=1), up) * 1.5 / rank
    assert_close(F.conv2d(x, out[CONV3], padding=1), F.conv2d(x, sd1[CONV3], padding=1) + lora_path, tol=1e-4)


def test_loha_with_and_without_tucker(sd1):
    g = torch.Generator().manual_seed(1)
    r = 3
    w1a, w1b = torch.randn(64, r, generator=g), torch.randn(r, 32, generator=g)
    w2a, w2b = torch.randn(64, r, generator=g), torch.randn(r, 32, generator=g)
    name = K_LIN
    loha = {f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b, f"{name}.hada_w2_a": w2a, f"{name}.hada_w2_b": w2b,
            f"{name}.alpha": torch.tensor(2.0)}
    # Tucker form on the 3×3 conv: w = Σ t[i,j,k,l]·wa[i,out]·wb[j,in]
    t1, t2 = torch.randn(r, r, 3, 3, generator=g), torch.randn(r, r, 3, 3, generator=g)
    c1a, c1b = torch.randn(r, 128, generator=g), torch.randn(r, 256, generator=g)
    c2a, c2b = torch.randn(r, 128, generator=g), torch.randn(r, 256, generator=g)
    c = K_CONV3
    loha.update({f"{c}.hada_t1": t1, f"{c}.hada_w1_a": c1a, f"{c}.hada_w1_b": c1b, f"{c}.hada_t2": t2,
                 f"{c}.hada_w2_a": c2a, f"{c}.hada_w2_b": c2b, f"{c}.alpha": torch.tensor(1.0)})
    out = merge_to_checkpoint(sd1, [(loha, 0.4)]).state_dict
    assert_close(out[LIN], sd1[LIN] + 0.4 * (w1a @ w1b) * (w2a @ w2b) * 2.0 / r, what="loha linear")

    def rebuild(t, wa, wb):
        w = torch.zeros(128, 256, 3, 3)
        for i in range(r):
            for j in range(r):
                w += t[i, j][None, None] * wa[i][:, None, None, None] * wb[j][None, :, None, None]
        return w

    assert_close(out[CONV3], sd1[CONV3] + 0.4 * rebuild(t1, c1a, c1b) * rebuild(t2, c2a, c2b) / r, tol=1e-4)


def test_lokr_full_and_factored(sd1):
    g = torch.Generator().manual_seed(2)
    # linear (64, 32) = kron((8, 4), (8, 8)); w2 factored at rank 2, alpha 1 -> scale 1/2
    w1 = torch.randn(8, 4, generator=g)
    w2a, w2b = torch.randn(8, 2, generator=g), torch.randn(2, 8, generator=g)
    # 3×3 conv (128, 256, 3, 3) = kron((4, 8), (32, 32, 3, 3)), both sides full: scale 1
    c1, c2 = torch.randn(4, 8, generator=g), torch.randn(32, 32, 3, 3, generator=g)
    lokr = {f"{K_LIN}.lokr_w1": w1, f"{K_LIN}.lokr_w2_a": w2a, f"{K_LIN}.lokr_w2_b": w2b,
            f"{K_LIN}.alpha": torch.tensor(1.0), f"{K_CONV3}.lokr_w1": c1, f"{K_CONV3}.lokr_w2": c2}
    out = merge_to_checkpoint(sd1, [(lokr, -0.6)]).state_dict
    w2 = w2a @ w2b
    kron = torch.zeros(64, 32)
    for i in range(8):
        for j in range(4):
            kron[i * 8:(i + 1) * 8, j * 8:(j + 1) * 8] = w1[i, j] * w2
    assert_close(out[LIN], sd1[LIN] - 0.6 * kron * 0.5, what="lokr linear")
    conv = torch.zeros(128, 256, 3, 3)
    for i in range(4):
        for j in range(8):
            conv[i * 32:(i + 1) * 32, j * 32:(j + 1) * 32] = c1[i, j] * c2
    assert_close(out[CONV3], sd1[CONV3] - 0.6 * conv, what="lokr conv")


def _lora_everywhere(sd: dict, keys, seed=3) -> dict:
    from supermerger.lora import keymap_for

    km = keymap_for("sdxl" if "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sd
                    else "sd1", tuple((k, tuple(v.shape)) for k, v in sd.items()))
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for t in km.targets:
        if t.key in keys:
            up, down = factors(t.shape, 2, g)
            lora.update(kohya(t.name, up * 0.1, down * 0.1, 2.0))
    return lora


@pytest.mark.parametrize("arch, blocks, expect", [
    ("sd1", "OUTD", {"BASE": 1, "OUT03": 1, "OUT04": 1, "OUT05": 1, "OUT06": 1}),  # preset: × ratio
    ("sd1", "0,0,0,0,0,0,0,0,0,0,0,0,0,0.5,0,0,0,0,0,0,0,0,0,0,0,2", {"M00": 0.5, "OUT11": 2}),  # 26, as is
    ("sdxl", "1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,-1", {"BASE": 1, "OUT08": -1}),  # 20, as is
    ("sdxl", "0,1,0,0,0.5,0,0,0,0,0,0,0", {"IN04": 1, "IN08": 0.5}),  # 12 (SDXL LBW), as is
])
def test_block_weights_zero_exactly_the_right_modules(arch, blocks, expect):
    sd = zeros_checkpoint(arch)
    weights = [k for k, v in sd.items() if k.endswith("weight") and v.ndim in (2, 4) and not k.startswith("first")]
    per_block: dict = {}
    for k in weights:  # a few weights of every block is enough (and quick)
        per_block.setdefault((block_sd1 if arch == "sd1" else block_xl)(k), []).append(k)
    weights = [k for ks in per_block.values() for k in ks[:6]]
    lora = _lora_everywhere(sd, set(weights))
    ratio = 0.8
    full = merge_to_checkpoint(sd, [(lora, 1.0)]).state_dict
    out = merge_to_checkpoint(sd, [(lora, ratio, blocks)]).state_dict
    factor = ratio if blocks == "OUTD" else 1.0
    block_of = block_sd1 if arch == "sd1" else block_xl
    changed = 0
    for k in weights:
        if full[k] is sd[k]:
            continue  # no module on this weight (embeddings)
        want = expect.get(block_of(k), 0) * factor
        if want == 0:
            assert torch.equal(out[k], sd[k]), k  # exactly untouched
        else:
            assert_close(out[k], full[k] * want, what=k)
            changed += 1
    assert changed > 0


def test_fp16_file_in_file_out_metadata_and_fp8(sd1_file, tmp_path):
    ckpt = sd1_file
    A = load_file(str(ckpt))
    up, down = factors(A[LIN].shape, 4, torch.Generator().manual_seed(4))
    lora_file = tmp_path / "style.safetensors"
    save_file(kohya(K_LIN, up.half(), down.half(), 4.0), str(lora_file), metadata={"ss_network_dim": "4"})
    out = tmp_path / "merged.safetensors"
    result = merge_to_checkpoint(ckpt, f"{lora_file}:0.5", output=out)
    assert result.path == out and out.exists()
    merged = load_file(str(out))
    assert merged[LIN].dtype == torch.float16 and set(merged) == set(A)
    expected = (A[LIN].float() + 0.5 * (up.half().float() @ down.half().float())).half()
    assert (merged[LIN].float() - expected.float()).abs().max() <= 2 ** -10
    assert all(torch.equal(merged[k], A[k]) for k in A if k != LIN)
    from supermerger.io.safetensors_format import read_metadata

    meta = json.loads(read_metadata(out)["supermerger_lora_merge"])
    assert meta["loras"][0]["name"] == "style" and meta["loras"][0]["ratio"] == 0.5 and len(meta["loras"][0]["sha256"]) == 64
    with pytest.raises(SuperMergerError, match="already exists"):
        merge_to_checkpoint(ckpt, f"{lora_file}:0.5", output=out)
    # fp8 weights: computed in float32, cast back to fp8
    sd8 = {k: (v.to(torch.float8_e4m3fn) if v.is_floating_point() and v.ndim > 1 else v) for k, v in A.items()}
    out8 = merge_to_checkpoint(sd8, [(kohya(K_LIN, up, down, 4.0), 1.0)]).state_dict
    assert out8[LIN].dtype == torch.float8_e4m3fn
    assert torch.equal(out8[LIN], (sd8[LIN].float() + up @ down).to(torch.float8_e4m3fn))


def test_inpainting_conv_in_is_padded_with_zeros():
    A = zeros_checkpoint("sd1", torch.float16, in_channels=9)
    key = UNET + "input_blocks.0.0.weight"
    g = torch.Generator().manual_seed(5)
    A[key] = torch.randn(A[key].shape, generator=g).half()
    assert A[key].shape[1] == 9
    up, down = torch.randn(32, 2, 1, 1, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    out = merge_to_checkpoint(A, [(kohya("lora_unet_conv_in", up, down, 2.0), 1.0)]).state_dict[key]
    delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    assert_close(out[:, :4].float(), A[key][:, :4].float() + delta, tol=2e-3)
    assert torch.equal(out[:, 4:], A[key][:, 4:])


def test_unmatched_modules_are_listed_and_strict_refuses(sd1):
    g = torch.Generator().manual_seed(6)
    up, down = factors(sd1[LIN].shape, 2, g)
    lora = kohya(K_LIN, up, down, 2.0)
    lora.update(kohya("lora_unet_down_blocks_9_attentions_0_proj_in", up, down, 2.0))
    lora["lora_unet_x.dora_scale"] = torch.ones(3)
    lora.update(kohya("lora_unet_x", up, down, 2.0))
    result = merge_to_checkpoint(sd1, [(lora, 1.0)])
    assert result.unmatched == {"lora1": ["lora_unet_down_blocks_9_attentions_0_proj_in", "lora_unet_x"]}
    assert any("2 of 3 modules not applied" in n for n in result.notices)
    with pytest.raises(LoraMismatchError, match="not in the model") as e:
        merge_to_checkpoint(sd1, [(lora, 1.0)], strict=True)
    assert "Traceback" not in str(e.value) and len(str(e.value).splitlines()) <= 2


def test_bad_loras_give_clear_errors(sd1, tmp_path):
    up, down = factors(sd1[LIN].shape, 2, torch.Generator().manual_seed(7))
    cases = [
        ({f"{K_LIN}.lora_up.weight": up}, LoraFileError, "malformed: module .* has up but no down"),
        ({f"{K_LIN}.lora_up.weight": up, f"{K_LIN}.lora_down.weight": down[:1]}, LoraFileError, "do not fit together"),
        ({"model.diffusion_model.out.2.weight": up}, LoraFileError, "holds no LoRA modules"),
        (kohya("lora_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_q", up, down, 1.0), LoraMismatchError,
         "none of its 1 modules matches"),  # an SDXL module on an SD1 model
        (kohya(K_LIN, torch.randn(64, 2), torch.randn(2, 48), 1.0), LoraMismatchError, "do not fit the model"),
    ]
    for lora, error, text in cases:
        with pytest.raises(error, match=text) as e:
            merge_to_checkpoint(sd1, [(lora, 1.0)])
        assert len(str(e.value).splitlines()) <= 2, str(e.value)
    truncated = tmp_path / "cut.safetensors"
    save_file(kohya(K_LIN, up, down, 1.0), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="truncated"):
        merge_to_checkpoint(sd1, str(truncated))
    with pytest.raises(LoraFileError, match="not found"):
        merge_to_checkpoint(sd1, "no_such_lora:0.5", lora_dirs=[tmp_path])
    with pytest.raises(RecipeError, match="(?s)unknown LBW preset 'OUTDD'.*Did you mean 'OUTD'"):
        merge_to_checkpoint(sd1, [(kohya(K_LIN, up, down, 1.0), 1.0, "OUTDD")])
    with pytest.raises(RecipeError, match="13 block weights"):
        merge_to_checkpoint(sd1, [(kohya(K_LIN, up, down, 1.0), 1.0, ",".join(["1"] * 13))])


def test_names_from_a_lora_folder_and_dry_run_plan(sd1, tmp_path):
    up, down = factors(sd1[LIN].shape, 2, torch.Generator().manual_seed(8))
    (tmp_path / "sub").mkdir()
    save_file(kohya(K_LIN, up, down, 1.0), str(tmp_path / "sub" / "my_style.safetensors"))
    plan = plan_to_checkpoint(sd1, "my_style:0.3:OUTD", lora_dirs=[tmp_path])
    try:
        lines = "\n".join(plan.summary_lines())
        assert "my_style ratio 0.3, blocks OUTD: 1 modules" in lines and "block ratios 0.3,0,0" in lines
    finally:
        plan.source.close()

"""Key mapping: a LoRA with a module for EVERY targetable weight of the tiny SD1 / SD2 / SDXL
checkpoints, in kohya naming (diffusers and LDM U-Net paths) and diffusers / PEFT naming, lands
100% on the right keys with the right shapes; names come from test_lora_common, not the engine."""

from __future__ import annotations

import pytest
import torch

from supermerger.lora import detect_lora_arch, load_lora, merge_to_checkpoint

from test_lora_common import (UNET, assert_close, diffusers_to_ldm, diffusers_unet_modules, factors, reference_delta,
                              one_thread, text_modules, zeros_checkpoint)  # noqa: F401 (fixture)

RANK, ALPHA = 2, 3.0


@pytest.fixture(scope="module")
def checkpoints():
    return {arch: zeros_checkpoint(arch) for arch in ("sd1", "sd2", "sdxl")}


def modules_for(arch: str, naming: str, sd: dict) -> list[tuple[str, str, tuple | None, str]]:
    """(LoRA module name, checkpoint key, rows, tensor-name style) for every targetable weight."""
    out = []
    for path in diffusers_unet_modules(arch):
        ldm = diffusers_to_ldm(arch, path)
        key = UNET + ldm + ".weight"
        if key not in sd:
            assert path.endswith("conv_shortcut"), path  # ResBlocks without a channel change have none
            continue
        if naming == "kohya":
            name = "lora_unet_" + path.replace(".", "_")
        elif naming == "kohya_ldm":
            name = "lora_unet_" + ldm.replace(".", "_")
        else:
            name = "unet." + path
        out.append((name, key, None))
    for kohya, peft, hf_path, key, rows in text_modules(arch):
        assert key in sd, key
        name = f"{kohya}_{hf_path.replace('.', '_')}" if naming.startswith("kohya") else f"{peft}.{hf_path}"
        out.append((name, key, rows))
    return out


def targetable(arch: str, sd: dict) -> set:
    unet = {(k, None) for k, v in sd.items() if k.startswith(UNET) and k.endswith(".weight") and v.ndim in (2, 4)}
    text = {(key, rows) for _, _, _, key, rows in text_modules(arch)}
    return unet | text


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("naming", ["kohya", "kohya_ldm", "peft"])
def test_every_module_lands_on_its_key(arch, naming, checkpoints):
    sd = checkpoints[arch]
    mods = modules_for(arch, naming, sd)
    assert {(k, r) for _, k, r in mods} == targetable(arch, sd)  # the enumeration covers every weight
    gen = torch.Generator().manual_seed(7)
    lora, expected = {}, {}
    for name, key, rows in mods:
        shape = sd[key].shape if rows is None else (rows[1] - rows[0],) + tuple(sd[key].shape[1:])
        up, down = factors(shape, RANK, gen)
        if naming == "peft":  # PEFT: lora_B / lora_A, no alpha (scale 1)
            lora[f"{name}.lora_B.weight"], lora[f"{name}.lora_A.weight"] = up, down
            expected[(key, rows)] = reference_delta(up, down, RANK, RANK)
        else:
            lora[f"{name}.lora_up.weight"], lora[f"{name}.lora_down.weight"] = up, down
            lora[f"{name}.alpha"] = torch.tensor(ALPHA)
            expected[(key, rows)] = reference_delta(up, down, ALPHA, RANK)
    assert detect_lora_arch(load_lora(lora).modules.values()).id == arch  # SD2: 24 text layers, SD1 12
    result = merge_to_checkpoint(sd, [(lora, 1.0)])
    assert result.unmatched == {}
    assert result.plan.loras[0].applied == len(mods)
    out = result.state_dict
    for (key, rows), delta in expected.items():
        got = out[key] if rows is None else out[key][rows[0]:rows[1]]
        assert_close(got, delta, what=key)
    touched = {k for k, _ in expected}
    assert all(out[k] is sd[k] for k in sd if k not in touched)  # everything else passes through untouched


def test_old_diffusers_and_ldm_dotted_names(checkpoints):
    """Old diffusers attention-processor names, LoRACompatibleLinear `.lora.` names, LDM-dotted names, te1 on SD1."""
    sd = checkpoints["sd1"]
    gen = torch.Generator().manual_seed(1)
    key_q = UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    key_out = UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight"
    key_ff = UNET + "output_blocks.5.1.transformer_blocks.0.ff.net.2.weight"
    key_te = "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight"
    names = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora": key_q,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora": key_out,
        "diffusion_model.output_blocks.5.1.transformer_blocks.0.ff.net.2.lora": key_ff,
        "text_encoder.text_model.encoder.layers.3.mlp.fc1.lora_linear_layer": key_te,
    }
    key_te1 = "cond_stage_model.transformer.text_model.encoder.layers.4.mlp.fc2.weight"
    lora, expected = {}, {}
    for name, key in names.items():
        up, down = factors(sd[key].shape, 1, gen)
        lora[f"{name}.up.weight"], lora[f"{name}.down.weight"] = up, down
        expected[key] = reference_delta(up, down, 1, 1)
    up, down = factors(sd[key_te1].shape, 1, gen)  # SD1 text encoder spelt te1, as some tools write it
    lora["lora_te1_text_model_encoder_layers_4_mlp_fc2.lora_up.weight"] = up
    lora["lora_te1_text_model_encoder_layers_4_mlp_fc2.lora_down.weight"] = down
    expected[key_te1] = reference_delta(up, down, 1, 1)
    out = merge_to_checkpoint(sd, [(lora, 1.0)]).state_dict
    for key, delta in expected.items():
        assert_close(out[key], delta, what=key)


def test_sd2_and_sdxl_fused_qkv_thirds(checkpoints):
    """A LoRA on k_proj changes exactly the middle third of in_proj_weight (OpenCLIP)."""
    for arch, name, key in (
            ("sd2", "lora_te_text_model_encoder_layers_5_self_attn_k_proj",
             "cond_stage_model.model.transformer.resblocks.5.attn.in_proj_weight"),
            ("sdxl", "lora_te2_text_model_encoder_layers_30_self_attn_v_proj",
             "conditioner.embedders.1.model.transformer.resblocks.30.attn.in_proj_weight")):
        sd = checkpoints[arch]
        d = sd[key].shape[1]
        up, down = factors((d, d), 2, torch.Generator().manual_seed(3))
        lora = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(2.0)}
        out = merge_to_checkpoint(sd, [(lora, 0.5)]).state_dict[key]
        third = 1 if name.endswith("k_proj") else 2
        expected = torch.zeros(3 * d, d)
        expected[third * d:(third + 1) * d] = 0.5 * (up @ down)
        assert_close(out, expected)

"""Make LoRA from two checkpoints: at full rank the LoRA is α·A − β·B to float32 precision (so
B + LoRA = A on every module); the text encoder is left out when unchanged; files in and out."""

from __future__ import annotations

import json

import pytest
import torch

from supermerger.errors import ArchitectureError
from supermerger.io.safetensors_format import read_header
from supermerger.lora import keymap_for, make_lora, merge_to_checkpoint
from supermerger.merge.executor import intra_op_threads

from test_lora_common import assert_close, one_thread, zeros_checkpoint  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def pair():
    """(A, B): B a tiny SD1 model, A = B plus noise on every weight (text encoder included)."""
    from supermerger.testing.synthetic import make_state_dict

    with intra_op_threads(1):
        b = make_state_dict("sd1", seed=2, dtype="float32")
        g = torch.Generator().manual_seed(3)
        a = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.ndim > 1 else v)
             for k, v in b.items()}
    return a, b


def targets(sd: dict, kinds: set):
    km = keymap_for("sd1", tuple((k, tuple(v.shape)) for k, v in sd.items()))
    return [t for t in km.targets if t.kind in kinds]


def test_full_rank_lora_reconstructs_the_difference(pair):
    a, b = pair
    result = make_lora(a, b, dim=100000, conv_dim=100000, clamp_quantile=None, precision="fp32")
    assert result.notices == []  # the text encoders differ: kept
    lora = result.state_dict
    wanted = targets(a, {"transformer", "text", "conv"})
    assert len(lora) == 3 * len(wanted)
    for t in wanted:
        up, down = lora[f"{t.name}.lora_up.weight"], lora[f"{t.name}.lora_down.weight"]
        assert float(lora[f"{t.name}.alpha"]) == up.shape[1] == down.shape[0]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(t.shape)
        assert_close(delta, a[t.key] - b[t.key], tol=1e-5, what=t.key)
    # and applied to B it gives back A on every module
    back = merge_to_checkpoint(b, [(lora, 1.0)]).state_dict
    for t in wanted:
        assert_close(back[t.key], a[t.key], tol=1e-5, what=t.key)


def test_alpha_beta_dims_and_unchanged_text_encoder(pair):
    a, b = pair
    unet_only = {k: (a[k] if k.startswith("model.diffusion_model.") else v) for k, v in b.items()}
    result = make_lora(unet_only, b, alpha=1.5, beta=0.5, dim=8, clamp_quantile=None, precision="fp32")
    assert any("Text encoder is the same" in n for n in result.notices)
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in result.state_dict}
    assert not any(n.startswith("lora_te") for n in names)
    assert len(names) == len(targets(a, {"transformer"}))  # no conv_dim: a LoRA, not a LoCon
    key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"  # (64, 32): rank 8 of 32
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    up, down = result.state_dict[f"{name}.lora_up.weight"], result.state_dict[f"{name}.lora_down.weight"]
    assert up.shape == (64, 8) and down.shape == (8, 32)
    target = 1.5 * unet_only[key] - 0.5 * b[key]
    u, s, vh = torch.linalg.svd(target)
    assert_close(up @ down, (u[:, :8] * s[:8]) @ vh[:8], tol=1e-4)  # the best rank-8 approximation


def test_files_in_and_out_and_family_check(tmp_path, pair):
    from safetensors.torch import save_file

    a, b = pair
    pa, pb = tmp_path / "tuned.safetensors", tmp_path / "base.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in a.items()}, str(pa))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in b.items()}, str(pb))
    out = tmp_path / "diff.safetensors"
    result = make_lora(pa, pb, out, dim=4, conv_dim=2, svd="lowrank")
    header = read_header(out)
    meta = header.metadata
    assert meta["ss_network_dim"] == "4" and meta["ss_network_module"] == "networks.lora" and meta["ss_v2"] == "False"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2"}
    assert meta["modelspec.title"] == "diff" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    conv = "lora_unet_up_blocks_1_resnets_0_conv1.lora_down.weight"
    assert header.tensors[conv].shape == (2, 256, 3, 3) and header.tensors[conv].dtype == "F16"
    assert result.path == out
    with pytest.raises(ArchitectureError, match="SD1.x but model B .* is SDXL"):
        make_lora(pa, zeros_checkpoint("sdxl", torch.float16))

"""The four merge modes end to end on tiny synthetic checkpoints, against formulas written here."""

from __future__ import annotations

import pytest
import torch

import supermerger
from supermerger import Recipe
from supermerger.errors import RecipeError

from helpers import assert_close_dtype, load, merged_keys


def run(models, arch="sd1", **kw):
    recipe = Recipe(model_a=str(models[(arch, "A")]), model_b=str(models[(arch, "B")]), **kw)
    return supermerger.merge(recipe).state_dict


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0, -0.5, 1.7])
def test_weight_sum(models, alpha):
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    out = run(models, alpha=alpha)
    assert set(out) == set(A)
    for k in merged_keys(A):
        expected = (1 - alpha) * A[k].float() + alpha * B[k].float()
        assert_close_dtype(out[k], expected, A[k].dtype, k)
    if alpha == 0.0:
        assert all(torch.equal(out[k], A[k]) for k in A)
    if alpha == 1.0:
        assert all(torch.equal(out[k], B[k]) for k in merged_keys(A))


def test_unmerged_keys_stay_from_a(models):
    A = load(models[("sd1", "A")])
    out = run(models, alpha=0.7)
    assert torch.equal(out["cond_stage_model.transformer.text_model.embeddings.position_ids"],
                       A["cond_stage_model.transformer.text_model.embeddings.position_ids"])
    assert out["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    for buf in ("betas", "alphas_cumprod", "posterior_mean_coef2"):
        assert torch.equal(out[buf], A[buf])


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_add_difference(models, arch):
    A, B, C = (load(models[(arch, x)]) for x in "ABC")
    out = supermerger.merge(Recipe(model_a=str(models[(arch, "A")]), model_b=str(models[(arch, "B")]),
                                   model_c=str(models[(arch, "C")]), mode="Add difference", alpha=0.8)).state_dict
    for k in merged_keys(A):
        assert_close_dtype(out[k], A[k].float() + 0.8 * (B[k].float() - C[k].float()), A[k].dtype, k)


def test_triple_sum_and_sum_twice(models):
    A, B, C = (load(models[("sd1", x)]) for x in "ABC")
    paths = dict(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]), model_c=str(models[("sd1", "C")]))
    a, b = 0.3, 0.45
    tri = supermerger.merge(Recipe(mode="triple_sum", alpha=a, beta=b, **paths)).state_dict
    twi = supermerger.merge(Recipe(mode="sum Twice", alpha=a, beta=b, **paths)).state_dict
    for k in merged_keys(A)[::7]:
        exp_t = (1 - a - b) * A[k].float() + a * B[k].float() + b * C[k].float()
        exp_w = (1 - b) * ((1 - a) * A[k].float() + a * B[k].float()) + b * C[k].float()
        assert_close_dtype(tri[k], exp_t, A[k].dtype, k)
        assert_close_dtype(twi[k], exp_w, A[k].dtype, k)


def test_triple_sum_alpha_beta_zero_gives_a(models):
    A = load(models[("sd1", "A")])
    paths = dict(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]), model_c=str(models[("sd1", "C")]))
    out = supermerger.merge(Recipe(mode="triple_sum", alpha=0.0, beta=0.0, **paths)).state_dict
    assert all(torch.equal(out[k], A[k]) for k in A)


def test_a_mode_that_needs_c_refuses_without_it(models):
    """Add difference without model C is refused before anything is read (it once ran as a plain weight
    sum, A + α(B − A), with a notice afterwards)."""
    for mode in ("add_difference", "triple_sum", "sum_twice"):
        with pytest.raises(RecipeError, match="needs model C and none was given"):
            supermerger.merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]),
                                     mode=mode, alpha=0.5))


def test_model_a_dtype_is_kept_and_cast_options(models):
    A32, B = load(models[("sd1", "A32")]), load(models[("sd1", "B")])
    out = supermerger.merge(Recipe(model_a=str(models[("sd1", "A32")]), model_b=str(models[("sd1", "B")]),
                                   alpha=0.25)).state_dict
    k = "model.diffusion_model.middle_block.1.proj_out.weight"
    assert out[k].dtype == torch.float32
    assert_close_dtype(out[k], 0.75 * A32[k] + 0.25 * B[k].float(), torch.float32, k)
    for dtype, tdtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        out = supermerger.merge(Recipe(model_a=str(models[("sd1", "A32")]), model_b=str(models[("sd1", "B")]),
                                       alpha=0.25, dtype=dtype)).state_dict
        assert_close_dtype(out[k], 0.75 * A32[k] + 0.25 * B[k].float(), tdtype, k)
        assert out["betas"].dtype == torch.float32  # buffers (no "model" in the name) are not cast
        assert out["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64


def test_bf16_inputs(models):
    Abf, B = load(models[("sd1", "Abf16")]), load(models[("sd1", "B")])
    out = supermerger.merge(Recipe(model_a=str(models[("sd1", "Abf16")]), model_b=str(models[("sd1", "B")]),
                                   alpha=0.4)).state_dict
    for k in merged_keys(Abf)[::11]:
        assert_close_dtype(out[k], 0.6 * Abf[k].float() + 0.4 * B[k].float(), torch.bfloat16, k)


def test_fp8_inputs(tmp_path):
    from supermerger.testing.synthetic import make_state_dict
    from safetensors.torch import save_file

    a = {k: (v.to(torch.float8_e4m3fn) if v.is_floating_point() and v.dtype == torch.float16 else v)
         for k, v in make_state_dict("sd1", seed=1).items()}
    b = make_state_dict("sd1", seed=2)
    save_file(a, tmp_path / "a8.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    out = supermerger.merge(Recipe(model_a=str(tmp_path / "a8.safetensors"), model_b=str(tmp_path / "b.safetensors"),
                                   alpha=0.5)).state_dict
    k = "model.diffusion_model.out.2.weight"
    assert out[k].dtype == torch.float8_e4m3fn
    expected = (0.5 * a[k].float() + 0.5 * b[k].float()).to(torch.float8_e4m3fn)
    assert torch.equal(out[k].float(), expected.float())


def test_keys_only_in_b_are_copied(tmp_path):
    from supermerger.testing.synthetic import make_state_dict

    a = make_state_dict("sd1", seed=1)
    b = make_state_dict("sd1", seed=2)
    b["model_ema.decay"] = torch.tensor(0.9999)
    b["model.diffusion_model.extra_only_in_b.weight"] = torch.ones(3, dtype=torch.float16)
    del a["model.diffusion_model.out.0.bias"]
    out = supermerger.merge(Recipe(alpha=0.5), models={"A": a, "B": b}).state_dict
    assert torch.equal(out["model.diffusion_model.extra_only_in_b.weight"], torch.ones(3, dtype=torch.float16))
    assert torch.equal(out["model_ema.decay"], torch.tensor(0.9999))
    assert torch.equal(out["model.diffusion_model.out.0.bias"], b["model.diffusion_model.out.0.bias"])


def test_inpainting_a_merges_first_four_channels(models):
    Ai, B = load(models[("sd1", "inpaint")]), load(models[("sd1", "B")])
    result = supermerger.merge(Recipe(model_a=str(models[("sd1", "inpaint")]), model_b=str(models[("sd1", "B")]),
                                      alpha=0.5))
    out = result.state_dict
    k = "model.diffusion_model.input_blocks.0.0.weight"
    assert out[k].shape == Ai[k].shape == (32, 9, 3, 3)
    assert_close_dtype(out[k][:, :4], 0.5 * Ai[k][:, :4].float() + 0.5 * B[k].float(), torch.float16, k)
    assert torch.equal(out[k][:, 4:], Ai[k][:, 4:])
    assert result.plan.variant == "inpainting"


def test_library_accepts_state_dicts_and_ckpt(models):
    from supermerger.testing.synthetic import make_state_dict

    a, b = make_state_dict("sd1", seed=1), make_state_dict("sd1", seed=2)
    out_mem = supermerger.merge(Recipe(alpha=0.5), models={"A": a, "B": b}).state_dict
    out_file = supermerger.merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "ckpt")]),
                                        alpha=0.5)).state_dict
    for k in a:
        assert torch.equal(out_mem[k], out_file[k]), k


def test_instruct_pix2pix_a_and_sd2_vpred_marker(tmp_path):
    from supermerger.testing.synthetic import make_state_dict

    a = make_state_dict("sd1", seed=5, in_channels=8)
    b = make_state_dict("sd1", seed=6)
    result = supermerger.merge(Recipe(alpha=0.25), models={"A": a, "B": b})
    k = "model.diffusion_model.input_blocks.0.0.weight"
    assert result.plan.variant == "instruct-pix2pix"
    assert_close_dtype(result.state_dict[k][:, :4], 0.75 * a[k][:, :4].float() + 0.25 * b[k].float(), torch.float16, k)
    assert torch.equal(result.state_dict[k][:, 4:], a[k][:, 4:])
    # an SD2 v-prediction file marks itself with a `v_pred` key: recognised as SD2, the marker kept from A
    a2, b2 = make_state_dict("sd2", seed=1), make_state_dict("sd2", seed=2)
    a2["v_pred"] = torch.tensor([])
    result = supermerger.merge(Recipe(alpha=0.5), models={"A": a2, "B": b2})
    assert result.plan.arch.id == "sd2" and "v_pred" in result.state_dict

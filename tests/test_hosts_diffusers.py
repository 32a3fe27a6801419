"""The standalone diffusers host on tiny synthetic SD1 / SDXL checkpoints (random weights, real key names)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from supermerger import Recipe  # noqa: E402
from supermerger.api import merge  # noqa: E402
from supermerger.errors import ArchitectureError, RecipeError  # noqa: E402
from supermerger.merge.executor import MergeCancelled  # noqa: E402
from supermerger.hosts import GenParams  # noqa: E402
from supermerger.hosts import clip_tokenizer, samplers  # noqa: E402
from supermerger.hosts.diffusers_configs import layout_for  # noqa: E402
from supermerger.hosts.infotext import format_infotext, parse_infotext  # noqa: E402
from supermerger.testing.synthetic import key_shapes, make_state_dict  # noqa: E402

try:
    clip_tokenizer.find_bpe_file()
except Exception:  # pragma: no cover
    pytest.skip("open-clip-torch (the CLIP vocabulary) is not installed", allow_module_level=True)

PARAMS = GenParams(prompt="a photo of a cat", negative_prompt="blurry", seed=1, steps=2, cfg_scale=7,
                   sampler="Euler", width=64, height=64)


def full_vocab(sd: dict, seed: int) -> dict:
    """The tiny synthetic models have 1000 token embeddings; the CLIP tokenizer needs all 49408."""
    g = torch.Generator().manual_seed(seed)
    for k in list(sd):
        if k.endswith("token_embedding.weight"):
            sd[k] = (torch.randn(49408, sd[k].shape[1], generator=g) * 0.02).to(sd[k].dtype)
    return sd


def pixels(gen, i=0):
    return np.asarray(gen.images[i])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and this shared machine is often busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("diffusers_work")


_MODELS: dict = {}


def tiny_pair(arch: str) -> tuple[dict, dict]:
    """Models A and B of ``arch`` (made once per test session; tests must not modify them)."""
    if arch not in _MODELS:
        _MODELS[arch] = full_vocab(make_state_dict(arch, 1), 1), full_vocab(make_state_dict(arch, 2), 2)
    return _MODELS[arch]


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def built(request, work_dir):
    from supermerger.hosts.diffusers_host import DiffusersHost

    arch = request.param
    a, b = tiny_pair(arch)
    host = DiffusersHost(work_dir=work_dir)
    host.build(a, "model A")
    return arch, host, a, b


def test_tokenizer_from_open_clip_vocabulary(work_dir):
    tok = clip_tokenizer.load_tokenizer(work_dir / "clip_tokenizer")  # the folder the host uses
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    tok2 = clip_tokenizer.load_tokenizer(work_dir / "clip_tokenizer_pad0", pad_token="!")
    assert tok2("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]


def test_infotext_format_and_parse():
    text = format_infotext("a cat, sitting", "blurry", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0,
                                                        "Seed": 1, "Size": "512x512", "Model": "A x 0.3 + B",
                                                        "Clip skip": None, "Recipe": "a: b, c"})
    assert text == ('a cat, sitting\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, '
                    'Size: 512x512, Model: A x 0.3 + B, Recipe: "a: b, c"')
    prompt, negative, fields = parse_infotext(text)
    assert (prompt, negative) == ("a cat, sitting", "blurry")
    assert fields == {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "1", "Size": "512x512",
                      "Model": "A x 0.3 + B", "Recipe": "a: b, c"}
    assert format_infotext("p", "", {"Steps": 2}) == "p\nSteps: 2"


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_every_sampler_builds_a_scheduler(name):
    spec = samplers.SAMPLERS[name]
    if spec.needs:
        pytest.importorskip(spec.needs)
    for schedule in ("Automatic", "Karras"):
        s = samplers.make_scheduler(name, schedule)
        assert type(s).__name__ == spec.scheduler
        s.set_timesteps(4)


def test_sampler_names_old_and_new_forms():
    spec, options = samplers.resolve("DPM++ 2M Karras")
    assert spec.scheduler == "DPMSolverMultistepScheduler" and options["use_karras_sigmas"] is True
    assert samplers.make_scheduler("DPM++ 2M", "Karras").config.use_karras_sigmas
    assert samplers.make_scheduler("Euler", prediction_type="v_prediction").config.prediction_type == "v_prediction"
    with pytest.raises(RecipeError, match="Did you mean 'Euler a'"):
        samplers.resolve("Euler A")


def test_configs_from_full_size_shapes():
    sd1 = layout_for("sd1", dict(key_shapes("sd1", "full")))
    assert sd1.unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert sd1.unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert (sd1.unet["cross_attention_dim"], sd1.unet["attention_head_dim"], sd1.unet["layers_per_block"]) == (768, 8, 2)
    assert sd1.vae["block_out_channels"] == [128, 256, 512, 512] and sd1.vae["scaling_factor"] == 0.18215
    te = sd1.text_encoders[0]["config"]
    assert (te["hidden_size"], te["num_hidden_layers"], te["num_attention_heads"], te["intermediate_size"]) == \
        (768, 12, 12, 3072)
    sd2 = layout_for("sd2", dict(key_shapes("sd2", "full")))
    assert sd2.unet["cross_attention_dim"] == 1024 and sd2.unet["use_linear_projection"]
    assert sd2.unet["attention_head_dim"] == [5, 10, 20, 20]
    assert sd2.text_encoders[0]["config"]["num_hidden_layers"] == 23  # SD2 uses the penultimate layer
    xl = layout_for("sdxl", dict(key_shapes("sdxl", "full")))
    assert xl.unet["block_out_channels"] == [320, 640, 1280]
    assert xl.unet["transformer_layers_per_block"] == [1, 2, 10]
    assert xl.unet["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert (xl.unet["cross_attention_dim"], xl.unet["addition_time_embed_dim"],
            xl.unet["projection_class_embeddings_input_dim"]) == (2048, 256, 2816)
    g = xl.text_encoders[1]["config"]
    assert (g["hidden_size"], g["num_hidden_layers"], g["num_attention_heads"], g["projection_dim"]) == \
        (1280, 32, 20, 1280)
    assert xl.vae["scaling_factor"] == 0.13025


def test_generate_is_deterministic_and_writes_infotext(built):
    arch, host, a, b = built
    host.load_state_dict(a, "model A")
    first = host.generate(PARAMS)
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first), pixels(host.generate(PARAMS)))
    assert first.infotexts == ["a photo of a cat\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, CFG scale: 7, "
                               "Seed: 1, Size: 64x64, Model: model A"]
    two = host.generate(PARAMS.with_(batch_size=2, batch_count=2, seed=5))
    assert two.seeds == [5, 6, 7, 8] and len(two.images) == 4
    assert [parse_infotext(t)[2]["Seed"] for t in two.infotexts] == ["5", "6", "7", "8"]
    # image k of a batch depends on its own seed only (batched kernels may round differently: ±2 levels)
    alone = pixels(host.generate(PARAMS.with_(seed=7))).astype(int)
    assert np.abs(pixels(two, 2).astype(int) - alone).max() <= 2
    assert np.abs(pixels(two, 1).astype(int) - alone).max() > 2


def test_swap_changes_image_in_place_and_restores_bit_for_bit(built):
    arch, host, a, b = built
    host.load_state_dict(a, "model A")
    image_a = pixels(host.generate(PARAMS))
    tensors = {k: (t.tensor, t.tensor.data_ptr(), t.tensor.dtype) for k, t in host._targets.items()}
    params = {id(p) for m in (host.pipe.unet, host.pipe.vae, host.pipe.text_encoder) for p in m.parameters()}
    host.load_state_dict(b, "model B")
    image_b = pixels(host.generate(PARAMS))
    assert not np.array_equal(image_a, image_b)
    assert host.generate(PARAMS).infotexts[0].endswith("Model: model B")
    for k, t in host._targets.items():
        assert t.tensor is tensors[k][0] and t.tensor.data_ptr() == tensors[k][1] and t.tensor.dtype == tensors[k][2]
    assert params == {id(p) for m in (host.pipe.unet, host.pipe.vae, host.pipe.text_encoder) for p in m.parameters()}
    assert all(p.dtype == torch.float32 for p in host.pipe.unet.parameters())
    host.load_state_dict(a, "model A")
    assert np.array_equal(pixels(host.generate(PARAMS)), image_a)


def test_merge_into_live_pipeline(built):
    arch, host, a, b = built
    recipe = Recipe(model_a="A", model_b="B", alpha=0.4)
    in_memory = merge(recipe, models={"A": a, "B": b}).state_dict
    host.load_state_dict(a, "model A")
    ptrs = {k: t.tensor.data_ptr() for k, t in host._targets.items()}
    host.merge_and_load(recipe, models={"A": a, "B": b}, name="A x 0.6 + B x 0.4", infotext={"Merge ID": 7})
    assert ptrs == {k: t.tensor.data_ptr() for k, t in host._targets.items()}
    for key, target in host._targets.items():  # the live weights are the merge (computed in fp32 here)
        live = target.tensor.T if target.kind == "T" else target.tensor.reshape(target.ldm_shape)
        assert torch.equal(live.to(in_memory[key].dtype), in_memory[key]), key
    fields = parse_infotext(host.generate(PARAMS).infotexts[0])[2]
    assert fields["Model"] == f"A x 0.6 + B x 0.4 ID {host.history_id}" and host.history_id is not None
    assert Recipe.from_json(fields["SuperMerger recipe"]).alpha == 0.4 and fields["Merge ID"] == "7"
    stop = threading.Event()
    stop.set()
    with pytest.raises(MergeCancelled):
        host.merge_and_load(recipe, models={"A": a, "B": b}, name="never", stop=stop)
    assert host.model_name == "A x 0.6 + B x 0.4 (partly overwritten by an interrupted merge)"
    fields = parse_infotext(host.generate(PARAMS).infotexts[0])[2]
    assert fields["Model"] == host.model_name and "SuperMerger recipe" not in fields


def test_hires_fix_sd1(built):
    arch, host, a, b = built
    if arch != "sd1":
        pytest.skip("one architecture is enough")
    host.load_state_dict(a, "model A")
    p = PARAMS.with_(enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_second_pass_steps=2)
    gen = host.generate(p)
    assert gen.images[0].size == (96, 96)
    fields = parse_infotext(gen.infotexts[0])[2]
    assert (fields["Size"], fields["Hires upscale"], fields["Hires upscaler"], fields["Denoising strength"]) == \
        ("64x64", "1.5", "Latent", "0.5")
    assert np.array_equal(pixels(gen), pixels(host.generate(p)))


def test_listing_and_errors(tmp_path, work_dir):
    from supermerger.hosts.diffusers_host import DiffusersHost

    (tmp_path / "sub").mkdir()
    for name in ("b.safetensors", "sub/a.ckpt", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    host = DiffusersHost(tmp_path, lora_dir=tmp_path / "none", work_dir=work_dir)
    assert host.list_checkpoints() == ["b.safetensors", "sub/a.ckpt"]
    assert host.list_loras() == [] and "Euler a" in host.samplers()
    assert host.checkpoint_path("sub/a.ckpt") == str(tmp_path / "sub" / "a.ckpt")
    with pytest.raises(Exception, match="No model is loaded"):
        host.generate(PARAMS)
    with pytest.raises(ArchitectureError, match="49408"):
        host.build(make_state_dict("sd1", 1), "tiny vocabulary")


def test_sd2_v_prediction_with_clip_skip(work_dir):
    from supermerger.hosts.diffusers_host import DiffusersHost

    host = DiffusersHost(work_dir=work_dir)
    host.build(full_vocab(make_state_dict("sd2", 1), 1), "sd2 model")
    assert host.layout.prediction_type == "v_prediction"
    assert host.pipe.text_encoder.config.num_hidden_layers == 23  # penultimate layer of 24
    p = PARAMS.with_(sampler="DPM++ 2M", scheduler="Karras", clip_skip=2)
    gen = host.generate(p)
    assert np.array_equal(pixels(gen), pixels(host.generate(p)))
    assert not np.array_equal(pixels(gen), pixels(host.generate(p.with_(clip_skip=1))))
    assert "Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64, Model: sd2 model, Clip skip: 2" in gen.infotexts[0]
    host.unload()
    assert host.pipe is None and host.model_name is None


def test_merge_and_load_builds_when_nothing_fits_then_merges_in_place_bf16(work_dir):
    from supermerger.hosts.diffusers_host import DiffusersHost

    a, b = tiny_pair("sd1")
    host = DiffusersHost(work_dir=work_dir, dtype="bfloat16")
    first = host.merge_and_load(Recipe(model_a="A", model_b="B", alpha=0.5), models={"A": a, "B": b})
    assert first.state_dict is None and host.model_name == first.name and "merge_into" not in host.timings
    unet = host.pipe.unet
    ptrs = [p.data_ptr() for p in unet.parameters()]
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
    host.merge_and_load(Recipe(model_a="A", model_b="B", alpha=0.25), models={"A": a, "B": b}, name="second")
    assert "merge_into" in host.timings and host.model_name == "second"
    assert ptrs == [p.data_ptr() for p in unet.parameters()]
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
    w = host._targets["model.diffusion_model.out.2.weight"].tensor
    expected = (0.75 * a["model.diffusion_model.out.2.weight"].float() + 0.25 * b["model.diffusion_model.out.2.weight"].float())
    assert torch.allclose(w.float(), expected, atol=1e-2)
    assert host.generate(PARAMS).images[0].size == (64, 64)

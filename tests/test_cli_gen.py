"""`supermerger gen` and `supermerger demo`: merge, generate, PNGs with the merge's ID and recipe; demo models."""

from __future__ import annotations

import json
import os

import pytest

from supermerger.cli import main

pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("needs_vocabulary")


def test_demo_models_full_vocabulary_made_once_and_renewed(_isolated_data_dir):
    from supermerger.demo import demo_models
    from supermerger.io.safetensors_format import read_header
    from supermerger.testing.synthetic import write_checkpoint

    a, b = demo_models("sd1")
    assert a.endswith("demo/demoA.safetensors") and b.endswith("demo/demoB.safetensors")
    rows = read_header(a).tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    assert rows.shape[0] == 49408
    mtime = os.stat(a).st_mtime_ns
    assert demo_models("sd1") == (a, b) and os.stat(a).st_mtime_ns == mtime
    write_checkpoint(a, "sd1", seed=1)  # an older demo file (1,000 tokens) is written again
    demo_models("sd1")
    assert read_header(a).tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] \
        .shape[0] == 49408


def test_demo_merges_generates_and_says_where(_isolated_data_dir, capsys):
    from supermerger import history
    from supermerger.hosts.infotext import parse_infotext

    assert main(["demo", "--width", "64", "--height", "64", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    pngs = sorted((_isolated_data_dir / "outputs").glob("*.png"))
    assert len(pngs) == 1 and str(pngs[0]) in out
    assert "noise" in out and "--model-a" in out and "--models-dir" in out and "history ID   : 1" in out
    assert history.ids_from_png(pngs[0]) == [1]
    fields = parse_infotext(history.png_text_chunks(pngs[0])["parameters"])[2]
    assert fields["Model"] == "demoA x 0.5 + demoB x 0.5 ID 1" and fields["Size"] == "64x64"
    assert json.loads(fields["SuperMerger recipe"])["model_b"] == "demoB.safetensors"


def test_gen_with_models_dir_batches_and_draw_id(_isolated_data_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from supermerger import history
    from supermerger.demo import demo_models

    a, b = demo_models("sd1")
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model_a": "demoA.safetensors", "model_b": "demoB", "alpha": 0.3}))
    out_dir = tmp_path / "imgs"
    common = ["--models-dir", str(_isolated_data_dir / "demo"), "--prompt", "a cat", "--negative-prompt", "blurry",
              "--seed", "5", "--steps", "1", "--cfg", "5", "--sampler", "Euler", "--width", "64", "--height", "64",
              "--outdir", str(out_dir)]
    assert main(["gen", "--recipe", str(recipe), *common, "--batch-size", "2", "--batch-count", "2", "--draw-id"]) == 0
    text = capsys.readouterr().out
    pngs = sorted(out_dir.glob("*.png"))
    assert [p.name for p in pngs] == ["00000-5.png", "00001-6.png", "00002-7.png", "00003-8.png"]
    assert all(str(p) in text for p in pngs)
    infos = [history.png_text_chunks(p)["parameters"] for p in pngs]
    assert "a cat\nNegative prompt: blurry\nSteps: 1, Sampler: Euler, CFG scale: 5, Seed: 6, Size: 64x64, " \
           "Model: demoA x 0.7 + demoB x 0.3 ID 1, SuperMerger recipe: " in infos[1]
    assert history.ids_from_png(pngs) == [1]
    # the same seed without --draw-id: the same pixels outside the drawn ID
    assert main(["gen", "--recipe", str(recipe), *common]) == 0
    plain = sorted(out_dir.glob("*.png"))[-1]
    # (the same merge again: it keeps its history record, ID 1)
    assert plain.name == "00004-5.png" and history.ids_from_png(plain) == [1]
    x, y = (np.asarray(Image.open(p)).astype(int) for p in (pngs[0], plain))
    # (image 0 of a batch of two and the same seed alone: equal up to batched kernels' rounding)
    assert np.abs(x[20:] - y[20:]).max() <= 2 and np.abs(x[:10, :20] - y[:10, :20]).max() > 50


@pytest.mark.parametrize("argv, message", [
    (["--width", "60"], "multiple of 8"),
    (["--sampler", "Euler A"], "Did you mean 'Euler a'"),
    (["-a", "nowhere.safetensors", "-b", "nothing.safetensors"], "was not found"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_gen_errors_are_one_paragraph(argv, message, capsys):
    assert main(["gen", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_missing_diffusers_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "diffusers is not installed" in err and "pip install" in err and "open-clip-torch" in err


def test_help_lists_gen_and_demo(capsys):
    with pytest.raises(SystemExit):
        main(["gen", "--help"])
    text = capsys.readouterr().out
    for opt in ("--recipe", "--model-a", "--prompt", "--negative-prompt", "--seed", "--random-seed", "--steps",
                "--cfg", "--sampler", "--width", "--height", "--batch-size", "--batch-count", "--draw-id", "--outdir",
                "--models-dir"):
        assert opt in text, opt
    assert "--output" not in text


def test_sdxl_demo_models_have_both_vocabularies(_isolated_data_dir):
    from supermerger.demo import demo_models
    from supermerger.io.safetensors_format import read_header

    a, b = demo_models("sdxl")
    assert a.endswith("demoXL_A.safetensors") and b.endswith("demoXL_B.safetensors")
    rows = [i.shape[0] for k, i in read_header(b).tensors.items() if k.endswith("token_embedding.weight")]
    assert rows == [49408, 49408]


@pytest.mark.parametrize("command", ["gen", "xyz"])
def test_random_seed_and_image_seed_are_separate(command, models):
    """`--random-seed 5 --seed 1`: the merge's random draws use 5, the image uses seed 1 (they once shared
    one argparse dest, so the image seed silently became the merge seed)."""
    from supermerger.cli import _recipe_from_args, build_parser

    argv = [command, "-a", str(models[("sd1", "A")]), "-b", str(models[("sd1", "B")]), "--random-seed", "5",
            "--seed", "1"]
    if command == "xyz":
        argv += ["--x", "alpha:0.2,0.4"]
    args = build_parser().parse_args(argv)
    assert args.seed == 1
    assert _recipe_from_args(args).seed == 5


def test_merge_takes_seed_as_the_random_seed(models):
    from supermerger.cli import _recipe_from_args, build_parser

    for opt in ("--seed", "--random-seed"):
        args = build_parser().parse_args(["merge", "-a", str(models[("sd1", "A")]), "-b", str(models[("sd1", "B")]),
                                          opt, "7"])
        assert _recipe_from_args(args).seed == 7

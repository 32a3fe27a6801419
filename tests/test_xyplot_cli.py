"""`supermerger xyz` and `supermerger queue` end to end (tiny models, 64 px, 1 step)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from supermerger.cli import main

pytest.importorskip("diffusers")
IMAGE = ["--width", "64", "--height", "64", "--steps", "1", "--prompt", "a cat", "--seed", "5", "--sampler", "Euler"]


pytestmark = pytest.mark.usefixtures("needs_vocabulary")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from supermerger.testing.synthetic import write_checkpoint

    root = tmp_path_factory.mktemp("xyz_cli_models")
    for k, name in ((1, "A"), (2, "B"), (3, "C")):
        write_checkpoint(root / f"{name}.safetensors", "sd1", seed=k, vocab=49408)
    return root


def test_xyz_grid_with_recipe_models_dir_and_model_axis(tiny, tmp_path, capsys):
    from PIL import Image

    from supermerger.history import png_text_chunks
    from supermerger.merge.recipe import Recipe

    recipe = tmp_path / "R.json"
    recipe.write_text(Recipe(model_a="A.safetensors", model_b="B.safetensors", elemental="OUT03:attn2:0.5").to_json())
    out = tmp_path / "grid.png"
    assert main(["xyz", "--recipe", str(recipe), "--models-dir", str(tiny), "--x", "alpha:0,1",
                 "--y", "model_B:B,C.safetensors", "--out", str(out), *IMAGE]) == 0
    text = capsys.readouterr().out
    assert "XYZ plot: 2 x 2 cells, 4 merges, seed 5" in text and "cell 4/4 x='1' y='C.safetensors'" in text
    grid = Image.open(out)
    meta = json.loads(png_text_chunks(out)["supermerger_xyz"])
    assert meta["plot"]["y"] == {"type": "model_B", "values": "B,C.safetensors"} and meta["cells"] == 4
    assert meta["recipe"]["elemental"] == "OUT03:attn2:0.5" and meta["params"]["seed"] == 5
    assert grid.size[0] > 128 and grid.size[1] > 128
    # an existing --out is refused before any work
    assert main(["xyz", "--recipe", str(recipe), "--models-dir", str(tiny), "--x", "alpha:0", "--out", str(out),
                 *IMAGE]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_axis_that_changes_nothing_is_refused_before_the_run(tiny, tmp_path, capsys):
    """alpha over a merge whose block weights give every block its ratio: the cells would be identical
    under different labels. Refused before anything is merged, with the reason and what to do."""
    args = ["xyz", "--models-dir", str(tiny), "-a", "A.safetensors", "-b", "B.safetensors", "--x", "alpha:0.0,1.0",
            "--mbw-alpha", "GRAD_V", "--out", str(tmp_path / "grid.png"), *IMAGE]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "X axis (alpha): every value makes the same merge and the same images: block weights (MBW)" in err
    assert "'mbw alpha'" in err and not (tmp_path / "grid.png").exists()
    # the same axis without block weights changes the merge: it runs
    assert main([a for a in args if a not in ("--mbw-alpha", "GRAD_V")]) == 0
    # and alpha on Y with an elemental entry that fixes only some keys still changes the others: it runs
    assert main(["xyz", "--models-dir", str(tiny), "-a", "A.safetensors", "-b", "B.safetensors", "--x", "seed:1,2",
                 "--y", "alpha:0.2,0.8", "--elemental", "OUT03:attn2:0.5", "--out", str(tmp_path / "g2.png"),
                 *IMAGE]) == 0


def test_xyz_demo_models_split_and_queue(tmp_path, capsys, _isolated_data_dir):
    assert main(["xyz", "--x", "seed:1,2|3", "--y", "alpha:0.5", "--outdir", str(tmp_path), *IMAGE]) == 0
    text = capsys.readouterr().out
    assert "demo models" in text and "2 x 1 cells, 1 merges" in text and "1 is queued" in text
    grids = sorted(tmp_path.glob("xyz_grid-*.png"))
    assert len(grids) == 1
    assert main(["queue", "list"]) == 0
    listing = capsys.readouterr().out
    assert "1  waiting   X: seed '3'; Y: alpha '0.5'" in listing and "demoA / demoB" in listing
    assert main(["queue", "add", "--x", "alpha:0.5", "--model-a", str(tmp_path / "missing.safetensors"),
                 "--model-b", str(tmp_path / "missing.safetensors"), *IMAGE]) == 2  # model not found: not queued
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["xyz", "--reserve", "--x", "calcmode:normal,cosineQ", *IMAGE]) == 0  # checked when it runs
    capsys.readouterr()
    code = main(["queue", "run", "--outdir", str(tmp_path / "q")])
    text = capsys.readouterr().out
    assert code == 1 and "reservation 1: finished" in text
    assert "reservation 2: error: X axis (calcmode), item 2 ('cosineQ')" in text
    assert len(list((tmp_path / "q").glob("xyz_grid-*.png"))) == 1
    assert main(["queue", "list"]) == 0
    listing = capsys.readouterr().out
    assert "finished" in listing and "error: X axis (calcmode)" in listing
    assert main(["queue", "rm", "1"]) == 0 and main(["queue", "rm", "all"]) == 0
    capsys.readouterr()
    assert main(["queue", "list"]) == 0 and "empty" in capsys.readouterr().out


def test_xyz_bad_axes_are_one_line_errors(tiny, capsys):
    base = ["xyz", "--model-a", str(tiny / "A.safetensors"), "--model-b", str(tiny / "B.safetensors"), *IMAGE]
    assert main(base + ["--x", "alpha 0.5"]) == 2
    assert "expected TYPE:VALUES" in capsys.readouterr().err
    assert main(base + ["--x", "alpah:0.5"]) == 2
    assert "Did you mean 'alpha'" in capsys.readouterr().err
    assert main(base + ["--x", "pinpoint blocks:IN01,OUT12", "--y", "alpha:1"]) == 2
    assert "X axis (pinpoint blocks), item 2 ('OUT12')" in capsys.readouterr().err
    assert main(base + ["--x", "elemental:@/nonexistent/file.txt"]) == 2
    assert "cannot read values file" in capsys.readouterr().err


def test_xyz_preset_save_and_use(tiny, tmp_path, capsys):
    base = ["xyz", "--model-a", str(tiny / "A.safetensors"), "--model-b", str(tiny / "B.safetensors"), *IMAGE]
    assert main(base + ["--x", "seed:1,2", "--save-preset", "seeds", "--no-grid", "--outdir", str(tmp_path)]) == 0
    assert "XYZ preset 'seeds' saved." in capsys.readouterr().out
    cells = sorted(tmp_path.glob("xyz_grid_cell-*.png"))
    assert len(cells) == 2
    from PIL import Image

    assert not np.array_equal(np.asarray(Image.open(cells[0])), np.asarray(Image.open(cells[1])))
    assert main(base + ["--preset", "seeds", "--y", "alpha:0.2", "--outdir", str(tmp_path / "p")]) == 0
    assert "2 x 1 cells, 1 merges" in capsys.readouterr().out

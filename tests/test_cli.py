"""The command line: help, demo merge, dry run, explain, recipes, listings."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from supermerger.cli import main

from helpers import load


def test_help_explains_every_option(capsys):
    try:
        main(["merge", "--help"])
    except SystemExit as e:
        assert e.code == 0
    text = capsys.readouterr().out
    for opt in ("--model-a", "--model-c", "--mode", "--alpha", "--beta", "--mbw-alpha", "--mbw-beta", "--elemental",
                "--include", "--exclude", "--adjust", "--dtype", "--prune", "--reset-clip-ids", "--bake-vae",
                "--output", "--overwrite", "--dry-run", "--explain", "--recipe", "--recipe-from", "examples:"):
        assert opt in text, opt


def test_python_dash_m_runs():
    r = subprocess.run([sys.executable, "-m", "supermerger", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "merge" in r.stdout


def test_demo_merge_without_models(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["merge", "-q"]) == 0
    out = capsys.readouterr().out
    assert "built-in demo models" in out and "Merged model saved in" in out
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and files[0].name == "demoAx0.5+demoBx0.5.safetensors"


def test_mode_labels_dry_run_and_recipe_roundtrip(models, tmp_path, capsys):
    a, b, c = (str(models[("sd1", x)]) for x in "ABC")
    recipe_file = tmp_path / "r.json"
    code = main(["merge", "-a", a, "-b", b, "-c", c, "--mode", "Add difference", "--alpha", "0.7",
                 "--mbw-alpha", "GRAD_V", "--elemental", "OUT05:attn2:0.25", "--dry-run", "--save-recipe", str(recipe_file)])
    out = capsys.readouterr().out
    assert code == 0 and "Add difference" in out and "dry run" in out and "IN01=0.916667" in out
    assert "elemental #1 'OUT05:attn2:0.25'" in out
    saved = json.loads(recipe_file.read_text())
    assert saved["mode"] == "Add difference" and saved["mbw_alpha"] == "GRAD_V"
    o1, o2 = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    assert main(["merge", "--recipe", str(recipe_file), "-o", str(o1), "-q"]) == 0
    assert main(["merge", "-a", a, "-b", b, "-c", c, "--mode", "add_difference", "--alpha", "0.7",
                 "--mbw-alpha", "GRAD_V", "--elemental", "OUT05:attn2:0.25", "-o", str(o2), "-q"]) == 0
    x, y = load_file(str(o1)), load_file(str(o2))
    assert all(torch.equal(x[k], y[k]) for k in x)
    A, B, C = (load(models[("sd1", l)]) for l in "ABC")
    k = "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_q.weight"
    expected = (A[k].float() + 0.25 * (B[k].float() - C[k].float())).half()
    assert (x[k].float() - expected.float()).abs().max() <= 2 ** -10


def test_explain_lists_every_key(models, capsys):
    assert main(["merge", "-a", str(models[("sdxl", "A")]), "-b", str(models[("sdxl", "B")]), "--mbw-alpha",
                 ",".join(["0.1"] * 20), "--explain", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "SDXL" in out
    row = next(l for l in out.splitlines() if l.startswith("model.diffusion_model.output_blocks.8.0.in_layers.2.weight"))
    assert "OUT08" in row and "0.1" in row
    assert sum(1 for l in out.splitlines() if l.startswith(("model.", "conditioner.", "first_stage_model."))) == 2515


def test_listings(models, capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "GRAD_V" in out and "SMOOTHSTEP*2" in out and "ALL_B" in out
    assert main(["blocks"]) == 0
    out = capsys.readouterr().out
    assert "sdxl" in out and "OUT08" in out
    assert main(["blocks", str(models[("sd1", "A")])]) == 0
    out = capsys.readouterr().out
    assert "OUT11  model.diffusion_model.out.2.weight" in out
    assert main(["calcmodes"]) == 0
    assert "normal" in capsys.readouterr().out


def test_dry_run_checks_the_output(models, tmp_path, capsys):
    """--dry-run refuses what the real run would refuse: an existing output without --overwrite, a
    missing folder (it once said "nothing was read or written" and the real run then failed)."""
    a, b = str(models[("sd1", "A")]), str(models[("sd1", "B")])
    existing = tmp_path / "out.safetensors"
    existing.write_bytes(b"keep me")
    assert main(["merge", "-a", a, "-b", b, "-o", str(existing), "--dry-run"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", "-a", a, "-b", b, "-o", str(existing), "--dry-run", "--overwrite"]) == 0
    assert existing.read_bytes() == b"keep me"
    missing = tmp_path / "no" / "such" / "out.safetensors"
    assert main(["merge", "-a", a, "-b", b, "-o", str(missing), "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_option_value_is_one_line_not_the_usage(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["merge", "--alpha", "abc"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.splitlines() == ["supermerger merge: error: argument --alpha: 'abc' is not a finite decimal number "
                                "(such as 0.5)",
                                "Run `supermerger merge --help` for the options."]


def test_output_cut_short_by_the_reader_is_not_a_traceback(tmp_path):
    """`supermerger lora presets | head -1` once ended in a BrokenPipeError traceback."""
    env = {**__import__("os").environ, "SUPERMERGER_HOME": str(tmp_path)}
    proc = subprocess.run(f"{sys.executable} -m supermerger lora presets | head -1", shell=True, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_history_stats_takes_ids_separated_by_spaces(models, tmp_path, capsys):
    a, b = str(models[("sd1", "A")]), str(models[("sd1", "B")])
    for alpha in ("0.2", "0.6"):
        assert main(["merge", "-a", a, "-b", b, "--alpha", alpha, "--mbw-alpha", "GRAD_V",
                     "-o", str(tmp_path / f"m{alpha}.safetensors")]) == 0
    capsys.readouterr()
    assert main(["history", "stats", "1", "2"]) == 0
    spaced = capsys.readouterr().out
    assert main(["history", "stats", "1,2"]) == 0
    assert capsys.readouterr().out == spaced and "IN01" in spaced

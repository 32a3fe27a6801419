"""Every kind of bad input gives a one-paragraph error naming the culprit, a non-zero exit, no traceback."""

from __future__ import annotations

import pickle
import struct

import pytest
import torch

import supermerger
from supermerger import Recipe
from supermerger.cli import main
from supermerger.errors import ArchitectureError, ModelFileError, OutputError, RecipeError


def ab(models, arch="sd1", **kw):
    return Recipe(model_a=str(models[(arch, "A")]), model_b=str(models[(arch, "B")]), **kw)


def cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


@pytest.mark.parametrize("weights, message", [
    (",".join(["0.5"] * 25), "25 values"),
    (",".join(["0.5"] * 12 + ["abc"] + ["0.5"] * 13), "value 13 (IN11) is 'abc'"),
    (",".join(["0.5"] * 20), "20 values"),
    ("0,5", "2 values"),
])
def test_malformed_weight_lists(models, weights, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        supermerger.plan_merge(ab(models, mbw_alpha=weights))


def test_unknown_preset_suggests(models):
    with pytest.raises(RecipeError) as e:
        supermerger.plan_merge(ab(models, mbw_alpha="GRAD_W"))
    assert "GRAD_V" in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("OUT03:attn2", "entry 1 .* has 1 ':'"),
    ("OUT03:attn:0.5,IN04:x:y:0.1", "entry 2 .* has 3 ':'"),
    ("OUT03:attn:abc", "ratio 'abc' is not a finite number"),
    ("OUT3:attn:0.5", "(?s)Unknown block ID 'OUT3'.*OUT03"),
    ("OUT03:attn:0.5\nIN13::0.1", "IN13.*entry 2.*line 2"),
])
def test_malformed_elemental(models, text, message):
    with pytest.raises(RecipeError, match=message):
        supermerger.plan_merge(ab(models, elemental=text))


def test_unknown_mode_calcmode_block_suggest(models):
    with pytest.raises(RecipeError, match="add_difference"):
        supermerger.plan_merge(ab(models, mode="add_diference"))
    with pytest.raises(RecipeError, match="(?s)Unknown calcmode 'nromal'.*normal"):
        supermerger.plan_merge(ab(models, calcmode="nromal"))
    with pytest.raises(RecipeError, match="OUT05"):
        supermerger.plan_merge(ab(models, exclude="OUT5"))
    with pytest.raises(RecipeError, match="at most 8"):
        supermerger.plan_merge(ab(models, adjust="1,2,3,4,5,6,7,8,9"))
    with pytest.raises(RecipeError, match="value 2 \\(OUT\\)"):
        supermerger.plan_merge(ab(models, adjust="1,x"))


def test_mismatched_architectures_refused_before_reading(models, monkeypatch):
    from supermerger.io import sources

    monkeypatch.setattr(sources.SafetensorsSource, "read_bytes", lambda *a, **k: pytest.fail("tensor read"))
    r = Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sdxl", "B")]))
    with pytest.raises(ArchitectureError, match="SD1.x but model B .* is SDXL"):
        supermerger.plan_merge(r)
    r = Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd2", "B")]))
    with pytest.raises(ArchitectureError, match="SD2.x"):
        supermerger.plan_merge(r)


def test_inpainting_model_must_be_a(models):
    r = Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "inpaint")]))
    with pytest.raises(ArchitectureError, match="A must be the inpainting model"):
        supermerger.plan_merge(r)


def test_flux_and_refiner_recognised_and_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, tmp_path / "flux.safetensors")
    save_file({"conditioner.embedders.0.model.transformer.resblocks.0.ln_1.weight": torch.zeros(2),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, tmp_path / "refiner.safetensors")
    save_file({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    for name, msg in (("flux", "Flux"), ("refiner", "SDXL refiner"), ("lora", "does not look like a Stable Diffusion")):
        r = Recipe(model_a=str(tmp_path / f"{name}.safetensors"), model_b=str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(ArchitectureError, match=msg):
            supermerger.plan_merge(r)


def test_missing_truncated_and_non_checkpoint_files(models, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        supermerger.plan_merge(Recipe(model_a=str(tmp_path / "nope.safetensors"), model_b=str(models[("sd1", "B")])))
    data = models[("sd1", "A")].read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        supermerger.plan_merge(Recipe(model_a=str(tmp_path / "trunc.safetensors"), model_b=str(models[("sd1", "B")])))
    (tmp_path / "text.safetensors").write_bytes(b"hello world, not a model at all")
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        supermerger.plan_merge(Recipe(model_a=str(tmp_path / "text.safetensors"), model_b=str(models[("sd1", "B")])))
    (tmp_path / "junk.ckpt").write_bytes(b"\x00\x01junk")
    with pytest.raises(ModelFileError, match="Refused to load .*not a PyTorch checkpoint"):
        supermerger.plan_merge(Recipe(model_a=str(tmp_path / "junk.ckpt"), model_b=str(models[("sd1", "B")])))
    bad_header = struct.pack("<Q", 10) + b"{not json}" + b"\0" * 10
    (tmp_path / "hdr.safetensors").write_bytes(bad_header)
    with pytest.raises(ModelFileError, match="corrupt safetensors header"):
        supermerger.plan_merge(Recipe(model_a=str(tmp_path / "hdr.safetensors"), model_b=str(models[("sd1", "B")])))


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch EVIL_RAN",))


def test_ckpt_that_runs_code_is_refused(tmp_path, models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil()}}, f)
    with pytest.raises(ModelFileError, match="(?s)Refused to load .*Nothing from it was executed"):
        supermerger.plan_merge(Recipe(model_a=str(path), model_b=str(models[("sd1", "B")])))
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": _Evil()}, tmp_path / "evil2.ckpt")
    with pytest.raises(ModelFileError, match="Refused to load .*could run code"):
        supermerger.plan_merge(Recipe(model_a=str(tmp_path / "evil2.ckpt"), model_b=str(models[("sd1", "B")])))
    assert not (tmp_path / "EVIL_RAN").exists()


def test_nested_state_dict_and_old_clip_names_in_ckpt(tmp_path, models):
    from supermerger.testing.synthetic import make_state_dict

    sd = make_state_dict("sd1", 2)
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v for k, v in sd.items()}
    torch.save({"state_dict": old, "global_step": 10}, tmp_path / "old.ckpt")
    plan = supermerger.plan_merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(tmp_path / "old.ckpt")))
    k = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert next(t for t in plan.tasks if t.key == k).op == "merge"


def test_output_problems(models, tmp_path):
    r = ab(models)
    with pytest.raises(OutputError, match="folder .* does not exist"):
        supermerger.merge(r, output=tmp_path / "missing" / "o.safetensors")
    with pytest.raises(OutputError, match="unknown file type"):
        supermerger.merge(r, output=tmp_path / "o.txt")


def test_cli_errors_are_one_paragraph_with_exit_2(models, tmp_path, capsys):
    code, err = cli(capsys, "merge", "-a", str(models[("sd1", "A")]), "-b", str(models[("sdxl", "B")]), "--dry-run")
    assert code == 2 and err.startswith("error: Model A") and "SDXL" in err
    code, err = cli(capsys, "merge", "-a", str(tmp_path / "x.safetensors"), "-b", str(models[("sd1", "B")]))
    assert code == 2 and "does not exist" in err
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep")
    code, err = cli(capsys, "merge", "-a", str(models[("sd1", "A")]), "-b", str(models[("sd1", "B")]), "-o", str(out))
    assert code == 2 and "--overwrite" in err and out.read_bytes() == b"keep"
    code, err = cli(capsys, "merge", "--recipe", str(tmp_path / "none.json"))
    assert code == 2 and "does not exist" in err
    (tmp_path / "bad.json").write_text('{"model_a": "a", "alpah": 0.5}')
    code, err = cli(capsys, "merge", "--recipe", str(tmp_path / "bad.json"))
    assert code == 2 and "unknown recipe field 'alpah'" in err and "alpha" in err


def _spellings(tmp_path, target):
    """Other names of the file ``target``: a ``sub/..`` path, a symlink, a hard link."""
    import os

    sub = tmp_path / "sub"
    sub.mkdir(exist_ok=True)
    link, hard = tmp_path / "link.safetensors", tmp_path / "hard.safetensors"
    link.symlink_to(target)
    os.link(target, hard)
    return {"itself": target, "dotdot": sub / ".." / target.name, "symlink": link, "hardlink": hard}


@pytest.mark.parametrize("spelling", ["itself", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("label", ["A", "B", "C"])
def test_an_input_is_never_the_output(models, tmp_path, label, spelling):
    """`merge -a a -b b -o a --overwrite` once replaced model A by the merge; refused for every model and
    every spelling of the same file, overwrite or not, and the file is left as it was."""
    import shutil

    files = {k: tmp_path / f"{k}.safetensors" for k in "ABC"}
    for k, f in files.items():
        shutil.copy(models[("sd1", k)], f)
    before = files[label].read_bytes()
    out = _spellings(tmp_path, files[label])[spelling]
    recipe = Recipe(model_a=str(files["A"]), model_b=str(files["B"]), model_c=str(files["C"]), mode="add_difference")
    with pytest.raises(OutputError, match=f"is model {label} itself"):
        supermerger.merge(recipe, output=out, overwrite=True)
    assert files[label].read_bytes() == before


def test_no_command_writes_over_its_input(models, tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    a, b = tmp_path / "A.safetensors", tmp_path / "B.safetensors"
    shutil.copy(models[("sd1", "A")], a)
    shutil.copy(models[("sd1", "B")], b)
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    lora = lora_dir / "style.safetensors"
    save_file({f"{name}.lora_up.weight": torch.ones(64, 1), f"{name}.lora_down.weight": torch.ones(1, 32),
               f"{name}.alpha": torch.tensor(1.0)}, str(lora))
    keep = {p: p.read_bytes() for p in (a, b, lora)}
    for argv, culprit in (
            (["merge", "-a", str(a), "-b", str(b), "-o", str(tmp_path / "sub" / ".." / "B.safetensors"),
              "--overwrite"], "is model B itself"),
            (["lora", "to-checkpoint", "-m", str(a), f"{lora}:0.5", "-o", str(a), "--overwrite"],
             "is the checkpoint itself"),
            (["lora", "to-checkpoint", "-m", str(a), f"{lora}:0.5", "-o", str(lora), "--overwrite"],
             "is LoRA 'style' itself"),
            (["lora", "make", "-a", str(a), "-b", str(b), "--dim", "2", "-o", str(b), "--overwrite"],
             "is model B itself"),
            (["lora", "merge", f"{lora}:0.5", "-o", str(lora), "--overwrite"], "is LoRA 'style' itself")):
        (tmp_path / "sub").mkdir(exist_ok=True)
        code, err = cli(capsys, *argv)
        assert code == 2 and culprit in err, (argv, err)
    assert all(p.read_bytes() == data for p, data in keep.items())


BAD_NUMBERS = ["nan", "inf", "-inf", "1e999", "1_0", "0x1", "NaN", "infinity"]


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_every_ratio_is_a_finite_decimal(models, tmp_path, capsys, bad):
    """`--alpha nan`, `1e999` in a weight list or an elemental entry once wrote a model of non-finite
    tensors with exit 0; the dice limits took Python spellings such as 1_0. One reader refuses them all,
    naming the field, the value and where it stands."""
    from supermerger.lora.blocks import parse_specs
    from supermerger.merge.adjust import parse_adjust
    from supermerger.merge.weights import is_number

    assert not is_number(bad)
    a, b = str(models[("sd1", "A")]), str(models[("sd1", "B")])
    out = tmp_path / "out.safetensors"
    try:
        code, err = cli(capsys, "merge", "-a", a, "-b", b, f"--alpha={bad}", "-o", str(out))
    except SystemExit as e:  # argparse's own refusal (0x1 is no float to it)
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "alpha" in err
    weights = ",".join(["0.5"] * 6 + [bad] + ["0.5"] * 19)
    with pytest.raises(RecipeError, match=rf"value 7 \(IN05\) is '{bad}', not a finite number"):
        supermerger.plan_merge(ab(models, mbw_alpha=weights))
    with pytest.raises(RecipeError, match=rf"entry 1 \('OUT05:attn2:{bad}', line 1\): ratio '{bad}' is not a finite"):
        supermerger.plan_merge(ab(models, elemental=f"OUT05:attn2:{bad}"))
    with pytest.raises(RecipeError, match="not a finite number"):
        parse_adjust(f"0,{bad}")
    with pytest.raises(RecipeError):
        parse_specs(f"style:{bad}")
    with pytest.raises(RecipeError, match="not a finite number"):
        supermerger.plan_merge(ab(models, random={"mode": "R", "upper": bad}, seed=1))
    if bad in ("nan", "inf", "-inf", "1e999"):
        with pytest.raises(RecipeError, match="alpha must be a finite number"):
            supermerger.plan_merge(ab(models, alpha=float(bad)))
        with pytest.raises(RecipeError, match="not a finite number"):
            supermerger.plan_merge(ab(models, random={"mode": "R", "lower": float(bad)}, seed=1))


@pytest.mark.parametrize("text, message", [(":0.5", "no name"), ("a:0.5\n:0.3", "no name"),
                                           ("a:\x1f0.5", None), ("a:0.5:\x1f", None)])
def test_lora_spec_lines_without_a_name_or_with_control_characters(text, message):
    from supermerger.errors import SuperMergerError
    from supermerger.lora.blocks import parse_specs

    try:
        specs = parse_specs(text)
    except SuperMergerError as e:
        assert message is None or message in str(e)
        return
    assert message is None and all(s.name.strip() and s.ratio == 0.5 for s in specs)

"""LoRA dimensions from headers (cached), family detection, and `supermerger lora ...` end to end."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from supermerger.cli import main
from supermerger.lora import dims as dimsmod
from supermerger.lora import lora_dims
from supermerger.testing.synthetic import write_checkpoint

from test_lora_common import factors, one_thread  # noqa: F401 (fixture)

SD1_TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
XL_Q = "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q"


def kohya(name, up, down, alpha=1.0):
    return {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(alpha)}


@pytest.fixture
def lora_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "loras"
    (folder / "xl").mkdir(parents=True)
    # full-size shapes, rank 1-4: SD1 (context 768) and SD2 (context 1024) differ only by shape
    save_file(kohya(SD1_TO_K, torch.randn(320, 4, generator=g), torch.randn(4, 768, generator=g)),
              str(folder / "sd1_lora.safetensors"))
    save_file(kohya(SD1_TO_K, torch.randn(320, 8, generator=g), torch.randn(8, 1024, generator=g)),
              str(folder / "sd2_lora.safetensors"))
    locon = kohya(SD1_TO_K, torch.randn(320, 4, generator=g), torch.randn(4, 768, generator=g))
    locon.update(kohya(CONV, torch.randn(320, 2, 1, 1, generator=g), torch.randn(2, 320, 3, 3, generator=g)))
    save_file(locon, str(folder / "locon.safetensors"))
    n = SD1_TO_K
    save_file({f"{n}.hada_w1_a": torch.randn(320, 2), f"{n}.hada_w1_b": torch.randn(2, 768),
               f"{n}.hada_w2_a": torch.randn(320, 2), f"{n}.hada_w2_b": torch.randn(2, 768)}, str(folder / "loha.safetensors"))
    save_file(kohya(XL_Q, torch.randn(640, 16), torch.randn(16, 640)), str(folder / "xl" / "xl_lora.safetensors"))
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file at all")
    return folder


def test_dims_from_headers_and_the_cache(lora_folder, monkeypatch):
    infos = {i.name: i for i in lora_dims(lora_folder)}
    assert infos["sd1_lora"].label() == "sd1_lora[4,SD1]"
    assert infos["sd2_lora"].label() == "sd2_lora[8,SD2]"
    assert (infos["locon"].type, infos["locon"].dim, infos["locon"].conv_dim) == ("LoCon", 4, 2)
    assert infos["loha"].label() == "loha[2,LoHa,SD1]"
    assert infos["xl_lora"].label() == "xl_lora[16,SDXL]"
    assert infos["broken"].type == "unknown" and "not a safetensors file" in infos["broken"].error
    calls = []
    real = dimsmod.inspect_lora
    monkeypatch.setattr(dimsmod, "inspect_lora", lambda p: calls.append(p) or real(p))
    again = {i.name: i for i in lora_dims(lora_folder)}
    assert again == infos and calls == []  # all from the cache
    path = lora_folder / "sd1_lora.safetensors"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    lora_dims(lora_folder)
    assert calls == [path]  # only the changed file is read again


def test_cli_to_checkpoint_with_unmatched_and_dry_run(tmp_path, capsys):
    from supermerger.merge.executor import intra_op_threads
    from supermerger.testing.synthetic import write_checkpoint

    with intra_op_threads(1):
        model = write_checkpoint(tmp_path / "model.safetensors", "sd1", seed=1)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    up, down = factors((32, 32), 2, torch.Generator().manual_seed(1))
    lora = kohya(SD1_TO_K, up, down, 2.0)
    lora.update(kohya("lora_unet_not_a_module", up.clone(), down.clone()))
    (tmp_path / "loras").mkdir()
    save_file(lora, str(tmp_path / "loras" / "style.safetensors"))
    out = tmp_path / "out.safetensors"
    code = main(["lora", "to-checkpoint", "-m", str(model), "style:0.5:OUTD", "style:-0.25", "--lora-dir",
                 str(tmp_path / "loras"), "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0 and "dry run" in text and "lora_unet_not_a_module" in text and not out.exists()
    assert main(["lora", "to-checkpoint", "-m", str(model), "style:0.5", "--lora-dir", str(tmp_path / "loras"),
                 "-o", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "not applied  : style: 1 modules:" in text and "    lora_unet_not_a_module" in text
    a, merged = load_file(str(model)), load_file(str(out))
    expected = (a[key].float() + 0.5 * (up @ down)).half()
    assert (merged[key].float() - expected.float()).abs().max() <= 2 ** -9
    assert main(["lora", "to-checkpoint", "-m", str(model), "missing:1", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "error: LoRA 'missing' not found" in capsys.readouterr().err


def test_cli_merge_make_extract_dims_presets(tmp_path, capsys, lora_folder):
    g = torch.Generator().manual_seed(2)
    a = kohya(SD1_TO_K, *factors((320, 768), 4, g), 4.0)
    b = kohya(SD1_TO_K, *factors((320, 768), 4, g), 2.0)
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(a, str(pa))
    save_file(b, str(pb))
    out = tmp_path / "ab.safetensors"
    assert main(["lora", "merge", f"{pa}:1", f"{pb}:0.5", "--same-to-strength", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Merged LoRA (sum, 1 modules, SD1.x)" in text and "cross terms" in text
    assert load_file(str(out))[f"{SD1_TO_K}.lora_up.weight"].dtype == torch.float16
    svd_out = tmp_path / "svd.safetensors"
    assert main(["lora", "merge", f"{pa}:1,{pb}:0.5", "--dim", "2", "--svd", "lowrank", "--precision", "fp32",
                 "-o", str(svd_out)]) == 0
    assert load_file(str(svd_out))[f"{SD1_TO_K}.lora_down.weight"].shape == (2, 768)
    ext = tmp_path / "ext.safetensors"
    assert main(["lora", "extract", str(pa), str(pb), "--gamma", "2", "-o", str(ext)]) == 0
    assert "Extracted LoRA" in capsys.readouterr().out and ext.exists()
    from supermerger.merge.executor import intra_op_threads
    from supermerger.testing.synthetic import write_checkpoint

    with intra_op_threads(1):
        ma = write_checkpoint(tmp_path / "A.safetensors", "sd1", seed=1)
        mb = write_checkpoint(tmp_path / "B.safetensors", "sd1", seed=2)
    made = tmp_path / "made.safetensors"
    assert main(["lora", "make", "-a", str(ma), "-b", str(mb), "--dim", "4", "-o", str(made), "-q"]) == 0
    assert "LoRA (make," in capsys.readouterr().out
    assert main(["lora", "dims", str(lora_folder), "--csv", str(tmp_path / "dims.csv")]) == 0
    text = capsys.readouterr().out
    assert "sd2_lora" in text and "SD2" in text and "6 LoRA files" in text
    assert (tmp_path / "dims.csv").read_text().startswith("name,dim,type,version")
    assert main(["lora", "presets"]) == 0
    assert "OUTD" in capsys.readouterr().out
    assert main(["lora", "merge", f"{pa}:1", "--metadata", "bogus", "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "Unknown metadata mode" in capsys.readouterr().err


def test_dims_leaves_checkpoints_out_of_the_lora_count(tmp_path, capsys, lora_folder):
    """A checkpoint beside the LoRAs is no LoRA: not listed, not counted (it once made "7 LoRA files")."""
    write_checkpoint(lora_folder / "a_checkpoint.safetensors", "sd1", seed=1)
    assert main(["lora", "dims", str(lora_folder)]) == 0
    text = capsys.readouterr().out
    assert "a_checkpoint" not in text
    assert f"6 LoRA files in {lora_folder} (1 other file there, not LoRAs, left out)" in text

"""Files out: layout the WebUI loads, metadata, replay from the file alone, save options."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import supermerger
from supermerger import Recipe
from supermerger.cli import main

from helpers import load, merged_keys


def paths(models, arch="sd1"):
    return dict(model_a=str(models[(arch, "A")]), model_b=str(models[(arch, "B")]), model_c=str(models[(arch, "C")]))


def test_file_equals_memory_merge_and_keeps_layout(models, tmp_path):
    r = Recipe(mbw_alpha="GRAD_A", elemental="OUT05:attn:0.9", **paths(models))
    mem = supermerger.merge(r).state_dict
    out = tmp_path / "m.safetensors"
    res = supermerger.merge(r, output=out)
    got = load_file(str(out))  # the reference reader reads our writer's file
    A = load(models[("sd1", "A")])
    assert set(got) == set(A)
    for k in A:
        assert got[k].shape == A[k].shape and got[k].dtype == A[k].dtype, k
        assert torch.equal(got[k], mem[k]), k
    assert res.path == out


def test_metadata_webui_modelspec_and_replay(models, tmp_path):
    r = Recipe(mode="add_difference", alpha=0.7, mbw_alpha="FLAT_25", elemental="OUT03:attn2:0.4\nIN01::0.2",
               exclude="BASE", adjust="1,0,0,0,0,0,0,0", **paths(models))
    out = tmp_path / "m.safetensors"
    supermerger.merge(r, output=out)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    rec = json.loads(meta["sd_merge_recipe"])
    assert rec["type"] == "sd-webui-supermerger" and rec["mode"] == "Add difference" and rec["mbw"] is True
    assert rec["weights_alpha"] == [0.25] * 25 and rec["base_alpha"] == 0.0
    assert rec["elemental_merge"] == ["OUT03:attn2:0.4", "IN01::0.2"]
    assert rec["Exclude"] == "BASE"
    import hashlib
    sha_a = hashlib.sha256(models[("sd1", "A")].read_bytes()).hexdigest()
    assert rec["model_a"] == sha_a
    models_meta = json.loads(meta["sd_merge_models"])
    assert models_meta[sha_a]["name"] == "sd1_A"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    # replay from the file alone gives the same tensors
    replay = tmp_path / "replay.safetensors"
    assert main(["merge", "--recipe-from", str(out), "-o", str(replay), "-q"]) == 0
    a, b = load_file(str(out)), load_file(str(replay))
    assert all(torch.equal(a[k], b[k]) for k in a)
    replayed = supermerger.recipe_from_file(out)
    assert replayed.elemental == "OUT03:attn2:0.4\nIN01::0.2"  # multi-line text survives
    assert replayed.hashes["A"] == sha_a


def test_no_metadata_writes_only_the_format_and_the_same_tensors(models, tmp_path, capsys):
    with_meta, without = tmp_path / "with.safetensors", tmp_path / "without.safetensors"
    r = Recipe(alpha=0.3, mbw_alpha="GRAD_V", **paths(models))
    supermerger.merge(r, output=with_meta)
    assert main(["merge", "-a", r.model_a, "-b", r.model_b, "--alpha", "0.3", "--mbw-alpha", "GRAD_V",
                 "--no-metadata", "-o", str(without), "-q"]) == 0
    with safe_open(str(without), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    a, b = load_file(str(with_meta)), load_file(str(without))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["merge", "--recipe-from", str(without), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "recipe" in capsys.readouterr().err.lower()
    with pytest.raises(supermerger.SuperMergerError, match="metadata must be true or false"):
        supermerger.merge(r.replace(metadata="no"), output=tmp_path / "y.safetensors")


def test_prune_reset_clip_ids_and_ckpt_output(models, tmp_path):
    from supermerger.testing.synthetic import make_state_dict

    a = make_state_dict("sd1", seed=1)
    a["model_ema.decay"] = torch.tensor(0.5)
    a["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.tensor([[0, 1, 2, 5] + list(range(4, 77))])
    b = make_state_dict("sd1", seed=2)
    out = supermerger.merge(Recipe(prune=True, reset_clip_ids=True), models={"A": a, "B": b}).state_dict
    assert "model_ema.decay" not in out and "betas" not in out
    pid = out["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert torch.equal(pid, torch.arange(77).reshape(1, 77)) and pid.dtype == torch.int64
    ck = tmp_path / "m.ckpt"
    supermerger.merge(Recipe(**{k: v for k, v in paths(models).items() if k != "model_c"}), output=ck)
    loaded = torch.load(ck, weights_only=True)
    A = load(models[("sd1", "A")])
    assert set(loaded) == set(A)


def test_bake_vae(models, tmp_path):
    from safetensors.torch import save_file
    from supermerger.testing.synthetic import make_state_dict

    vae = {k[len("first_stage_model."):]: torch.full_like(v, 0.125) for k, v in make_state_dict("sd1", 9).items()
           if k.startswith("first_stage_model.")}
    save_file(vae, tmp_path / "vae.safetensors")
    out = supermerger.merge(Recipe(bake_vae=str(tmp_path / "vae.safetensors"),
                                   **{k: v for k, v in paths(models).items() if k != "model_c"})).state_dict
    k = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(out[k], torch.full_like(out[k], 0.125))
    assert out["model.diffusion_model.out.2.weight"].dtype == torch.float16


def test_sdxl_drops_cond_stage_aliases(tmp_path):
    from supermerger.testing.synthetic import make_state_dict

    a, b = make_state_dict("sdxl", 1), make_state_dict("sdxl", 2)
    a["cond_stage_model.alias.weight"] = torch.zeros(2, dtype=torch.float16)
    out = supermerger.merge(Recipe(), models={"A": a, "B": b}).state_dict
    assert not any(k.startswith("cond_stage_model.") for k in out)


def test_existing_output_refused_unless_overwrite(models, tmp_path):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"precious")
    r = Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]))
    with pytest.raises(supermerger.SuperMergerError, match="already exists"):
        supermerger.merge(r, output=out)
    assert out.read_bytes() == b"precious"
    supermerger.merge(r, output=out, overwrite=True)
    assert len(load_file(str(out))) > 1000


def test_failure_mid_write_leaves_no_partial_file(models, tmp_path, monkeypatch):
    from supermerger.io import writer as writer_mod

    calls = {"n": 0}
    real = writer_mod.SafetensorsWriter.write

    def failing(self, data):
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(writer_mod.SafetensorsWriter, "write", failing)
    out = tmp_path / "full.safetensors"
    with pytest.raises(supermerger.SuperMergerError, match="disk filled up|No space"):
        supermerger.merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")])), output=out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_stop_event_cancels_and_writes_nothing(models, tmp_path):
    import threading

    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if len(seen) == 20:
            stop.set()

    out = tmp_path / "stopped.safetensors"
    with pytest.raises(supermerger.SuperMergerError, match="stopped"):
        supermerger.merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")])), output=out,
                          progress=progress, stop=stop)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_kill_mid_write_leaves_nothing_under_the_output_name(models, tmp_path):
    """A process killed (SIGKILL) halfway through writing leaves no file under the output name."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    out = tmp_path / "killed.safetensors"
    script = textwrap.dedent(f"""
        import os, signal, supermerger
        def progress(done, total):
            if done > total // 2:
                os.kill(os.getpid(), signal.SIGKILL)
        supermerger.merge(supermerger.Recipe(model_a={str(models[("sd1", "A")])!r}, model_b={str(models[("sd1", "B")])!r}),
                          output={str(out)!r}, progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          env=dict(os.environ, SUPERMERGER_HOME=str(tmp_path / "home")))
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "home"]
    assert all(name.startswith(".killed.safetensors.") and name.endswith(".part") for name in leftovers)
    assert leftovers, "the killed writer's temp file should be there (nothing could remove it)"

    # The next write to the same name removes the dead writer's temp file (once it is a minute old).
    for name in leftovers:
        os.utime(tmp_path / name, (0, 0))
    supermerger.merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")])), output=out)
    assert out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("home", out.name)] == []


def test_stale_temp_files_only_of_dead_writers_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from supermerger.io.atomic import STALE_SECONDS, remove_stale_partials

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # a PID that has exited (reuse within this test is not a concern)
    out = tmp_path / "m.safetensors"
    names = {
        "dead_old": f".m.safetensors.{dead}.abc.part",
        "dead_fresh": f".m.safetensors.{dead}.def.part",
        "alive_old": f".m.safetensors.{os.getpid()}.ghi.part",
        "other_target": f".n.safetensors.{dead}.jkl.part",
        "no_pid": ".m.safetensors.xyz.part",
    }
    now = 1_000_000.0
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"x")
        age = 1.0 if key == "dead_fresh" else STALE_SECONDS + 1
        os.utime(tmp_path / name, (now - age, now - age))
    removed = remove_stale_partials(out, now=now)
    assert [p.name for p in removed] == [names["dead_old"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for k, n in names.items() if k != "dead_old")


def test_weight_sum_metadata_has_no_model_c_and_names_read_cleanly(models, tmp_path):
    """A weight sum has no model C: its metadata names none (it once stored model A's hash as C); merged
    names have no stray spaces ("(B -  C)", "+B")."""
    import hashlib

    p = paths(models)
    out = tmp_path / "ws.safetensors"
    supermerger.merge(Recipe(model_a=p["model_a"], model_b=p["model_b"], alpha=0.3), output=out)
    with safe_open(str(out), "pt") as f:
        rec = json.loads(f.metadata()["sd_merge_recipe"])
    assert rec["model_c"] == "" and rec["model_a"] == hashlib.sha256(models[("sd1", "A")].read_bytes()).hexdigest()
    ad = supermerger.merge(Recipe(mode="add_difference", calcmode="trainDifference", **p), history=False)
    assert ad.name == "sd1_A + (sd1_B - sd1_C) x 0.5_trainDifference"
    st = supermerger.merge(Recipe(mode="sum_twice", alpha=0.5, beta=0.25, **p), history=False)
    assert st.name == "(sd1_A x 0.5 + sd1_B x 0.5) x 0.75 + sd1_C x 0.25"


def test_atomic_output_gets_the_mode_of_a_plain_open(tmp_path):
    """mkstemp's 0600 is not kept: the file gets 0666 & ~umask, as the WebUI's own files (0644 under 022)."""
    import os
    import stat

    from supermerger.io.atomic import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o022)
        atomic_write_text(tmp_path / "b.txt", "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644

"""Merges are recorded by supermerger.merge() and the CLI, and a restored record merges to the
same tensors; models are found again by hash, then by name; a broken history never costs a merge."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

import supermerger
from supermerger import history
from supermerger.cli import main
from supermerger.errors import ModelFileError
from supermerger.history import History, HistoryError
from supermerger.io.hashing import sha256_file
from supermerger.merge.recipe import Recipe

from test_history import original_csv


def same(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_file_merge_is_recorded_in_full_and_restores_to_the_same_tensors(models, tmp_path):
    a, b, vae = models[("sd1", "A")], models[("sd1", "B")], models[("sd1", "C")]
    recipe = Recipe(model_a=str(a), model_b=str(b), alpha=0.4, mbw_alpha="GRAD_V",
                    elemental="OUT03:attn2:0.5\nIN04::0.2", exclude="IN01 OUT05", adjust="1,0,0,0,0,0,0,0",
                    dtype="fp16", bake_vae=str(vae))
    first = supermerger.merge(recipe, output=tmp_path / "first.safetensors")
    assert first.history_id == 1
    rec = history.get(-1)
    assert rec.id == 1 and rec.name == first.name and rec.architecture == "sd1"
    assert (rec.mode, rec.calcmode, rec.alpha, rec.beta, rec.gamma) == ("weight_sum", "normal", 0.4, 0.25, 0.3)
    for label, path in (("A", a), ("B", b), ("VAE", vae)):
        ref = rec.models[label]
        assert ref.name == path.stem and ref.path == str(path.resolve()) and ref.size == path.stat().st_size
        assert ref.sha256 == sha256_file(path) and ref.short == ref.sha256[:10]
    assert set(rec.models) == {"A", "B", "VAE"}
    assert rec.weights_alpha == "GRAD_V" and rec.weights_beta == "" and rec.effective_beta is None
    blocks = first.plan.arch.blocks
    expect = [0.0 if blk in ("IN01", "OUT05") else w for blk, w in zip(blocks, first.plan.block_alpha)]
    assert list(rec.effective_alpha) == expect and rec.effective_alpha[blocks.index("IN02")] > 0
    assert rec.elemental == "OUT03:attn2:0.5\nIN04::0.2"
    assert (rec.include_mode, rec.include_exclude, rec.adjust) == ("Exclude", "IN01 OUT05", "1,0,0,0,0,0,0,0")
    assert rec.save_settings == "safetensors, fp16, bake VAE" and rec.output == str((tmp_path / "first.safetensors").resolve())
    stored = rec.recipe()
    assert stored.hashes == {k: rec.models[k].sha256 for k in ("A", "B", "VAE")}
    assert stored.replace(model_a=None, model_b=None, bake_vae=None, output=None, hashes={}) == \
        recipe.replace(model_a=None, model_b=None, bake_vae=None)

    again = history.restore(1)
    assert again.output is None and again.model_a == str(a.resolve()) and again.bake_vae == str(vae.resolve())
    second = supermerger.merge(again, output=tmp_path / "second.safetensors", history=False)
    assert second.history_id is None and History().count() == 1
    assert same(load_file(tmp_path / "first.safetensors"), load_file(tmp_path / "second.safetensors"))


def test_dice_roll_seed_is_recorded_and_replayed(models):
    a, b = models[("sd1", "A")], models[("sd1", "B")]
    first = supermerger.merge(Recipe(model_a=str(a), model_b=str(b), random={"mode": "R"}))
    rec = history.get(first.history_id)
    assert isinstance(rec.seed, int) and rec.seed == first.plan.recipe.seed and rec.random["mode"] == "R"
    assert rec.save_settings == "in memory" and rec.output == ""
    assert rec.effective_alpha == first.plan.block_alpha
    again = supermerger.merge(history.restore(-1))
    assert again.plan.block_alpha == first.plan.block_alpha and same(first.state_dict, again.state_dict)
    # the same merge in memory again (same recipe, seed and model hashes) is the same record
    assert again.history_id == first.history_id == history.get(-1).id and History().count() == 1


def test_a_repeated_merge_in_memory_reuses_its_record_and_anything_else_adds_one(models, tmp_path):
    a, b = str(models[("sd1", "A")]), str(models[("sd1", "B")])
    first = supermerger.merge(Recipe(model_a=a, model_b=b, alpha=0.3))
    assert supermerger.merge(Recipe(model_a=a, model_b=b, alpha=0.3)).history_id == first.history_id
    other = supermerger.merge(Recipe(model_a=a, model_b=b, alpha=0.4))
    assert other.history_id == first.history_id + 1
    # a repeat after another merge still finds its record (it is among the newest)
    assert supermerger.merge(Recipe(model_a=a, model_b=b, alpha=0.3)).history_id == first.history_id
    # saving to a file is its own record, every time (the record names the file)
    saved = supermerger.merge(Recipe(model_a=a, model_b=b, alpha=0.3), output=tmp_path / "x.safetensors")
    assert saved.history_id == other.history_id + 1 and History().count() == 3


def test_state_dict_input_is_recorded_by_name_only(models):
    b_sd = load_file(models[("sd1", "B")])
    result = supermerger.merge(Recipe(model_a=str(models[("sd1", "A")])), models={"B": b_sd})
    rec = history.get(result.history_id)
    assert rec.models["B"].name == "model_B" and rec.models["B"].path == "" and rec.models["B"].sha256 == ""
    assert rec.models["A"].sha256 == sha256_file(models[("sd1", "A")])
    assert rec.recipe().model_b is None
    with pytest.raises(ModelFileError, match=r"model B \('model_B'\) not found") as err:
        history.restore(-1)
    assert "\n" in str(err.value) and "--models-dir" in str(err.value)  # message, then what to do
    # given explicitly, the state dict's place is filled
    given = history.restore(-1, given={"B": str(models[("sd1", "B")])})
    assert given.model_b == str(models[("sd1", "B")])


def test_a_history_that_cannot_be_written_never_costs_the_merge(models, monkeypatch):
    def broken(self, records, keep_ids=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(History, "append_many", broken)
    result = supermerger.merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")])))
    assert result.state_dict and result.history_id is None
    assert any("not recorded in the merge history (" in n and "No space left" in n for n in result.notices)
    monkeypatch.undo()
    assert History().count() == 0
    supermerger.merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")])), history=False)
    assert History().count() == 0


def test_models_are_found_by_hash_then_by_name(models, tmp_path):
    first_dir, moved_dir = tmp_path / "first", tmp_path / "moved" / "sub"
    first_dir.mkdir()
    moved_dir.mkdir(parents=True)
    a, b = (shutil.copy(models[("sd1", x)], first_dir / f"{x}.safetensors") for x in "AB")
    supermerger.merge(Recipe(model_a=str(a), model_b=str(b), alpha=0.25))
    rec = history.get(-1)
    shutil.move(a, moved_dir / "renamed.safetensors")
    shutil.move(b, moved_dir / "B.safetensors")
    with pytest.raises(ModelFileError, match=r"model A \('A', sha256 [0-9a-f]{10}\) and model B .* not found"):
        history.restore_detail(-1, models_dirs=[], given=None)
    found = history.restore_detail(-1, models_dirs=[tmp_path / "moved"]).found
    assert found["A"] == (str(moved_dir / "renamed.safetensors"), "found by hash")
    assert found["B"] == (str(moved_dir / "B.safetensors"), "found by hash")
    # B replaced by a different file of the same name: used, and said to differ
    shutil.copy(models[("sd1", "C")], moved_dir / "B.safetensors")
    found = history.restore_detail(rec.id, models_dirs=[tmp_path / "moved"]).found
    assert found["B"][1] == "found by name (its sha256 differs from the record's)"
    with pytest.raises(ModelFileError, match="does not exist"):
        history.restore(-1, models_dirs=[tmp_path / "nowhere"])


def test_original_record_restores_by_short_hash(models, tmp_path, _isolated_data_dir):
    a, b = models[("sd1", "A")], models[("sd1", "B")]
    (_isolated_data_dir / "mergehistory.csv").write_text(
        original_csv(sha256_file(a)[:10], sha256_file(b)[:10]), encoding="utf-8")
    restored = history.restore_detail(1, models_dirs=[a.parent])
    assert restored.found["A"] == (str(a), "found by hash") and restored.found["B"] == (str(b), "found by hash")
    replay = supermerger.merge(restored.recipe, history=False)
    direct = supermerger.merge(Recipe(model_a=str(a), model_b=str(b), alpha=0.3, dtype="fp16"), history=False)
    assert same(replay.state_dict, direct.state_dict)


def test_cli_history_list_search_show_and_merge_from_history(models, tmp_path, capsys):
    a, b = str(models[("sd1", "A")]), str(models[("sd1", "B")])
    assert main(["merge", "-a", a, "-b", b, "--alpha", "0.3", "--elemental", "OUT03:attn2:0.5\nIN04::0.2",
                 "-o", str(tmp_path / "one.safetensors"), "-q"]) == 0
    assert "history ID   : 1 (supermerger history show 1)" in capsys.readouterr().out
    assert main(["merge", "-a", a, "-b", b, "--mode", "add_difference", "-c", a, "--no-history",
                 "-o", str(tmp_path / "unrecorded.safetensors"), "-q"]) == 0
    capsys.readouterr()

    assert main(["history", "list"]) == 0
    out = capsys.readouterr().out
    assert "sd1_A x 0.7 + sd1_B x 0.3" in out and "page 1 of 1 (1 records, newest first)" in out
    assert main(["history", "search", "SD1_A", "nothing", "--or", "--mode", "Weight sum", "--model", "sd1_b"]) == 0
    assert "sd1_A x 0.7" in capsys.readouterr().out
    assert main(["history", "search", "sd1_a", "nothing", "--and"]) == 0
    assert capsys.readouterr().out.strip() == "no result"
    assert main(["history", "show", "-1"]) == 0
    out = capsys.readouterr().out
    assert "elemental       : OUT03:attn2:0.5\n                  IN04::0.2" in out and '"model_a":' in out

    assert main(["merge", "--from-history", "-1", "--alpha", "0.3", "-o", str(tmp_path / "two.safetensors"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "history ID 1" in out and "recorded path, sha256 checked" in out and "history ID   : 2" in out
    assert same(load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors"))
    assert main(["merge", "--from-history", "1", "--alpha", "0.9", "--dry-run"]) == 0
    assert "alpha        : 0.9" in capsys.readouterr().out  # other options override

    assert main(["merge", "--from-history", "7"]) == 2
    assert "error: History ID 7 does not exist" in capsys.readouterr().err
    assert main(["merge", "--from-history", "1", "--recipe", "r.json"]) == 2
    assert "only one of" in capsys.readouterr().err
    with pytest.raises(HistoryError):
        history.weight_stats("1")

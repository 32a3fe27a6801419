"""Let the dice roll: random block and elemental ratios, their seed, and exact replays.

Expected block values are computed here from numpy's legacy generator (the stream the original
draws from: ``np.random.seed(seed); np.random.rand(3000)``) and the formulas of spec §11.2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import supermerger
from supermerger import cli
from supermerger.api import plan_merge, recipe_from_file
from supermerger.errors import RecipeError
from supermerger.merge.recipe import Recipe
from test_calcmodes_e2e import small_state_dict

SD1_IDS = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
XL_IDS = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]
UNET_KEY = "model.diffusion_model.input_blocks.4.0.emb_layers.1.weight"  # IN04


@pytest.fixture(scope="module")
def sd1():
    return {label: small_state_dict("sd1", seed) for label, seed in (("A", 1), ("B", 2), ("C", 3))}


@pytest.fixture(scope="module")
def sdxl():
    return {label: small_state_dict("sdxl", seed) for label, seed in (("A", 1), ("B", 2), ("C", 3))}


def plan(models, **kw):
    return plan_merge(Recipe(model_a="A", model_b="B", **kw), models=models)


def draws(seed):
    stream = np.random.RandomState(seed)
    return stream.rand(3000), stream.rand(3000)


def expect(values, ndigits=3):
    return tuple(round(float(v), ndigits) for v in values)


def test_r_reproduces_the_original_stream(sd1):
    r, _ = draws(42)
    p = plan(sd1, seed=42, random={"mode": "R"})
    assert p.block_alpha == expect(r[:26])  # R = r, inside the default clamp [0, 1]
    assert p.recipe.seed == 42


def test_beta_reads_from_position_50(sd1):
    r, _ = draws(7)
    p = plan(sd1, seed=7, mode="sum_twice", model_c="C", random={"mode": "R", "targets": ["alpha", "beta"]})
    assert p.block_alpha == expect(r[:26]) and p.block_beta == expect(r[50:76])


def test_u_is_clamped_to_the_limits(sd1):
    r, _ = draws(3)
    wide = plan(sd1, seed=3, random={"mode": "U", "clamp_lower": "-1", "clamp_upper": "2"})
    assert wide.block_alpha == expect(1.5 - 2 * r[:26])
    default = plan(sd1, seed=3, random={"mode": "U"})
    assert default.block_alpha == expect(np.clip(1.5 - 2 * r[:26], 0, 1))


def test_x_lies_between_the_lower_and_upper_limit(sd1):
    r, _ = draws(5)
    p = plan(sd1, seed=5, random={"mode": "X", "upper": "0.8", "lower": "0.2"})
    assert p.block_alpha == expect((0.2 - 0.8) * r[:26] + 0.8)


def test_d_spreads_around_the_midpoint(sd1):
    r, _ = draws(9)
    p = plan(sd1, seed=9, random={"mode": "D", "upper": "0.5", "lower": "0.2"})
    assert p.block_alpha == expect(0.5 + 0.2 * (r[:26] - 0.5))


def test_limits_per_block(sd1):
    r, _ = draws(11)
    upper = [0.1 * (i % 10) for i in range(26)]
    p = plan(sd1, seed=11, random={"mode": "X", "upper": upper, "lower": "0"})
    assert p.block_alpha == expect(np.array(upper) - np.array(upper) * r[:26])


def test_probability_syntax_for_x_and_d(sd1):
    r, chance = draws(13)
    p = plan(sd1, seed=13, random={"mode": "X", "upper": "1", "lower": "0.2R0.5"})
    expected = [0.0 if chance[i] > 0.5 else (0.2 - 1) * r[i] + 1 for i in range(26)]
    assert p.block_alpha == expect(expected)
    assert 0.0 in p.block_alpha and any(v > 0 for v in p.block_alpha)  # both outcomes occur
    p = plan(sd1, seed=13, random={"mode": "D", "upper": "0.5", "lower": "0.4R0.5"})
    expected = [0.5 if chance[i] > 0.5 else 0.5 + 0.4 * (r[i] - 0.5) for i in range(26)]  # range 0: the midpoint
    assert p.block_alpha == expect(expected)


def test_rounding(sd1):
    r, _ = draws(17)
    assert plan(sd1, seed=17, random={"mode": "R", "round": 1}).block_alpha == expect(r[:26], 1)


def test_custom_list_mixes_tokens_and_numbers(sd1):
    r, _ = draws(19)
    custom = ["0.25"] + ["R"] * 12 + ["0.75"] + ["U"] * 12
    p = plan(sd1, seed=19, random={"mode": "custom", "custom": ",".join(custom)})
    expected = [0.25] + list(r[1:13]) + [0.75] + list(np.clip(1.5 - 2 * r[14:26], 0, 1))
    assert p.block_alpha == expect(expected)


def test_tokens_typed_into_the_weights_work_without_a_random_mode(sd1):
    r, _ = draws(23)
    p = plan(sd1, seed=23, mbw_alpha="R," + ",".join(["0.5"] * 25))
    assert p.block_alpha == (round(float(r[0]), 3),) + (0.5,) * 25


def test_sdxl_draws_the_26_list_then_converts_it(sdxl):
    r, _ = draws(29)
    p = plan(sdxl, seed=29, random={"mode": "R"})
    assert p.block_alpha == expect([r[SD1_IDS.index(b)] for b in XL_IDS])


def _alphas(p):
    return {t.key: t.alpha for t in p.tasks if t.op == "merge"}


def test_elemental_randomisation_draws_per_key(sd1):
    p = plan(sd1, seed=31, random={"mode": "ER"})
    assert p.block_alpha == (0.0,) * 26
    alphas = _alphas(p)
    unet = [k for k in alphas if k.startswith("model.diffusion_model.")]
    values = [alphas[k] for k in unet]
    assert all(0 <= v < 1 and v == round(v, 3) for v in values)
    assert len(set(values)) > len(values) // 2  # each key its own draw
    assert _alphas(plan(sd1, seed=31, random={"mode": "ER"})) == alphas  # same seed, same draws
    assert _alphas(plan(sd1, seed=32, random={"mode": "ER"})) != alphas
    assert any(e.text.endswith("::R") for e in p.elemental)


def test_elemental_eu_and_ex(sd1):
    eu = [v for k, v in _alphas(plan(sd1, seed=37, random={"mode": "EU"})).items()]
    assert all(-1 < v <= 1 for v in eu) and min(eu) < 0
    ex = _alphas(plan(sd1, seed=37, random={"mode": "EX", "upper": "0.3", "lower": "0.3"}))
    assert set(ex.values()) == {0.3}


def test_elemental_random_entries_typed_by_the_user(sd1):
    p = plan(sd1, seed=41, elemental="IN04::R")
    alphas = _alphas(p)
    assert 0 <= alphas[UNET_KEY] < 1 and alphas[UNET_KEY] != 0.5
    assert alphas["model.diffusion_model.input_blocks.5.0.emb_layers.1.weight"] == 0.5  # other blocks: alpha
    # each key's draw depends on the seed and the key, not on the other entries or the key order
    again = _alphas(plan(sd1, seed=41, elemental="OUT05:attn2:0.1\nIN04::R"))
    assert again[UNET_KEY] == alphas[UNET_KEY]


def test_e_tokens_in_beta_give_zero_with_a_notice(sd1):
    p = plan(sd1, seed=43, mode="sum_twice", model_c="C", mbw_beta=",".join(["ER"] * 26))
    assert p.block_beta == (0.0,) * 26
    assert any("elemental ratios apply to alpha only" in n for n in p.notices)


def test_seed_minus_one_is_drawn_and_recorded(sd1):
    p = plan(sd1, seed=-1, random={"mode": "R"})
    assert isinstance(p.recipe.seed, int) and 0 <= p.recipe.seed < 4294967295
    assert any(str(p.recipe.seed) in n for n in p.notices)
    assert plan(sd1, seed=p.recipe.seed, random={"mode": "R"}).block_alpha == p.block_alpha
    assert plan(sd1, random={"mode": "R"}).recipe.seed is not None  # None draws too
    assert plan(sd1).recipe.seed is None  # nothing random: no seed


@pytest.mark.parametrize("kw", [{"random": {"mode": "R"}},
                                {"random": {"mode": "ER"}},
                                {"calcmode": "plus random"},
                                {"calcmode": "dare", "mode": "add_difference", "beta": 0.5}])
def test_random_merges_replay_bit_for_bit_from_the_recorded_seed(sd1, tmp_path, kw):
    first = tmp_path / "first.safetensors"
    supermerger.merge(Recipe(model_a="A", model_b="B", seed=-1, **kw), models=sd1, output=first)
    recorded = recipe_from_file(first)
    assert isinstance(recorded.seed, int) and recorded.seed >= 0
    replay = tmp_path / "replay.safetensors"
    supermerger.merge(recorded, models=sd1, output=replay)
    from safetensors.torch import load_file

    a, b = load_file(str(first)), load_file(str(replay))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = supermerger.merge(recorded.replace(seed=recorded.seed + 1), models=sd1).state_dict
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_recipe_round_trip_and_validation():
    r = Recipe(seed=5, random={"mode": "x", "targets": "alpha,beta", "upper": 0.8, "round": 2})
    r.check_types()
    assert r.random["mode"] == "X" and r.random["targets"] == ["alpha", "beta"] and r.random["upper"] == "0.8"
    assert Recipe.from_json(r.to_json()) == r
    with pytest.raises(RecipeError, match="Did you mean 'upper'"):
        Recipe.from_dict({"random": {"uper": "1"}})
    with pytest.raises(RecipeError, match="random mode 'Q'"):
        Recipe.from_dict({"random": {"mode": "Q"}})
    with pytest.raises(RecipeError, match="round"):
        Recipe.from_dict({"random": {"mode": "R", "round": -1}})
    with pytest.raises(RecipeError, match="seed must be -1"):
        Recipe.from_dict({"seed": -5})


def test_bad_limits_are_reported(sd1):
    with pytest.raises(RecipeError, match="lower limit has 3 values"):
        plan(sd1, seed=1, random={"mode": "X", "lower": "0,0.1,0.2"})
    with pytest.raises(RecipeError, match="not a finite number"):
        plan(sd1, seed=1, random={"mode": "X", "upper": "high"})


def test_cli_dice_options_and_saved_recipe(sd1, tmp_path, capsys):
    from safetensors.torch import save_file

    paths = []
    for label in "AB":
        paths.append(tmp_path / f"{label}.safetensors")
        save_file(sd1[label], str(paths[-1]))
    saved = tmp_path / "r.json"
    argv = ["merge", "-a", str(paths[0]), "-b", str(paths[1]), "--random-mode", "R", "--random-seed", "-1",
            "--round", "2", "--random-upper", "0.9", "--save-recipe", str(saved), "--dry-run"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(saved.read_text())
    assert data["seed"] >= 0 and data["random"]["mode"] == "R" and data["random"]["round"] == 2
    assert f"seed         : {data['seed']}" in out
    r, _ = draws(data["seed"])
    weights = ",".join(f"{v:g}" for v in expect(r[:26], 2))
    assert cli.main(["merge", "--recipe", str(saved), "--dry-run"]) == 0
    replay = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("block alpha"))
    assert line in replay
    assert line.replace("block alpha  : ", "").split(" ")[3] == f"IN02={weights.split(',')[3]}"

"""Every calcmode end to end: SD1 files through the CLI, SDXL state dicts through the library.

The checkpoints have every real key name of their architecture (so block mapping, the VAE and
text encoder rules all apply) but each dimension capped at 6, which keeps a merge well under a
second. Expected values are written out here, independently of the engine.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import supermerger
from supermerger import cli
from supermerger.errors import RecipeError
from supermerger.merge.calcmodes import CALCMODES
from supermerger.merge.recipe import Recipe
from supermerger.testing.synthetic import key_shapes

CAP = 6
UNET_W = "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight"  # 2-D, merged in both archs
UNET_B = "model.diffusion_model.input_blocks.1.0.emb_layers.1.bias"  # 1-D
NORM_KEY = "model.diffusion_model.input_blocks.1.0.out_layers.0.weight"  # no 'norm' in the name...
SELF_KEPT = "model.diffusion_model.middle_block.1.norm.weight"  # ...this one has
VAE_KEY = "first_stage_model.encoder.conv_in.weight"


def small_state_dict(arch: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in key_shapes(arch):
        if key.endswith("position_ids"):
            sd[key] = torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
            continue
        small = tuple(min(d, CAP) for d in shape)
        t = torch.randn(small, generator=g) * 0.02
        if "norm" in key and key.endswith("weight") and len(small) == 1:
            t += 1.0
        sd[key] = t.to(torch.float32 if len(shape) == 1 and shape[0] == 1000 else torch.float16)
    return sd


@pytest.fixture(scope="module")
def small():
    return {arch: {label: small_state_dict(arch, seed) for label, seed in (("A", 1), ("B", 2), ("C", 3))}
            for arch in ("sd1", "sdxl")}


def merge(models, calcmode, **kw):
    recipe = Recipe(calcmode=calcmode, mode=CALCMODES[calcmode].modes[0], model_c="C", **kw)
    return supermerger.merge(recipe.replace(model_a="A", model_b="B"), models=models)


def f32(sd, key):
    return sd[key].float()


def same_fp16(actual, expected32, key=""):
    exp = expected32.to(torch.float16).float()
    diff = (actual.float() - exp).abs()
    assert bool((diff <= exp.abs() * 2 ** -9 + 1e-6).all()), f"{key}: max diff {diff.max().item()}"


def _reflect(i, n):
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


def smooth_1d(v):
    n = len(v)
    med = [sorted(v[_reflect(i + j, n)] for j in (-1, 0, 1))[1] for i in range(n)]
    w = [math.exp(-0.5 * j * j) for j in range(-4, 5)]
    return [sum(w[j + 4] / sum(w) * med[_reflect(i + j, n)] for j in range(-4, 5)) for i in range(n)]


def ties_reference(a, b, c, alpha):
    """TIES with nothing trimmed, written out: sign of the weighted sum, weighted mean of agreeing."""
    ta, tb = a - c, b - c
    wa, wb = 1 - alpha, alpha
    elected = torch.sign(wa * ta + wb * tb)
    ma = ((torch.sign(ta) == elected) & (ta != 0)).float()
    mb = ((torch.sign(tb) == elected) & (tb != 0)).float()
    den = wa * ma + wb * mb
    return c + torch.where(den > 0, (wa * ta * ma + wb * tb * mb) / torch.where(den > 0, den, 1.0), 0.0)


def check(name, out, ins, merged_name):
    """What each calcmode must have done to a merged key, written from its definition."""
    a, b, c = (f32(ins[x], UNET_W) for x in "ABC")
    o = out[UNET_W]
    if name == "normal":
        same_fp16(o, a + 0.5 * (b - a), name)
    elif name in ("cosineA", "cosineB"):
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        assert bool(((o.float() >= lo - 1e-4) & (o.float() <= hi + 1e-4)).all())  # k·A + (1-k)·B, k in [0, 1]
        assert torch.equal(out[VAE_KEY], ins["A"][VAE_KEY])
    elif name == "trainDifference":
        share = torch.where((b - c).abs() + (b - a).abs() != 0, (b - a).abs() / ((b - c).abs() + (b - a).abs()), 0.0)
        same_fp16(o, a + share * (b - c) * (0.5 * 1.8), name)
    elif name in ("smoothAdd", "smoothAdd MT"):
        ab, bb, cb = (f32(ins[x], UNET_B) for x in "ABC")
        expected = ab + 0.5 * torch.tensor(smooth_1d((bb - cb).tolist()))
        same_fp16(out[UNET_B], expected, name)
    elif name == "extract":
        x, y = b - a, c - a
        cos = ((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).clamp(-1, 1).unsqueeze(-1)
        d = ((cos + 1) / 2) ** 0.3
        same_fp16(o, a + (x + 0.5 * (y - x)) * (d + 0.25 * (1 - 2 * d)), name)
    elif name in ("tensor", "tensor2"):
        expected = a.clone()
        expected[1:4] = b[1:4]  # 6 rows: [int(6·.25), int(6·.75)) = [1, 4)
        assert torch.equal(o.float(), expected)
        assert merged_name.endswith("_beta_0.25")
    elif name == "self":
        same_fp16(o, a * 0.5, name)
        assert torch.equal(out[SELF_KEPT], ins["A"][SELF_KEPT])
    elif name == "plus random":
        assert not torch.equal(o, ins["A"][UNET_W])
        assert torch.equal(out[SELF_KEPT], ins["A"][SELF_KEPT])
    elif name == "slerp":
        omega = math.acos(float((a * b).sum() / (a.norm() * b.norm())))
        expected = (math.sin(0.5 * omega) * a + math.sin(0.5 * omega) * b) / math.sin(omega)
        same_fp16(o, expected, name)
    elif name == "ties":
        same_fp16(o, ties_reference(a, b, c, 0.5), name)
    elif name == "ties_dare":
        same_fp16(o, ties_reference(a, b, c, 0.5), name)  # density 1: no drops
    elif name == "dare":
        dropped = (o.float() - a).abs() <= a.abs() * 2 ** -9 + 1e-6
        kept = (o.float() - (a + 0.5 * (b - c) / 0.5)).abs() <= (a + (b - c)).abs() * 2 ** -9 + 1e-6
        assert bool((dropped | kept).all()) and bool(dropped.any()) and bool(kept.any())
    else:
        raise AssertionError(f"no end-to-end check for calcmode {name}")


EXTRA = {"ties": {"beta": 1.0}, "ties_dare": {"beta": 1.0}, "dare": {"beta": 0.5}, "extract": {"beta": 0.25},
         "tensor": {"beta": 0.25}, "tensor2": {"beta": 0.25}}


def check_model(name, out, ins, merged_name):
    assert set(out) == set(ins["A"])
    for key, v in out.items():
        assert v.shape == ins["A"][key].shape and v.dtype == ins["A"][key].dtype, key
        if v.is_floating_point():
            assert torch.isfinite(v).all(), key
    check(name, out, ins, merged_name)


@pytest.mark.parametrize("name", list(CALCMODES))
def test_every_calcmode_end_to_end_on_sdxl(small, name):
    res = merge(small["sdxl"], name, alpha=0.5, seed=1234, **EXTRA.get(name, {}))
    check_model(name, res.state_dict, small["sdxl"], res.name)
    assert res.plan.calcmode.id == name


def test_forced_switch_to_add_difference_is_announced(small):
    for name in ("trainDifference", "extract"):
        recipe = Recipe(model_a="A", model_b="B", model_c="C", calcmode=name, mode="weight_sum", beta=0.2)
        res = supermerger.merge(recipe, models=small["sd1"])
        assert res.plan.mode.id == "add_difference"
        assert any("mode switched from Weight sum" in n for n in res.notices)


@pytest.mark.parametrize("name,mode", [("cosineA", "add_difference"), ("tensor", "triple_sum"),
                                       ("smoothAdd", "weight_sum"), ("slerp", "add_difference"),
                                       ("ties", "weight_sum"), ("self", "sum_twice")])
def test_combinations_that_make_no_sense_are_refused(small, name, mode):
    with pytest.raises(RecipeError, match=f"calcmode {name} cannot be used with"):
        supermerger.merge(Recipe(model_a="A", model_b="B", model_c="C", calcmode=name, mode=mode), models=small["sd1"])


def test_ties_needs_model_c(small):
    with pytest.raises(RecipeError, match="needs model C"):
        supermerger.merge(Recipe(model_a="A", model_b="B", calcmode="ties", mode="add_difference"),
                          models={k: small["sd1"][k] for k in "AB"})


@pytest.mark.parametrize("name,kw,what", [("extract", {"alpha": 1.5}, "alpha must be between 0 and 1"),
                                          ("extract", {"gamma": -1.0}, "gamma must be ≥ 0"),
                                          ("tensor", {"beta": -0.1}, "beta must be between 0 and 1"),
                                          ("dare", {"beta": 0.0}, "density"),
                                          ("ties", {"alpha": 2.0}, "alpha must be between 0 and 1")])
def test_ratios_out_of_range_are_refused_before_merging(small, name, kw, what):
    with pytest.raises(RecipeError, match=what):
        merge(small["sd1"], name, **kw)


def test_ratio_checks_apply_per_block(small):
    with pytest.raises(RecipeError, match="alpha must be between 0 and 1.*weights alpha IN04"):
        merge(small["sd1"], "extract", mbw_alpha=",".join(["0.5"] * 5 + ["1.2"] + ["0.5"] * 20))


def test_block_weights_steer_the_main_ratio(small):
    ins = small["sd1"]
    weights = ["0"] * 26
    weights[2] = "1"  # IN01: slerp all the way to B
    out = merge(ins, "slerp", mbw_alpha=",".join(weights)).state_dict
    assert torch.equal(out[UNET_W], ins["B"][UNET_W])  # input_blocks.1 is IN01
    key_in02 = UNET_W.replace("input_blocks.1.", "input_blocks.2.")
    assert torch.equal(out[key_in02], ins["A"][key_in02])


def test_elemental_steers_the_main_ratio(small):
    ins = small["sd1"]
    out = merge(ins, "dare", alpha=0.0, beta=0.5, seed=5, elemental="IN01:emb_layers:1").state_dict
    assert not torch.equal(out[UNET_W], ins["A"][UNET_W])  # α = 1 here
    assert torch.equal(out[NORM_KEY], ins["A"][NORM_KEY])  # α = 0 elsewhere


# -- the command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1_files(small, tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("calcmode_cli")
    paths = {}
    for label in "ABC":
        paths[label] = root / f"{label}.safetensors"
        save_file(small["sd1"][label], str(paths[label]))
    return paths


SPELLINGS = {"smoothAdd MT": "smoothadd_mt", "plus random": "plus_random", "cosineA": "COSINEA"}


@pytest.mark.parametrize("name", list(CALCMODES))
def test_every_calcmode_end_to_end_on_sd1_from_the_cli(small, sd1_files, tmp_path, name, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "out.safetensors"
    cm = CALCMODES[name]
    argv = ["merge", "-a", str(sd1_files["A"]), "-b", str(sd1_files["B"]), "-c", str(sd1_files["C"]),
            "--mode", cm.modes[0], "--calcmode", SPELLINGS.get(name, name), "--alpha", "0.5", "-o", str(out), "-q"]
    for opt, value in EXTRA.get(name, {}).items():
        argv += [f"--{opt}", str(value)]
    if cm.needs_seed:
        argv += ["--seed", "-1"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    check_model(name, load_file(str(out)), small["sd1"], meta["modelspec.title"])
    recipe = json.loads(meta["supermerger_recipe"])
    assert recipe["calcmode"] == SPELLINGS.get(name, name)
    assert json.loads(meta["sd_merge_recipe"])["calcmode"] == name
    if cm.needs_seed:
        assert isinstance(recipe["seed"], int) and recipe["seed"] >= 0


def test_cli_help_lists_every_calcmode_with_one_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["merge", "--help"])
    text = capsys.readouterr().out
    listing = text[text.index("calculation modes (--calcmode"):]
    for cm in CALCMODES.values():
        lines = [line for line in listing.splitlines() if line.strip().startswith(cm.id + "  ")]
        assert len(lines) == 1 and cm.summary in lines[0], cm.id


def test_cli_unknown_calcmode_suggests_the_nearest(capsys):
    assert cli.main(["merge", "-a", "x.safetensors", "-b", "y.safetensors", "--calcmode", "smoothAd"]) == 2
    assert "Did you mean 'smoothAdd'" in capsys.readouterr().err


def test_cli_calcmodes_command_lists_rules(capsys):
    assert cli.main(["calcmodes"]) == 0
    text = capsys.readouterr().out
    for cm in CALCMODES.values():
        assert cm.id in text
    assert "modes: Add difference (other modes switch to Add difference)" in text


def test_cosine_statistics_are_read_once_per_pair_of_unchanged_files(small, tmp_path, monkeypatch):
    # an XY plot or repeated Merge & Gen changes ratios, not models: the statistics pass reads A and
    # B once; a changed file is read again; the merges agree value for value either way
    from safetensors.torch import save_file

    from supermerger.merge import methods_original as mo

    monkeypatch.setattr(mo, "_stats_cache", type(mo._stats_cache)())
    paths = {label: tmp_path / f"{label}.safetensors" for label in "AB"}
    for label, path in paths.items():
        save_file(small["sd1"][label], str(path))
    models = {label: str(path) for label, path in paths.items()}
    calls = []
    real = mo._compute_cosine_stats
    monkeypatch.setattr(mo, "_compute_cosine_stats", lambda plan, variant: calls.append(variant) or real(plan, variant))

    def run(alpha, calcmode="cosineA"):
        recipe = Recipe(calcmode=calcmode, mode="weight_sum", alpha=alpha, model_a="A", model_b="B")
        return supermerger.merge(recipe, models=models, history=False).state_dict

    first = run(0.3)
    second = run(0.3)
    run(0.6)
    assert calls == ["A"]
    assert all(torch.equal(first[k], second[k]) for k in first)
    run(0.3, "cosineB")
    assert calls == ["A", "B"]
    sd_b = dict(small["sd1"]["B"])
    sd_b[UNET_W] = (sd_b[UNET_W].float() * -1).half()  # B changes on disk: new statistics
    save_file(sd_b, str(paths["B"]))
    changed = run(0.3)
    assert calls == ["A", "B", "A"]
    assert not torch.equal(changed[UNET_W], first[UNET_W])


@pytest.mark.parametrize("beta, rows_from_b", [(0.25, [1, 2, 3]), (0.75, [0, 4, 5])])
def test_tensor_exchange_moves_rows_bit_for_bit(small, beta, rows_from_b):
    # α = .5 on 6 rows: β = .25 takes rows [1, 4) from B; β = .75 wraps (α+β = 1.25): rows [1, 4)
    # stay A and the rest come from B. Every value is A's or B's, unchanged (the CPU path copies
    # in the output dtype without a float32 round trip).
    out = merge(small["sd1"], "tensor", alpha=0.5, beta=beta)
    a, b = small["sd1"]["A"][UNET_W], small["sd1"]["B"][UNET_W]
    got = out.state_dict[UNET_W]
    assert got.dtype == a.dtype and got.shape[0] == 6
    for row in range(6):
        assert torch.equal(got[row], (b if row in rows_from_b else a)[row]), row

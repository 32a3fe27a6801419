"""The original's 110-value "extended XL" block weights (spec §3.2), checked key by key against an
independent reading of the naming rule."""

from __future__ import annotations

import re

import pytest

import supermerger
from supermerger import Recipe
from supermerger.errors import RecipeError

from helpers import assert_close_dtype, block_xl, load, merged_keys

# Spec §3.2, written out here rather than read from arch data.
EXTENDED = (["CLIPL", "CLIPG", "IN0", "IN00", "IN10", "IN20", "IN30", "IN40", "IN41", "IN410", "IN411",
             "IN50", "IN51", "IN510", "IN511", "IN60", "IN70", "IN71"] + [f"IN71{k}" for k in range(10)]
            + ["IN80", "IN81"] + [f"IN81{k}" for k in range(10)]
            + ["MID00", "MID10"] + [f"MID10{k}" for k in range(10)] + ["MID20", "OUT00", "OUT01"]
            + [f"OUT01{k}" for k in range(10)] + ["OUT10", "OUT11"] + [f"OUT11{k}" for k in range(10)]
            + ["OUT20", "OUT21"] + [f"OUT21{k}" for k in range(10)]
            + ["OUT22", "OUT30", "OUT31", "OUT310", "OUT311", "OUT40", "OUT41", "OUT410", "OUT411", "OUT50",
               "OUT51", "OUT510", "OUT511", "OUT52", "OUT60", "OUT70", "OUT80", "OUT9", "TIME", "LABEL", "VAE"])
# Distinct values per slot, none of them 0 or 1 (those would turn the merge into a copy).
VALUES = [round(0.005 + i * 0.009, 4) for i in range(110)]


def expected_slot(key: str) -> str:
    """The slot of ``key`` by spec §3.2/§3.3: CLIP-L, VAE and anything else outside the U-Net use
    the base value (slot 0)."""
    if key.startswith("conditioner.embedders.1."):
        return "CLIPG"
    if ".time_embed." in key:
        return "TIME"
    if ".label_emb." in key:
        return "LABEL"
    if key.startswith("model.diffusion_model.out."):
        return "OUT9"
    tb = re.search(r"\.transformer_blocks\.(\d+)\.", key)
    suffix = tb.group(1) if tb else ""
    m = re.match(r"model\.diffusion_model\.input_blocks\.(\d+)\.(\d+)\.", key)
    if m:
        return f"IN{m.group(1)}{m.group(2)}{suffix}"
    m = re.match(r"model\.diffusion_model\.middle_block\.(\d+)\.", key)
    if m:
        return f"MID{m.group(1)}0{suffix}"
    m = re.match(r"model\.diffusion_model\.output_blocks\.(\d+)\.(\d+)\.", key)
    if m:
        return f"OUT{m.group(1)}{m.group(2)}{suffix}"
    return "CLIPL"


def _paths(models, arch="sdxl", c=False):
    out = dict(model_a=str(models[(arch, "A")]), model_b=str(models[(arch, "B")]))
    if c:
        out["model_c"] = str(models[(arch, "C")])
    return out


def test_spec_list_has_110_distinct_ids():
    assert len(EXTENDED) == 110 and len(set(EXTENDED)) == 110


def test_weight_sum_110_values_sets_every_key_by_its_sub_module(models):
    A, B = load(models[("sdxl", "A")]), load(models[("sdxl", "B")])
    out = supermerger.merge(Recipe(mbw_alpha=",".join(map(str, VALUES)), **_paths(models))).state_dict
    ratio = dict(zip(EXTENDED, VALUES))
    used = set()
    for k in merged_keys(A):
        slot = expected_slot(k)
        assert slot in ratio, k
        used.add(slot)
        r = ratio[slot]
        assert_close_dtype(out[k], (1 - r) * A[k].float() + r * B[k].float(), A[k].dtype, k)
    # the synthetic model reaches every honoured slot: only IN0 (never produced) and VAE (follows
    # base) are unused, so every other value was checked on at least one key
    assert set(EXTENDED) - used == {"IN0", "VAE"}
    vae = [k for k in merged_keys(A) if k.startswith("first_stage_model.")]
    assert vae and all(expected_slot(k) == "CLIPL" for k in vae)
    assert any(k.startswith("conditioner.embedders.0.") for k in merged_keys(A))


def test_110_values_change_nothing_against_20_values_when_uniform_per_block(models):
    """A 110 list that repeats each 20-block value for all of its sub-modules merges like the 20 list
    (CLIP-G, TIME and LABEL set to the value their 20-block parent has)."""
    w20 = [round(0.03 + i * 0.045, 3) for i in range(20)]
    parent = dict(zip(["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)], w20))

    def parent_of(fine):
        if fine in ("CLIPL", "CLIPG", "VAE"):
            return "BASE"
        if fine in ("TIME", "LABEL", "IN0"):
            return "IN00"
        if fine == "OUT9":
            return "OUT08"
        if fine.startswith("MID"):
            return "M00"
        m = re.match(r"(IN|OUT)(\d)", fine)
        return f"{m.group(1)}0{m.group(2)}"

    w110 = [parent[parent_of(f)] for f in EXTENDED]
    fine = supermerger.merge(Recipe(mbw_alpha=",".join(map(str, w110)), **_paths(models)), history=False).state_dict
    coarse = supermerger.merge(Recipe(mbw_alpha=",".join(map(str, w20)), **_paths(models)), history=False).state_dict
    A = load(models[("sdxl", "A")])
    for k in merged_keys(A):
        assert parent_of(expected_slot(k)) == block_xl(k) or k.startswith("conditioner."), k
        assert bool((fine[k] == coarse[k]).all()), k


def test_sum_twice_110_beta_sets_beta_not_alpha(models):
    A, B, C = (load(models[("sdxl", x)]) for x in "ABC")
    a = 0.3
    out = supermerger.merge(Recipe(mode="sum Twice", alpha=a, mbw_beta=",".join(map(str, VALUES)),
                                   **_paths(models, c=True))).state_dict
    ratio = dict(zip(EXTENDED, VALUES))
    for k in merged_keys(A)[::5]:
        b = ratio[expected_slot(k)]
        exp = (1 - b) * ((1 - a) * A[k].float() + a * B[k].float()) + b * C[k].float()
        assert_close_dtype(out[k], exp, A[k].dtype, k)


def test_110_values_refused_on_sd1_with_the_accepted_lengths(models):
    with pytest.raises(RecipeError) as e:
        supermerger.merge(Recipe(mbw_alpha=",".join(map(str, VALUES)), **_paths(models, "sd1")))
    assert "110 values" in str(e.value) and "SD1" in str(e.value) and "26" in str(e.value)


def test_wrong_length_on_sdxl_names_20_and_110(models):
    with pytest.raises(RecipeError) as e:
        supermerger.merge(Recipe(mbw_alpha=",".join(["0.5"] * 109), **_paths(models)))
    msg = str(e.value)
    assert "109 values" in msg and "20" in msg and "110" in msg


def _unet_alphas(plan):
    """{key: (slot, alpha)} of the merged U-Net keys (slots by this file's reading of the rule)."""
    return {t.key: (expected_slot(t.key), t.alpha) for t in plan.tasks
            if t.op == "merge" and t.key.startswith("model.diffusion_model.")}


def test_dice_tokens_in_a_110_list_draw_per_extended_id(models):
    # R at IN40, U at OUT21: drawn from numpy's legacy stream seeded 7 at the token's position
    # (U = 1.5 − 2r, then clamped to [0, 1]); numbers elsewhere stay as given
    import numpy as np

    r = np.random.RandomState(7).rand(3000)
    items = [str(v) for v in VALUES]
    items[EXTENDED.index("IN40")] = "R"
    items[EXTENDED.index("OUT21")] = "U"
    plan = supermerger.plan_merge(Recipe(mbw_alpha=",".join(items), seed=7, **_paths(models)))
    expected = {slot: VALUES[i] for i, slot in enumerate(EXTENDED)}
    expected["IN40"] = round(r[EXTENDED.index("IN40")], 3)
    expected["OUT21"] = round(min(max(1.5 - 2 * r[EXTENDED.index("OUT21")], 0.0), 1.0), 3)
    got = _unet_alphas(plan)
    assert {slot for slot, _ in got.values()} >= {"IN40", "OUT21"}
    for key, (slot, alpha) in got.items():
        assert alpha == pytest.approx(expected[slot]), (key, slot)


def test_random_mode_with_extended_xl_fills_all_110_slots(models):
    import numpy as np

    r = np.random.RandomState(11).rand(3000)
    plan = supermerger.plan_merge(Recipe(random={"mode": "R"}, extended_xl=True, seed=11, **_paths(models)))
    got = _unet_alphas(plan)
    slots = {slot for slot, _ in got.values()}
    assert len(slots) > 40  # every U-Net slot of the model has its own draw
    for key, (slot, alpha) in got.items():
        assert alpha == pytest.approx(round(r[EXTENDED.index(slot)], 3)), (key, slot)


def test_er_in_a_110_list_gives_each_key_of_that_id_its_own_ratio(models):
    items = [str(v) for v in VALUES]
    items[EXTENDED.index("OUT21")] = "ER"
    plan = supermerger.plan_merge(Recipe(mbw_alpha=",".join(items), seed=3, **_paths(models)))
    got = _unet_alphas(plan)
    inside = [alpha for slot, alpha in got.values() if slot == "OUT21"]
    assert len(inside) > 3 and len(set(inside)) == len(inside) and all(0 <= a < 1 for a in inside)
    assert all(alpha == pytest.approx(VALUES[EXTENDED.index(slot)]) for slot, alpha in got.values()
               if slot != "OUT21")


def test_110_values_with_exclude_record_the_applied_weights(models):
    """Include/exclude with an extended list: the history keeps 110 values, 0 where a slot was kept from A."""
    from supermerger import history

    res = supermerger.merge(Recipe(mbw_alpha=",".join(map(str, VALUES)), exclude="OUT08", **_paths(models)))
    A, B = load(models[("sdxl", "A")]), load(models[("sdxl", "B")])
    ratio = dict(zip(EXTENDED, VALUES))
    for k in merged_keys(A):
        r = 0.0 if block_xl(k) == "OUT08" else ratio[expected_slot(k)]
        assert_close_dtype(res.state_dict[k], (1 - r) * A[k].float() + r * B[k].float(), A[k].dtype, k)
    rec = history.get(res.history_id)
    # OUT08 holds output_blocks.8.* (OUT80) and out.* (OUT9)
    assert list(rec.effective_alpha) == [0.0 if f in ("OUT80", "OUT9") else w for f, w in zip(EXTENDED, VALUES)]


def test_cli_blocks_lists_the_extended_ids(capsys):
    from supermerger.cli import main

    assert main(["blocks", "--arch", "sdxl"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if "110 extended" in ln]
    assert len(line) == 1 and line[0].split(":", 1)[1].split() == EXTENDED


def test_ui_read_into_sliders_says_the_110_list_has_no_sliders():
    from supermerger.ui import mbw

    with pytest.raises(RecipeError, match="110-value extended SDXL list"):
        mbw.text_to_sliders(",".join(map(str, VALUES)), "sdxl", {}, [0.5] * 26)


# -- elemental with extended IDs ("use extended XL") ---------------------------------------------------

def test_elemental_extended_ids_match_each_keys_sub_block(models):
    A, B = load(models[("sdxl", "A")]), load(models[("sdxl", "B")])
    text = "IN710 IN711:attn2:0.2\nOUT9::0.9\nMID101-MID103:ff:0.6,NOT IN810-IN819 OUT00-OUT9:norm:0.05"
    r = Recipe(alpha=0.4, elemental=text, extended_xl=True, **_paths(models))
    out = supermerger.merge(r).state_dict
    order = EXTENDED
    wide = set(order[order.index("IN810"):order.index("IN819") + 1]) | set(order[order.index("OUT00"):
                                                                                order.index("OUT9") + 1])
    hits = {0.2: 0, 0.9: 0, 0.6: 0, 0.05: 0}
    for k in merged_keys(A):
        slot = expected_slot(k)
        want = 0.4
        if slot in ("IN710", "IN711") and "attn2" in k:
            want = 0.2
        if slot == "OUT9":
            want = 0.9
        if slot in ("MID101", "MID102", "MID103") and "ff" in k:
            want = 0.6
        if slot not in wide and "norm" in k:  # NOT: every key outside those IDs (CLIP and VAE included)
            want = 0.05
        hits[want] = hits.get(want, 0) + 1
        assert_close_dtype(out[k], (1 - want) * A[k].float() + want * B[k].float(), A[k].dtype, k)
    assert all(hits[v] > 0 for v in (0.2, 0.9, 0.6, 0.05)), hits


def test_elemental_extended_ids_errors_and_the_plain_ids_unchanged(models):
    with pytest.raises(RecipeError) as e:
        supermerger.plan_merge(Recipe(elemental="IN715::0.5", extended_xl=True, **_paths(models, "sd1")))
    assert "extended XL" in str(e.value) and "SD1" in str(e.value)
    with pytest.raises(RecipeError) as e:
        supermerger.plan_merge(Recipe(elemental="IN7150::0.5", extended_xl=True, **_paths(models)))
    assert "Unknown extended XL ID 'IN7150' in elemental entry 1" in str(e.value) and "IN715" in str(e.value)
    with pytest.raises(RecipeError, match="Unknown block ID 'IN715'"):  # without the switch: the 20 blocks
        supermerger.plan_merge(Recipe(elemental="IN715::0.5", **_paths(models)))
    plan = supermerger.plan_merge(Recipe(elemental="IN07:attn2:0.3", **_paths(models)))
    try:
        assert any(t.why.startswith("elemental #1") for t in plan.tasks)
    finally:
        for s in plan.sources.values():
            s.close()


def test_cli_extended_xl_dry_run_counts_the_keys(models, capsys):
    from supermerger.cli import main

    p = _paths(models)
    assert main(["merge", "-a", p["model_a"], "-b", p["model_b"], "--extended-xl", "--elemental", "IN715:attn2:0.5",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    A = load(models[("sdxl", "A")])
    n = sum(1 for k in merged_keys(A) if expected_slot(k) == "IN715" and "attn2" in k)
    assert n > 0 and f"'IN715:attn2:0.5'" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("#1") and "IN715:attn2:0.5" in line)
    assert line.split() == ["#1", "matches", str(n), "keys,", "decides", str(n), "'IN715:attn2:0.5'"], line

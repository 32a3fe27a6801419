"""XYZ plot axis values: every type parses its syntax (ALL, NOT, ranges), applies to a cell as
spec §5.1 says, and a malformed item fails with a message naming the axis and the item."""

from __future__ import annotations

import random

import pytest

from supermerger import arch as archmod
from supermerger.arch.presets import load_presets
from supermerger.hosts import GenParams
from supermerger.merge.recipe import Recipe
from supermerger.xyplot import Axis, XYZError, XYZPlot, axis_type, plan
from supermerger.xyplot.axes import AXIS_TYPES, ParseContext, block_items
from supermerger.xyplot.plan import parse_axes, split_reservations

from helpers import SD1_BLOCKS, XL_BLOCKS

SD1 = archmod.get("sd1")
XL = archmod.get("sdxl")
PARAMS = GenParams(prompt="p", seed=5, steps=2, width=64, height=64)


def parse(type_, text, arch=SD1, recipe=None, where="X"):
    t = axis_type(type_)
    return t.parse(text, ParseContext(arch, load_presets(), recipe or Recipe(), where, rng=random.Random(1)))


def labels(values):
    return [v.label for v in values]


def cells(models, x, y=None, arch_name="sd1", **recipe_kw):
    a, b = models[(arch_name, "A")], models[(arch_name, "B")]
    recipe = Recipe(model_a=str(a), model_b=str(b), **recipe_kw)
    plot = XYZPlot(x=Axis(*x), y=Axis(*y) if y else Axis())
    return plan(plot, recipe, PARAMS, rng=random.Random(3)).cells


def bad(type_, text, *needles, arch=SD1, recipe=None):
    with pytest.raises(XYZError) as e:
        parse(type_, text, arch, recipe)
    msg = str(e.value)
    assert msg.startswith("X axis (")
    for n in needles:
        assert n in msg, msg
    return msg


# -- names ---------------------------------------------------------------------------------------------------
def test_type_names_ids_and_original_labels():
    assert axis_type("pinpoint blocks (alpha or beta must be selected for another axis)").id == "pinpoint blocks"
    assert axis_type("beta (if Triple or Twice is not selected,Twice automatically enable)").id == "beta"
    assert axis_type("Model a").id == "model_A" and axis_type("merge_id").id == "merge ID"
    assert [t.index for t in AXIS_TYPES] == sorted(t.index for t in AXIS_TYPES)
    with pytest.raises(XYZError, match="(?s)'alpah'.*Did you mean 'alpha'"):
        axis_type("alpah")
    assert axis_type("pinpoint element ext").index == 19


# -- numbers, seeds ------------------------------------------------------------------------------------------------
def test_alpha_beta_and_pairs():
    assert [v.data for v in parse("alpha", "0.25, 0.5,\n.75,1e-1")] == [0.25, 0.5, 0.75, 0.1]
    bad("alpha", "0.25,abc,1", "(alpha), item 2 ('abc')", "not a number")
    bad("beta", "0.1,0.2,0,5x", "(beta), item 4 ('5x')")
    assert [v.data for v in parse("alpha and beta", "0,0.5 0.1,0.3 0.4")] == [(0.0, 0.0), (0.5, 0.1), (0.3, 0.4)]
    bad("alpha and beta", "0.5 0.1 0.2", "item 1 ('0.5 0.1 0.2')", "ALPHA BETA")
    bad("alpha and beta", "0.5 x", "item 1")


def test_seed_minus_one_draws_fresh_seeds():
    vals = parse("seed", "1,-1,-1,4294967295")
    assert vals[0].data == 1 and vals[3].data == 2 ** 32 - 1
    assert 0 <= vals[1].data < 2 ** 32 and vals[1].data != vals[2].data
    assert labels(vals)[1] == str(vals[1].data)
    bad("seed", "1,1.5", "(seed), item 2 ('1.5')")
    bad("seed", "-2", "item 1")


def test_alpha_sets_alpha_and_beta_forces_sum_twice(models):
    cs = cells(models, ("alpha", "0.2,0.8"))
    assert [c.recipe.alpha for c in cs] == [0.2, 0.8] and cs[0].recipe.mode == "weight_sum"
    cs = cells(models, ("beta", "0.1,0.3"))
    assert [(c.recipe.beta, c.recipe.mode) for c in cs] == [(0.1, "sum_twice"), (0.3, "sum_twice")]
    cs = cells(models, ("beta", "0.1"), mode="triple_sum")
    assert cs[0].recipe.mode == "triple_sum"
    cs = cells(models, ("alpha and beta", "0.2 0.4"), mode="triple_sum")
    assert (cs[0].recipe.alpha, cs[0].recipe.beta) == (0.2, 0.4)


# -- weights -------------------------------------------------------------------------------------------------------
def test_mbw_lines_presets_and_lengths():
    vals = parse("mbw alpha", "GRAD_V\n" + ",".join(["0.5"] * 26) + "\n")
    assert labels(vals) == ["GRAD_V", ",".join(["0.5"] * 26)]
    assert len(parse("mbw alpha", ",".join(["0"] * 20), arch=XL)) == 1
    assert len(parse("mbw beta", ",".join(["0"] * 26), arch=XL)) == 1  # 26 values are converted for SDXL
    bad("mbw alpha", "GRAD_V\n" + ",".join(["0.5"] * 25), "(mbw alpha), item 2", "25 values")
    bad("mbw alpha", "GRAD_Q", "(mbw alpha), item 1 ('GRAD_Q')", "Unknown MBW preset")
    bad("mbw beta", ",".join(["0.5"] * 25 + ["q"]), "(mbw beta), item 1", "value 26 (OUT11)")
    pairs = parse("mbw alpha and beta", "FLAT_25\nFLAT_75\nALL_A\nALL_B")
    assert [v.data for v in pairs] == [("FLAT_25", "FLAT_75"), ("ALL_A", "ALL_B")]
    assert labels(pairs)[0] == "alpha:(FLAT_25),beta(FLAT_75)"
    with pytest.raises(XYZError, match=r"mbw alpha and beta\): 3 weight lines.*even"):
        parse("mbw alpha and beta", "FLAT_25\nFLAT_75\nALL_A")


def test_mbw_cells_enable_block_weights(models):
    cs = cells(models, ("mbw alpha and beta", "FLAT_25\nFLAT_75"))
    assert (cs[0].recipe.mbw_alpha, cs[0].recipe.mbw_beta, cs[0].recipe.mode) == ("FLAT_25", "FLAT_75", "sum_twice")


def test_pinpoint_blocks_ranges_not_and_own_block_names():
    vals = parse("pinpoint blocks", "IN01,OUT10 OUT11, OUT03-OUT06,OUT07-OUT11,NOT M00 OUT03-OUT06")
    assert [v.data for v in vals][:4] == [("IN01",), ("OUT10", "OUT11"), ("OUT03", "OUT04", "OUT05", "OUT06"),
                                         ("OUT07", "OUT08", "OUT09", "OUT10", "OUT11")]
    assert vals[4].data == tuple(b for b in SD1_BLOCKS if b not in ("M00", "OUT03", "OUT04", "OUT05", "OUT06"))
    assert parse("pinpoint blocks", "OUT06-OUT03")[0].data == ("OUT03", "OUT04", "OUT05", "OUT06")
    # SDXL: its own 20 names; OUT11 does not exist there, M00 is the middle block (no SD1 shift)
    assert parse("pinpoint blocks", "M00,OUT00-OUT08", arch=XL)[1].data == tuple(XL_BLOCKS[11:])
    msg = bad("pinpoint blocks", "IN01,OUT11", "(pinpoint blocks), item 2 ('OUT11')", "'OUT11'", arch=XL)
    assert "SDXL" in msg
    bad("pinpoint blocks", "in01", "item 1 ('in01')", "Unknown block ID")
    bad("pinpoint blocks", "NOT " + " ".join(SD1_BLOCKS), "names no block")


def test_pinpoint_blocks_write_the_other_axis_value_into_the_blocks(models):
    cs = cells(models, ("alpha", "0,1"), ("pinpoint blocks", "IN01,OUT10 OUT11"), mbw_alpha="FLAT_25", alpha=0.9)
    w = [list(map(float, c.recipe.mbw_alpha.split(","))) for c in cs]
    base = [0.0] + [0.25] * 25
    exp = [list(base) for _ in range(4)]
    exp[0][2] = 0.0
    exp[1][2] = 1.0
    exp[2][25] = exp[2][24] = 0.0
    exp[3][25] = exp[3][24] = 1.0
    assert w == exp
    assert all(c.recipe.alpha == 0.9 for c in cs)  # the alpha axis feeds only the pinpointed blocks
    # no MBW list: the recipe's alpha everywhere else; beta axis: the beta weights
    cs = cells(models, ("beta", "1"), ("pinpoint blocks", "M00"), alpha=0.3, beta=0.2, mode="sum_twice")
    wb = list(map(float, cs[0].recipe.mbw_beta.split(",")))
    assert wb[SD1_BLOCKS.index("M00")] == 1.0 and wb.count(0.2) == 25 and cs[0].recipe.mbw_alpha is None
    with pytest.raises(XYZError, match=r"pinpoint blocks\) needs an alpha or beta axis"):
        cells(models, ("pinpoint blocks", "IN01"), ("seed", "1"))


def test_include_exclude_items_not_and_add(models):
    vals = parse("include blocks", "IN04 OUT05 VAE,NOT BASE adjust")
    assert vals[0].data == "IN04 OUT05 VAE"
    assert vals[1].data == " ".join([b for b in SD1_BLOCKS if b != "BASE"] + ["VAE"])
    bad("exclude blocks", "IN04,attn2", "(exclude blocks), item 2 ('attn2')")
    cs = cells(models, ("exclude blocks", "IN04,OUT05-OUT06"), include="IN01")
    assert [(c.recipe.exclude, c.recipe.include) for c in cs] == [("IN04", None), ("OUT05 OUT06", None)]
    cs = cells(models, ("add include", "IN04"), include="IN01 attn2")
    assert (cs[0].recipe.include, cs[0].recipe.exclude) == ("IN01 attn2 IN04", None)
    cs = cells(models, ("add exclude", "VAE"), exclude="BASE")
    assert cs[0].recipe.exclude == "BASE VAE"


# -- elemental -------------------------------------------------------------------------------------------------------
def test_blank_line_items_and_leading_baseline():
    assert block_items("\n\nOUT05::1\n\nOUT05:layers:1\n  \nA,\nB") == [(1, ""), (2, "OUT05::1"),
                                                                        (3, "OUT05:layers:1"), (4, "A,\nB")]
    assert block_items("X\n\nY") == [(1, "X"), (2, "Y")]


def test_elemental_and_add_elemental(models):
    vals = parse("elemental", "\n\nOUT05::1\n\nIN07:attn1:0.5\nOUT03:NOT attn1.to_k:0.5")
    assert labels(vals)[0] == "no elemental" and vals[0].data == ""
    bad("elemental", "OUT05::1\n\nOUT05:attn", "(elemental), item 2 ('OUT05:attn')", "needs exactly 2")
    bad("elemental", "OUT5::1", "item 1", "Unknown block ID 'OUT5'")
    cs = cells(models, ("add elemental", "\n\nOUT05::1"), ("add elemental", "IN01::0"), elemental="BASE::0")
    assert [c.recipe.elemental for c in cs] == ["BASE::0\nIN01::0", "BASE::0\nOUT05::1\nIN01::0"]


def test_pinpoint_element_and_checker(models):
    vals = parse("pinpoint element", "IN07:,IN07:layers\nOUT04:NOT attn2.to_q")
    assert [v.data for v in vals] == ["IN07:", "IN07:layers", "OUT04:NOT attn2.to_q"]
    bad("pinpoint element", "OUT04:attn:0.5", "item 1", "needs exactly 1")
    bad("pinpoint element", "OUT04:attn,OUT12:attn", "item 2 ('OUT12:attn')", "Unknown block ID 'OUT12'")
    cs = cells(models, ("pinpoint element", "OUT04:attn2"), ("alpha", "0.3,1"), alpha=0.5, elemental="IN01::0")
    assert [c.recipe.elemental for c in cs] == ["IN01::0\nOUT04:attn2:0.3", "IN01::0\nOUT04:attn2:1"]
    assert all(c.recipe.alpha == 0.5 for c in cs)
    cs = cells(models, ("effective elemental checker", "OUT05:,OUT05:attn"), ("alpha", "1"))
    assert [c.labels[0] for c in cs] == ["baseline", "OUT05:", "OUT05:attn"]
    assert [c.recipe.elemental for c in cs] == ["", "OUT05::1", "OUT05:attn:1"]
    with pytest.raises(XYZError, match="one alpha value.*has 2"):
        cells(models, ("effective elemental checker", "OUT05:"), ("alpha", "0,1"))
    with pytest.raises(XYZError, match=r"pinpoint element\) needs an alpha axis"):
        cells(models, ("pinpoint element", "OUT05:"), ("beta", "0,1"))


def test_pinpoint_element_ext_writes_extended_ids_and_turns_the_switch_on(models):
    xl = archmod.get("sdxl")
    assert [v.data for v in parse("pinpoint element ext", "IN715:attn2,MID10:,OUT9:", arch=xl)] == \
        ["IN715:attn2", "MID10:", "OUT9:"]
    bad("pinpoint element ext", "IN715:attn2,IN7150:", "item 2 ('IN7150:')", "Unknown extended XL ID 'IN7150'",
        arch=xl)
    bad("pinpoint element ext", "IN715:", "item 1", "SD1.x has none")  # SD1: no extended IDs
    msg = bad("pinpoint element ext", "IN715:", "block names", arch=xl, recipe=Recipe(elemental="IN07::0.2"))
    assert "use extended XL" in msg
    cs = cells(models, ("pinpoint element ext", "IN715:attn2,OUT9:"), ("alpha", "0.25"), arch_name="sdxl")
    assert [c.recipe.elemental for c in cs] == ["IN715:attn2:0.25", "OUT9::0.25"]
    assert all(c.recipe.extended_xl for c in cs)
    from supermerger.xyplot.plan import expand_all

    everything = expand_all(XYZPlot(x=Axis("pinpoint element ext", "ALL")), xl, Recipe()).x.values
    first, second = everything.split("|")
    ids = [item[:-1] for item in (first + "," + second).split(",")]
    assert first.startswith("CLIPL:,CLIPG:,IN00:") and second.startswith("MID00:,MID10:")
    assert len(ids) == 109 and "IN0" not in ids and ids[-1] == "VAE"  # IN0 is listed but never produced
    # the elemental axis checks its text with the recipe's switch
    assert [v.data for v in parse("elemental", "IN715::0.5", arch=xl, recipe=Recipe(extended_xl=True))] == \
        ["IN715::0.5"]
    bad("elemental", "IN715::0.5", "Unknown block ID 'IN715'", arch=xl)


# -- adjust, calcmode, prompts, models ------------------------------------------------------------------------------------
def test_adjust_and_pinpoint_adjust(models):
    assert labels(parse("adjust", "0,0,0,0,0,0,0,0\n1,2,3")) == ["0,0,0,0,0,0,0,0", "1,2,3"]
    bad("adjust", "1,2,x", "(adjust), item 1 ('1,2,x')", "value 3 (OUT2)")
    vals = parse("pinpoint adjust", "IN,cont,COL1,COL3")
    assert labels(vals) == ["IN", "CONT", "COL1(Cyan-Red)", "COL3(Yellow-Blue)"]
    bad("pinpoint adjust", "IN,COL4", "item 2 ('COL4')", "not an Adjust slot")
    cs = cells(models, ("pinpoint adjust", "OUT2,COL2"), ("alpha", "3"), adjust="1,0,0,0,0,0,0,0", alpha=0.4)
    assert [c.recipe.adjust for c in cs] == ["1,0,3,0,0,0,0,0", "1,0,0,0,0,0,3,0"]
    assert cs[0].recipe.alpha == 0.4


def test_calcmode_prompts(models):
    assert labels(parse("calcmode", "normal, cosineA,trainDifference")) == ["normal", "cosineA", "trainDifference"]
    bad("calcmode", "normal,cosineQ", "(calcmode), item 2 ('cosineQ')", "Unknown calcmode")
    assert labels(parse("prompt", "a cat\n\n a dog \n")) == ["a cat", "a dog"]
    assert labels(parse("prompt2", "a cat,\nsitting\n\na dog")) == ["a cat,\nsitting", "a dog"]
    assert labels(parse("prompt3", "one\n\ntwo")) == ["one", "two"]
    cs = cells(models, ("prompt", "x\ny"))
    assert [c.params.prompt for c in cs] == ["x", "y"] and all(c.recipe == cs[0].recipe for c in cs)


def test_models_resolved_and_missing(models, tmp_path):
    a, b = models[("sd1", "A")], models[("sd1", "B")]
    r = Recipe(model_a=str(a), model_b=str(b))
    plot = XYZPlot(x=Axis("model_B", f"{b},{models[('sd1', 'C')]}"))
    cs = plan(plot, r, PARAMS).cells
    assert [c.recipe.model_b for c in cs] == [str(b), str(models[("sd1", "C")])]
    from supermerger.xyplot import model_resolver

    plot = XYZPlot(x=Axis("model_C", f"{a}"), y=Axis("alpha", "1"))
    cs = plan(plot, r.replace(mode="add_difference"), PARAMS).cells
    assert cs[0].recipe.model_c == str(a) and plan(plot, r, PARAMS).constant_models() == [str(a), str(b)]
    plot = XYZPlot(x=Axis("model_B", "sd1_B,nothere"))
    with pytest.raises(XYZError, match=r"X axis \(model_B\), item 2 \('nothere'\).*not found"):
        plan(plot, r, PARAMS, resolve_model=model_resolver(models_dirs=[str(b.parent)]))


def test_random_and_merge_id(models, tmp_path):
    import supermerger

    a, b = models[("sd1", "A")], models[("sd1", "B")]
    r = Recipe(model_a=str(a), model_b=str(b))
    with pytest.raises(XYZError, match="random mode is off"):
        plan(XYZPlot(x=Axis("random", "3")), r, PARAMS)
    dice = r.replace(random={"mode": "R"})
    cs = plan(XYZPlot(x=Axis("random", "3")), dice, PARAMS, rng=random.Random(0)).cells
    seeds = [c.recipe.seed for c in cs]
    assert len(set(seeds)) == 3 and cs[0].labels[0] == f"1: seed {seeds[0]}"
    with pytest.raises(XYZError, match=r"\(random\), item 1 \('x'\)"):
        plan(XYZPlot(x=Axis("random", "x")), dice, PARAMS)
    first = supermerger.merge(Recipe(model_a=str(a), model_b=str(b), alpha=0.2, calcmode="cosineA"))
    second = supermerger.merge(Recipe(model_a=str(b), model_b=str(a), alpha=0.7))
    cs = plan(XYZPlot(x=Axis("merge ID", f"{first.history_id},{second.history_id}")), r, PARAMS).cells
    assert [(c.recipe.alpha, c.recipe.calcmode, c.recipe.model_a) for c in cs] == \
        [(0.2, "cosineA", str(a)), (0.7, "normal", str(b))]
    assert cs[0].labels[0] == f"ID {first.history_id}"
    with pytest.raises(XYZError, match=r"\(merge ID\), item 1 \('last'\): not a history ID"):
        plan(XYZPlot(x=Axis("merge ID", "last")), r, PARAMS)
    with pytest.raises(XYZError, match=r"\(merge ID\), item 2 \('99'\)"):
        plan(XYZPlot(x=Axis("merge ID", f"{first.history_id},99")), r, PARAMS)


# -- axes together -----------------------------------------------------------------------------------------------------
def test_validation_rules(models):
    a, b = models[("sd1", "A")], models[("sd1", "B")]
    r = Recipe(model_a=str(a), model_b=str(b))
    with pytest.raises(XYZError, match="X axis is empty"):
        parse_axes(XYZPlot(x=Axis("alpha", " ")), r)
    with pytest.raises(XYZError, match="X and Y axes are both alpha"):
        parse_axes(XYZPlot(x=Axis("alpha", "1"), y=Axis("alpha", "2")), r)
    parsed = parse_axes(XYZPlot(x=Axis("alpha", "1"), y=Axis("none", "2"), z=Axis("seed", "")), r)
    assert [p.pos for p in parsed] == ["x"]  # empty Y/Z: axis off
    with pytest.raises(XYZError, match=r"Z axis: unknown axis type 'sede'"):
        parse_axes(XYZPlot(x=Axis("alpha", "1"), z=Axis("sede", "1")), r)


def test_all_and_the_bar_split(models):
    a, b = models[("sdxl", "A")], models[("sdxl", "B")]
    r = Recipe(model_a=str(a), model_b=str(b))
    plots = split_reservations(XYZPlot(x=Axis("pinpoint blocks", "ALL"), y=Axis("alpha", "0,1")), XL, r)
    assert [p.x.values for p in plots] == [",".join(XL_BLOCKS[:11]), ",".join(XL_BLOCKS[11:])]
    assert all(p.y.values == "0,1" for p in plots)
    plots = split_reservations(XYZPlot(x=Axis("alpha", "0.1,0.2|0.3"), y=Axis("seed", "1|2,3")))
    assert [(p.x.values, p.y.values) for p in plots] == [("0.1,0.2", "1"), ("0.3", "1"), ("0.1,0.2", "2,3"),
                                                        ("0.3", "2,3")]
    plots = split_reservations(XYZPlot(x=Axis("pinpoint adjust", "all")), SD1, r)
    assert plots[0].x.values == "IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3"
    with pytest.raises(XYZError, match="ALL is not defined"):
        split_reservations(XYZPlot(x=Axis("alpha", "ALL")), SD1, r)
    with pytest.raises(XYZError, match="holds '\\|'"):
        parse_axes(XYZPlot(x=Axis("alpha", "1|2")), r)

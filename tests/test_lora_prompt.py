"""The LoRA tab's plain-data helpers: LoRAs read from a prompt's tags, the spec box's lines, and
the LoRA list's type and family-and-dim filters."""

from __future__ import annotations

import pytest

from supermerger.errors import RecipeError
from supermerger.lora import dims
from supermerger.lora.blocks import LoraSpec, parse_specs
from supermerger.lora.dims import LoraInfo
from supermerger.lora.prompt import spec_items, spec_lines, specs_from_prompt

LIST17 = "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0"


def test_tags_of_every_form():
    prompt = (f"masterpiece, <lora:style:0.8>, a cat <lora:detail:1.2:lbw=OUTD> <LyCO:hada_thing:0.5> "
              f"<lora:split:0.3:0.7> <lora:named:te=0.4:unet=0.9> <lora:only_te:te=0.25> <lora:plain> "
              f"<lora:old:0.6:MIDD> <lora:list:1:lbw={LIST17}> <lora:sched:0.5:lbw=IND:start=3:stop=10> "
              f"<hypernet:ignored:1> <lora: spaced name :-0.5>")
    assert specs_from_prompt(prompt) == [
        LoraSpec("style", 0.8), LoraSpec("detail", 1.2, "OUTD"), LoraSpec("hada_thing", 0.5),
        LoraSpec("split", 0.7),  # <lora:name:te:unet>: the U-Net multiplier
        LoraSpec("named", 0.9), LoraSpec("only_te", 0.25), LoraSpec("plain", 1.0),
        LoraSpec("old", 0.6, "MIDD"),  # a 3rd field that is not a number: block weights, as the original read it
        LoraSpec("list", 1.0, LIST17), LoraSpec("sched", 0.5, "IND"), LoraSpec("spaced name", -0.5)]


def test_spec_lines_round_trip_through_the_engine_parser():
    specs = specs_from_prompt(f"<lora:a:0.8:lbw=OUTD>, <lora:b:-0.25>, <lora:c:1:lbw={LIST17}>")
    text = spec_lines(specs)
    assert text == f"a:0.8:OUTD\nb:-0.25\nc:1:{LIST17}"
    items = spec_items(text + "\n\n  d:0.5, e:1,\n")
    assert items == ["a:0.8:OUTD", "b:-0.25", f"c:1:{LIST17}", "d:0.5, e:1"]
    assert parse_specs(items) == specs + [LoraSpec("d", 0.5), LoraSpec("e", 1.0)]
    assert specs_from_prompt("no tags here") == [] and specs_from_prompt("") == []


@pytest.mark.parametrize("prompt, match", [
    ("a <lora:style:0.8", r"tag at character 3 of the prompt has no closing '>'"),
    ("<lora:a:1 <lora:b:1>", r"tag at character 1 .* no closing '>'"),
    ("x <lora::0.5>", r"'<lora::0.5>' \(character 3 of the prompt\) names no LoRA"),
    ("<lora:a:strong>", r"'<lora:a:strong>' .*: the weight 'strong' is not a number"),
    ("<lora:a:te=x>", r"the weight 'x' is not a number"),
    ("<lora:a:1:unet=big>", r"the unet weight 'big' is not a number"),
    ("<lora:a:1:foo=2>", r"unknown argument 'foo'"),
    ("<lora:a:1:lbw=>", r"lbw= is empty"),
])
def test_malformed_tags_are_named(prompt, match):
    with pytest.raises(RecipeError, match=match):
        specs_from_prompt(prompt)


def _info(name, dim, type_, version):
    return LoraInfo(name, f"/l/{name}.safetensors", dim, None, type_, version)


INFOS = [_info("a", 32, "LoRA", "SD1"), _info("b", 128, "LoRA", "SDXL"), _info("c", 8, "LoCon", "SD1"),
         _info("d", 32, "LoRA", "SDXL"), _info("e", 4, "LoHa", "SD1"), _info("f", None, "unknown", "unknown"),
         _info("g", 16, "LoRA", "SD2"), _info("h", 32, "LoCon", "SD1")]


def test_dim_choices_by_family_then_dim():
    assert dims.dim_choices(INFOS) == ["SD1 4", "SD1 8", "SD1 32", "SD2 16", "SDXL 32", "SDXL 128", "unknown ?"]


@pytest.mark.parametrize("types, dim_labels, expected", [
    (None, None, "abcdefgh"),
    (["LoRA"], None, "abdg"),
    (["LoCon"], None, "ch"),
    (["Others"], None, "ef"),
    (["LoRA", "Others"], ["SD1 32", "unknown ?"], "af"),
    (None, ["SD1 32"], "ah"),
    (["LoCon"], ["SDXL 128"], ""),
])
def test_filters(types, dim_labels, expected):
    assert "".join(i.name for i in dims.filter_infos(INFOS, types, dim_labels)) == expected

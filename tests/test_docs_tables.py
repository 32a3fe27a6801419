"""The element / block tables in elemental_en.md / elemental_ja.md are generated, never hand-edited.

If a test here fails after a change to the block tables or the key inventory, run
``python -m supermerger.arch.tables`` and commit the rewritten Markdown files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supermerger import arch
from supermerger.arch import tables
from supermerger.merge.elemental import parse_elemental, resolve

ROOT = Path(__file__).resolve().parents[1]
DOCS = {"elemental_en.md": "en", "elemental_ja.md": "ja"}


@pytest.mark.parametrize("name", sorted(DOCS))
def test_tables_in_docs_match_the_generator(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert tables.markers_in(text) == ["sd1", "sdxl"], f"{name} must hold the sd1 and sdxl table markers"
    assert tables.update_markdown(text, DOCS[name]) == text, (
        f"the tables in {name} are out of date: run `python -m supermerger.arch.tables`")


def test_check_mode_reports_stale_tables(tmp_path, capsys):
    doc = tmp_path / "elemental_en.md"
    doc.write_text("intro\n<!-- element-table:sd1 -->\nold table\n<!-- /element-table:sd1 -->\nend\n", encoding="utf-8")
    assert tables.main(["--check", str(doc)]) == 1
    assert "old table" in doc.read_text(encoding="utf-8")
    assert tables.main([str(doc)]) == 0
    new = doc.read_text(encoding="utf-8")
    assert "old table" not in new and new.startswith("intro\n") and new.endswith("end\n")
    assert "| `time_embed.0` |" in new
    assert tables.main(["--check", str(doc)]) == 0
    capsys.readouterr()


def test_sd2_has_the_same_elements_as_sd1():
    # The guides say so instead of printing a third table.
    assert tables.element_table("sd2").splitlines()[1:] == tables.element_table("sd1").splitlines()[1:]


@pytest.mark.parametrize("arch_id", ["sd1", "sdxl"])
def test_every_unet_key_is_in_the_table(arch_id):
    keys = tables.unet_keys(arch_id)
    blocks, rows, extra = tables.element_rows(arch_id)
    assert sum(extra["keys"].values()) == len(keys)
    assert all(tables.element_of(k) is not None for k in keys)
    assert all(part != "other" for part, *_ in rows), "a new kind of element needs a part in tables._PARTS"
    a = arch.get(arch_id)
    assert blocks == [b for b in a.blocks if b != "BASE"]


@pytest.mark.parametrize("arch_id", ["sd1", "sdxl"])
def test_table_elements_work_in_elemental_text(arch_id):
    """Each ticked element, typed into elemental text for its block, selects keys of that block."""
    a = arch.get(arch_id)
    by_block: dict[str, list[str]] = {}
    for key in tables.unet_keys(arch_id):
        by_block.setdefault(a.block_of(key), []).append(key)
    _, rows, _ = tables.element_rows(arch_id)
    for _, element, tensors, marks in rows:
        typed = element.replace("*", "0")
        for block in marks:
            entries = parse_elemental(f"{block}:{typed}:0.3", a)
            hits = [k for k in by_block[block] if resolve(entries, k, block) is not None]
            assert hits, f"{block}:{typed} selects nothing"
            for tensor in tensors:
                assert any(k.endswith("." + tensor) for k in hits)


def test_sdxl_uses_its_own_block_names():
    blocks, rows, extra = tables.element_rows("sdxl")
    assert "M00" in blocks and "IN09" not in blocks and blocks[-1] == "OUT08"
    marks = {element: m for _, element, _, m in rows}
    assert set(marks["label_emb.0.0"]) == {"IN00"}
    assert set(marks["out.2"]) == {"OUT08"}
    assert extra["depth"]["M00"] == 10 and extra["depth"]["IN04"] == 2


def _commands(text: str) -> dict[str, str]:
    """The first line of the code block after each <!-- setup-command --> / <!-- test-command --> marker."""
    out = {}
    for marker in ("setup-command", "test-command"):
        lines = text.split(f"<!-- {marker} -->", 1)[1].lstrip("\n").splitlines()
        out[marker] = next(line for line in lines if not line.startswith("```"))
    return out


def test_readme_ja_has_the_same_setup_commands():
    en = (ROOT / "README.md").read_text(encoding="utf-8")
    ja = (ROOT / "README_ja.md").read_text(encoding="utf-8")
    assert _commands(ja) == _commands(en)
    assert "README_ja.md" in en and "elemental_ja.md" in ja

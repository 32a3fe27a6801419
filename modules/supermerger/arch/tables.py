"""Element / block tables for the elemental-merge guides, built from the engine's own data.

Nothing here is typed by hand: the U-Net keys come from the synthetic key inventory
(:func:`supermerger.testing.synthetic.key_shapes`, which has every real key name and layer
count), and each key's block comes from :meth:`Architecture.block_of` -- the very function the
merge uses. So the tables in ``elemental_en.md`` / ``elemental_ja.md`` cannot drift from the
engine without ``tests/test_docs_tables.py`` noticing.

Reading a table:

* an *element* is the part of a key after its block, e.g.
  ``model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight`` in OUT05 is
  the element ``transformer_blocks.*.attn2.to_k`` with the tensor ``weight``; the sub-module
  index (the ``1`` after ``output_blocks.5``) is dropped, and ``transformer_blocks.N`` is shown as
  ``transformer_blocks.*``;
* the row ``transformer_blocks.*`` gives, per block, how many transformer blocks (0, 1, ...)
  it holds -- 1 everywhere in SD1, up to 10 in SDXL;
* keys that are not inside a numbered block (``time_embed``, ``label_emb``, the input convolution
  ``input_blocks.0.0`` and the final ``out.0`` / ``out.2``) keep their full name;
* the last row counts the U-Net keys of each block.

Regenerate the tables in place with ``python -m supermerger.arch.tables`` (``--check`` only
reports whether they are current).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import OrderedDict
from pathlib import Path

from . import get

UNET_PREFIX = "model.diffusion_model."
REPO_ROOT = Path(__file__).resolve().parents[3]
DOC_FILES = {"elemental_en.md": "en", "elemental_ja.md": "ja"}

_IN_BLOCK = re.compile(r"^(?:input_blocks\.\d+|output_blocks\.\d+|middle_block)\.\d+\.")
_TRANSFORMER_INDEX = re.compile(r"transformer_blocks\.(\d+)")
_ATTN_ORDER = re.compile(r"to_(?:q|k|v|out)")
_ATTN_RANK = {"to_q": "to_0", "to_k": "to_1", "to_v": "to_2", "to_out": "to_3"}  # q, k, v, out reads better
_MARKERS = re.compile(r"(<!-- element-table:([\w-]+) -->\n)(.*?)(<!-- /element-table:\2 -->)", re.S)

# Parts of the U-Net, in the order data flows through it; an element's first name decides its part.
_PARTS = (
    ("embed", ("time_embed", "label_emb")),
    ("conv_in", ("input_blocks",)),
    ("resblock", ("in_layers", "emb_layers", "out_layers", "skip_connection")),
    ("transformer", ("norm", "proj_in", "transformer_blocks", "proj_out")),
    ("down", ("op",)),
    ("up", ("conv",)),
    ("out", ("out",)),
)

LABELS = {
    "en": {
        "part": "part", "element": "element", "tensors": "tensors", "count": "(how many)",
        "total": "keys in the block",
        "caption": "{label}: {keys} U-Net keys in {blocks} blocks, {rows} elements.",
        "parts": {"embed": "embedding", "conv_in": "input conv", "resblock": "ResBlock",
                  "transformer": "Transformer", "down": "downsample", "up": "upsample", "out": "output",
                  "other": "other"},
    },
    "ja": {
        "part": "部位", "element": "要素", "tensors": "テンソル", "count": "（個数）",
        "total": "階層内のキー数",
        "caption": "{label}：U-Net のキー {keys} 個、{blocks} 階層、要素 {rows} 種。",
        "parts": {"embed": "埋め込み", "conv_in": "入力 conv", "resblock": "ResBlock",
                  "transformer": "Transformer", "down": "ダウンサンプル", "up": "アップサンプル", "out": "出力",
                  "other": "その他"},
    },
}


def element_of(key: str) -> tuple[str, str] | None:
    """``(element, tensor)`` for a U-Net key, e.g. ``('in_layers.0', 'weight')``; None for other keys."""
    if not key.startswith(UNET_PREFIX):
        return None
    name, _, tensor = key[len(UNET_PREFIX):].rpartition(".")
    m = _IN_BLOCK.match(name + ".")
    element = name[m.end():] if m and m.end() <= len(name) else name
    return _TRANSFORMER_INDEX.sub("transformer_blocks.*", element), tensor


def part_of(element: str) -> str:
    head = element.split(".", 1)[0]
    for part, heads in _PARTS:
        if head in heads:
            return part
    return "other"


def _sort_key(element: str) -> tuple[int, int, str]:
    """Parts in data-flow order; inside a part, by the order of ``_PARTS``' names, then by name."""
    head = element.split(".", 1)[0]
    for i, (_, heads) in enumerate(_PARTS):
        if head in heads:
            return i, heads.index(head), _ATTN_ORDER.sub(lambda m: _ATTN_RANK[m.group(0)], element)
    return len(_PARTS), 0, element


def unet_keys(arch_id: str) -> list[str]:
    """Every U-Net key of a checkpoint of ``arch_id``, in checkpoint order."""
    from ..testing.synthetic import key_shapes

    return [k for k, _ in key_shapes(arch_id, "tiny") if k.startswith(UNET_PREFIX)]


def element_rows(arch_id: str) -> tuple[list[str], list[tuple[str, str, tuple[str, ...], set[str]]], dict]:
    """``(blocks, rows, extra)`` behind :func:`element_table`.

    ``rows`` are ``(part, element, tensors, blocks that have it)``; ``extra`` holds, per block, the
    number of transformer blocks (``"depth"``) and of U-Net keys (``"keys"``).
    """
    arch = get(arch_id)
    # element -> block -> tensor names
    seen: "OrderedDict[str, dict[str, list[str]]]" = OrderedDict()
    depth: dict[str, set[int]] = {}
    n_keys: dict[str, int] = {}
    for key in unet_keys(arch_id):
        block = arch.block_of(key)
        element, tensor = element_of(key)  # type: ignore[misc]
        tensors = seen.setdefault(element, {}).setdefault(block, [])
        if tensor not in tensors:
            tensors.append(tensor)
        for m in _TRANSFORMER_INDEX.finditer(key):
            depth.setdefault(block, set()).add(int(m.group(1)))
        n_keys[block] = n_keys.get(block, 0) + 1
    blocks = [b for b in arch.blocks if b in n_keys]
    # One row per (element, tensor set): if an element ever had different tensors in different
    # blocks it gets one row for each, so a tick never claims a tensor that is not there.
    rows: "OrderedDict[tuple[str, tuple[str, ...]], set[str]]" = OrderedDict()
    for element, per_block in seen.items():
        for block, tensors in per_block.items():
            tensors = sorted(tensors, key=lambda t: (t != "weight", t))  # weight, then bias
            rows.setdefault((element, tuple(tensors)), set()).add(block)
    ordered = sorted(rows.items(), key=lambda kv: _sort_key(kv[0][0]))  # stable for equal keys
    out = [(part_of(el), el, tensors, marks) for (el, tensors), marks in ordered]
    return blocks, out, {"depth": {b: len(v) for b, v in depth.items()}, "keys": n_keys}


def element_table(arch_id: str, lang: str = "en") -> str:
    """The Markdown element / block table of ``arch_id`` ('sd1', 'sd2', 'sdxl'), without a final newline."""
    lab = LABELS[lang]
    arch = get(arch_id)
    blocks, rows, extra = element_rows(arch_id)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = [lab["caption"].format(label=arch.label, keys=sum(extra["keys"].values()), blocks=len(blocks),
                                 rows=len(rows)), ""]
    out.append(line([lab["part"], lab["element"], lab["tensors"]] + blocks))
    out.append(line(["---"] * 3 + [":-:"] * len(blocks)))
    shown_depth = False
    for part, element, tensors, marks in rows:
        if element.startswith("transformer_blocks.") and not shown_depth:
            shown_depth = True
            depth = extra["depth"]
            out.append(line([lab["parts"][part], "`transformer_blocks.*`", lab["count"]]
                            + [str(depth[b]) if b in depth else "" for b in blocks]))
        out.append(line([lab["parts"][part], f"`{element}`", " ".join(tensors)]
                        + ["✓" if b in marks else "" for b in blocks]))
    out.append(line(["", f"*{lab['total']}*", ""] + [str(extra["keys"][b]) for b in blocks]))
    return "\n".join(out)


def update_markdown(text: str, lang: str = "en") -> str:
    """``text`` with every ``<!-- element-table:ARCH -->`` ... ``<!-- /element-table:ARCH -->`` refilled."""

    def fill(m: re.Match) -> str:
        return f"{m.group(1)}\n{element_table(m.group(2), lang)}\n\n{m.group(4)}"

    return _MARKERS.sub(fill, text)


def markers_in(text: str) -> list[str]:
    """The architectures whose table markers ``text`` holds, in order."""
    return [m.group(2) for m in _MARKERS.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m supermerger.arch.tables",
        description="Rewrite the element / block tables between the <!-- element-table:ARCH --> markers "
                    "of the elemental-merge guides.")
    parser.add_argument("files", nargs="*", type=Path,
                        help=f"Markdown files (default: {', '.join(DOC_FILES)} in {REPO_ROOT})")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    parser.add_argument("--print", dest="show", metavar="ARCH", help="print the table of ARCH (sd1, sd2, sdxl) and exit")
    parser.add_argument("--lang", default="en", choices=sorted(LABELS), help="language of --print")
    args = parser.parse_args(argv)
    if args.show:
        print(element_table(args.show, args.lang))
        return 0
    files = args.files or [REPO_ROOT / name for name in DOC_FILES]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        print(f"error: not found: {', '.join(missing)} (give the Markdown files as arguments)", file=sys.stderr)
        return 2
    stale = []
    for path in files:
        lang = "ja" if path.stem.endswith("_ja") else "en"
        text = path.read_text(encoding="utf-8")
        if not markers_in(text):
            print(f"{path}: no <!-- element-table:ARCH --> markers", file=sys.stderr)
            continue
        new = update_markdown(text, lang)
        if new == text:
            print(f"{path}: up to date")
            continue
        stale.append(path)
        if args.check:
            print(f"{path}: out of date")
        else:
            path.write_text(new, encoding="utf-8", newline="\n")
            print(f"{path}: tables rewritten")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

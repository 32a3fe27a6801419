"""The safetensors reader is as strict as the format (issue 19, item 4): tensors' bytes tile the data
section exactly (no overlap, no hole, nothing after the last), shapes and offsets are whole numbers ≥ 0,
the metadata maps strings to strings. Whatever passes our reader loads in the safetensors library, and
every file we write does. Property tests throw random headers and byte flips at the reader: it answers
with a header or with ModelFileError, never anything else.

HYPOTHESIS_PROFILE=long runs 5,000 examples per property (local runs); CI runs 80."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from supermerger.errors import ModelFileError
from supermerger.io.safetensors_format import read_header

settings.register_profile("ci", max_examples=80, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=5_000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def write_raw(path, header: dict, data: bytes) -> str:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def library_opens(path) -> bool:
    try:
        with safe_open(str(path), "pt") as f:
            for k in f.keys():
                f.get_tensor(k)
        return True
    except Exception:  # noqa: BLE001 - any refusal of the library
        return False


@pytest.mark.parametrize("header, data, message", [
    # every tensor pointing at one tensor's bytes: accepted once, merged without a word
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "overlaps tensor 'a'"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, bytes(16), "leaves 4 bytes unused"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "leaves 4 bytes unused"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12), "4 bytes after its last tensor"),
    # [-1, -77]: a byte count that matches the product, once accepted (and written unreadable)
    ({"a": {"dtype": "F32", "shape": [-1, -77], "data_offsets": [0, 308]}}, bytes(308), "whole numbers"),
    ({"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}, bytes(8), "whole numbers"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, bytes(8), "whole numbers"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, bytes(8), "whole numbers"),
    ({"__metadata__": {"n": 3}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
     "map of strings"),
])
def test_what_the_format_forbids_is_refused(tmp_path, header, data, message):
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ModelFileError, match=message):
        read_header(path)
    assert not library_opens(path)  # the safetensors library refuses them too: we are not stricter


def test_what_the_library_writes_is_read(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"b": torch.zeros(3, 2), "a": torch.ones(0), "c": torch.arange(5, dtype=torch.int64)}, str(path),
              metadata={"k": "v"})
    h = read_header(path)
    assert set(h.tensors) == {"a", "b", "c"} and h.metadata == {"k": "v"}


def test_every_file_we_write_loads_in_the_library(models, tmp_path):
    import supermerger
    from supermerger import Recipe

    out = tmp_path / "m.safetensors"
    supermerger.merge(Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]), alpha=0.3),
                      output=out)
    assert library_opens(out) and library_opens(models[("sd1", "A")])
    read_header(out)


# -- properties -----------------------------------------------------------------------------------------
ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F64", "XX"]),
    "shape": st.lists(st.one_of(st.integers(-3, 6), st.floats(-2, 6), st.text(max_size=2)), max_size=3),
    "data_offsets": st.lists(st.integers(-4, 80), min_size=0, max_size=3),
})


@given(entries=st.dictionaries(st.text(min_size=1, max_size=4), ENTRY, max_size=4),
       data=st.binary(max_size=96), meta=st.one_of(st.none(), st.dictionaries(st.text(max_size=3),
                                                                            st.one_of(st.text(max_size=3),
                                                                                      st.integers()), max_size=2)))
def test_random_headers_give_a_header_or_our_error(tmp_path_factory, entries, data, meta):
    header = dict(entries)
    if meta is not None:
        header["__metadata__"] = meta
    path = write_raw(tmp_path_factory.mktemp("h") / "x.safetensors", header, data)
    try:
        read_header(path)
    except ModelFileError as e:
        assert str(e)
        return
    assert library_opens(path), header  # what we accept, the library reads


@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_byte_flips_and_truncation_give_a_header_or_our_error(tmp_path_factory, flips, cut):
    folder = tmp_path_factory.mktemp("f")
    good = folder / "good.safetensors"
    save_file({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(2, dtype=torch.float16)},
              str(good), metadata={"name": "x"})
    raw = bytearray(good.read_bytes())
    for pos, value in flips:
        raw[pos % len(raw)] = value
    if cut is not None:
        raw = raw[:cut % (len(raw) + 1)]
    bad = folder / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    try:
        read_header(bad)
    except ModelFileError:
        return
    assert library_opens(bad)

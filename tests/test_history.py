"""Merge history storage: every field round-trips, damage is reported and skipped, concurrent
writers lose nothing, the original extension's CSV is read, search, weight stats, IDs in PNGs."""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from supermerger import history
from supermerger.history import History, HistoryError, ModelRef, Record
from supermerger.merge.recipe import Recipe


def make_record(name="A x 0.5 + B x 0.5", mode="weight_sum", calcmode="normal", a="modelA", b="modelB",
                sha_a="aa" * 32, sha_b="bb" * 32, weights=None, **kw) -> Record:
    models = {"A": ModelRef(name=a, path=f"/m/{a}.safetensors", sha256=sha_a, size=123),
              "B": ModelRef(name=b, path=f"/m/{b}.safetensors", sha256=sha_b, size=456)}
    recipe = Recipe(model_a=f"/m/{a}.safetensors", model_b=f"/m/{b}.safetensors", mode=mode, calcmode=calcmode)
    return Record(id=0, time="2025-01-02 03:04:05", name=name, mode=mode, calcmode=calcmode, models=models,
                  effective_alpha=tuple(weights) if weights else None, recipe_json=recipe.to_json(indent=None), **kw)


def test_every_field_round_trips(tmp_path):
    hist = History(tmp_path / "mergehistory.csv")
    recipe = Recipe(model_a="/m/a.safetensors", model_b="/m/b b.safetensors", model_c="/m/c.ckpt",
                    mode="sum_twice", calcmode="cosineA", alpha=0.1234567, beta=0.75, gamma=2.5,
                    mbw_alpha="0,1,0.5\n0.25", elemental="OUT03 OUT04:attn2:0.5\nIN05::0.2,\n  NOT M00:norm:1",
                    exclude="IN01 VAE", adjust="1,2,0,0,0,0,0,0", dtype="fp16", prune=True, seed=1234,
                    random={"mode": "R", "targets": ["alpha"]}, output="/out/x.safetensors", hashes={"A": "ab" * 32})
    rec = Record(
        id=0, time="2025-05-06 07:08:09", name='A, "quoted" x (1-alpha) + b\\c', mode="sum_twice", calcmode="cosineA",
        alpha=0.1234567, beta=0.75, gamma=2.5, architecture="sd1", weights_alpha="0,1,0.5\n0.25",
        weights_beta="GRAD_A", effective_alpha=(0.0, 1.0, 1 / 3), effective_beta=(0.5, 0.25, -0.125),
        models={"A": ModelRef("a", "/m/a.safetensors", "ab" * 32, 10),
                "B": ModelRef("b b", "/m/b b.safetensors", "", None),
                "C": ModelRef("c", "", "", None, "0123456789"), "VAE": ModelRef("v", "C:\\vae\\v.pt", "cd" * 32, 7)},
        elemental=recipe.elemental + "\\n literal backslash-n\r\n", include_mode="Exclude", include_exclude="IN01 VAE",
        adjust="1,2,0,0,0,0,0,0", seed=1234, random={"mode": "R", "targets": ["alpha"]},
        save_settings="safetensors, fp16, prune", output="/out/x.safetensors", note="two\nlines, and a tab\there",
        recipe_json=recipe.to_json(indent=None))
    hist.append(rec)
    assert rec.id == 1
    back = History(hist.path).get(1)
    assert back == rec
    assert back.recipe() == Recipe.from_json(recipe.to_json())
    # one physical line per record, a header naming every column, readable by any CSV reader
    lines = hist.path.read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[-1] == b""
    with open(hist.path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(history.COLUMNS) and len(rows[1]) == len(rows[0])
    assert dict(zip(rows[0], rows[1]))["model B"] == "b b"
    assert history.get(-1, hist) == rec


def test_ids_are_sequential_and_negative_ids_count_from_the_end(tmp_path):
    hist = History(tmp_path / "h.csv")
    for i in range(5):
        hist.append(make_record(name=f"merge {i}"))
    assert hist.ids() == [1, 2, 3, 4, 5]
    assert hist.get(-1).name == "merge 4" and hist.get(-2).name == "merge 3" and hist.get(2).name == "merge 1"
    with pytest.raises(HistoryError, match="ID 9 does not exist: the IDs run from 1 to 5"):
        hist.get(9)
    with pytest.raises(HistoryError, match="ID -6 does not exist"):
        hist.get(-6)
    with pytest.raises(HistoryError, match="no merge history yet"):
        History(tmp_path / "empty.csv").get(-1)


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from supermerger.history import History, Record
    path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    hist = History(path)
    Path(path + "." + who).touch()
    while not Path(path + ".go").exists():  # start together
        time.sleep(0.002)
    for i in range(n):
        hist.append(Record(id=0, time="t", name=f"{who}-{i}"))
        time.sleep(0.001)  # a merge happens between two records
""")


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    path = tmp_path / "mergehistory.csv"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), who, "50"]) for who in ("p", "q")]
    deadline = time.monotonic() + 60
    while not all(Path(f"{path}.{who}").exists() for who in "pq") and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(f"{path}.go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    hist = History(path)
    recs = hist.records()
    assert hist.problems() == []
    assert sorted(r.id for r in recs) == list(range(1, 101))
    assert {r.name for r in recs} == {f"{w}-{i}" for w in "pq" for i in range(50)}
    assert hist.search("p-4", per_page=100).total == 11  # p-4, p-40..p-49
    # the index the writers kept matches a fresh scan of the CSV
    hist.index_path.unlink()
    history.store._cache.clear()
    assert History(path).search("p-4", per_page=100).total == 11


def test_truncated_last_line_is_reported_and_skipped(tmp_path):
    hist = History(tmp_path / "mergehistory.csv")
    for i in range(3):
        hist.append(make_record(name=f"merge {i}", elemental="OUT03:attn2:0.5\nIN05::0.2"))
    data = hist.path.read_bytes()
    hist.path.write_bytes(data[:-40])  # a kill in the middle of writing record 3
    history.store._cache.clear()
    fresh = History(hist.path)
    assert [r.id for r in fresh.records()] == [1, 2]
    assert any("after record 2 is incomplete" in p for p in fresh.problems())
    assert fresh.get(-1).id == 2
    # the next merge is recorded on a line of its own, with an ID not used by the cut line
    new = fresh.append(make_record(name="after the crash"))
    assert new.id == 4
    again = History(hist.path)
    assert [r.id for r in again.records()] == [1, 2, 4] and again.get(-1).name == "after the crash"
    assert any("incomplete" in p for p in again.problems())


def test_cut_that_lost_only_the_line_break_does_not_reuse_the_id(tmp_path):
    hist = History(tmp_path / "mergehistory.csv")
    hist.append(make_record(name="one"))
    hist.append(make_record(name="two"))
    hist.path.write_bytes(hist.path.read_bytes()[:-1])
    history.store._cache.clear()
    assert History(hist.path).append(make_record(name="three")).id == 3
    history.store._cache.clear()
    hist.index_path.unlink()
    ids = History(hist.path).ids()
    assert len(ids) == len(set(ids))


def test_malformed_line_is_reported_and_skipped(tmp_path):
    hist = History(tmp_path / "mergehistory.csv")
    for i in range(3):
        hist.append(make_record(name=f"merge {i}"))
    lines = hist.path.read_bytes().split(b"\n")
    lines.insert(2, b'garbage,"not, a record')  # after record 1
    lines.insert(4, lines[3][:30])  # a line cut short in the middle of the file
    hist.path.write_bytes(b"\n".join(lines))
    fresh = History(hist.path)
    assert [r.name for r in fresh.search(per_page=10).records] == ["merge 2", "merge 1", "merge 0"]
    problems = fresh.problems()
    assert len(problems) == 2 and "after record 1" in problems[0] and "after record 2" in problems[1]
    assert fresh.get(3).name == "merge 2"
    assert fresh.append(make_record()).id == 4


def test_index_is_rebuilt_when_the_csv_was_edited(tmp_path):
    hist = History(tmp_path / "mergehistory.csv")
    for name in ("alpha", "beta", "gamma"):
        hist.append(make_record(name=name))
    assert hist.search("beta").total == 1
    # edited in a spreadsheet: record 2 renamed (the byte offsets after it shift)
    hist.path.write_bytes(hist.path.read_bytes().replace(b",beta,", b",a much longer name,"))
    fresh = History(hist.path)
    assert fresh.search("beta").total == 0
    assert fresh.get(3).name == "gamma" and fresh.get(2).name == "a much longer name"


ORIGINAL_CSV = (
    '"ID","time","name","weights alpha","weights beta","model A","model B","model C","alpha","beta","mode",'
    '"use MBW","plus lora","custum name","save setting","use ID"\n'
    '1,2023.10.01 12.00.00,A x 0.7 + B x 0.3,,,{a},{b},,0.3,0.25,Weight sum:A*(1-alpha)+B*alpha,False,,'
    '"[\'safetensors\', \'fp16\']",[],[],normal,-1,"0,0,0,0,0,0,0,0",0.3,Off,[],\n'
    '2,2023.10.01 12.05.00,"A + (B - C) x alpha (0.5,1,1,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0)",'
    '"0.5,1,1,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",,{a},{b},{a},1.0,0.25,'
    'Add difference:A+(B-C)*alpha,True,my merge,"[\'safetensors\']","[\'image\', \'PNG info\']",'
    '"[\'OUT03:attn2:0.5\', \'IN05::0.2\']",cosineA,1234,"1,2,0,0,0,0,0,0",0.3,Exclude,"[\'IN01\', \'OUT05\']",'
    '"[\'attn1\']"\n'
    '3,2023.10.01 12.10.00,old row,,,{a},{b},,0.5,0.5,Weight sum:A*(1-alpha)+B*alpha,False,,,[]\n'
    '4,2023.10.01 12.15.00,weird,,,{a},{b},,0.5,0.5,No such mode,False\n'
    '5,2023.10.01 12.20.00,unknown calcmode,,,{a},{b},,0.5,0.5,Weight sum:x,False,,[],[],[],madeUpMode,-1,,0.3,'
    'Off,[],[]\n'
)


def original_csv(a="1a2b3c4d5e", b="f0e1d2c3b4") -> str:
    return ORIGINAL_CSV.format(a=a, b=b)


def test_original_extension_csv_is_converted_in_place(_isolated_data_dir):
    path = _isolated_data_dir / "mergehistory.csv"
    path.write_text(original_csv(), encoding="utf-8")
    hist = History()
    assert hist.ids() == [1, 2, 3, 5]
    notices = hist.problems()
    assert any("original SuperMerger" in n and "mergehistory.original.csv" in n for n in notices)
    assert any("row 5" in n and "unknown mode" in n for n in notices)  # the CSV row of ID 4
    assert (_isolated_data_dir / "mergehistory.original.csv").read_text("utf-8") == original_csv()

    r1, r2, r3, r5 = (hist.get(i) for i in (1, 2, 3, 5))
    assert r1.models["A"].short == "1a2b3c4d5e" and r1.models["B"].short == "f0e1d2c3b4" and "C" not in r1.models
    assert r1.mode == "weight_sum" and r1.alpha == 0.3 and r1.effective_alpha is None and r1.seed is None
    assert r1.recipe() == Recipe(mode="weight_sum", alpha=0.3, beta=0.25, dtype="fp16")
    assert "models known by short hash only" in r1.note

    rec2 = r2.recipe()
    assert (rec2.mode, rec2.calcmode, rec2.alpha, rec2.seed) == ("add_difference", "cosineA", 1.0, 1234)
    assert rec2.mbw_alpha == "0.5,1,1,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0"
    assert rec2.elemental == "OUT03:attn2:0.5,IN05::0.2" and rec2.exclude == "IN01 OUT05 attn1"
    assert rec2.adjust == "1,2,0,0,0,0,0,0" and rec2.dtype == "keep"
    assert r2.effective_alpha[:2] == (0.5, 1.0) and len(r2.effective_alpha) == 26
    assert r2.models["C"].short == "1a2b3c4d5e"
    assert "custom name 'my merge'" in r2.note and "ID stamped on: image, PNG info" in r2.note
    assert r3.recipe().alpha == 0.5  # an older, shorter row
    assert r5.recipe_json == "" and "madeUpMode" in r5.note
    with pytest.raises(HistoryError, match="no replayable recipe"):
        r5.recipe()
    # the converted file is ours now: new merges continue the IDs, search covers the old rows
    assert hist.append(make_record()).id == 6
    assert History().search("cosinea").total == 1
    header = path.read_text("utf-8-sig").splitlines()[0]
    assert header.startswith("ID,time,name,architecture")


def test_import_original_appends_with_new_ids(tmp_path):
    hist = History(tmp_path / "mergehistory.csv")
    hist.append(make_record(name="ours"))
    src = tmp_path / "old.csv"
    src.write_text(original_csv(), encoding="utf-8")
    records, notes = history.import_original(src, hist)
    assert [r.id for r in records] == [2, 3, 4, 5] and len(notes) == 1
    assert hist.get(3).note.startswith("imported from old.csv (its ID 2)")


def search_history(tmp_path) -> History:
    hist = History(tmp_path / "mergehistory.csv")
    specs = [  # name, mode, calcmode, model A, model B
        ("Anime x 0.5 + Real x 0.5", "weight_sum", "normal", "Anime", "Real"),
        ("Anime + (Photo - Base) x 1", "add_difference", "normal", "Anime", "Photo"),
        ("Dream x 0.7 + Real x 0.3", "weight_sum", "cosineA", "Dream", "Real"),
        ("Pastel x 0.5 + Photo x 0.5", "weight_sum", "normal", "Pastel", "Photo"),
        ("anime x 0.2 + Pastel x 0.8", "weight_sum", "normal", "anime", "Pastel"),
    ]
    for i, (name, mode, calc, a, b) in enumerate(specs):
        hist.append(make_record(name=name, mode=mode, calcmode=calc, a=a, b=b, sha_a=f"{i:x}a" * 32,
                                sha_b=f"{i:x}b" * 32))
    return hist


def test_search_words_or_and_case_insensitive(tmp_path):
    hist = search_history(tmp_path)
    ids = lambda page: [r.id for r in page.records]  # noqa: E731
    assert ids(hist.search("ANIME")) == [5, 2, 1]  # newest first, any case
    assert ids(hist.search("dream pastel")) == [5, 4, 3]  # or is the default
    assert ids(hist.search("dream pastel", how="or")) == [5, 4, 3]
    assert ids(hist.search("anime pastel", how="and")) == [5]
    assert ids(hist.search("anime 0.8", how="and")) == [5]
    assert hist.search("nothing-like-this").total == 0
    assert ids(hist.search("cosinea")) == [3]
    assert ids(hist.search("")) == [5, 4, 3, 2, 1]
    with pytest.raises(HistoryError):
        hist.search("x", how="xor")


def test_search_filters_by_model_mode_calcmode(tmp_path):
    hist = search_history(tmp_path)
    ids = lambda page: [r.id for r in page.records]  # noqa: E731
    assert ids(hist.search(model="photo")) == [4, 2]
    assert ids(hist.search(model="3a3a3a")) == [4]  # a hash prefix
    assert ids(hist.search(model="3a" * 32)) == [4]  # a full sha256
    assert ids(hist.search(model="a3a3")) == []  # hashes match from the start only
    assert ids(hist.search(mode="Add difference")) == [2]
    assert ids(hist.search(mode="weight_sum", model="real")) == [3, 1]
    assert ids(hist.search("real", mode="weight_sum", calcmode="cosinea")) == [3]
    assert ids(hist.search("anime", model="pastel")) == [5]


def test_search_pages_cover_all_records(tmp_path):
    hist = search_history(tmp_path)
    pages = [hist.search(per_page=2, page=n) for n in (1, 2, 3, 4)]
    assert [[r.id for r in p.records] for p in pages] == [[5, 4], [3, 2], [1], []]
    assert pages[0].total == 5 and pages[0].pages == 3
    # searches see every record, not only those of a page already shown
    assert [r.id for r in hist.search("anime", per_page=1, page=3).records] == [1]
    assert [r.id for r in history.search("anime", history=hist, per_page=1).records] == [5]


def test_weight_stats(tmp_path):
    hist = History(tmp_path / "mergehistory.csv")
    hist.append(make_record(weights=[0.0, 1.0, 0.5], architecture="sd1"))
    hist.append(make_record(weights=[1.0, 1.0, 0.25]))
    hist.append(make_record(weights=[0.5] * 26))
    hist.append(make_record())
    stats = history.weight_stats([1, 2], hist)
    assert stats.mean == [0.5, 1.0, 0.375] and stats.std == [0.5, 0.0, 0.125]
    assert stats.blocks == ("0", "1", "2")
    assert "0.375" in stats.text() and "3σ" in stats.text()
    with pytest.raises(HistoryError, match="differ in length"):
        history.weight_stats("1,3", hist)
    with pytest.raises(HistoryError, match="record 4 has no alpha block weights"):
        history.weight_stats("3,-1", hist)
    assert history.weight_stats("3", hist).blocks[:2] == ("BASE", "IN00")


def png_with_text(path: Path, chunks: list[tuple[bytes, bytes]]) -> None:
    """A 1x1 grey PNG written with the standard library, with the given extra chunks."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    body = b"".join(chunk(k, d) for k, d in chunks)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
                     + chunk(b"IEND", b""))


def test_merge_id_round_trips_through_png_text(tmp_path):
    model = history.model_field_with_id("A x 0.5 + B x 0.5, extra", 42)
    assert model == "A x 0.5 + B x 0.5  extra ID 42"
    infotext = f"a cat, ID card\nSteps: 20, Sampler: Euler, Model: {model}, Seed: 7"
    p1, p2, p3, p4 = (tmp_path / f"{n}.png" for n in range(4))
    png_with_text(p1, [(b"tEXt", b"parameters\0" + infotext.encode("latin-1"))])
    itxt = "p\u00e9\u732b\nModel: " + history.model_field_with_id("\u732b", 7)
    png_with_text(p2, [(b"iTXt", b"parameters\0\1\0\0\0" + zlib.compress(itxt.encode("utf-8")))])
    png_with_text(p3, [(b"tEXt", b"parameters\0Steps: 20, Model: plain model")])
    png_with_text(p4, [(b"zTXt", b"parameters\0\0" + zlib.compress(infotext.encode("latin-1")))])
    assert history.png_text_chunks(p1)["parameters"] == infotext
    assert history.ids_from_png(p1) == [42]
    assert history.ids_from_png([p1, p2, p3, p4, tmp_path / "missing.png"]) == [42, 7]
    assert history.ids_from_png_text(["x ID 3, y", "no id here", "Model: m ID 3", "Model: n ID 12"]) == [3, 12]
    assert history.ids_from_png_text("Model: a ID 5, Steps: 1, prompt with ID badge") == [5]


def test_lock_file_fallback_where_no_os_lock_exists(tmp_path, monkeypatch):
    import os

    from supermerger.history import lock

    monkeypatch.setattr(lock, "fcntl", None)
    monkeypatch.setattr(lock, "msvcrt", None)
    path = tmp_path / "h.csv.lock"
    marker = tmp_path / "h.csv.lock.held"
    with lock.locked(path):
        assert marker.exists()
        with pytest.raises(lock.LockTimeout, match="remove it if no merge is running"):
            with lock._exclusive_file(path, timeout=0.05):
                pass
    assert not marker.exists()
    marker.touch()  # left behind by a killed process
    old = marker.stat().st_mtime - lock.STALE_SECONDS - 1
    os.utime(marker, (old, old))
    hist = History(tmp_path / "h.csv")
    assert hist.append(make_record()).id == 1 and not marker.exists()

"""How fast the merge history answers a search over 100,000 records (target: under 0.5 s).

    python bench/history_bench.py                 # 100,000 records in a temporary folder
    python bench/history_bench.py --records 20000 --keep /tmp/hist

Builds a history of realistic records (model names from a pool of 300, every mode and several
calcmodes, a third with 26 block weights, some elemental text, full recipe JSON) with one
``append_many`` call, then times searches three ways:
  cold    a new process's first search: the index file is read (the CSV is not parsed)
  warm    later searches in the same process (the index is held in memory)
  rebuild the index deleted: the CSV is parsed once to rebuild it (a one-off after hand edits)
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modules"))

from supermerger.history import History, ModelRef, Record  # noqa: E402
from supermerger.history import store  # noqa: E402
from supermerger.merge.recipe import Recipe  # noqa: E402

MODES = ("weight_sum", "add_difference", "triple_sum", "sum_twice")
CALCMODES = ("normal", "normal", "normal", "cosineA", "cosineB", "trainDifference", "smoothAdd", "tensor")
WORDS = ("anime", "real", "photo", "dream", "shaper", "counterfeit", "pastel", "mix", "orange", "abyss",
         "chilled", "majic", "deliberate", "epic", "juggernaut", "pony", "animagine", "illustrious", "noob", "flat")

QUERIES = [
    ("one word", dict(query="pastel")),
    ("one word, no hit", dict(query="zzzznotthere")),
    ("3 words and", dict(query="anime mix 0.35", how="and")),
    ("3 words or", dict(query="orange abyss epic", how="or")),
    ("model filter", dict(model="juggernaut")),
    ("hash prefix", dict()),  # a real hash prefix is set at run time
    ("mode + words", dict(query="real", mode="Add difference")),
    ("list page 1", dict()),
    ("list page 2000", dict(page=2000)),
]


def make_records(n: int, seed: int = 1) -> list[Record]:
    rng = random.Random(seed)
    pool = []
    for i in range(300):
        name = f"{rng.choice(WORDS)}{rng.choice(WORDS).capitalize()}_v{rng.randint(1, 9)}{i}"
        sha = "%064x" % rng.getrandbits(256)
        pool.append(ModelRef(name=name, path=f"/models/Stable-diffusion/{name}.safetensors", sha256=sha,
                             size=rng.choice((2132625894, 4265380512, 6938078334))))
    out = []
    for i in range(1, n + 1):
        mode = rng.choice(MODES)
        a, b, c = rng.sample(pool, 3)
        alpha, beta = round(rng.random(), 3), round(rng.random() * 0.5, 3)
        mbw = [round(rng.random(), 3) for _ in range(26)] if rng.random() < 0.33 else None
        elemental = "OUT03 OUT04:attn2:0.5\nIN05::0.2" if rng.random() < 0.1 else ""
        models = {"A": a, "B": b} if mode == "weight_sum" else {"A": a, "B": b, "C": c}
        weights = ",".join(map(str, mbw)) if mbw else ""
        name = (f"{a.name} x (1-alpha) + {b.name} x alpha ({weights})" if mbw else
                f"{a.name} x {round(1 - alpha, 3)} + {b.name} x {alpha}")
        recipe = Recipe(model_a=a.path, model_b=b.path, model_c=c.path if "C" in models else None, mode=mode,
                        calcmode=rng.choice(CALCMODES), alpha=alpha, beta=beta, mbw_alpha=weights or None,
                        elemental=elemental, output=f"/models/Stable-diffusion/merged_{i}.safetensors",
                        hashes={k: r.sha256 for k, r in models.items()})
        out.append(Record(
            id=0, time=f"2025-{1 + i % 12:02d}-{1 + i % 28:02d} 12:{i % 60:02d}:00", name=name, mode=mode,
            calcmode=recipe.calcmode, alpha=alpha, beta=beta, architecture="sd1", weights_alpha=weights,
            effective_alpha=tuple(mbw) if mbw else None, models=models, elemental=elemental,
            save_settings="safetensors, fp16", output=recipe.output, recipe_json=recipe.to_json(indent=None)))
    return out


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return (statistics.median(times) if repeat > 1 else times[0]), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--keep", metavar="DIR", help="build the history in DIR and keep it")
    args = ap.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="smhist-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = folder / "mergehistory.csv"
        for p in (path, path.with_suffix(".index")):
            p.unlink(missing_ok=True)
        t = time.perf_counter()
        records = make_records(args.records)
        made = time.perf_counter() - t
        t = time.perf_counter()
        History(path).append_many(records)
        written = time.perf_counter() - t
        csv_mb = path.stat().st_size / 2**20
        idx_mb = path.with_suffix(".index").stat().st_size / 2**20
        print(f"{args.records} records: made in {made:.1f} s, written in {written:.1f} s "
              f"(CSV {csv_mb:.0f} MiB, index {idx_mb:.0f} MiB)")
        prefix = records[len(records) // 2].models["A"].sha256[:10]
        queries = [(label, dict(q, model=prefix) if label == "hash prefix" else q)
                   for label, q in QUERIES]

        print(f"\n{'search':<20} {'hits':>7} {'cold s':>8} {'warm s':>8}")
        worst = 0.0
        for label, q in queries:
            store._cache.clear()  # as a new process: the index file is read again
            cold, page = timed(lambda: History(path).search(**q))
            warm, _ = timed(lambda: History(path).search(**q), repeat=5)
            worst = max(worst, cold)
            print(f"{label:<20} {page.total:>7} {cold:>8.3f} {warm:>8.3f}")
        store._cache.clear()
        append, _ = timed(lambda: History(path).append(make_records(1, seed=7)[0]))
        print(f"\nappend one record (cold, includes reading the index): {append:.3f} s")
        appended, _ = timed(lambda: History(path).append(make_records(1, seed=8)[0]), repeat=5)
        print(f"append one record (warm): {appended:.3f} s")
        path.with_suffix(".index").unlink()
        store._cache.clear()
        rebuild, _ = timed(lambda: History(path).search("pastel"))
        print(f"rebuild the index from the CSV (one-off, e.g. after a hand edit): {rebuild:.1f} s")
        print(f"\nslowest cold search: {worst:.3f} s -> {'PASS' if worst < 0.5 else 'FAIL'} (target < 0.5 s)")
        return 0 if worst < 0.5 else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

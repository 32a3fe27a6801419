"""SuperMerger's speed and memory benchmark: one command, figures against a floor measured in the same run.

    python bench/run.py                      # every case (about 30 minutes; SDXL needs ~21 GB of disk)
    python bench/run.py --cases sd1-ws,interactive --pairs 3
    python bench/run.py --cases calcmodes --calcmodes "ties,smoothAdd MT" --calcmode-timeout 900

Synthetic full-size checkpoints (real key names and shapes, fp16) are generated into
bench/data/ on first use. Every merge is a child process, timed in alternating pairs with its
yardstick (see pairs.py). Before each run, untimed: the output is deleted (or, with
``--output replace``, rewritten by dd so that every run replaces a file written the same way),
dirty pages are flushed (``sync``) and the inputs are read once, so both members of a pair start
from the same state. (Without this the floor ran 1.9x slower right after one of our runs than
after another floor: whoever runs next inherits the previous writer's page-cache state.) Cases:

  sd1-ws         SD1.5 pair, weight sum α=0.5, fp16 output, against `cat B; dd A → out`;
                 every file case also times the fixed cost of a merge process (start Python,
                 import torch) against the same floor, and prints ours without it
  sd1-ad         SD1.5 add difference A + (B − C)·1, against `cat B C; dd A → out`
  sd1-ws-cold    sd1-ws with an empty hash cache each run (the sha256 of both inputs is computed)
  sdxl-ws        SDXL pair, weight sum, against its floor
  interactive    in RAM: re-merge into a live state dict, against one read-both-write-one pass
  calcmodes      every calcmode in the registry, file to file, against weight sum in the same pair

Results are printed and saved to bench/out/results.json; child output goes to bench/out/bench.log.
The peers (sd-mecha, sd-meh) run beside us on the same files in bench/peers.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pairs import Variant, alternate, load_average, med, run_child, span  # noqa: E402

DATA = HERE / "data"
OUT = HERE / "out"
SEEDS = {"A": 1, "B": 2, "C": 3}
ALL_CASES = ("sd1-ws", "sd1-ad", "sd1-ws-cold", "sdxl-ws", "interactive", "calcmodes")
PY = sys.executable


def say(msg: str = "") -> None:
    print(msg, flush=True)


# -- data ----------------------------------------------------------------------------------------

def checkpoint(arch: str, label: str) -> Path:
    """bench/data/<arch>_<label>.safetensors, generated if absent (after checking the free space)."""
    path = DATA / f"{arch}_{label}.safetensors"
    if path.exists():
        return path
    from supermerger.testing.synthetic import numel

    DATA.mkdir(parents=True, exist_ok=True)
    need = numel(arch, "full") * 2
    free = shutil.disk_usage(DATA).free
    if free < need * 1.2 + 2 * need:  # the file, a margin, and room for the outputs
        sys.exit(f"Not enough disk space in {DATA} for {path.name}: need about {need * 3.2 / 1e9:.0f} GB free "
                 f"(the file and outputs), {free / 1e9:.0f} GB free.")
    say(f"generating {path.name} ({need / 1e9:.1f} GB; SDXL takes a minute or two) ...")
    t = time.perf_counter()
    subprocess.run([PY, "-c", "import sys; from supermerger.testing.synthetic import write_checkpoint; "
                    "write_checkpoint(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]), scale='full')",
                    str(path), arch, str(SEEDS[label])], check=True)
    say(f"  done in {time.perf_counter() - t:.0f} s")
    return path


def prepare(*inputs: Path, out: Path, output: str, fresh_home: Path | None = None):
    """Untimed, before each run: put the output in the same state for every run (absent, or an
    existing file written by dd), flush dirty pages, and read the inputs once (same cache state)."""
    def run() -> None:
        # Leave the same memory state whoever ran last: writing a file of the output's size and
        # deleting it hands the next writer pages it can reuse at once. Without this, dd ran 4.1 s
        # after one of our runs and 0.9 s after another dd, all of it kernel time copying into
        # page-cache pages (this VM returns free memory to its host; see io/writer.py).
        scratch = out.with_name(".condition.tmp")
        subprocess.run(["dd", f"if={inputs[0]}", f"of={scratch}", "bs=16M", "status=none"], check=True)
        scratch.unlink()
        if output == "fresh":
            out.unlink(missing_ok=True)
        else:  # "replace": a previous output, written the same way whoever ran last
            subprocess.run(["dd", f"if={inputs[0]}", f"of={out}", "bs=16M", "status=none"], check=True)
        os.sync()
        for p in inputs:
            with open(p, "rb", buffering=0) as f:
                buf = bytearray(16 * 2**20)
                while f.readinto(buf):
                    pass
        if fresh_home is not None:
            shutil.rmtree(fresh_home, ignore_errors=True)
            fresh_home.mkdir(parents=True)
    return run


# -- cases ---------------------------------------------------------------------------------------

def ours(mode: str, inputs: list[Path], out: Path, home: Path, calcmode: str = "normal", timeout=None,
         fresh_home: bool = False, output: str = "fresh") -> Variant:
    cmd = [PY, "-m", "supermerger", "merge", "-a", str(inputs[0]), "-b", str(inputs[1])]
    if len(inputs) > 2:
        cmd += ["-c", str(inputs[2])]
    alpha = "1" if mode == "add_difference" else "0.5"
    cmd += ["--mode", mode, "--calcmode", calcmode, "--alpha", alpha, "--dtype", "fp16", "-o", str(out), "--overwrite"]
    env = dict(os.environ, SUPERMERGER_HOME=str(home))
    name = "supermerger" if calcmode == "normal" else calcmode
    return Variant(name, cmd, env, prepare(*inputs, out=out, output=output,
                                           fresh_home=home if fresh_home else None), timeout)


def startup() -> Variant:
    """Start Python, import torch and our CLI, exit: the fixed cost of any merge process."""
    return Variant("startup", [PY, "-c", "import torch, supermerger.cli"], None, None)


def floor(inputs: list[Path], out: Path, output: str = "fresh") -> Variant:
    others = " ".join(f"'{p}'" for p in inputs[1:])
    sh = f"cat {others} > /dev/null; dd if='{inputs[0]}' of='{out}' bs=16M status=none"
    return Variant("floor", ["sh", "-c", sh], None, prepare(*inputs, out=out, output=output))


def file_case(name: str, arch: str, mode: str, labels: str, args, results: dict, cold: bool = False) -> None:
    inputs = [checkpoint(arch, label) for label in labels]
    out = DATA / "out" / "merged.safetensors"
    out.parent.mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="smhome-"))
    say(f"\n== {name}: {mode}, {arch} ({', '.join(p.name for p in inputs)}), load {load_average()}")
    a = ours(mode, inputs, out, home, fresh_home=cold, output=args.output)
    b = floor(inputs, out, args.output)
    with open(OUT / "bench.log", "a") as log:
        ratios = alternate(a, b, args.pairs, warmup=1, log=log, say=say)
        remove_partials(out)
        row = summarise(a, b, ratios)
        # What a process pays before it can merge at all: the interpreter and `import torch`
        # (which `cat` and `dd` do not pay), against the same floor, so that the merge's own
        # share can be read off: (ours - startup) / floor.
        st = startup()
        b3 = floor(inputs, out, args.output)
        st_ratios = alternate(st, b3, min(args.pairs, 3), warmup=1, log=log, say=say)
        row["startup_s"] = [r.wall for r in st.runs]
        row["startup_floor_s"] = [r.wall for r in b3.runs]
        row["startup_ratio"] = st_ratios
    row["load_end"] = load_average()
    results[name] = row
    shutil.rmtree(home, ignore_errors=True)
    report_row(name, row)


def summarise(a: Variant, b: Variant, ratios: list[float]) -> dict:
    return {
        "wall_s": [r.wall for r in a.runs], "floor_s": [r.wall for r in b.runs], "ratio": ratios,
        "user_s": med([r.user for r in a.runs]), "sys_s": med([r.sys for r in a.runs]),
        "peak_rss": max(r.maxrss for r in a.runs), "floor_peak_rss": max(r.maxrss for r in b.runs),
        "load_start": None,
    }


def report_row(name: str, row: dict) -> None:
    gib = 2**30
    say(f"  -> {name}: ours {span(row['wall_s'])} s, floor {span(row['floor_s'])} s, "
        f"ratio {span(row['ratio'])}, peak RSS {row['peak_rss'] / gib:.2f} GiB, "
        f"CPU {row['user_s']:.2f} user + {row['sys_s']:.2f} sys")
    if row.get("startup_s"):
        own = med(row["wall_s"]) - med(row["startup_s"])
        say(f"     startup (python + import torch) {span(row['startup_s'])} s = {span(row['startup_ratio'])} "
            f"of the floor; ours without it {own:.2f} s = {own / med(row['floor_s']):.2f}x the floor")


def remove_partials(out: Path) -> None:
    """Delete the temp files of runs killed at the time limit (a killed writer cannot; 2 GB each)."""
    for part in out.parent.glob(f".{out.name}.*.part"):
        part.unlink(missing_ok=True)


def interactive_case(args, results: dict) -> None:
    a, b = checkpoint("sd1", "A"), checkpoint("sd1", "B")
    say(f"\n== interactive: SD1.5 in RAM, {args.merges} re-merges into a live state dict, load {load_average()}")
    t = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="smhome-"))  # each re-merge is recorded, as in the UI, but not in yours
    p = subprocess.run([PY, str(HERE / "interactive.py"), str(a), str(b), "--merges", str(args.merges)],
                       capture_output=True, text=True, env=dict(os.environ, SUPERMERGER_HOME=str(home)))
    shutil.rmtree(home, ignore_errors=True)
    if p.returncode != 0:
        say(p.stdout + p.stderr)
        results["interactive"] = {"error": p.stderr[-2000:]}
        return
    row = json.loads(p.stdout.strip().splitlines()[-1])
    row["load_end"] = load_average()
    results["interactive"] = row
    mib = 2**20
    say(f"  -> re-merge {row['merge_s']:.3f} s (min {row['merge_min_s']:.3f}, max {row['merge_max_s']:.3f}), "
        f"floor pass {row['floor_s']:.3f} s (default threads {row['floor_default_threads_s']:.3f} s), "
        f"ratio {row['ratio']:.2f} ({row['ratio_min']:.2f}–{row['ratio_max']:.2f}); "
        f"against the default-thread pass {row['ratio_vs_default_threads']:.2f}")
    say(f"     RSS after merge 1 {row['rss_first'] / mib:.0f} MiB, after {row['merges']} "
        f"{row['rss_last'] / mib:.0f} MiB, growth {row['rss_growth'] / mib:+.1f} MiB "
        f"(inputs + live model {3 * row['model_bytes'] / mib:.0f} MiB); "
        f"mismatched values vs lerp: {row['mismatched_values']}  ({time.perf_counter() - t:.0f} s)")


def calcmode_case(args, results: dict) -> None:
    from supermerger.merge.calcmodes import CALCMODES

    inputs = [checkpoint("sd1", label) for label in "ABC"]
    out = DATA / "out" / "merged.safetensors"
    out.parent.mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="smhome-"))
    say(f"\n== calcmodes: SD1.5, each against weight sum (normal) in the same pair, load {load_average()}")
    ws = ours("weight_sum", inputs[:2], out, home)
    rows = {}
    with open(OUT / "bench.log", "a") as log:
        run_child(ws.cmd, ws.env, log)  # warms the hash cache
        for cid, cm in CALCMODES.items():
            if args.calcmodes and cid not in args.calcmodes:
                continue
            mode = "weight_sum" if "weight_sum" in cm.modes else (cm.force_mode or cm.modes[0])
            mode_inputs = inputs if mode != "weight_sum" else inputs[:2]
            v = ours(mode, mode_inputs, out, home, calcmode=cid, timeout=args.calcmode_timeout)
            ws.runs.clear()
            ratios = alternate(v, ws, args.calcmode_pairs, warmup=0, log=log, say=lambda m: None)
            remove_partials(out)
            timed_out = any(r.rc != 0 for r in v.runs)
            rows[cid] = {"mode": mode, "wall_s": [r.wall for r in v.runs], "ws_s": [r.wall for r in ws.runs],
                         "ratio": ratios, "peak_rss": max(r.maxrss for r in v.runs), "failed": timed_out}
            flag = "  (killed at the time limit or failed)" if timed_out else ""
            say(f"  {cid:<16} {mode:<15} {med(rows[cid]['wall_s']):7.2f} s  x{med(ratios):5.2f} of weight sum "
                f"({med(rows[cid]['ws_s']):.2f} s)  peak {rows[cid]['peak_rss'] / 2**30:.2f} GiB{flag}")
    results["calcmodes"] = rows
    shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated, from: " + ", ".join(ALL_CASES))
    ap.add_argument("--pairs", type=int, default=5, help="measured pairs per file case (default 5)")
    ap.add_argument("--merges", type=int, default=50, help="re-merges in the interactive case (default 50)")
    ap.add_argument("--calcmode-pairs", type=int, default=1)
    ap.add_argument("--calcmodes", type=lambda v: [x.strip() for x in v.split(",") if x.strip()], default=[],
                    help="comma-separated calcmode IDs to run in the calcmodes case (default: all)")
    ap.add_argument("--calcmode-timeout", type=float, default=600.0, help="seconds before a calcmode run is killed")
    ap.add_argument("--output", choices=("fresh", "replace"), default="fresh",
                    help="before each run the output is deleted (fresh, default) or rewritten by dd, so that "
                    "every run replaces an existing file (replace)")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in ALL_CASES]
    if bad:
        sys.exit(f"unknown case(s) {bad}; choose from {ALL_CASES}")
    OUT.mkdir(exist_ok=True)
    # This process stays small (no torch): a child's peak RSS as the kernel reports it is at least
    # the RSS of the process it was forked from.
    from importlib.metadata import version

    say(f"SuperMerger benchmark — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {version('torch')}, "
        f"load {load_average()}")
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
                     "load_start": load_average()}
    for case in cases:
        if case == "sd1-ws":
            file_case(case, "sd1", "weight_sum", "AB", args, results)
        elif case == "sd1-ad":
            file_case(case, "sd1", "add_difference", "ABC", args, results)
        elif case == "sd1-ws-cold":
            file_case(case, "sd1", "weight_sum", "AB", args, results, cold=True)
        elif case == "sdxl-ws":
            file_case(case, "sdxl", "weight_sum", "AB", args, results)
        elif case == "interactive":
            interactive_case(args, results)
        elif case == "calcmodes":
            calcmode_case(args, results)
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    results["load_end"] = load_average()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    say(f"\nload at the end {load_average()}; results in {OUT / 'results.json'}")


if __name__ == "__main__":
    main()

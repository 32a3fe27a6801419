"""SuperMerger beside its peers, on the same files, in the same run: one table of × floor and peak RSS.

    python bench/peers.py                              # SD1.5 and SDXL, weight sum and add difference
    python bench/peers.py --cases sd1-ws,sd1-ad --rounds 3
    python bench/peers.py --peers sd-mecha             # only the peers named

Each peer gets a venv of its own under bench/.peers/<name>/ (built on first use from PyPI, pinned
versions, torch 2.13.0 CPU) and is driven by a short script beside this one (peer_mecha.py,
peer_meh.py) the way its documentation shows. The files are bench/run.py's synthetic full-size
checkpoints (real key names and shapes, fp16; generated on first use).

A round runs every tool once on the same inputs, in an order that rotates from round to round,
each preceded by the same untimed preparation as bench/run.py (output removed, dirty pages flushed,
inputs read once); every tool's wall time is divided by the floor's (read the other inputs, copy A
to the output) of the same round. The figure to quote is that ratio: absolute seconds drift by
±30 % with whatever else shares the machine. Peak RSS is the kernel's for the child process tree.

A peer that would not fit in memory is not started: sd-meh loads every input whole (measured at
about 1.7 × the inputs' size), so its SDXL add difference would need more than this machine has.
The table says so instead of a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as ourbench  # noqa: E402  (bench/run.py: the synthetic files, the floor, our command line)
from pairs import Variant, load_average, med, run_child  # noqa: E402

PEERS_DIR = HERE / ".peers"
TORCH = "torch==2.13.0"
PEERS = {
    # name: (pip requirements, driver script, peak RSS as a multiple of the inputs' total size or None)
    "sd-mecha": (["sd-mecha==1.1.8"], "peer_mecha.py", None),
    # sd-meh 0.9.5 declares no dependencies; these are the ones it imports
    "sd-meh": (["sd-meh==0.9.5", "tensordict", "cloudpickle", "pyvers", "safetensors", "tqdm", "numpy", "scipy"],
               "peer_meh.py", 1.7),
}
CASES = {  # name: (architecture, mode, input labels)
    "sd1-ws": ("sd1", "weight_sum", "AB"),
    "sd1-ad": ("sd1", "add_difference", "ABC"),
    "sdxl-ws": ("sdxl", "weight_sum", "AB"),
    "sdxl-ad": ("sdxl", "add_difference", "ABC"),
}
GIB = 2**30


def say(msg: str = "") -> None:
    print(msg, flush=True)


def peer_python(name: str) -> Path:
    """The Python of ``name``'s own venv, built (once) with its pinned requirements."""
    reqs, _, _ = PEERS[name]
    venv = PEERS_DIR / name
    py = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    wanted = "\n".join([TORCH] + reqs) + "\n"
    if py.exists() and stamp.exists() and stamp.read_text() == wanted:
        return py
    say(f"building {name}'s venv in {venv} ({', '.join(reqs)}) ...")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", TORCH, *reqs], check=True)
    stamp.write_text(wanted)
    return py


def available_memory() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> str:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def peer_variant(name: str, mode: str, inputs: list[Path], out: Path, output: str, timeout: float) -> Variant:
    _, driver, _ = PEERS[name]
    cmd = [str(peer_python(name)), str(HERE / driver), mode, str(out)] + [str(p) for p in inputs]
    return Variant(name, cmd, None, ourbench.prepare(*inputs, out=out, output=output), timeout)


def too_big(name: str, inputs: list[Path]) -> str | None:
    """Why ``name`` is not started on ``inputs`` (it would not fit in memory), or None."""
    factor = PEERS[name][2]
    if factor is None:
        return None
    need = factor * sum(p.stat().st_size for p in inputs)
    have = available_memory()
    if need > have - 2 * GIB:
        return f"not run: needs about {need / GIB:.0f} GiB (loads every input whole), {have / GIB:.0f} GiB available"
    return None


CHECK = """
import sys
from safetensors import safe_open
mode, path, *inputs = sys.argv[1:]
with safe_open(path, "pt") as f:
    keys = [k for k in f.keys() if k.endswith(".weight") and "diffusion_model" in k][:3]
    got = {k: f.get_tensor(k).float() for k in keys}
srcs = []
for p in inputs:
    with safe_open(p, "pt") as f:
        srcs.append({k: f.get_tensor(k).float() for k in keys})
worst = 0.0
for k in keys:
    a, b = srcs[0][k], srcs[1][k]
    want = 0.5 * a + 0.5 * b if mode == "weight_sum" else a + b - srcs[2][k]
    worst = max(worst, (got[k] - want).abs().max().item())
print("ok" if keys and worst < 2e-3 else f"differs from the formula by {worst:.3g}")
"""


def check_output(path: Path, inputs: list[Path], mode: str) -> str:
    """A quick check, in a child (this process stays small: see pairs.py), that a tool wrote the merge:
    a few U-Net tensors against the formula."""
    p = subprocess.run([sys.executable, "-c", CHECK, mode, str(path)] + [str(i) for i in inputs],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "its output could not be read"


def run_case(case: str, args, peers: list[str], results: dict) -> None:
    arch, mode, labels = CASES[case]
    inputs = [ourbench.checkpoint(arch, label) for label in labels]
    out = ourbench.DATA / "out" / "merged.safetensors"
    out.parent.mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="smhome-"))
    say(f"\n== {case}: {mode}, {arch}, {len(inputs)} inputs of {inputs[0].stat().st_size / 1e9:.2f} GB, "
        f"load {load_average()}")
    floor = ourbench.floor(inputs, out, args.output)
    tools = [ourbench.ours(mode, inputs, out, home, output=args.output)]
    skipped = {}
    for name in peers:
        why = too_big(name, inputs)
        if why:
            skipped[name] = why
            say(f"  {name}: {why}")
        else:
            tools.append(peer_variant(name, mode, inputs, out, args.output, args.timeout))
    checks = {}
    with open(ourbench.OUT / "bench.log", "a") as log:
        for v in (floor, tools[0]):  # warm-up, untimed: the hash cache, the page cache
            v.prepare()
            run_child(v.cmd, v.env, log, v.timeout)
        ratios: dict[str, list[float]] = {v.name: [] for v in tools}
        for r in range(args.rounds):
            order = [floor] + tools
            k = r % len(order)
            order = order[k:] + order[:k]
            walls = {}
            for v in order:
                v.prepare()
                run = run_child(v.cmd, v.env, log, v.timeout)
                v.runs.append(run)
                walls[v.name] = run.wall if run.rc == 0 else float("nan")
                if run.rc != 0:
                    say(f"  ! {v.name} exited with status {run.rc} (see {ourbench.OUT / 'bench.log'})")
                elif v is not floor and v.name not in checks:
                    checks[v.name] = check_output(out, inputs, mode)
            for v in tools:
                ratios[v.name].append(walls[v.name] / walls["floor"])
            say(f"  round {r + 1}/{args.rounds}: " + "  ".join(f"{n} {w:.2f} s" for n, w in walls.items()))
        ourbench.remove_partials(out)
    out.unlink(missing_ok=True)
    shutil.rmtree(home, ignore_errors=True)
    row = {"floor": {"wall_s": [x.wall for x in floor.runs], "peak_rss": max(x.maxrss for x in floor.runs)}}
    for v in tools:
        ok = [x for x in v.runs if x.rc == 0]
        row[v.name] = {"wall_s": [x.wall for x in v.runs], "ratio": ratios[v.name],
                       "cpu_s": med([x.cpu for x in ok]), "peak_rss": max((x.maxrss for x in ok), default=0),
                       "check": checks.get(v.name, "no successful run")}
    for name, why in skipped.items():
        row[name] = {"skipped": why}
    row["load_end"] = load_average()
    results[case] = row


def table(results: dict) -> str:
    lines = ["| case | tool | wall s, median (min–max) | × floor, median (min–max) | CPU s | peak RSS |",
             "|---|---|---|---|---|---|"]
    for case, row in results.items():
        if case not in CASES:
            continue
        fl = row["floor"]
        lines.append(f"| {case} | floor (cat; dd) | {fmt(fl['wall_s'])} | 1 | – | {fl['peak_rss'] / 2**20:.0f} MiB |")
        for name, r in row.items():
            if name in ("floor", "load_end"):
                continue
            if "skipped" in r:
                lines.append(f"| {case} | {name} | – | {r['skipped']} | – | – |")
                continue
            note = "" if r["check"] == "ok" else f" ({r['check']})"
            lines.append(f"| {case} | {name}{note} | {fmt(r['wall_s'])} | **{fmt(r['ratio'])}** | "
                         f"{r['cpu_s']:.1f} | {r['peak_rss'] / GIB:.2f} GiB |")
    return "\n".join(lines)


def fmt(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]  # drop failed runs (NaN)
    if not xs:
        return "failed"
    return f"{med(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def use_tiny_checkpoints(folder: Path) -> None:
    """--smoke: bench/run.py's checkpoints, but tiny and in ``folder``."""
    def tiny(arch: str, label: str) -> Path:
        path = folder / f"{arch}_{label}.safetensors"
        if not path.exists():
            subprocess.run([sys.executable, "-c", "import sys; from supermerger.testing.synthetic import "
                            "write_checkpoint; write_checkpoint(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]))",
                            str(path), arch, str(ourbench.SEEDS[label])], check=True)
        return path
    ourbench.DATA = folder
    ourbench.checkpoint = tiny


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated, from: " + ", ".join(PEERS))
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per case (default 3)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a peer's run is killed")
    ap.add_argument("--output", choices=("fresh", "replace"), default="fresh",
                    help="the output is deleted before each run (fresh, default) or rewritten by dd (replace)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny checkpoints in a temporary folder: checks the harness in seconds, measures nothing")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [c for c in cases if c not in CASES] + [p for p in peers if p not in PEERS]
    if bad:
        sys.exit(f"unknown case or peer {bad}; cases: {', '.join(CASES)}; peers: {', '.join(PEERS)}")
    if args.smoke:
        use_tiny_checkpoints(Path(tempfile.mkdtemp(prefix="peers-smoke-")))
    ourbench.OUT.mkdir(exist_ok=True)
    for name in peers:
        peer_python(name)
    from importlib.metadata import version

    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
                     "torch": version("torch"), "load_start": load_average()}
    say(f"SuperMerger and its peers — {results['started']}, {results['machine']}, torch {results['torch']}")
    for case in cases:
        run_case(case, args, peers, results)
        (ourbench.OUT / "peers.json").write_text(json.dumps(results, indent=1))
    results["load_end"] = load_average()
    (ourbench.OUT / "peers.json").write_text(json.dumps(results, indent=1))
    say(f"\n{results['machine']}; load {results['load_start']} at the start, {results['load_end']} at the end\n")
    say(table(results))
    say(f"\nresults in {ourbench.OUT / 'peers.json'}")


if __name__ == "__main__":
    main()

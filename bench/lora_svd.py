"""Make LoRA from two full-size SD1.5 checkpoints: torch.svd_lowrank against the full SVD.

    python bench/lora_svd.py                 # every module a LoRA trains (U-Net transformers + text encoder)
    python bench/lora_svd.py --every 4       # every 4th of those modules (a documented subset)

The pair: the "original" is bench/data/sd1_A.safetensors (bench/run.py's synthetic SD1.5, seeded
noise, fp16; generated if absent). The "tuned" model, bench/data/sd1_lowrank.safetensors, is the
original plus, on every weight a LoRA trains, a difference with a decaying spectrum, as a
fine-tune's is (and not the flat spectrum of noise):

    ΔW = 0.05·‖W‖_F · (1.00·Q₄ + 0.60·Q₁₆ + 0.35·Q₆₄ + 0.20·Q₂₅₆ + 0.10·N)

where Q_r = U·V (U: out×r, V: r×in, Gaussian) scaled to unit Frobenius norm and N is Gaussian
noise of unit Frobenius norm (seeded per key). A rank-128 LoRA catches the three first terms and
part of the fourth; the rest is the floor any method leaves. The tuned file is stored in fp16 like
the original, so ΔW also carries fp16 rounding, as real fine-tunes do. Every other weight is
copied unchanged.

Each method runs make-LoRA (lora/make.py, dim 128, the product's clamp at the 0.99 quantile unless
``--clamp none``) in its own child process: wall time and peak RSS are taken around make_lora
alone (the LoRA is kept in memory, not written). Then, untimed, the child compares each module's
ΔW with up·down: relative error ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F. The text-encoder threshold is set to 0 so
the text encoder is always factorised (its ΔW here is below kohya's 0.1 rule, which would skip it).
Figures: per method, the aggregate error sqrt(Σ‖E‖² / Σ‖ΔW‖²) over all modules and the worst
module; and svd_lowrank's error divided by the full SVD's (aggregate and worst module).

Measured 2026-11-22 on the shared 2-core VM (load average 4.6-6.2, other benchmarks running):
all 264 modules, clamp 0.99: lowrank 157.7 s, 0.65 GiB, error 0.2541 (worst 0.3991);
full 861.0 s, 0.71 GiB, error 0.2529 (worst 0.3979); lowrank/full 1.0048 (worst module 1.0333).
Every 4th module, no clamp: lowrank 19.1 s, error 0.1352; full 64.2 s, error 0.1329; ratio 1.0169
(worst 1.0210). The 0.99-quantile clamp, not the SVD method, is most of the error here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from supermerger.io.sources import Source  # no torch at import: the parent stays small

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
OUT = HERE / "out"
PY = sys.executable
TUNED = DATA / "sd1_lowrank.safetensors"
COMPONENTS = ((4, 1.00), (16, 0.60), (64, 0.35), (256, 0.20))  # (rank, weight) of the low-rank terms
NOISE = 0.10
SCALE = 0.05  # ‖ΔW‖ relative to ‖W‖, roughly
DIM = 128


def say(msg: str = "") -> None:
    print(msg, flush=True)


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


# -- data (in a child process, so the parent stays free of torch) ----------------------------------

def lora_keys(source) -> list[str]:
    """The checkpoint keys make-LoRA factorises (U-Net transformers and text encoder), in order."""
    from supermerger import arch as archmod
    from supermerger.lora.keymap import keymap_from

    shapes = {k: v.shape for k, v in source.tensors.items()}
    arch = archmod.detect(source.tensors, shapes, source.name)
    keys = []
    for t in keymap_from(arch, shapes).targets:
        if t.kind in ("transformer", "text") and t.key not in keys:
            keys.append(t.key)
    return keys


def make_tuned(original: Path, tuned: Path) -> None:
    import torch

    from supermerger.io.sources import open_model
    from supermerger.io.writer import SafetensorsWriter

    src = open_model(original)
    changed = set(lora_keys(src))
    entries = [(k, info.dtype, tuple(info.shape)) for k, info in src.tensors.items()]
    gen = torch.Generator().manual_seed(1234)
    with SafetensorsWriter(tuned, entries, {"bench": "sd1_A + low-rank differences (bench/lora_svd.py)"}) as w:
        for key, _, shape in entries:
            t = src.tensor(key)
            if key in changed:
                w_ = t.float().reshape(shape[0], -1)
                out, inner = w_.shape
                delta = torch.zeros_like(w_)
                for rank, weight in COMPONENTS:
                    r = min(rank, out, inner)
                    q = torch.randn(out, r, generator=gen) @ torch.randn(r, inner, generator=gen)
                    delta += weight * q / q.norm()
                n = torch.randn(out, inner, generator=gen)
                delta += NOISE * n / n.norm()
                t = (w_ + SCALE * float(w_.norm()) * delta).reshape(shape).to(t.dtype)
            w.write(t.contiguous().view(torch.uint8).numpy())
    src.close()


# -- one measured run (child) --------------------------------------------------------------------

class Subset(Source):
    """A source showing only every ``every``-th factorised weight (all other keys kept)."""

    def __init__(self, inner, every: int, keys: list[str]):
        dropped = {k for i, k in enumerate(keys) if i % every}
        self.inner = inner
        self.name = inner.name
        self.path = inner.path
        self.metadata = inner.metadata
        self.tensors = {k: v for k, v in inner.tensors.items() if k not in dropped}

    def tensor(self, key):
        return self.inner.tensor(key)

    def chunk(self, key, start, count, buf=None):
        return self.inner.chunk(key, start, count, buf)

    def close(self):
        self.inner.close()


def child(method: str, every: int, clamp: float | None, result_path: Path) -> None:
    import resource

    import torch

    from supermerger.io.sources import open_model
    from supermerger.lora.keymap import keymap_from
    from supermerger.lora.make import make_lora
    from supermerger import arch as archmod

    tuned, original = open_model(TUNED), open_model(DATA / "sd1_A.safetensors")
    if every > 1:
        keys = lora_keys(tuned)
        tuned, original = Subset(tuned, every, keys), Subset(original, every, keys)
    t0 = time.perf_counter()
    res = make_lora(tuned, original, None, dim=DIM, svd=method, clamp_quantile=clamp, text_encoder_min_diff=0.0)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shapes = {k: v.shape for k, v in tuned.tensors.items()}
    arch = archmod.detect(tuned.tensors, shapes, tuned.name)
    rows = []
    for t in keymap_from(arch, shapes).targets:
        up = res.state_dict.get(f"{t.name}.lora_up.weight")
        if up is None:
            continue
        down = res.state_dict[f"{t.name}.lora_down.weight"]
        d = tuned.tensor(t.key).float() - original.tensor(t.key).float()
        if t.rows is not None:
            d = d[t.rows[0]:t.rows[1]]
        d = d.reshape(d.shape[0], -1)
        scale = float(res.state_dict[f"{t.name}.alpha"]) / up.shape[1]
        approx = (up.reshape(up.shape[0], -1).float() @ down.reshape(down.shape[0], -1).float()) * scale
        rows.append({"name": t.name, "shape": list(d.shape), "norm2": float(d.norm() ** 2),
                     "err2": float((d - approx).norm() ** 2)})
    result_path.write_text(json.dumps({"method": method, "wall_s": wall, "peak_rss": peak, "modules": rows,
                                       "threads": torch.get_num_threads()}))
    tuned.close()
    original.close()


# -- parent --------------------------------------------------------------------------------------

def run_method(method: str, args) -> dict:
    path = OUT / f"lora_svd_{method}.json"
    path.unlink(missing_ok=True)
    load0 = load_average()
    cmd = [PY, str(Path(__file__).resolve()), "--child", method, "--every", str(args.every), "--clamp", args.clamp]
    t = time.perf_counter()
    p = subprocess.run(cmd)
    if p.returncode != 0:
        sys.exit(f"{method}: the child exited with status {p.returncode}")
    row = json.loads(path.read_text())
    row["load_start"], row["load_end"], row["child_s"] = load0, load_average(), time.perf_counter() - t
    return row


def aggregate(row: dict) -> tuple[float, float, str]:
    mods = row["modules"]
    total = math.sqrt(sum(m["err2"] for m in mods) / sum(m["norm2"] for m in mods))
    worst = max(mods, key=lambda m: m["err2"] / m["norm2"])
    return total, math.sqrt(worst["err2"] / worst["norm2"]), worst["name"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--every", type=int, default=1, help="factorise every N-th module only (default 1: all)")
    ap.add_argument("--clamp", default="0.99", help="clamp quantile of the factors (make-LoRA's default 0.99) or none")
    ap.add_argument("--methods", default="lowrank,full")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    clamp = None if args.clamp.lower() == "none" else float(args.clamp)
    if args.child:
        child(args.child, args.every, clamp, OUT / f"lora_svd_{args.child}.json")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    original = DATA / "sd1_A.safetensors"
    if not original.exists():  # the same file bench/run.py makes
        DATA.mkdir(parents=True, exist_ok=True)
        say(f"generating {original.name} ...")
        subprocess.run([PY, "-c", "import sys; from supermerger.testing.synthetic import write_checkpoint; "
                        "write_checkpoint(sys.argv[1], 'sd1', seed=1, scale='full')", str(original)], check=True)
    if not TUNED.exists():
        say(f"generating {TUNED.name} (original + low-rank differences) ...")
        t = time.perf_counter()
        subprocess.run([PY, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import lora_svd; "
                        "lora_svd.make_tuned(lora_svd.DATA / 'sd1_A.safetensors', lora_svd.TUNED)", str(HERE)],
                       check=True)
        say(f"  done in {time.perf_counter() - t:.0f} s")
    subset = "all modules" if args.every == 1 else f"every {args.every}th module"
    say(f"Make LoRA, SD1.5 full size, dim {DIM}, clamp {args.clamp}, {subset}; {os.cpu_count()} CPUs")
    rows = {}
    for method in args.methods.split(","):
        row = rows[method] = run_method(method, args)
        total, worst, wname = aggregate(row)
        say(f"  {method:8s} wall {row['wall_s']:7.1f} s  peak RSS {row['peak_rss'] / 2**30:5.2f} GiB  "
            f"modules {len(row['modules'])}  error {total:.4f} (worst {worst:.4f}: {wname})  "
            f"load {row['load_start']} -> {row['load_end']}")
    if "full" in rows and "lowrank" in rows:
        full = {m["name"]: m for m in rows["full"]["modules"]}
        low = {m["name"]: m for m in rows["lowrank"]["modules"]}
        ratios = {n: math.sqrt(low[n]["err2"] / full[n]["err2"]) for n in full if full[n]["err2"] > 0}
        agg = aggregate(rows["lowrank"])[0] / aggregate(rows["full"])[0]
        wname = max(ratios, key=ratios.get)
        say(f"  lowrank error / full SVD error at rank {DIM}: aggregate {agg:.4f}, worst module "
            f"{ratios[wname]:.4f} ({wname}); speed-up {rows['full']['wall_s'] / rows['lowrank']['wall_s']:.1f}x")
    (OUT / "lora_svd.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()

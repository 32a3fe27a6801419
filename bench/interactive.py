"""The interactive loop (run by bench/run.py in its own process; prints one JSON line).

Inputs cached in RAM as state dicts, a "live model" (a state dict of its own), and re-merges
with new ratios written straight into the live model's tensors (``merge(..., into=live)``).
The yardstick, measured alternately in the same process: one pass that reads both inputs and
writes the live model's tensors (``torch.add(A[k], B[k], out=live[k])`` for every key), on one
intra-op thread (the faster setting on this machine; the default-thread figure is reported too).

    python bench/interactive.py A.safetensors B.safetensors [--merges 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--merges", type=int, default=50)
    args = ap.parse_args()

    import torch

    import supermerger
    from supermerger.io.sources import SafetensorsSource

    def load(path):
        with SafetensorsSource(path) as src:
            return {k: src.tensor(k) for k in src.tensors}

    A, B = load(args.a), load(args.b)
    live = {k: v.clone() for k, v in A.items()}
    keys = [k for k, v in A.items() if v.is_floating_point()]

    def floor_pass(threads: int | None) -> float:
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        t = time.perf_counter()
        for k in keys:
            torch.add(A[k], B[k], out=live[k])
        dt = time.perf_counter() - t
        torch.set_num_threads(before)
        return dt

    def remerge(alpha: float) -> float:
        t = time.perf_counter()
        res = supermerger.merge(supermerger.Recipe(alpha=alpha), models={"A": A, "B": B}, into=live)
        dt = time.perf_counter() - t
        assert res.state_dict is live
        return dt

    remerge(0.5)  # warm-up (first calls set things up)
    floor_pass(1)
    floor_pass(None)
    rss_start = rss()
    merges, floors, floors_default, ratios, rss_after = [], [], [], [], []
    for i in range(args.merges):
        alpha = 0.05 + 0.9 * i / max(1, args.merges - 1)
        f = floor_pass(1)
        m = remerge(alpha)
        merges.append(m)
        floors.append(f)
        ratios.append(m / f)
        rss_after.append(rss())
        if i % 10 == 0:
            floors_default.append(floor_pass(None))
    # correctness of the last merge: bit-identical to float32 lerp rounded once
    alpha = 0.05 + 0.9 * (args.merges - 1) / max(1, args.merges - 1)
    mismatched = 0
    for k in keys:
        if A[k].dtype in (torch.float16, torch.bfloat16):
            ref = torch.lerp(A[k].float(), B[k].float(), alpha).to(A[k].dtype)
            mismatched += int((ref.view(torch.int16) != live[k].view(torch.int16)).sum())
    import resource

    print(json.dumps({
        "merges": args.merges,
        "merge_s": statistics.median(merges), "merge_min_s": min(merges), "merge_max_s": max(merges),
        "floor_s": statistics.median(floors), "floor_default_threads_s": statistics.median(floors_default),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "ratio_vs_default_threads": statistics.median(merges) / statistics.median(floors_default),
        "rss_start": rss_start, "rss_first": rss_after[0], "rss_last": rss_after[-1], "rss_max": max(rss_after),
        "rss_growth": max(rss_after) - rss_after[0],
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "model_bytes": sum(v.numel() * v.element_size() for v in A.values()),
        "mismatched_values": mismatched,
    }))


if __name__ == "__main__":
    main()

"""Timing child processes in alternating pairs against a yardstick measured in the same run.

The machine is shared and noisy (absolute seconds move by ±30 % between minutes), so every
figure that matters is a ratio taken pair by pair: A B A B ..., each A divided by its own B.
Wall time comes from a monotonic clock around the child; CPU time and peak RSS from the
kernel's accounting of the reaped child (``os.wait4``; peak RSS is the largest process of the
child's tree, the descendants it waited for included — and, since the kernel records the RSS of
the address space a child replaces at exec, never less than this parent's RSS at fork time:
keep the parent small).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Run:
    wall: float
    user: float
    sys: float
    maxrss: int  # bytes
    rc: int

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def run_child(cmd: list[str], env: dict | None = None, log=None, timeout: float | None = None) -> Run:
    """Run ``cmd`` once; wall, CPU and peak RSS of the child (and its waited-for descendants)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    timer = None
    if timeout:
        timer = threading.Timer(timeout, p.kill)
        timer.start()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if timer:
        timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
    return Run(wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss * 1024, p.returncode)


@dataclass
class Variant:
    name: str
    cmd: list[str]
    env: dict | None = None
    prepare: object = None  # callable run (untimed) before every measured run
    timeout: float | None = None
    runs: list[Run] = field(default_factory=list)


def alternate(a: Variant, b: Variant, pairs: int, warmup: int = 1, log=None, say=print) -> list[float]:
    """Warm-up runs of both, then ``pairs`` alternating pairs (the first member alternates too);
    returns A/B wall ratios, pair by pair."""
    def once(v: Variant, keep: bool) -> Run:
        if v.prepare:
            v.prepare()
        r = run_child(v.cmd, v.env, log, v.timeout)
        if r.rc != 0:
            say(f"  ! {v.name} exited with status {r.rc} (see the log)")
        if keep:
            v.runs.append(r)
        return r

    for _ in range(warmup):
        once(a, False)
        once(b, False)
    ratios = []
    for i in range(pairs):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        r1 = once(first, True)
        r2 = once(second, True)
        ra, rb = (r1, r2) if first is a else (r2, r1)
        ratios.append(ra.wall / rb.wall)
        say(f"  pair {i + 1}/{pairs}: {a.name} {ra.wall:6.2f} s  {b.name} {rb.wall:6.2f} s  ratio {ratios[-1]:.2f}")
    return ratios


def med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def span(xs, fmt="{:.2f}") -> str:
    if not xs:
        return "-"
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"

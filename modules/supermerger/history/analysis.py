"""Weight analysis (spec §7, "Weight Analysis" tab): per-block mean and standard deviation of the
alpha block weights of several recorded merges. The chart is the UI's part.

The effective weights are used (as the original's history columns held them): the weights as
applied, with 0 in blocks that include/exclude skipped. The standard deviation is the population
one (divided by n), as numpy's default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ..arch import architectures


@dataclass
class WeightStats:
    ids: list[int]
    blocks: tuple[str, ...]
    mean: list[float]
    std: list[float]

    def text(self) -> str:
        """One line per block: mean, σ, 2σ, 3σ with 3 decimals."""
        width = max(len(b) for b in self.blocks)
        lines = [f"{'block':<{width}}  {'mean':>7}  {'σ':>7}  {'2σ':>7}  {'3σ':>7}"]
        for b, m, s in zip(self.blocks, self.mean, self.std):
            lines.append(f"{b:<{width}}  {m:7.3f}  {s:7.3f}  {2 * s:7.3f}  {3 * s:7.3f}")
        return "\n".join(lines)


def parse_ids(ids: str | Iterable[int]) -> list[int]:
    from . import HistoryError

    if isinstance(ids, str):
        try:
            return [int(t) for t in ids.replace(" ", ",").split(",") if t.strip()]
        except ValueError:
            raise HistoryError(f"History IDs {ids!r}: give whole numbers separated by commas, e.g. 12,15,-1.") from None
    return [int(i) for i in ids]


def weight_stats_of(records: list) -> WeightStats:
    from . import HistoryError

    if not records:
        raise HistoryError("Give at least one history ID to analyse.")
    lists = []
    for rec in records:
        if rec.effective_alpha is None:
            raise HistoryError(f"History record {rec.id} has no alpha block weights (it was merged without MBW).")
        lists.append(rec.effective_alpha)
    lengths = {len(w) for w in lists}
    if len(lengths) > 1:
        detail = ", ".join(f"ID {r.id}: {len(w)}" for r, w in zip(records, lists))
        raise HistoryError(f"The weight lists differ in length ({detail}); only merges of one architecture can be "
                           "compared.")
    n = len(lists[0])
    mean = [sum(w[i] for w in lists) / len(lists) for i in range(n)]
    std = [math.sqrt(sum((w[i] - mean[i]) ** 2 for w in lists) / len(lists)) for i in range(n)]
    return WeightStats([r.id for r in records], block_names(records[0].architecture, n), mean, std)


def block_names(arch_id: str, n: int) -> tuple[str, ...]:
    archs = architectures()
    if arch_id in archs and archs[arch_id].n_blocks == n:
        return archs[arch_id].blocks
    for a in archs.values():
        if a.n_blocks == n:
            return a.blocks
    for a in archs.values():
        if a.fine_blocks and len(a.fine_blocks) == n:
            return a.fine_blocks
    return tuple(str(i) for i in range(n))

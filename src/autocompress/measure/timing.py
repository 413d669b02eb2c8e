"""Speed-up of a candidate over a reference that survives a busy machine.

Timing each model on its own and dividing medians fails under load: a burst that hits one
model's runs and not the other's moves the ratio by tens of percent (a trial measured 7.55x in a
search and 2.11x when re-measured). Here the two run in *rounds*, back to back, alternating which
goes first, and the speed-up is the median of the per-round ratios: a burst hits both halves of a
round alike and cancels. Rounds continue until the median ratio is known to ``rel_tol`` (a
distribution-free confidence interval of the median) or the time allowed is spent.

Runtime-free: the caller passes ``run_ref`` / ``run_cand`` callables (one inference each).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Timing:
    ref_ms: float          # median latency of the reference
    cand_ms: float         # median latency of the candidate
    speedup: float         # median over rounds of ref / cand (> 1: the candidate is faster)
    low: float             # ~95 % confidence interval of that median
    high: float
    rounds: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _median_ci(sorted_xs: list[float]) -> tuple[float, float]:
    """Order-statistic ~95 % interval of the median (binomial, normal approximation)."""
    n = len(sorted_xs)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return sorted_xs[lo], sorted_xs[hi]


def interleaved_speedup(run_ref: Callable[[], object], run_cand: Callable[[], object], *,
                        warmup: int = 5, min_rounds: int = 15, max_rounds: int = 400,
                        rel_tol: float = 0.03, max_time_s: float = 10.0) -> Timing:
    """Time ``run_ref`` against ``run_cand`` in alternating rounds (see module doc)."""
    if min_rounds < 3 or max_rounds < min_rounds:
        raise ValueError(f"interleaved_speedup: need 3 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    for _ in range(warmup):
        run_ref()
        run_cand()
    ref, cand, ratios = [], [], []
    t_start = time.perf_counter()
    clock = time.perf_counter
    for i in range(max_rounds):
        order = ((run_ref, ref), (run_cand, cand)) if i % 2 == 0 else ((run_cand, cand), (run_ref, ref))
        for fn, sink in order:
            t0 = clock()
            fn()
            sink.append((clock() - t0) * 1e3)
        ratios.append(ref[-1] / max(cand[-1], 1e-9))
        if len(ratios) >= min_rounds:
            s = sorted(ratios)
            lo, hi = _median_ci(s)
            med = statistics.median(s)
            if (hi - lo) / med <= 2 * rel_tol or clock() - t_start > max_time_s:
                break
    s = sorted(ratios)
    lo, hi = _median_ci(s)
    return Timing(statistics.median(ref), statistics.median(cand), statistics.median(s), lo, hi, len(s))

"""How much a measurement of the CI gate moves by chance, so ``check`` fails regressions, not noise.

* Accuracy on ``n`` test samples is a binomial proportion: its standard error is
  ``sqrt(p (1 - p) / n)``. A retrained model that is just as good lands anywhere within a few of
  those of the kept report's figure (0.99 on 10 000 samples: SE 0.1 points), so the allowed drop is
  ``max(user tolerance, z * SE)`` with ``z = 2.576`` (two-sided 99 %) unless the user sets ``z``.
* An entropy-coded storage artifact's size follows the statistics of the retrained weights, not
  only the architecture: a benign retrain moved one by 5.6 %. Its default tolerance is wider than
  a deployed file's, whose size the architecture and the recipe fix.
* A speed-up is measured as the median of per-round ratios, the two models timed back to back
  (:mod:`autocompress.measure.timing`), with a ~95 % interval; the baseline comparison fails only
  when even the interval's upper end is below the required ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Z99 = 2.576                    # two-sided 99 % normal quantile
SIZE_REL_DEPLOYED = 0.05       # deployed file: fixed by architecture + recipe (+ int8 scales)
SIZE_REL_STORAGE = 0.15        # entropy-coded artifact: moves with the retrained weights' statistics
UNCOMPRESSED_WITHIN = 0.10     # a candidate within 10 % of the fp32 size is not compressed


def accuracy_se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` samples."""
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


@dataclass
class AccuracyTolerance:
    points: float       # the tolerance applied, percentage points
    se_points: float    # one standard error, points
    rule: str           # the rule, stated for the summary


def accuracy_tolerance(user_points: float, p: float, n: int, z: float = Z99) -> AccuracyTolerance:
    se = 100 * accuracy_se(p, n)
    noise = z * se
    points = max(user_points, noise)
    which = "sampling noise" if noise > user_points else "the tolerance set"
    rule = (f"tolerance max({user_points:g}, {z:g} x SE) = {points:.2f} points ({which}); SE of "
            f"{100 * p:.2f} % on {n} test samples = {se:.2f} points")
    return AccuracyTolerance(points, se, rule)


def size_tolerance(user_rel: float | None, storage: bool) -> tuple[float, str]:
    if user_rel is not None:
        return user_rel, f"tolerance {user_rel:.0%}"
    rel = SIZE_REL_STORAGE if storage else SIZE_REL_DEPLOYED
    why = "entropy-coded: its size follows the retrained weights" if storage else "fixed by the recipe"
    return rel, f"default tolerance {rel:.0%} ({why})"


def is_uncompressed(size: float, fp32_size: float | None) -> bool:
    """The candidate weighs about what the fp32 model does: nothing was compressed."""
    return bool(fp32_size) and size >= (1 - UNCOMPRESSED_WITHIN) * fp32_size


def measure_speedup(target: Any, reference: str | Path, candidate: str | Path, input_shape: tuple[int, ...],
                    batch: int, threads: int = 1, max_time_s: float = 10.0, max_rounds: int = 400):
    """Interleaved median-of-ratios speed-up of ``candidate`` over ``reference`` on ``target``."""
    from autocompress.measure.timing import interleaved_speedup

    x = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
    ref, cand = target.load(reference, threads), target.load(candidate, threads)
    return interleaved_speedup(lambda: ref(x), lambda: cand(x), max_time_s=max_time_s,
                               max_rounds=max(max_rounds, 15))

"""Timing a pruned copy on the budget's runtime, for the structured latency path of a speed
budget (prune/latency_path.py): each copy is exported the quick way the target offers
(``probe_opts``) and timed against the baseline file, interleaved. The probe has a time allowance
and gives up as soon as it would overrun it: the allocation then falls back on MACs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

PROBE_S = 0.4     # timing seconds per pruned copy at most (the ratio of medians settles well before)
MIN_S = 0.08      # and at least


class SpeedProbe:
    """``probe(model)``: the model's speed-up over the baseline file on ``target``, or None once
    ``allowed_s`` is spent or predicted to be (``expect(n)`` announces how many calls follow: the
    probe gives up after the first one rather than time a part of the layers)."""

    def __init__(self, target, base_path: Path, example: torch.Tensor, input_shape: tuple[int, ...],
                 batch: int, threads: int, work_dir: Path, allowed_s: float) -> None:
        self.target, self.example, self.threads = target, example, threads
        self.path = Path(work_dir) / f"speed-probe{target.suffix}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.x = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
        self.ref = target.load(base_path, threads)
        self.allowed_s = allowed_s
        self.spent = 0.0
        self.calls = 0
        self.expected: int | None = None
        self.dead = False
        self.overhead = 0.0              # seconds per copy besides timing it (export, pruning it)
        self._last: float | None = None

    def expect(self, n: int) -> None:
        self.expected = n

    def __call__(self, model: nn.Module) -> float | None:
        from autocompress.measure.timing import interleaved_speedup
        if self.dead:
            return None
        t0 = time.monotonic()
        # the caller prunes the next copy between two probes: the allowance pays for that too
        between = 0.0 if self._last is None else t0 - self._last
        left = max((self.expected or 1) - self.calls, 1)
        try:
            self.target.export(model, self.example, self.path, **self.target.probe_opts)
            cand = self.target.load(self.path, self.threads)
            t1 = time.monotonic()
            # the timing gets what the allowance leaves after the exports still to come
            per = (self.allowed_s - self.spent - left * self.overhead) / left
            t = interleaved_speedup(lambda: self.ref(self.x), lambda: cand(self.x), warmup=3, min_rounds=9,
                                    max_rounds=300, rel_tol=0.03, max_time_s=min(PROBE_S, max(MIN_S, per)))
        except Exception as e:  # noqa: BLE001 - a probe that cannot time says so; MACs then guide
            log.info("speed probe: %s: %s; the allocation uses MACs", type(e).__name__, e)
            self.dead = True
            return None
        done = time.monotonic()
        self.calls += 1
        self.spent += done - t0 + between
        self.overhead += ((t1 - t0) + between - self.overhead) / self.calls   # running mean
        self._last = done
        left -= 1
        if self.spent + left * (self.overhead + MIN_S) > self.allowed_s:
            log.info("speed probe: %d more copies would not fit in the %.0f s allowed (%.2f s each besides "
                     "timing); the allocation uses MACs", left, self.allowed_s, self.overhead)
            self.dead = True
            return None
        return float(t.speedup)


def make_probe(target, base_path: Path, example, data, budget, work_dir: Path, allowed_s: float) -> SpeedProbe | None:
    """A probe for a speed budget on float inputs (token ids are timed by the trials only)."""
    if not budget.needs_latency() or not isinstance(example, torch.Tensor) or not example.is_floating_point():
        return None
    if math.isfinite(allowed_s) and allowed_s < 1.0:
        return None
    try:
        return SpeedProbe(target, base_path, example, tuple(data.input_shape), budget.latency_batch,
                          budget.threads, work_dir, allowed_s if math.isfinite(allowed_s) else 120.0)
    except Exception as e:  # noqa: BLE001
        log.info("speed probe unavailable (%s: %s)", type(e).__name__, e)
        return None

"""Calibration range estimators: from observed activations to a clipping range ``(lo, hi)``.

An :class:`Observer` watches one tensor during calibration. It keeps the exact running min/max
and a bounded, seeded random subsample of the values (at most ``max_samples``), so every estimator
below works on the same evidence and memory stays small whatever the calibration set size.

Estimators live in the :data:`RANGE_ESTIMATORS` registry (name -> function); all of them return a
range that contains 0 (zero must be exactly representable: padding and ReLU produce exact zeros).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch

Calibration = Literal["minmax", "percentile", "entropy", "mse"]


class CalibrationError(ValueError):
    """Calibration saw no data, or non-finite values; the message names the layer."""


class Observer:
    """Running min/max plus a reservoir-like subsample of one tensor's values."""

    def __init__(self, name: str, max_samples: int = 100_000, seed: int = 0) -> None:
        self.name = name
        self.max_samples = max_samples
        self.lo = math.inf
        self.hi = -math.inf
        self.count = 0
        self._chunks: list[torch.Tensor] = []
        self._kept = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._memo: dict[tuple, tuple[float, float]] = {}

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise CalibrationError(f"{self.name}: {bad} NaN/Inf values during calibration; "
                                   "check the inputs and the float model before quantizing")
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.count += x.numel()
        self._memo.clear()
        # keep a uniform share of every batch: a fixed budget per update, shrinking old chunks
        # would bias towards late batches, so we subsample each batch at the same rate bound
        budget = max(1, self.max_samples // 8)
        if x.numel() > budget:
            idx = torch.randint(0, x.numel(), (budget,), generator=self._gen)
            x = x[idx]
        self._chunks.append(x.clone())
        self._kept += x.numel()
        if self._kept > 2 * self.max_samples:   # thin everything uniformly
            allv = torch.cat(self._chunks)
            idx = torch.randperm(allv.numel(), generator=self._gen)[: self.max_samples]
            self._chunks, self._kept = [allv[idx]], self.max_samples

    def samples(self) -> torch.Tensor:
        if not self._chunks:
            raise CalibrationError(f"{self.name}: no calibration data reached this layer")
        return torch.cat(self._chunks)

    def range(self, method: Calibration, bits: int = 8, percentile: float = 99.99) -> tuple[float, float]:
        if self.count == 0:
            raise CalibrationError(f"{self.name}: no calibration data reached this layer")
        key = (method, bits, percentile)
        if key not in self._memo:     # mixed precision re-applies ranges many times
            lo, hi = RANGE_ESTIMATORS[method](self.samples(), self.lo, self.hi, bits, percentile)
            self._memo[key] = (min(lo, 0.0), max(hi, 0.0))
        return self._memo[key]


# -- estimators ---------------------------------------------------------------------------------

def _minmax(x: torch.Tensor, lo: float, hi: float, bits: int, pct: float) -> tuple[float, float]:
    return lo, hi


def _percentile(x: torch.Tensor, lo: float, hi: float, bits: int, pct: float) -> tuple[float, float]:
    q = torch.quantile(x.double(), torch.tensor([1 - pct / 100, pct / 100], dtype=torch.float64, device=x.device))
    return min(float(q[0]), 0.0) if lo < 0 else lo, float(q[1])


def fake_quant_range(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Quantize-dequantize ``x`` with an asymmetric ``bits``-bit grid spanning ``[lo, hi]``."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = 2 ** bits - 1
    scale = max(hi - lo, 1e-12) / levels
    zp = round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zp, 0, levels)
    return (q - zp) * scale


def _mse(x: torch.Tensor, lo: float, hi: float, bits: int, pct: float) -> tuple[float, float]:
    """Shrink the min/max range by a common factor, keeping the one with least squared error."""
    best, best_err = (lo, hi), math.inf
    for a in torch.logspace(-2, 0, 61).tolist():   # shrink factors 0.01 .. 1
        err = float(((fake_quant_range(x, lo * a, hi * a, bits) - x) ** 2).mean())
        if err < best_err:
            best, best_err = (lo * a, hi * a), err
    return best


def _entropy(x: torch.Tensor, lo: float, hi: float, bits: int, pct: float,
             bins: int = 2048) -> tuple[float, float]:
    """KL-divergence threshold (the TensorRT recipe) on the histogram of |x|.

    For each candidate threshold t (bin i), the reference distribution P is the histogram clipped
    at t (outliers folded into the last bin) and Q is P merged into the available levels and
    expanded back; pick the t minimising KL(P || Q).
    """
    a = x.abs().double()
    a = a[a > 0]          # exact zeros (ReLU, padding) are represented exactly whatever the range
    if a.numel() == 0:
        return lo, hi
    amax = float(a.max())
    hist = torch.histc(a, bins=bins, min=0.0, max=amax)
    one_sided = lo >= 0 or hi <= 0
    nlevels = 2 ** bits if one_sided else 2 ** (bits - 1)  # levels available on one side
    nlevels = min(nlevels, bins)
    best_i, best_kl = bins, math.inf
    for i in range(nlevels, bins + 1, max(1, (bins - nlevels) // 128)):
        p = hist[:i].clone()
        p[-1] += hist[i:].sum()
        # merge i bins into nlevels groups, spread each group's mass over its non-empty bins
        edges = torch.linspace(0, i, nlevels + 1).round().long()
        q = torch.zeros_like(p)
        src = hist[:i]
        for g in range(nlevels):
            s, e = int(edges[g]), int(edges[g + 1])
            if e <= s:
                continue
            seg = src[s:e]
            nz = seg > 0
            if nz.any():
                q[s:e][nz] = seg.sum() / nz.sum()
        mask = p > 0
        pn, qn = p / p.sum(), q / max(float(q.sum()), 1e-30)
        if (qn[mask] == 0).any():
            continue
        kl = float((pn[mask] * (pn[mask] / qn[mask]).log()).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    t = amax * best_i / bins
    return max(lo, -t), min(hi, t)


RangeEstimator = Callable[[torch.Tensor, float, float, int, float], tuple[float, float]]
RANGE_ESTIMATORS: dict[str, RangeEstimator] = {
    "minmax": _minmax, "percentile": _percentile, "entropy": _entropy, "mse": _mse,
}


def weight_scale(w: torch.Tensor, bits: int, method: Literal["minmax", "mse"] = "minmax",
                 group_size: int | None = None) -> torch.Tensor:
    """Symmetric scale per output channel (``group_size=None``; shape (C_out,)) or per group of
    ``group_size`` consecutive input weights (shape (C_out, ceil(K / group_size)))."""
    qmax = 2 ** (bits - 1) - 1
    wf = w.detach().float().reshape(w.shape[0], -1)   # (C_out, K)
    if group_size is not None:
        k = wf.shape[1]
        pad = (-k) % group_size
        wf = torch.nn.functional.pad(wf, (0, pad)).reshape(w.shape[0], -1, group_size)
    amax = wf.abs().amax(-1)
    if method == "mse":
        best = amax.clone()
        best_err = torch.full_like(amax, math.inf)
        for a in torch.linspace(0.3, 1.0, 36).tolist():
            s = (amax * a).clamp_min(1e-12) / qmax
            s_ = s.unsqueeze(-1)
            err = ((torch.clamp(torch.round(wf / s_), -qmax, qmax) * s_ - wf) ** 2).sum(-1)
            better = err < best_err
            best = torch.where(better, amax * a, best)
            best_err = torch.where(better, err, best_err)
        amax = best
    return (amax / qmax).clamp_min(1e-12)

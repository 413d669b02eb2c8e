"""Sparsity schedules: the sparsity to reach after each pruning round."""

from __future__ import annotations


def polynomial_schedule(final: float, steps: int, initial: float = 0.0, power: float = 3.0) -> list[float]:
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) * (1 - t/n)**power`` for t = 1..n.

    Prunes fast while many redundant weights remain and slowly near the target, which leaves the
    network time to recover. The last entry is exactly ``final``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= initial <= final <= 1.0:
        raise ValueError(f"need 0 <= initial ({initial}) <= final ({final}) <= 1")
    return [final + (initial - final) * (1.0 - t / steps) ** power for t in range(1, steps + 1)]


def linear_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    return polynomial_schedule(final, steps, initial, power=1.0)


SCHEDULES = {"polynomial": polynomial_schedule, "linear": linear_schedule}

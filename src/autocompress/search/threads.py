"""How many CPU threads the search's own PyTorch work uses: measured, not assumed.

On a 2-core machine with one other busy process (a shared CI runner, a laptop in use), PyTorch's
default of one thread per core made a SmallResNet training step 6x slower than one thread did
(380 ms against 62 ms: at every operator the threads wait for each other while one of them is off
the CPU), and a time-limited search then ran a sixth of its trials. So the search times a few
fine-tuning steps of the original model at each candidate count before its first measurement and
again before every trial (the load changes), keeps the fastest, and hands that time to its plans
(``ctx.epoch_s``). On a GPU the count is left alone. ``compress`` restores the caller's count.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

KEEP = 1.15     # the current count stays unless another is this much faster: a few timed steps are noisy


def candidates(most: int) -> list[int]:
    """The counts worth timing: all the caller allowed, half of them, one."""
    return sorted({most, max(1, most // 2), 1}, reverse=True)


class ThreadChoice:
    """torch's intra-op thread count for this process, picked from timed fine-tuning steps."""

    def __init__(self, most: int | None = None) -> None:
        self.most = most or torch.get_num_threads()
        self.current = torch.get_num_threads()
        self.times: dict[int, float] = {}

    def pick(self, model, train_set, device: str = "cpu", steps: int = 2) -> float | None:
        """Time ``steps`` steps at each candidate count, switch to the fastest; returns its epoch
        seconds (None when nothing was timed: one thread allowed, a GPU, a step that cannot run)."""
        if self.most <= 1 or torch.device(device).type != "cpu":
            return None
        from autocompress.search.seeds import epoch_seconds
        times = {}
        try:
            for n in candidates(self.most):
                torch.set_num_threads(n)
                times[n] = epoch_seconds(model, train_set, steps=steps)
        except Exception as e:  # noqa: BLE001 - a model our step cannot train keeps the count it had
            log.info("could not time fine-tuning steps (%s: %s); %d thread(s) kept", type(e).__name__, e, self.current)
            torch.set_num_threads(self.current)
            return None
        best = min(times, key=times.get)
        if self.current in times and times[self.current] <= KEEP * times[best]:
            best = self.current
        if best != self.current:
            log.info("fine-tunes at %d thread(s) from now (an epoch: %s)", best,
                     ", ".join(f"{t:.1f} s at {n}" for n, t in sorted(times.items())))
        self.current, self.times = best, times
        torch.set_num_threads(best)
        return times[best]


def restores_threads(fn: Callable) -> Callable:
    """Decorator: the caller's torch thread count is back when ``fn`` returns or raises."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        saved = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(saved)
    return wrapped

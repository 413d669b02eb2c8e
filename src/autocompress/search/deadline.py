"""One wall-clock deadline for a whole ``compress()`` call, handed down to every phase.

``time_limit_s`` is a promise to the user: baseline, sensitivity, every trial and the final
measurement together stay within it (give or take a fine-tune step). The phases ask the same
object how much is left; nothing keeps its own clock. Shares are fractions of the *whole* limit,
so a slow baseline cannot silently eat the final measurement's reserve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class Deadline:
    """``limit_s=None`` means no limit (every question answers "plenty of time")."""

    limit_s: float | None
    start: float = field(default_factory=time.monotonic)
    reserve_s: float = 0.0    # kept back for the final measurement; trials may not use it
    tail_s: float = 0.0       # longest scoring tail seen (evaluate, export, store, time a candidate)
    tail_guessed: bool = False
    base_reserve_s: float = 0.0
    t_measure_base: float = 0.0   # how long measuring the baseline took (the final step repeats it)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        """Seconds left for the whole call (inf without a limit)."""
        if self.limit_s is None:
            return math.inf
        return self.limit_s - self.elapsed()

    def search_remaining(self) -> float:
        """Seconds left for trials: what remains minus the final measurement's reserve."""
        return self.remaining() - self.reserve_s

    def share(self, fraction: float) -> float:
        """``fraction`` of the whole limit (inf without a limit)."""
        return math.inf if self.limit_s is None else fraction * self.limit_s

    def expired(self) -> bool:
        """True once fine-tunes must stop (checked at every step boundary): what is left would not
        pay for scoring the candidate afterwards."""
        return self.search_remaining() <= self.tail_s

    def saw_tail(self, seconds: float, guess: bool = False) -> None:
        """Record a scoring tail; a ``guess`` (before any trial) is replaced by the first real one."""
        if guess or self.tail_guessed:
            self.tail_s, self.tail_guessed = seconds, guess
        else:
            self.tail_s = max(self.tail_s, seconds)

    def sub(self, seconds: float) -> "Deadline":
        """A deadline ``seconds`` from now, never later than this one's search time (for a phase)."""
        if self.limit_s is None and math.isinf(seconds):
            return Deadline(None)
        return Deadline(max(0.0, min(seconds, self.search_remaining())))

    def reserve_for_winner(self, extra_s: float) -> None:
        """The current best needs ``extra_s`` more than the baseline to be measured at the end (a
        fake-quantized model evaluates slowly in PyTorch): keep it back too, even from the trials,
        since the limit is the promise."""
        if self.limit_s is not None:
            self.reserve_s = self.base_reserve_s + max(0.0, extra_s)

    def reserve(self, seconds: float) -> None:
        """Keep ``seconds`` back for the end (at most half of what is left, so trials can run)."""
        if self.limit_s is not None:
            self.reserve_s = self.base_reserve_s = max(0.0, min(seconds, 0.5 * self.remaining()))

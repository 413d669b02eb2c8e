"""One plain line per finished trial on stderr: where the search is, how long is left, the best so far.

    search: trial 3/8 (#2) done in 41s (complete: val 99.21 %, 20.30 kB) | 2m10s elapsed, ETA ~3m20s | best so far: #1, val 99.24 %, 19.80 kB, meets the budget

Lines, not a progress bar: a bar redrawn in place fights the log lines written between redraws and
turns into noise in CI logs, while one line per trial (tens of seconds apart) reads well in both.
``autocompress -q`` (or ``AUTOCOMPRESS_PROGRESS=0``) silences them; they never go through logging,
so they show at the default log level, where INFO detail is hidden.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, TextIO

_enabled: bool | None = None     # None: decided by AUTOCOMPRESS_PROGRESS (default on)


def set_enabled(on: bool | None) -> None:
    """Switch the progress lines on/off for this process (``None``: back to the environment's say)."""
    global _enabled
    _enabled = on
    # worker processes inherit the environment, not this module's state
    if on is not None:
        os.environ["AUTOCOMPRESS_PROGRESS"] = "1" if on else "0"


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("AUTOCOMPRESS_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def note(message: str, stream: TextIO | None = None) -> None:
    """A phase line ("search: measuring the baseline ..."), shown like the trial lines."""
    if enabled():
        print(f"search: {message}", file=stream or sys.stderr, flush=True)


def search_started(max_trials: int | None, seconds: float) -> None:
    limits = [f"{max_trials} trials" if max_trials is not None else "",
              f"{fmt_duration(seconds)}" if math.isfinite(seconds) else ""]
    note("trials start: up to " + " or ".join(x for x in limits if x) if any(limits) else "trials start (no limit set)")


def fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _size(n: Any) -> str:
    from autocompress.report.tables import fmt_bytes
    return fmt_bytes(n) if isinstance(n, (int, float)) and math.isfinite(n) else "size ?"


def _figures(attrs: dict) -> str:
    parts = []
    if attrs.get("val_accuracy") is not None:
        parts.append(f"val {100 * attrs['val_accuracy']:.2f} %")
    if attrs.get("size_bytes") is not None:
        parts.append(_size(attrs["size_bytes"]))
    if attrs.get("speedup") is not None:
        parts.append(f"{attrs['speedup']:.2f}x speed")
    return ", ".join(parts)


class TrialProgress:
    """Optuna callback ``(study, trial)``: prints the line above after each trial.

    ``total``: trials the search will count (``max_trials``, None = until the deadline);
    ``count(study)``: how many have counted so far (failed trials do not); ``remaining_s()``:
    seconds the deadline leaves (inf without one); ``rank(attrs)``: the search's "best so far" order.
    """

    def __init__(self, total: int | None, count: Callable[[Any], int], rank: Callable[[dict], tuple],
                 remaining_s: Callable[[], float] = lambda: math.inf, stream: TextIO | None = None) -> None:
        self.total, self.count, self.rank, self.remaining_s = total, count, rank, remaining_s
        self.stream = stream
        self.t0 = time.monotonic()
        self.durations: list[float] = []

    def __call__(self, study: Any, trial: Any) -> None:
        if not enabled():
            return
        print(self.line(study, trial), file=self.stream or sys.stderr, flush=True)

    def line(self, study: Any, trial: Any) -> str:
        elapsed = time.monotonic() - self.t0
        dur = trial.duration.total_seconds() if getattr(trial, "duration", None) else None
        if dur is not None:
            self.durations.append(dur)
        k = self.count(study)
        of = f"/{self.total}" if self.total is not None else ""
        state = trial.state.name.lower()
        what = _figures(trial.user_attrs) if state == "complete" else (trial.user_attrs.get("note") or "")
        head = f"trial {k}{of} (#{trial.number}) done" if state == "complete" else f"trial #{trial.number} {state}"
        took = f" in {fmt_duration(dur)}" if dur is not None else ""
        what = what if len(what) <= 100 else what[:99] + "…"
        detail = f" ({state}: {what})" if what else f" ({state})"
        return " | ".join([f"search: {head}{took}{detail}", f"{fmt_duration(elapsed)} elapsed, ETA {self._eta(k)}",
                           self._best(study)])

    def _eta(self, k: int) -> str:
        left = self.remaining_s()
        if self.total is not None and self.durations:
            per = sum(self.durations) / len(self.durations)
            left = min(left, per * max(self.total - k, 0))
        return "?" if not math.isfinite(left) else f"~{fmt_duration(left)}"

    def _best(self, study: Any) -> str:
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        if not done:
            return "best so far: none yet"
        best = min(done, key=lambda t: self.rank(dict(t.user_attrs)))
        ok = "meets the budget" if not best.user_attrs.get("violations", ["?"]) else "budget not met yet"
        return f"best so far: #{best.number}, {_figures(best.user_attrs)}, {ok}"

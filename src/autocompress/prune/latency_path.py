"""A structured pruning path measured on the runtime: which layers to thin, in which order, so
that each step saves the most time for the least accuracy (NetAdapt's idea, Yang et al. 2018,
with our sensitivity curves standing in for its short fine-tunes).

Per-layer costs in MACs, or even per-layer timings taken one layer at a time, misjudge a real
runtime: thinning one layer changes the next one's input too, and kernels favour some widths.
On ONNX Runtime at batch 64, LeNet-5's 500-wide Linear costs little time while its first
convolution costs more than its MACs say; a MAC-balanced profile cut the Linear to 25 units
(4 epochs did not win the accuracy back) for 5.3x, while thinning the convolutions and keeping the
Linear ran 6.9x and recovered in one epoch. So the path is built greedily from joint timings:
from the unpruned model, every layer's next step on the ratio grid is tried on a copy and timed
against the original (``speed``), and the step with the smallest predicted accuracy drop per unit
of time saved is taken. Each point records its ratios, the share of time it saves and the
predicted drop; a recipe's ``structured_ratio`` then picks the first point that saves that share.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable

from torch import nn

from autocompress.prune.sensitivity import SensitivityResult, _envelope, _interp

log = logging.getLogger(__name__)

# predicted accuracy lost before any fine-tune beyond which no fine-tune wins it back: the walk ends
HOPELESS = 0.5
# shares of time saved this close count as reached: the probe's timings are that noisy
SAVED_TOL = 0.02

Speed = Callable[[nn.Module], "float | None"]   # speed-up of a pruned copy over the original, None: stop


def _drop(sens: SensitivityResult, layer: str, r: float) -> float:
    """The layer's predicted drop at ratio ``r``, read as allocate_ratios reads it."""
    return _interp([0.0, *sens.ratios], [0.0, *_envelope(sens.drops(layer))], r)


def latency_path(model: nn.Module, example, sens: SensitivityResult, speed: Speed, *,
                 round_to: int | None = 8, prune: Callable | None = None) -> list[dict] | None:
    """The greedy path (see module doc) as ``[{"ratios": {layer: r}, "saved": s, "drop": d}, ...]``,
    ``saved`` rising. When ``speed`` stops (its time is spent) the path so far comes back, its last
    point marked ``"partial": True``; shares beyond a path are left to MACs (:func:`point_for`).
    ``None`` when not even one point was timed.
    ``prune(copy, ratios)`` prunes a copy (default: :func:`prune_channels_` at those ratios)."""
    from autocompress.prune.structured import StructuredPruneConfig, StructuredPruneError, prune_channels_

    def default_prune(m: nn.Module, ratios: dict[str, float]) -> nn.Module:
        return prune_channels_(m, StructuredPruneConfig(ratio=0.0, per_layer=ratios, round_to=round_to), example)
    prune = prune or default_prune
    layers = list(sens.scores)
    grid = list(sens.ratios)
    steps = [0.0, *grid]
    at = {n: 0 for n in layers}           # index into steps
    cur_saved, cur_drop = 0.0, 0.0
    path: list[dict] = []
    if hasattr(speed, "expect"):     # about how many copies the greedy walk times (it can stop early)
        speed.expect(int(1.25 * len(layers) * len(grid) * (len(layers) + 1) / 2) + len(layers))
    while True:
        best = None
        for n in layers:
            if at[n] >= len(grid):
                continue
            ratios = {k: steps[at[k]] for k in layers if at[k] > 0}
            ratios[n] = grid[at[n]]
            try:
                s = speed(prune(copy.deepcopy(model), ratios))
            except StructuredPruneError as e:
                log.debug("latency path: %s at %s cannot be pruned (%s)", n, ratios[n], e)
                at[n] = len(grid)             # this layer goes no further
                continue
            if s is None:
                if path:
                    path[-1]["partial"] = True
                return path or None
            saved = max(0.0, 1.0 - 1.0 / max(s, 1e-9))
            drop = sum(_drop(sens, k, r) for k, r in ratios.items())
            gain = saved - cur_saved
            # accuracy per unit of time saved; a step that saves nothing (noise) ranks last
            price = (drop - cur_drop) / gain if gain > 0.005 else float("inf")
            if best is None or (price, drop) < (best[0], best[3]):
                best = (price, n, saved, drop, ratios)
        if best is None:
            break
        _, n, saved, drop, ratios = best
        at[n] += 1
        if saved > cur_saved:     # a point the path keeps: it saves more than the last one
            cur_saved, cur_drop = saved, drop
            path.append({"ratios": ratios, "saved": round(saved, 4), "drop": round(drop, 5)})
        if cur_drop > HOPELESS:
            break
    log.info("latency path: %d points, up to %.0f %% of the time saved", len(path), 100 * cur_saved)
    return path


def point_for(path: list[dict], share: float) -> dict | None:
    """The first point that saves ``share`` of the time; ``None`` beyond the path (a share the
    walk could not reach at a recoverable drop, or its probe ran out of time): MACs decide there.
    On a model whose time is mostly fixed overhead (a tiny MLP) no point saves much, and a
    modest share taken as "the deepest point" would cut it to a few units.
    A point within ``SAVED_TOL`` of the share counts (the probe's timings are that noisy): a
    30 % recipe must not jump to a much deeper point because the nearer one timed 29.7 %."""
    return next((p for p in path or () if p["saved"] >= share - SAVED_TOL), None)


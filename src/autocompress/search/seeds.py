"""Seed recipes derived from the model in hand rather than LeNet-sized constants.

Two measurements decide them: a technique's sensitivity (how much validation accuracy each
target, e.g. a share of the MACs removed, costs *before* any fine-tune, by adding up the
per-layer drops of the allocated profile) and the cost of one fine-tuning epoch (a few timed optimizer steps). So a
fragile model gets gentler ratios, a model whose epoch costs minutes gets fine-tunes the
search time can pay for, and candidates that need no fine-tune at all (int8 PTQ; a ratio the
sensitivity says is free) are scored first, in seconds.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import torch
from torch import nn

from autocompress.search.budget import Budget
from autocompress.search.recipe import Recipe

log = logging.getLogger(__name__)

# predicted accuracy lost before fine-tuning (fraction) that a short / long / longest fine-tune is
# trusted to win back: the seeds' ratios are the largest ones predicted under these
RECOVERABLE = (0.05, 0.3, 0.6)
SEED_SHARE = 0.5          # the fine-tuned seeds together get at most this much of the search time
MIN_SEED_EPOCHS = 0.5     # a fine-tuned seed gets at least this much, or fewer seeds are fine-tuned


def epoch_seconds(model: nn.Module, train_set, batch_size: int = 64, steps: int = 3,
                  device: str | torch.device = "cpu") -> float:
    """Seconds one fine-tuning epoch of ``model`` takes on ``device``, where the trials' fine-tunes
    run (``steps`` timed optimizer steps on a copy, after one warm-up step, scaled to the epoch),
    with the batches ``fit`` makes. Timed on the CPU while the fine-tunes ran on a GPU, every
    plan (seed lengths, follow-ups, what still fits) would be an order of magnitude too cautious."""
    import itertools

    from autocompress.train import cross_entropy, shuffled_batches, to_device
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    m = copy.deepcopy(model).to(dev).train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-6)
    it = itertools.cycle(shuffled_batches(train_set, batch_size, seed=0))
    times = []
    for _ in range(steps + 1):
        x, y = next(it)
        sync()
        t0 = time.perf_counter()
        loss = cross_entropy(m, to_device(x, dev), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    per_step = sorted(times[1:])[len(times[1:]) // 2]
    return per_step * math.ceil(len(train_set) / batch_size)


def predicted_drop(sens: dict | None, target: float) -> float | None:
    """Validation accuracy (fraction) lost before fine-tuning when ``target`` of the MACs go with
    the sensitivity-allocated profile: the per-layer drops at the allocated ratios, added up.
    ``None`` when there is no analysis or the target lies beyond what was analysed."""
    if not sens or "scores" not in sens or target <= 0:
        return None if target > 0 else 0.0
    if sens.get("latency_path"):       # a speed budget's timed path: the target is a share of time
        from autocompress.prune.latency_path import point_for
        p = point_for(sens["latency_path"], target)
        return p["drop"] if p is not None else None
    from autocompress.prune import SensitivityResult, allocate_ratios
    res = SensitivityResult.from_dict(sens)
    try:
        profile = allocate_ratios(res, target)
    except ValueError:
        return None
    xs = [0.0, *res.ratios]
    total = 0.0
    for layer, r in profile.items():
        drops = [0.0, *(max(d, 0.0) for d in res.drops(layer))]
        for i in range(1, len(drops)):         # monotone envelope: more pruning never helps
            drops[i] = max(drops[i], drops[i - 1])
        total += _interp(xs, drops, r)
    return total


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            f = (x - xs[i - 1]) / max(xs[i] - xs[i - 1], 1e-12)
            return ys[i - 1] + f * (ys[i] - ys[i - 1])
    return ys[-1]


def _largest(grid: list[float], drops: dict[float, float | None], limit: float) -> float | None:
    ok = [r for r in grid if drops[r] is not None and drops[r] <= limit]
    return max(ok) if ok else None


def _epochs(wanted: float, affordable: float, grid: list[float]) -> float:
    """The largest fine-tune on the grid that is at most ``wanted`` and what the time allows
    (never below the smallest positive one: a seed that trains nothing is a different seed)."""
    positive = sorted(e for e in grid if e > 0)
    fits = [e for e in positive if e <= min(wanted, affordable)]
    return fits[-1] if fits else positive[0]


def derived_levels(tech, sens: dict | None, budget: Budget, choices: dict) -> dict | None:
    """A technique's seed levels placed by its measured sensitivity, or ``None`` (no analysis, or
    the technique declares no ``sensitivity_seeds`` parameter): ``{"levels": (...), "free": ...}``.
    ``free`` is the largest setting predicted to stay within half the budget's drop with no
    fine-tune at all (a post-training candidate; ``None`` below 0.3), and the levels (as many as
    the technique declares) are the largest settings predicted recoverable by a short, a long and
    the longest fine-tune (``RECOVERABLE``), kept distinct so that they bracket the edge."""
    param = getattr(tech, "sensitivity_seeds", None)
    if not param or not sens or param not in choices or not tech.seed_levels:
        return None
    grid = sorted(float(r) for r in choices[param][1] if float(r) > 0)
    drops = {r: predicted_drop(sens, r) for r in grid}
    if all(v is None for v in drops.values()):
        return None
    # half the budget: the added-up drops underestimate a deep cut (layers' losses compound)
    free = _largest(grid, drops, 0.5 * budget.max_drop / 100)
    mild, strong, top = (_largest(grid, drops, lim) for lim in RECOVERABLE)
    mild, strong = mild or grid[0], strong or mild or grid[0]
    top = max(top or strong, strong)
    below = lambda r: max([g for g in grid if g < r], default=r)  # noqa: E731
    strong = min(strong, below(top))
    mild = min(mild, below(strong))
    # the mild level never goes past the technique's own mild setting: the added-up drops before
    # fine-tuning are optimistic for deep cuts (LeNet-5: 80 % predicted recoverable, 97.6 % after
    # its capped one-epoch fine-tune), and a seed inside the budget is what the sampler builds on
    declared = float(tech.seed_levels[0].get(param, mild))
    mild = min(mild, declared)
    n = len(tech.seed_levels)
    placed = [mild, strong, top, top][:n] if n <= 4 else [mild, strong] + [top] * (n - 2)
    log.info("%s seeds from sensitivity: predicted drops %s -> free %s, levels %s", tech.name,
             {r: None if v is None else round(100 * v, 1) for r, v in drops.items()}, free, placed)
    return {"levels": tuple({param: r} for r in placed),
            "free": {param: free} if free is not None and free >= 0.3 else None}


def cap_epochs(seeds: list[Recipe], epoch_s: float | None, search_s: float, epoch_grid: list[float]) -> list[Recipe]:
    """Fine-tunes the search time can pay for: the seeds that train together get at most
    ``SEED_SHARE`` of it (each the same cap, snapped down to the grid), so on a model whose epoch
    takes minutes the sampler still gets its turn. Seeds the cap makes identical run once (levels
    that differed only in their fine-tune length, or that a fragile model's sensitivity placed on
    the same ratio: SmallResNet's were 15, 15, 20, 20 %), and the time goes to the others."""
    while True:
        pairs = _cap(seeds, epoch_s, search_s, epoch_grid)
        twins = [orig for i, (orig, capped) in enumerate(pairs) if any(capped == c for _, c in pairs[:i])]
        if not twins:
            return [c for _, c in pairs]
        log.info("%d seed(s) identical to an earlier one once capped: dropped", len(twins))
        seeds = [r for r in seeds if not any(r is t for t in twins)]


def _cap(seeds: list[Recipe], epoch_s: float | None, search_s: float,
         epoch_grid: list[float]) -> list[tuple[Recipe, Recipe]]:
    """(seed, its capped version) for the seeds kept (see :func:`cap_epochs`)."""
    trained = [r for r in seeds if r.finetune_epochs > 0]
    if not trained or not epoch_s or math.isinf(search_s):
        return [(r, r) for r in seeds]
    affordable = SEED_SHARE * search_s / (len(trained) * epoch_s)
    if affordable < MIN_SEED_EPOCHS and len(trained) > 1:
        # too short to recover anything (MobileNetV3 on 2 cores: 0.25 epochs each, every one out
        # of budget): fewer fine-tuned seeds, the strongest dropped first (seeds run mildest first)
        keep = max(1, min(len(trained), int(SEED_SHARE * search_s / (MIN_SEED_EPOCHS * epoch_s))))
        dropped = trained[keep:]
        log.info("one fine-tuning epoch takes %.1f s: %d of %d fine-tuned seeds kept", epoch_s, keep, len(trained))
        seeds = [r for r in seeds if not any(r is d for d in dropped)]
        trained = trained[:keep]
        affordable = SEED_SHARE * search_s / (len(trained) * epoch_s)
    if affordable < max(r.finetune_epochs for r in trained):
        log.info("one fine-tuning epoch takes %.1f s: seed fine-tunes capped at %.2f epochs", epoch_s, affordable)
    out = []
    for r in seeds:
        c = r
        if r.finetune_epochs > 0:
            c = Recipe.from_dict({**r.to_dict(), "finetune_epochs": _epochs(r.finetune_epochs, affordable, epoch_grid)})
        out.append((r, c))
    return out

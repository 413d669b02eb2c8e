"""Importance criteria: small callables scoring each weight; helpers reduce them per channel.

A criterion is called as ``criterion(weight, taylor)`` and returns a tensor shaped like ``weight``
(higher = more important). ``taylor`` is the first-order Taylor statistic ``sum_b |w * dL/dw|``
accumulated over a few real batches (see :func:`taylor_stats`); only criteria with
``needs_data = True`` use it. :func:`channel_scores` reduces per-weight scores to one score per
output channel (dim 0) or input channel (dim 1).

Every criterion is registered once, in :data:`CRITERIA`, for both kinds of pruning: its per-weight
scores (unstructured ``prune_``) and its channel ranking (structured ``prune_channels_``: a
torch-pruning group importance, or channel sums of the per-weight scores), or it says it has none.
:func:`register_criterion` adds one; every ``importance=`` accepts its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Protocol

import torch
from torch import nn

from autocompress.train import LossFn, cross_entropy

ImportanceName = str    # a name in CRITERIA: "l1", "l2", "taylor", "random", "fpgm" or one registered


class Importance(Protocol):
    needs_data: ClassVar[bool]

    def __call__(self, weight: torch.Tensor, taylor: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Magnitude:
    """|w| (p=1) or w**2 (p=2): the classic magnitude criterion (Han et al. 2015)."""

    p: int = 1
    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ValueError(f"Magnitude.p must be 1 or 2, got {self.p}")

    def __call__(self, weight: torch.Tensor, taylor: torch.Tensor | None = None) -> torch.Tensor:
        w = weight.detach()
        return w.abs() if self.p == 1 else w.square()


@dataclass(frozen=True)
class Taylor:
    """First-order Taylor |w * g| (Molchanov et al. 2019): the loss change if the weight is removed."""

    needs_data: ClassVar[bool] = True

    def __call__(self, weight: torch.Tensor, taylor: torch.Tensor | None = None) -> torch.Tensor:
        if taylor is None:
            raise ValueError("Taylor importance needs data: pass batches of real (x, y) to accumulate |w*g|")
        if taylor.shape != weight.shape:
            raise ValueError(f"Taylor statistic shape {tuple(taylor.shape)} != weight {tuple(weight.shape)}")
        return taylor


@dataclass(frozen=True)
class Random:
    """Uniform random scores: the baseline every pruning paper compares with."""

    seed: int = 0
    needs_data: ClassVar[bool] = False

    def __call__(self, weight: torch.Tensor, taylor: torch.Tensor | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + weight.numel())
        return torch.rand(weight.shape, generator=g)


@dataclass(frozen=True)
class Criterion:
    """One pruning criterion, declared for both kinds of pruning.

    ``score``: per-weight scores for unstructured pruning (``None``: it ranks whole channels only).
    ``channels``: builds torch-pruning's group importance for structured pruning; ``None`` derives
    the channel ranking from ``score`` (each channel's summed scores over the group's layers).
    ``structured=False``: it has no structured form. ``needs_data``: it reads real batches
    (gradients)."""

    name: str
    score: Importance | None = None
    channels: Callable[[], Any] | None = None
    structured: bool = True
    needs_data: bool = False

    def scorer(self) -> Importance:
        """The per-weight scoring, or a clear error when this criterion has none."""
        if self.score is None:
            raise ValueError(f"pruning criterion {self.name!r} ranks whole channels only (no per-weight "
                             f"scores): use it with prune_channels_ / StructuredPruneConfig, or choose one of "
                             f"{sorted(n for n, c in CRITERIA.items() if c.score is not None)} for prune_")
        return self.score


def _tp_importance():   # torch-pruning builds the structured forms; imported only when one is built
    import torch_pruning as tp
    return tp.importance


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, score: Importance | None = None, *, channels: Callable[[], Any] | None = None,
                       structured: bool = True, needs_data: bool | None = None,
                       replace: bool = False) -> Criterion:
    """Register a criterion under ``name`` (see :class:`Criterion`); returns it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_criterion: name must be a non-empty string, got {name!r}")
    if name in CRITERIA and not replace:
        raise ValueError(f"pruning criterion {name!r} is already registered (pass replace=True to redefine it)")
    if score is None and (channels is None or not structured):
        raise ValueError(f"pruning criterion {name!r} declares neither per-weight scores (score=) nor a "
                         f"structured form (channels=)")
    if score is not None and not callable(score):
        raise ValueError(f"pruning criterion {name!r}: score must be callable(weight, taylor) -> scores")
    need = bool(getattr(score, "needs_data", False)) if needs_data is None else needs_data
    CRITERIA[name] = c = Criterion(name, score, channels, structured, need)
    return c


register_criterion("l1", Magnitude(1), channels=lambda: _tp_importance().GroupMagnitudeImportance(p=1))
register_criterion("l2", Magnitude(2), channels=lambda: _tp_importance().GroupMagnitudeImportance(p=2))
register_criterion("taylor", Taylor(), channels=lambda: _tp_importance().GroupTaylorImportance())
register_criterion("random", Random(), channels=lambda: _tp_importance().RandomImportance())
# filters nearest the layer's geometric median are redundant (He et al. 2019): a ranking of whole
# filters, with no meaning for single weights
register_criterion("fpgm", None, channels=lambda: _tp_importance().FPGMImportance())


def get_criterion(name_or_fn: "str | Criterion | Importance") -> Criterion:
    """A registered name, a :class:`Criterion`, or a per-weight callable ``(weight, taylor) -> scores``
    (with an optional ``needs_data`` attribute) as a criterion."""
    if isinstance(name_or_fn, Criterion):
        return name_or_fn
    if isinstance(name_or_fn, str):
        if name_or_fn not in CRITERIA:
            raise ValueError(f"unknown pruning criterion {name_or_fn!r}; known: {sorted(CRITERIA)} "
                             f"(add one with autocompress.prune.register_criterion)")
        return CRITERIA[name_or_fn]
    if callable(name_or_fn):
        label = getattr(name_or_fn, "__name__", type(name_or_fn).__name__)
        return Criterion(label, name_or_fn, needs_data=bool(getattr(name_or_fn, "needs_data", False)))
    raise ValueError(f"a pruning criterion is a registered name ({sorted(CRITERIA)}), a Criterion or a "
                     f"callable(weight, taylor) -> scores; got {type(name_or_fn).__name__}")


def get_importance(name_or_fn: str | Importance) -> Importance:
    """The per-weight scoring of a criterion (unstructured pruning)."""
    return get_criterion(name_or_fn).scorer()


class _Scorings(Mapping):
    """Read-only view: name -> per-weight scoring, of the criteria that have one (kept for callers
    of the former ``IMPORTANCE`` dict; the registry is :data:`CRITERIA`)."""

    def __getitem__(self, name: str) -> Importance:
        c = CRITERIA[name]
        if c.score is None:
            raise KeyError(name)
        return c.score

    def __iter__(self) -> Iterator[str]:
        return (n for n, c in CRITERIA.items() if c.score is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


IMPORTANCE: Mapping[str, Importance] = _Scorings()


def channel_scores(score: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """One score per slice along ``dim``: conv (O,I,kh,kw) with dim=0 -> (O,). Sums, so for
    Magnitude(1) this is the channel's L1 norm and for Magnitude(2) its squared L2 norm."""
    other = [d for d in range(score.dim()) if d != dim]
    return score.sum(dim=other) if other else score


def channel_importance(criterion: Importance, weight: torch.Tensor, taylor: torch.Tensor | None = None,
                       dim: int = 0) -> torch.Tensor:
    return channel_scores(criterion(weight, taylor), dim)


def taylor_stats(model: nn.Module, params: Mapping[str, nn.Parameter], data: Iterable,
                 loss_fn: LossFn | None = None, batches: int = 4) -> dict[str, torch.Tensor]:
    """``sum over batches |w * dL/dw|`` for each named parameter, on up to ``batches`` real batches.

    Per-batch absolute values (not |sum|) so that opposing gradients of different batches do not
    cancel. The model's own ``.grad`` fields are left as they were.
    """
    loss_fn = loss_fn or cross_entropy
    saved = [(p, p.grad) for p in model.parameters()]
    acc = {n: torch.zeros_like(p, memory_format=torch.contiguous_format) for n, p in params.items()}
    was_training = model.training
    model.eval()  # fixed BN statistics / no dropout: score the model as it will be used
    seen = 0
    try:
        for x, y in data:
            if seen >= batches:
                break
            for p, _ in saved:
                p.grad = None
            loss_fn(model, x, y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    acc[n] += (p.detach() * p.grad).abs()
            seen += 1
    finally:
        for p, g in saved:
            p.grad = g
        model.train(was_training)
    if seen == 0:
        raise ValueError("taylor_stats: the data yielded no batches; Taylor importance needs real samples")
    return acc


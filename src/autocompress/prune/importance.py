"""Importance criteria: small callables scoring each weight; helpers reduce them per channel.

A criterion is called as ``criterion(weight, taylor)`` and returns a tensor shaped like ``weight``
(higher = more important). ``taylor`` is the first-order Taylor statistic ``sum_b |w * dL/dw|``
accumulated over a few real batches (see :func:`taylor_stats`); only criteria with
``needs_data = True`` use it. :func:`channel_scores` reduces per-weight scores to one score per
output channel (dim 0) or input channel (dim 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Literal, Mapping, Protocol

import torch
from torch import nn

from autocompress.train import LossFn, cross_entropy

ImportanceName = Literal["l1", "l2", "taylor", "random"]


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


IMPORTANCE: dict[str, Importance] = {"l1": Magnitude(1), "l2": Magnitude(2), "taylor": Taylor(), "random": Random()}


def get_importance(name_or_fn: str | Importance) -> Importance:
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in IMPORTANCE:
        raise ValueError(f"unknown importance {name_or_fn!r}; choose from {sorted(IMPORTANCE)}")
    return IMPORTANCE[name_or_fn]


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


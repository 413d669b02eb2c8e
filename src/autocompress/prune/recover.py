"""Recovery fine-tuning after pruning, with the user's loop or ours.

We never take over a user's training: a technique accepts ``finetune(model) -> model``; these
helpers build one from data + :class:`~autocompress.train.TrainConfig`, optionally with the user's
``train_step(model, x, y, optimizer) -> loss`` or a ``loss_fn(model, x, y) -> loss`` (the
distillation helper plugs a teacher in there). Pruning masks stay enforced in either case.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from autocompress.data import Splits
from autocompress.prune.masks import apply_masks
from autocompress.train import LossFn, StepHook, TrainConfig, fit, make_optimizer

log = logging.getLogger(__name__)

Finetune = Callable[[nn.Module], nn.Module]
TrainStep = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.optim.Optimizer], "torch.Tensor | float"]


def as_loader(data: Splits | Dataset | Iterable, batch_size: int = 128, seed: int = 0) -> Iterable:
    """A :class:`Splits` gives its shuffled *train* loader, a Dataset a shuffled loader; any other
    iterable of ``(x, y)`` batches is used as is."""
    if isinstance(data, Splits):
        return data.loader("train", batch_size, shuffle=True, seed=seed)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    if not hasattr(data, "__iter__"):
        raise TypeError(f"data must be a Splits, a Dataset or an iterable of (x, y) batches, got {type(data).__name__}")
    return data


def finetune(model: nn.Module, data: Splits | Dataset | Iterable, cfg: TrainConfig | None = None, *,
             loss_fn: LossFn | None = None, train_step: TrainStep | None = None,
             hooks: Iterable[StepHook] = (), desc: str = "finetune") -> nn.Module:
    """Fine-tune ``model`` in place; pruning masks are re-applied after every step.

    With ``train_step`` the user's step runs (it gets the optimizer built from ``cfg``); otherwise
    :func:`autocompress.train.fit` with ``loss_fn`` (cross-entropy by default).
    """
    cfg = cfg or TrainConfig()
    hooks = [apply_masks, *hooks]
    loader = as_loader(data, cfg.batch_size, cfg.seed)
    if train_step is None:
        return fit(model, loader, cfg, loss_fn=loss_fn, hooks=hooks, desc=desc)
    total = max(1, math.ceil(cfg.epochs * len(loader))) if cfg.epochs > 0 else 0  # type: ignore[arg-type]
    opt = make_optimizer(model, cfg)
    model.train()
    step = 0
    with tqdm(total=total, desc=desc, disable=not cfg.progress, leave=False) as bar:
        while step < total:
            for x, y in loader:
                train_step(model, x, y, opt)
                for h in hooks:
                    h(model)
                step += 1
                bar.update(1)
                if step >= total:
                    break
    model.eval()
    return model


def make_finetune(data: Splits | Dataset | Iterable, cfg: TrainConfig | None = None, *,
                  loss_fn: LossFn | None = None, train_step: TrainStep | None = None,
                  hooks: Iterable[StepHook] = ()) -> Finetune:
    """A ``finetune(model) -> model`` callable to hand to :func:`prune_` / :func:`prune_channels_`."""
    hooks = tuple(hooks)

    def _run(model: nn.Module) -> nn.Module:
        return finetune(model, data, cfg, loss_fn=loss_fn, train_step=train_step, hooks=hooks)

    return _run

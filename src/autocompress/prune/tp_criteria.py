"""A pruning criterion as torch-pruning's group importance (what ``prune_channels_`` ranks with).

A registered criterion brings its own (``Criterion.channels``); one with only per-weight scores (a
user's callable) is ranked here the way torch-pruning ranks magnitudes: each channel's summed
scores in every layer of its dependency group (outputs, the next layer's inputs, norms), averaged
over the group and divided by the mean. This file and ``structured.py`` are the only ones that
touch torch-pruning.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch_pruning.pruner import function as F

from autocompress.prune.importance import Criterion, Importance, get_criterion

_OUT = (F.prune_conv_out_channels, F.prune_linear_out_channels)
_IN = (F.prune_conv_in_channels, F.prune_linear_in_channels)
_NORM = (F.prune_batchnorm_out_channels, F.prune_layernorm_out_channels)


class FromWeightScores(tp.importance.GroupMagnitudeImportance):
    """Group importance from a per-weight criterion ``(weight, taylor) -> scores``; ``taylor`` is
    ``|w * grad|`` from the gradients accumulated before pruning, when the criterion needs data."""

    def __init__(self, criterion: Importance, name: str = "custom"):
        super().__init__(p=1, group_reduction="mean", normalizer="mean")
        self.criterion, self.name = criterion, name

    def _score(self, w: torch.Tensor) -> torch.Tensor:
        taylor = (w.detach() * w.grad).abs() if getattr(self.criterion, "needs_data", False) and \
            w.grad is not None else None
        s = self.criterion(w.detach(), taylor)
        if not isinstance(s, torch.Tensor) or s.shape != w.shape:
            raise ValueError(f"pruning criterion {self.name!r} must return a tensor shaped like the weight "
                             f"{tuple(w.shape)}, got {getattr(s, 'shape', type(s).__name__)}")
        if (s < 0).any():   # the ranking divides by the mean score: a negative one would flip it
            raise ValueError(f"pruning criterion {self.name!r} returned negative scores: scores must be >= 0, "
                             f"higher = more important")
        return s.float()

    @torch.no_grad()
    def __call__(self, group):
        imps, roots = [], []
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            transposed = getattr(layer, "transposed", False)
            if fn in _OUT:
                s = self._score(layer.weight)
                local = (s.transpose(0, 1) if transposed else s).flatten(1).sum(1)[idxs]
            elif fn in _IN:
                s = self._score(layer.weight)
                local = (s if transposed else s.transpose(0, 1)).flatten(1).sum(1)
                if fn == F.prune_conv_in_channels and layer.groups not in (1, layer.in_channels):
                    local = local.repeat(layer.groups)   # grouped conv: each group sees its inputs
                local = local[idxs]
            elif fn in _NORM and getattr(layer, "weight", None) is not None:
                local = self._score(layer.weight)[idxs]
            else:
                continue
            imps.append(local)
            roots.append(group[i].root_idxs)
        if not imps:
            return None   # no parameterised layer in the group: torch-pruning skips it
        return self._normalize(self._reduce(imps, roots), self.normalizer)


def group_importance(criterion: "str | Criterion | Importance | tp.importance.Importance") -> tuple:
    """``(torch-pruning importance, needs_data, name)`` for a criterion name, a :class:`Criterion`,
    a per-weight callable or a torch-pruning importance object."""
    if isinstance(criterion, tp.importance.Importance):
        return criterion, isinstance(criterion, tp.importance.GroupTaylorImportance), type(criterion).__name__
    c = get_criterion(criterion)
    if not c.structured:
        raise ValueError(f"pruning criterion {c.name!r} has no structured form: it scores single weights "
                         f"only; use it with prune_ (unstructured)")
    imp = c.channels() if c.channels is not None else FromWeightScores(c.scorer(), c.name)
    return imp, c.needs_data, c.name

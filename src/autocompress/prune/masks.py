"""Pruning masks that stay enforced during fine-tuning, then are made permanent.

A mask is a non-persistent buffer ``<param>_prune_mask`` on the module that owns the weight (so it
follows ``.to()`` / ``deepcopy`` but never enters the state dict). Masks are enforced three ways,
so no training loop can revive a pruned weight by accident:

* :func:`apply_masks` re-zeroes masked weights (pass it to ``fit(..., hooks=[apply_masks])``);
* a forward pre-hook on the root module applies them before every forward (covers user loops
  and fast paths such as ``TransformerEncoderLayer``'s fused kernel that bypass sub-modules);
* :func:`make_permanent` applies them one last time and removes buffers and hook, leaving exact
  zeros in the weights (the compressed-storage step relies on that).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from autocompress.prune.targets import ALL_KINDS, LayerKind, find_targets

log = logging.getLogger(__name__)

SUFFIX = "_prune_mask"


def _mask_items(model: nn.Module):
    """(module_name, module, param_name, mask) for every mask in ``model``."""
    for mname, m in model.named_modules():
        for bname, buf in m.named_buffers(recurse=False):
            if bname.endswith(SUFFIX):
                yield mname, m, bname[: -len(SUFFIX)], buf


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Zero every masked weight in place (a ``fit`` hook: runs after each optimizer step)."""
    for _, m, pname, mask in _mask_items(model):
        getattr(m, pname).mul_(mask)


@torch.no_grad()
def _pre_forward(module: nn.Module, args) -> None:
    # tracing / export must not record an in-place parameter update; weights are already masked
    if (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.jit.is_scripting()):
        return None
    for _, m, pname, mask in _mask_items(module):
        w = getattr(m, pname)
        # mutate only when an optimizer step revived a pruned weight: an unconditional in-place
        # update would bump the version counter and break loops that run several forwards
        # before one backward (gradient accumulation)
        if torch.count_nonzero(w.masked_select(mask == 0)):
            w.mul_(mask)
    return None


def _has_hook(model: nn.Module) -> bool:
    return any(h is _pre_forward for h in model._forward_pre_hooks.values())


def set_mask(model: nn.Module, module: nn.Module, param_name: str, mask: torch.Tensor) -> None:
    """Attach (or replace) the mask of ``module.<param_name>``; 1 = keep, 0 = pruned."""
    w = getattr(module, param_name)
    if mask.shape != w.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != {param_name} shape {tuple(w.shape)}")
    module.register_buffer(param_name + SUFFIX, mask.to(dtype=w.dtype, device=w.device), persistent=False)
    with torch.no_grad():
        w.mul_(getattr(module, param_name + SUFFIX))
    if not _has_hook(model):
        model.register_forward_pre_hook(_pre_forward)


def get_mask(module: nn.Module, param_name: str) -> torch.Tensor | None:
    return getattr(module, param_name + SUFFIX, None)


def has_masks(model: nn.Module) -> bool:
    return any(True for _ in _mask_items(model))


def make_permanent(model: nn.Module) -> nn.Module:
    """Apply masks a last time, then drop mask buffers and the enforcing hook. Pruned weights are
    exact zeros in ``model.state_dict()`` afterwards; the model is a plain module again."""
    apply_masks(model)
    for _, m, pname, _ in list(_mask_items(model)):
        delattr(m, pname + SUFFIX)
    for k in [k for k, h in model._forward_pre_hooks.items() if h is _pre_forward]:
        del model._forward_pre_hooks[k]
    return model


remove_masks = make_permanent


class MaskHook:
    """``fit(..., hooks=[MaskHook()])``: re-apply masks after each optimizer step."""

    def __call__(self, model: nn.Module) -> None:
        apply_masks(model)


def sparsity_report(model: nn.Module, kinds: tuple[LayerKind, ...] = ALL_KINDS) -> dict[str, float]:
    """Fraction of exact zeros per prunable weight, keyed by parameter name (``"fc1.weight"``)."""
    return {t.name: float((t.param == 0).sum()) / t.param.numel() for t in find_targets(model, kinds)}


def global_sparsity(model: nn.Module, kinds: tuple[LayerKind, ...] = ALL_KINDS) -> float:
    """Fraction of zeros over all prunable weights together (weighted by size)."""
    ts = find_targets(model, kinds)
    total = sum(t.param.numel() for t in ts)
    return sum(int((t.param == 0).sum()) for t in ts) / max(total, 1)

"""torch-pruning adapter for :mod:`autocompress.prune.structured`: which layers it may rebuild,
how it is called (importance, heads, recurrent layers, channel shuffles) and one pass of its groups.
Everything that touches torch-pruning's internals lives here or in :mod:`autocompress.prune.families`.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch_pruning as tp
from torch import nn

from autocompress.outputs import call_model, pick_output
from autocompress.prune.families import head_ratio_for, opaque_rnns
from autocompress.prune.heads import PrunedMultiheadAttention

log = logging.getLogger("autocompress.prune.structured")   # one logger for the whole verb


call = call_model   # model(x), model(*x) for a tuple, model(**x) for a dict of keyword inputs

class StructuredPruneError(RuntimeError):
    """Surgery failed or changed the model's output; the model was restored and the message names
    the layers involved."""



# -- torch-pruning adapter -------------------------------------------------------------------

# criteria (and their torch-pruning importances) are registered in importance.CRITERIA

# modules torch-pruning rebuilds correctly (verified on the test zoo); anything else that owns
# parameters is frozen. LSTM support in torch-pruning is partial, so all recurrent layers are frozen.
_SUPPORTED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
              nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU, nn.Embedding,
              nn.MultiheadAttention)


class _Frozen(tp.pruner.function.BasePruningFunc):
    """Lets the dependency graph see a layer it cannot rebuild, so groups reaching it can be found
    (and skipped). Its prune functions refuse loudly: they must never run."""

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs):
        raise StructuredPruneError(f"refusing to prune the outputs of {type(layer).__name__}")

    def prune_in_channels(self, layer: nn.Module, idxs):
        raise StructuredPruneError(f"refusing to prune the inputs of {type(layer).__name__}")

    def get_out_channels(self, layer: nn.Module):
        if isinstance(layer, nn.RNNBase):
            return layer.hidden_size * (2 if layer.bidirectional else 1)
        return None

    def get_in_channels(self, layer: nn.Module):
        return layer.input_size if isinstance(layer, nn.RNNBase) else None


def _channel_vector(p: torch.Tensor) -> bool:
    """A parameter laid out along the channel axis only (gamma ``(C,)``, class token ``(1, 1, C)``,
    position embedding ``(1, N, C)``): torch-pruning prunes its last dim with the channels."""
    return p.ndim == 1 or (p.ndim <= 3 and p.shape[0] == 1 and p.shape[-1] > 1)


def frozen_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules owning parameters that structured pruning keeps intact: recurrent layers, modules
    owning weight matrices it cannot rebuild, and head-pruned attention (rebuilt by
    :mod:`autocompress.prune.heads` only, never by torch-pruning)."""
    def frozen(m: nn.Module) -> bool:
        own = list(m.parameters(recurse=False))
        if not own:
            return False
        if isinstance(m, (nn.RNNBase, PrunedMultiheadAttention)):
            return True
        return not isinstance(m, _SUPPORTED) and not all(_channel_vector(p) for p in own)
    return {n: m for n, m in model.named_modules() if frozen(m)}


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return pick_output(call(model, x))
    finally:
        model.train(was)


def _make_pruner(model, example, cfg, default, ratios, head_ratio, modules, ignored, mhas, frozen, hf, opaque, imp):
    heads = {**mhas, **{q: a.heads for a in hf for q in a.qkv}}
    head_ratios = {q: head_ratio_for(a.heads, head_ratio) for a in hf for q in a.qkv}
    # the tracer must see each recurrent layer as one node; a model's own channel parameters (class
    # token, gamma) are expected, so torch-pruning's warning about them is noise here
    with opaque_rnns(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.pruner.BasePruner(
            model, example, importance=imp, global_pruning=cfg.global_ranking,
            pruning_ratio=default, pruning_ratio_dict={modules[n]: r for n, r in ratios.items()},
            max_pruning_ratio=cfg.max_layer_ratio, ignored_layers=ignored,
            # per-layer ratios arrive rounded (structured.rounded_ratio); only a global ranking
            # leaves the rounding to torch-pruning
            round_to=cfg.round_to if cfg.global_ranking else None,
            num_heads=heads, prune_num_heads=any(r > 0 for r in head_ratios.values()),
            prune_head_dims=False, head_pruning_ratio_dict=head_ratios or None,
            output_transform=pick_output,
            customized_pruners={type(m): _Frozen() for m in frozen.values()})


def _pass(model, example, cfg, default, ratios, head_ratio, modules, ignored, mhas, frozen, hf, opaque,
          imp) -> list[str]:
    try:
        pruner = _make_pruner(model, example, cfg, default, ratios, head_ratio, modules, ignored, mhas, frozen,
                              hf, opaque, imp)
    except Exception as e:  # noqa: BLE001 - torch-pruning failed to trace: name what it could not handle
        hint = (f"; it cannot trace around {sorted(frozen)} ({', '.join(type(m).__name__ for m in frozen.values())}):"
                f" exclude the layers that feed them, or prune them unstructured") if frozen else ""
        raise StructuredPruneError(f"torch-pruning cannot build the dependency graph of "
                                   f"{type(model).__name__}: {type(e).__name__}: {e}{hint}") from e
    names = {m: n for n, m in modules.items()}
    skipped = []
    if opaque:
        # a group crossing a channel shuffle has meaningless indices: drop it before torch-pruning
        # ranks it (returning None makes it skip the group)
        rank = pruner.estimate_importance
        pruner.estimate_importance = lambda g: None if any(d.target.module in opaque for d, _ in g) else rank(g)
        log.debug("structured pruning keeps the channels that cross channel shuffles (%d reshapes)", len(opaque))
    for group in pruner.step(interactive=True):
        touched = {names.get(dep.target.module) for dep, _ in group}
        blocked = sorted(t for t in touched if t in frozen)
        if any(dep.target.module in opaque for dep, _ in group):
            log.debug("structured pruning skips the channels of %r: they cross a channel shuffle",
                     names.get(group[0][0].target.module))
            skipped.append(names.get(group[0][0].target.module))
            continue
        if blocked:
            root = names.get(group[0][0].target.module)
            log.debug("structured pruning skips the channels of %r: they feed %s (%s), which cannot be "
                     "rebuilt", root, blocked, ", ".join(type(frozen[b]).__name__ for b in blocked))
            skipped.append(root)
            continue
        try:
            group.prune()
        except Exception as e:  # noqa: BLE001 - name the layer whose channels could not be removed
            root = names.get(group[0][0].target.module) or type(group[0][0].target.module).__name__
            raise StructuredPruneError(f"removing channels of {root!r} (and {len(group) - 1} dependent "
                                       f"layers) failed: {type(e).__name__}: {e}") from e
    return skipped


def _failing_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """Name of the innermost module whose forward raises on ``x`` (None if none does)."""
    stack: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: stack.append(n)) for n, m in model.named_modules()]

    def leave(n: str) -> None:            # a forward hook's return value would replace the output
        if stack and stack[-1] == n:
            stack.pop()
    hooks += [m.register_forward_hook(lambda mod, a, o, n=n: leave(n)) for n, m in model.named_modules()]
    try:
        _forward(model, x)
        return None
    except Exception:  # noqa: BLE001 - the stack says where it happened
        return stack[-1] if stack else ""
    finally:
        for h in hooks:
            h.remove()

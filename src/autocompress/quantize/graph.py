"""Model surgery before quantization: BatchNorm folding and the data-flow facts the wrappers need.

Both use ``torch.fx`` when the model traces; when it does not (data-dependent control flow) BN
folding falls back to ``Sequential`` neighbours and the plan to "every layer on its own", which
is still exact (PyTorch and ONNX Runtime quantize the same tensors), only less fused.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)

# ops that keep every value on the same quantization grid (they select, reorder or clamp at 0):
# a quantized layer reading such a chain from another quantized layer's output can share its grid
_PASS_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
_PASS_FUNCS = {torch.relu, F.relu, torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout,
               torch.reshape, torch.squeeze, torch.unsqueeze}
_PASS_METHODS = {"relu", "view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
_RELU_MODULES = (nn.ReLU,)
_RELU_FUNCS = {torch.relu, F.relu}


def _trace(model: nn.Module) -> fx.GraphModule | None:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any trace failure means "no graph facts"
        log.info("torch.fx cannot trace %s (%s): using the per-layer fallback",
                 type(model).__name__, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return None


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.Module) -> None:
    """conv(x)*g/sqrt(v+eps) + (beta - mean*g/sqrt(v+eps)): rewrite conv's weight (C_out, ...) and bias."""
    std = torch.sqrt(bn.running_var + bn.eps)
    g = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = g / std                                                   # (C_out,)
    conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.ndim - 1))))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = (b - bn.running_mean) * factor + beta
    conv.bias = nn.Parameter(new_b.detach().clone())


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every eval-mode BatchNorm that directly follows a convolution (and is that
    convolution's only user) into it, replacing the BN by ``Identity``. Returns the folded BN names."""
    folded: list[str] = []
    gm = _trace(model)
    pairs: list[tuple[str, str]] = []
    if gm is not None:
        mods = dict(model.named_modules())
        for node in gm.graph.nodes:
            if node.op == "call_module" and isinstance(mods.get(node.target), _BNS):
                src = node.args[0] if node.args else None
                if (isinstance(src, fx.Node) and src.op == "call_module"
                        and isinstance(mods.get(src.target), _CONVS) and len(src.users) == 1):
                    pairs.append((src.target, node.target))
    else:
        for pname, parent in model.named_modules():
            if isinstance(parent, nn.Sequential):
                kids = list(parent.named_children())
                for (a, ma), (b, mb) in zip(kids, kids[1:]):
                    if isinstance(ma, _CONVS) and isinstance(mb, _BNS):
                        pre = f"{pname}." if pname else ""
                        pairs.append((pre + a, pre + b))
    mods = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = mods[conv_name], mods[bn_name]
        if bn.running_var is None or conv.weight.shape[0] != bn.num_features:
            continue
        _fold(conv, bn)
        _set(model, bn_name, nn.Identity())
        folded.append(bn_name)
    return folded


@dataclass
class Plan:
    """Data-flow facts about the wrapped layers (by module name)."""

    traced: bool = False
    relu_after: set[str] = field(default_factory=set)        # sole user of the output is a ReLU
    ties: dict[str, str] = field(default_factory=dict)        # layer -> upstream layer whose output grid it reads
    to_output: set[str] = field(default_factory=set)          # output reaches the network output via pass-through ops


def _is_pass(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCS or (node.target is operator.getitem and False)
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    return False


def _is_relu(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), _RELU_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target == "relu"


def plan(model: nn.Module, layers: set[str]) -> Plan:
    """Which layers can share an upstream output grid, fuse a following ReLU, or feed the output."""
    gm = _trace(model)
    if gm is None:
        return Plan()
    mods = dict(model.named_modules())
    out = Plan(traced=True)
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        users = list(node.users)
        if len(users) == 1 and _is_relu(users[0], mods):
            out.relu_after.add(node.target)
        # walk back through pass-through ops (single data input each) to another wrapped layer
        src = node.args[0] if node.args else None
        while isinstance(src, fx.Node) and _is_pass(src, mods):
            src = src.args[0] if src.args else None
        if isinstance(src, fx.Node) and src.op == "call_module" and src.target in layers:
            out.ties[node.target] = src.target
        # walk forward: does the output reach the graph output through pass-through ops only?
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if nxt.op == "output":
                out.to_output.add(node.target)
                break
            if not _is_pass(nxt, mods):
                break
            cur = nxt
    return out

"""Rewrite a converted ONNX graph into the layers the techniques understand, exactly.

onnx2torch translates node by node, so what an exporter spelt out survives: Keras (torch backend)
writes every ``Conv2D`` as ``Transpose -> Conv (no bias) -> Transpose -> Add(bias)`` in NHWC, every
``Dense`` as ``MatMul(W) + Add(b)``, float-to-float ``Cast`` s everywhere and a ``Reshape`` whose
target shape is computed from ``Shape``. Pruning and clustering see only ``nn.Linear`` / ``nn.Conv*``,
structured pruning cannot follow a permute into a flatten, and fx tracing (quantization) stops at
onnx2torch's data-dependent Reshape. Each pass below is an exact identity on the function:

* casts to the dtype a tensor already has are dropped;
* ``MatMul`` by a constant matrix (plus a following ``Add`` of a constant vector) becomes ``nn.Linear``;
* per-channel constant Add/Sub/Mul/Div after a convolution (a Keras bias, an unfused BatchNorm;
  directly or behind the NCHW->NHWC transpose) fold into its weight and bias;
* a transpose and its inverse around element-wise ops cancel (NHWC sandwiches collapse to NCHW);
* ``Reshape`` to ``(batch, -1)`` becomes ``torch.flatten(x, 1)``; other constant reshapes a static
  ``torch.reshape``; an NCHW->NHWC transpose feeding flatten -> ``nn.Linear`` is folded into the
  linear weight's column order; a mean over NHWC axes behind that transpose reduces NCHW axes.

Before these, :func:`autocompress.frontends.onnx_in.from_onnx` lets ONNX Runtime's basic rewrites
push the exporter's transposes towards the input and fold constants.

The module keeps the file's input layout: a Keras model still takes NHWC images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def canonicalize(gm: fx.GraphModule, example: list[torch.Tensor]) -> fx.GraphModule:
    """Apply the passes until none changes the graph; ``example`` gives shapes (batch not 1)."""
    for _ in range(20):
        _shapes(gm, example)
        changed = False
        for p in (_drop_casts, _reshapes, _matmul_to_linear, _conv_bias, _cancel_transposes,
                  _fold_flatten_transpose, _reduce_through_transpose):
            if p(gm):
                changed = True
                _commit(gm)
                _shapes(gm, example)
        if not changed:
            break
    return gm


# -- helpers -----------------------------------------------------------------------------------

def _shapes(gm: fx.GraphModule, example: list[torch.Tensor]) -> None:
    from torch.fx.passes.shape_prop import ShapeProp
    with torch.no_grad():
        ShapeProp(gm).propagate(*example)


def _commit(gm: fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()


def _cls(name: str):
    """onnx2torch's module class ``name`` (imported lazily: the package loads through our loader)."""
    import onnx2torch.node_converters as nc
    return getattr(nc, name)


def _mod(gm: fx.GraphModule, n, cls) -> nn.Module | None:
    if isinstance(n, fx.Node) and n.op == "call_module":
        m = gm.get_submodule(n.target)
        if isinstance(m, cls):
            return m
    return None


def _const(gm: fx.GraphModule, n) -> torch.Tensor | None:
    if isinstance(n, fx.Node) and n.op == "get_attr":
        obj = gm
        for part in n.target.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, torch.Tensor) else None
    return None


def _meta(n):
    return n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None


def _only_user(n: fx.Node) -> fx.Node | None:
    return next(iter(n.users)) if len(n.users) == 1 else None


def _add_of_const(gm: fx.GraphModule, n: fx.Node | None, src: fx.Node) -> torch.Tensor | None:
    """The constant ``c`` when ``n`` is ``Add(src, c)`` / ``Add(c, src)``, else None."""
    m = _mod(gm, n, _cls("OnnxBinaryMathOperation"))
    if m is None or m.math_op_function is not torch.add or m.broadcast == 1 or len(n.args) != 2:
        return None
    a, b = n.args
    other = b if a is src else a if b is src else None
    return _const(gm, other)


# -- passes (each returns True when it changed the graph) ---------------------------------------

def _drop_casts(gm: fx.GraphModule) -> bool:
    changed = False
    for n in list(gm.graph.nodes):
        if _mod(gm, n, _cls("OnnxCast")) is not None:
            src, mi, mo = n.args[0], _meta(n.args[0]), _meta(n)
            if mi is not None and mo is not None and mi.dtype == mo.dtype:
                n.replace_all_uses_with(src)
                gm.graph.erase_node(n)
                changed = True
    return changed


def _reshapes(gm: fx.GraphModule) -> bool:
    changed = False
    for n in list(gm.graph.nodes):
        if _mod(gm, n, _cls("OnnxReshape")) is None:
            continue
        x, mi, mo = n.args[0], _meta(n.args[0]), _meta(n)
        if mi is None or mo is None:
            continue
        si, so = tuple(mi.shape), tuple(mo.shape)
        target = _const(gm, n.args[1])
        with gm.graph.inserting_before(n):
            if len(si) > 2 and len(so) == 2 and so[0] == si[0] and so[1] == int(np.prod(si[1:])):
                new = gm.graph.call_function(torch.flatten, (x, 1))
            elif target is not None and 0 not in target.tolist():
                t = [int(s) for s in target.tolist()]
                if t[0] == si[0] and -1 not in t:
                    t[0] = -1           # the batch stays free, as in the file
                new = gm.graph.call_function(torch.reshape, (x, tuple(t)))
            else:
                continue
        new.meta = dict(n.meta)
        n.replace_all_uses_with(new)
        gm.graph.erase_node(n)
        changed = True
    return changed


def _matmul_to_linear(gm: fx.GraphModule) -> bool:
    changed = False
    for n in list(gm.graph.nodes):
        if _mod(gm, n, _cls("OnnxMatMul")) is None or len(n.args) != 2:
            continue
        x, w = n.args[0], _const(gm, n.args[1])
        if w is None or w.ndim != 2 or not w.is_floating_point() or _meta(x) is None or len(_meta(x).shape) < 2:
            continue
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
        lin.weight = nn.Parameter(w.detach().t().contiguous().clone())
        user = _only_user(n)
        b = _add_of_const(gm, user, n)
        out = n
        if b is not None and b.numel() == w.shape[1] and b.squeeze().ndim <= 1:
            lin.bias = nn.Parameter(b.detach().reshape(-1).clone())
            out = user
        gm.delete_submodule(n.target)
        gm.add_submodule(n.target, lin)
        n.args = (x,)
        if out is not n:
            out.replace_all_uses_with(n)
            gm.graph.erase_node(out)
        changed = True
    return changed


_AFFINE = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "div"}


def _channel_const(gm: fx.GraphModule, n: fx.Node, src: fx.Node, c: int, spatial: int, last: bool):
    """``(op, values)`` when ``n`` is Add/Sub/Mul/Div of ``src`` by a per-channel (or scalar) constant
    (channels on axis 1, or last when ``last``); Sub/Div only with ``src`` first."""
    m = _mod(gm, n, _cls("OnnxBinaryMathOperation"))
    if m is None or m.broadcast == 1 or len(n.args) != 2 or _AFFINE.get(m.math_op_function) is None:
        return None
    op = _AFFINE[m.math_op_function]
    a, b = n.args
    if a is src:
        k = _const(gm, b)
    elif b is src and op in ("add", "mul"):
        k = _const(gm, a)
    else:
        return None
    if k is None or not k.is_floating_point():
        return None
    if k.numel() == 1:
        return op, k.reshape(1).expand(c)
    if k.numel() != c:
        return None
    shape = list(k.shape)
    if last:
        ok = shape[-1] == c
    else:
        ok = len(shape) > spatial and all(s == 1 for s in shape[len(shape) - spatial:])
    return (op, k.reshape(-1)) if ok else None


def _conv_bias(gm: fx.GraphModule) -> bool:
    """Per-channel Add/Sub/Mul/Div constants after a convolution (a Keras bias, an unfused
    BatchNorm) become the convolution's weight scale and bias, directly or behind the NHWC transpose."""
    changed = False
    for n in list(gm.graph.nodes):
        conv = _mod(gm, n, _CONVS)
        if conv is None:
            continue
        c, spatial = conv.out_channels, conv.weight.ndim - 2
        src, last = n, False
        t_user = _only_user(n)
        t = _mod(gm, t_user, _cls("OnnxTranspose"))
        if t is not None and list(t.perm or []) == [0, *range(2, spatial + 2), 1]:
            src, last = t_user, True
        w = conv.weight.detach().clone()
        b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(c, dtype=w.dtype)
        folded = []
        while (u := _only_user(src)) is not None:
            hit = _channel_const(gm, u, src, c, spatial, last)
            if hit is None:
                break
            op, k = hit
            k = k.to(w.dtype)
            view = k.reshape(-1, *([1] * (w.ndim - 1)))
            if op == "add":
                b = b + k
            elif op == "sub":
                b = b - k
            elif op == "mul":
                w, b = w * view, b * k
            else:
                w, b = w / view, b / k
            folded.append(u)
            src = u
        if not folded:
            continue
        conv.weight = nn.Parameter(w)
        conv.bias = nn.Parameter(b)
        keep = t_user if last else n
        folded[-1].replace_all_uses_with(keep)
        for u in reversed(folded):
            gm.graph.erase_node(u)
        changed = True
    return changed


def _inverse(p: list[int], q: list[int]) -> bool:
    return len(p) == len(q) and [p[i] for i in q] == list(range(len(p)))


def _cancel_transposes(gm: fx.GraphModule) -> bool:
    tr = _cls("OnnxTranspose")
    for n in list(gm.graph.nodes):
        t1 = _mod(gm, n, tr)
        if t1 is None or t1.perm is None:
            continue
        chain, cur = [], n
        while (u := _only_user(cur)) is not None and _mod(gm, u, _ELEMENTWISE) is not None:
            chain.append(u)
            cur = u
        last = _only_user(cur)
        t2 = _mod(gm, last, tr)
        if t2 is None or t2.perm is None or not _inverse(list(t1.perm), list(t2.perm)):
            continue
        src = n.args[0]
        if chain:
            chain[0].replace_input_with(n, src)
            last.replace_all_uses_with(cur)
        else:
            last.replace_all_uses_with(src)
        gm.graph.erase_node(last)
        if not n.users:
            gm.graph.erase_node(n)
        return True     # shapes changed: recompute before the next match
    return False


def _fold_flatten_transpose(gm: fx.GraphModule) -> bool:
    """``Linear(flatten(act(x.permute(0,2,3,1))))`` == ``Linear'(flatten(act(x)))`` with W's columns
    reordered (``act``: element-wise ops, which commute with the permute)."""
    tr = _cls("OnnxTranspose")
    for n in list(gm.graph.nodes):
        t = _mod(gm, n, tr)
        if t is None or list(t.perm or []) != [0, 2, 3, 1]:
            continue
        chain, cur = [], n
        while (u := _only_user(cur)) is not None and _mod(gm, u, _ELEMENTWISE) is not None:
            chain.append(u)
            cur = u
        f = _only_user(cur)
        if not (isinstance(f, fx.Node) and f.op == "call_function" and f.target is torch.flatten
                and f.args[1:] == (1,)):
            continue
        lin_node = _only_user(f)
        lin = _mod(gm, lin_node, nn.Linear)
        mi = _meta(n.args[0])
        if lin is None or mi is None or len(mi.shape) != 4:
            continue
        _, c, h, w = tuple(mi.shape)
        with torch.no_grad():
            wt = lin.weight.reshape(lin.out_features, h, w, c).permute(0, 3, 1, 2).reshape(lin.out_features, -1)
            lin.weight = nn.Parameter(wt.contiguous().clone())
        (chain[0] if chain else f).replace_input_with(n, n.args[0])
        gm.graph.erase_node(n)
        return True
    return False


def _reduce_through_transpose(gm: fx.GraphModule) -> bool:
    """``mean(act(x.permute(p)), axes)`` == ``mean(act(x), p[axes])`` when the kept axes stay in
    order (Keras' GlobalAveragePooling2D over NHWC: axes (1, 2) of NHWC are (2, 3) of NCHW)."""
    tr, red = _cls("OnnxTranspose"), _cls("OnnxReduceStaticAxes")
    for n in list(gm.graph.nodes):
        t = _mod(gm, n, tr)
        if t is None or t.perm is None:
            continue
        perm = list(t.perm)
        chain, cur = [], n
        while (u := _only_user(cur)) is not None and _mod(gm, u, _ELEMENTWISE) is not None:
            chain.append(u)
            cur = u
        r_node = _only_user(cur)
        r = _mod(gm, r_node, red)
        if r is None or r.keepdims or not r.axes:
            continue
        axes = [a % len(perm) for a in r.axes]
        kept = [perm[i] for i in range(len(perm)) if i not in axes]
        if kept != sorted(kept):
            continue
        r.axes = sorted(perm[a] for a in axes)
        (chain[0] if chain else r_node).replace_input_with(n, n.args[0])
        gm.graph.erase_node(n)
        return True
    return False

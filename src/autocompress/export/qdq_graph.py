"""The ONNX graph edits behind the quantized export (qdq.py): a mutable view of the float
graph (nodes inserted before / after / instead of existing ones, fresh names, new initializers),
finding a wrapped layer's node by its weight, and the Q/DQ building blocks every mode uses.
What each quantization mode writes is in qdq.py; this module knows no mode."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from autocompress.export.onnx import ExportError

MS = "com.microsoft"


class Graph:
    """Mutable view of an ONNX graph: new nodes go before/after/instead of existing ones."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
        self.after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
        self.replace: dict[int, list[onnx.NodeProto]] = {}
        self.new_inits: list[TensorProto] = []
        self.names: set[str] = {t.name for t in self.g.initializer} | {
            o for n in self.g.node for o in n.output} | {i.name for i in self.g.input}
        self.qdq_cache: dict[tuple, str] = {}
        self.uses_ms = False

    def fresh(self, base: str) -> str:
        base = base.replace(":", "_")
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.fresh(base)
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def finish(self, report: dict[str, Any]) -> onnx.ModelProto:
        nodes = []
        for n in self.g.node:
            nodes += self.before.get(id(n), [])
            for r in self.replace.get(id(n), [n]):   # replacement nodes may carry their own Q/DQ
                if r is not n:
                    nodes += self.before.get(id(r), [])
                nodes.append(r)
                nodes += self.after.get(id(r), [])
            if id(n) in self.replace:
                nodes += self.after.get(id(n), [])
        used = {i for n in nodes for i in n.input}
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.node[:]
        self.g.node.extend(nodes)
        del self.g.initializer[:]
        self.g.initializer.extend(keep + [t for t in self.new_inits if t.name in used])
        del self.g.value_info[:]     # shapes of rewritten tensors are stale; the runtime re-infers
        if self.uses_ms and not any(o.domain == MS for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(MS, 1))
        del self.model.metadata_props[:]
        self.model.metadata_props.append(
            onnx.StringStringEntryProto(key="autocompress.quantization", value=json.dumps(report)))
        return self.model


# -- locating a layer in the graph ----------------------------------------------------------------

def find_weight(G: Graph, name: str, w: np.ndarray) -> tuple[onnx.NodeProto, str, bool]:
    """(consumer node, initializer name, transposed?) of layer ``name``'s weight ``w`` (C_out, ...).

    The exporters keep ``<module path>.weight`` for Conv/Gemm; MatMul weights become transposed
    constants with generated names, found by exact value. Several equal candidates = ambiguous."""
    def match(cand: str) -> bool | None:
        t = G.inits.get(cand)
        if t is None or len(G.consumers.get(cand, [])) != 1:
            return None
        if tuple(t.dims) == w.shape and np.array_equal(numpy_helper.to_array(t), w):
            return False
        if w.ndim == 2 and tuple(t.dims) == w.shape[::-1] and np.array_equal(numpy_helper.to_array(t), w.T):
            return True
        return None

    by_name = match(f"{name}.weight")
    if by_name is not None:
        return G.consumers[f"{name}.weight"][0], f"{name}.weight", by_name
    found = [(c, tr) for c in G.inits if (tr := match(c)) is not None]
    if len(found) > 1:
        raise ExportError(f"{name}: {len(found)} initializers equal this layer's weight "
                          f"({[c for c, _ in found][:4]}): cannot tell which node is this layer")
    if not found:
        raise ExportError(f"{name}: cannot find this layer's weight in the exported ONNX graph "
                          "(renamed and transformed by the exporter?); try exporter='torchscript'")
    cand, transposed = found[0]
    return G.consumers[cand][0], cand, transposed


def check_node(name: str, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    ok = {"Conv": (1, False), "Gemm": (1, None), "MatMul": (1, True)}.get(node.op_type)
    if ok is None or list(node.input).index(wname) != ok[0]:
        raise ExportError(f"{name}: weight feeds an unexpected ONNX node {node.op_type}{list(node.input)}")
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ExportError(f"{name}: Gemm with transA/alpha/beta is not supported")
        if bool(attrs.get("transB", 0)) == transposed:
            raise ExportError(f"{name}: Gemm transB does not match the weight layout")


def bias_input(G: Graph, node: onnx.NodeProto, b: np.ndarray | None, name: str = "") -> tuple | None:
    """Where the bias enters (Conv/Gemm input 2, or the Add after a MatMul); None if none or all-zero."""
    if b is None or (not np.any(b) and not (node.op_type in ("Conv", "Gemm") and len(node.input) > 2)):
        return None
    if node.op_type in ("Conv", "Gemm"):
        if len(node.input) > 2 and node.input[2]:
            return node, 2
        raise ExportError(f"{name or node.name}: the layer has a bias but its ONNX node {node.name} has none")
    users = G.consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add":
        add = users[0]
        for i, t in enumerate(add.input):
            if t in G.inits and np.array_equal(numpy_helper.to_array(G.inits[t]).reshape(-1), b):
                return add, i
    raise ExportError(f"{name or node.name}: cannot find the bias Add after its MatMul {node.name}")


# -- building blocks ---------------------------------------------------------------------------

def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def act_qdq(G: Graph, tensor: str, q, prefix: str) -> tuple[list[onnx.NodeProto], str]:
    """Q/DQ of an activation with quantizer ``q``'s grid; returns (nodes, dequantized tensor)."""
    scale, zp, qmin, qmax = q.params()
    s, z = np.float32(float(scale.detach())), int(round(float(zp.detach())))
    signed = qmin < 0
    nodes: list[onnx.NodeProto] = []
    src = tensor
    dtype_min, dtype_max = (-128, 127) if signed else (0, 255)
    if (qmin, qmax) != (dtype_min, dtype_max):
        lo = np.float32((qmin - z) * s)
        hi = np.float32((qmax - z) * s)
        out = G.fresh(f"{prefix}_clip")
        nodes.append(helper.make_node("Clip", [src, G.const(f"{prefix}_lo", lo), G.const(f"{prefix}_hi", hi)],
                                      [out], name=G.fresh(f"{prefix}/Clip")))
        src = out
    s_name = G.const(f"{prefix}_scale", np.array(s, dtype=np.float32))
    z_name = G.const(f"{prefix}_zero_point", np.array(z, dtype=np.int8 if signed else np.uint8))
    qn, dqn = G.fresh(f"{prefix}_q"), G.fresh(f"{prefix}_dq")
    nodes.append(helper.make_node("QuantizeLinear", [src, s_name, z_name], [qn], name=G.fresh(f"{prefix}/Q")))
    nodes.append(helper.make_node("DequantizeLinear", [qn, s_name, z_name], [dqn], name=G.fresh(f"{prefix}/DQ")))
    return nodes, dqn


def dq_const(G: Graph, prefix: str, q: np.ndarray, scale: np.ndarray, axis: int) -> tuple[onnx.NodeProto, str]:
    s_name = G.const(f"{prefix}_scale", scale.astype(np.float32))
    z_name = G.const(f"{prefix}_zero_point", np.zeros(scale.shape, dtype=q.dtype))
    q_name = G.const(f"{prefix}_quantized", q)
    out = G.fresh(f"{prefix}_dq")
    attrs = {"axis": axis} if scale.ndim == 1 else {}
    return helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                            name=G.fresh(f"{prefix}/DQ"), **attrs), out


def rename_output(G: Graph, node: onnx.NodeProto, idx: int, base: str) -> tuple[str, str]:
    """Give ``node``'s output a new name; returns (new raw name, original name for the DQ)."""
    orig = node.output[idx]
    raw = G.fresh(f"{base}_raw")
    node.output[idx] = raw
    return raw, orig

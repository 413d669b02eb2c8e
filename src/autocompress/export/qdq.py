"""Quantized ONNX export: write the graph ONNX Runtime runs for a model from ``quantize_``.

The float model (each wrapper replaced by its inner layer) is exported as usual, then every
wrapped layer's ONNX node is found by its weight initializer (by name, else by value, also
transposed) and rewritten with *our* calibrated scales:

- ``static``: ``Q/DQ`` on the input (shared between consumers with the same grid), weights stored as
  int8 + per-channel ``DequantizeLinear``, bias int32 + DQ, ``Q/DQ`` on the output. ONNX Runtime fuses
  these into ``QLinearConv`` / ``QGemm``. Sub-8-bit activations get a ``Clip`` before ``Q`` so the
  runtime saturates at the same narrow range as the simulation;
- ``dynamic``: the node becomes ``com.microsoft.DynamicQuantizeMatMul`` (int8 weights per column);
- ``weight_only``: ``com.microsoft.MatMulNBits`` (4-bit codes packed two per byte, a scale and
  optionally a 4-bit zero point per block) followed by the bias ``Add``;
- ``fp16``: float16 initializers + ``Cast`` to float32.

The graph is built here with ``onnx`` only; the ONNX Runtime target's ``export_quantized``
(:mod:`autocompress.targets.onnxruntime`) verifies it against the PyTorch simulation before it is returned.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from autocompress.export.onnx import ExportError, export_onnx
from autocompress.export.qdq_graph import (MS, Graph, act_qdq, bias_input, check_node, dq_const, find_weight,
                                          rename_output, to_np)
from autocompress.quantize.fake_quant import QuantWrapper
from autocompress.quantize.ptq import float_view, quant_report, wrappers_of

log = logging.getLogger(__name__)

# -- per-mode rewrites -------------------------------------------------------------------------

def _input_qdq(G: Graph, name: str, w: QuantWrapper, node: onnx.NodeProto) -> None:
    key = (node.input[0],) + tuple(float(v.detach()) for v in w.in_q.params()[:2]) + w.in_q.params()[2:]
    if key not in G.qdq_cache:     # consumers of one tensor with one grid share a Q/DQ pair
        nodes, dq = act_qdq(G, node.input[0], w.in_q, f"{name}.input")
        G.before[id(node)] += nodes
        G.qdq_cache[key] = dq
    node.input[0] = G.qdq_cache[key]


def _output_qdq(G: Graph, name: str, w: QuantWrapper, tail: onnx.NodeProto) -> None:
    if w.out_q.enabled:
        raw, orig = rename_output(G, tail, 0, f"{name}.output")
        nodes, _ = act_qdq(G, raw, w.out_q, f"{name}.output")
        nodes[-1].output[0] = orig       # consumers and graph outputs keep reading the old name
        G.after[id(tail)] += nodes


def _static(G: Graph, name: str, w: QuantWrapper, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    if w.storage == "packed" and w.w_q.bits <= 4 and node.op_type in ("Gemm", "MatMul"):
        return _static_packed(G, name, w, node)
    _input_qdq(G, name, w, node)
    # weights: (C_out, ...) int8 with per-channel (axis 0, or 1 when the graph stores W^T)
    wq = to_np(w.w_q.integer(w.weight)).astype(np.int8)
    scale = to_np(w.w_q.scale)
    dq, out = dq_const(G, f"{name}.weight", wq.T if transposed else wq, scale, 1 if transposed else 0)
    G.before[id(node)].append(dq)
    node.input[1] = out
    bias = w.bias
    where = bias_input(G, node, to_np(bias) if bias is not None else None, name)
    if where is not None:
        bnode, bi = where
        bs = w.bias_scale().detach()
        bs = bs.expand(bias.shape[0]) if bs.numel() == 1 else bs
        # a channel whose weights are (nearly) all zero, as pruning leaves them, has a weight scale
        # of 0 or close to it, so its bias would need more than 32 bits (0/0 is NaN; a clamp at
        # 2**31 - 1, which float32 rounds up to 2**31, casts to garbage): its bias still counts,
        # so that channel's bias scale grows to hold it in 31 bits
        b = bias.detach()
        bs = torch.maximum(bs, b.abs().clamp_min(1e-12) / 2 ** 30)
        bq = torch.clamp(torch.round(b / bs), -2 ** 30, 2 ** 30)
        dqb, bout = dq_const(G, f"{name}.bias", to_np(bq).astype(np.int32), to_np(bs), 0)
        G.before[id(bnode)].append(dqb)
        bnode.input[bi] = bout
    _output_qdq(G, name, w, where[0] if where is not None and where[0] is not node else node)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """(N, G, block) codes in [0, 2^bits) -> (N, G, block*bits/8) bytes, first element lowest bits."""
    per = 8 // bits
    out = np.zeros(codes.shape[:-1] + (codes.shape[-1] // per,), dtype=np.int64)
    for j in range(per):
        out |= codes[..., j::per].astype(np.int64) << (bits * j)
    return out.astype(np.uint8)


def _static_packed(G: Graph, name: str, w: QuantWrapper, node: onnx.NodeProto) -> None:
    """Sub-8-bit static Linear stored at its bit width: Q/DQ input -> MatMulNBits (2- or 4-bit codes,
    the per-channel scale repeated over blocks of <= 256, the op's limit) -> + bias -> Q/DQ output."""
    _input_qdq(G, name, w, node)
    bits = 2 if w.w_q.bits <= 2 else 4
    ints = to_np(w.w_q.integer(w.weight)).astype(np.int64)          # (N, K), symmetric, zero point 0
    n_out, k = ints.shape
    block = min(256, max(16, 1 << (k - 1).bit_length()))
    groups = -(-k // block)
    offset = 2 ** (bits - 1)                                      # MatMulNBits' default zero point
    codes = np.full((n_out, groups * block), offset, dtype=np.int64)
    codes[:, :k] = ints + offset
    scale = np.broadcast_to(to_np(w.w_q.scale).reshape(-1, 1), (n_out, groups)).astype(np.float32)
    ins = [node.input[0], G.const(f"{name}.weight_int{bits}", _pack(codes.reshape(n_out, groups, block), bits)),
           G.const(f"{name}.weight_scale", scale.reshape(-1))]
    mm = G.fresh(f"{name}_matmul")
    nodes = [helper.make_node("MatMulNBits", ins, [mm], name=G.fresh(f"{name}/MatMulNBits"), domain=MS,
                              K=k, N=n_out, bits=bits, block_size=block)]
    G.uses_ms = True
    qb = w.quantized_bias()
    where = bias_input(G, node, to_np(w.bias) if w.bias is not None else None, name)
    if node.op_type == "Gemm":
        tail_out = list(node.output)
        if qb is not None:      # the int32-grid bias, as float: exactly what the simulation adds
            nodes.append(helper.make_node("Add", [mm, G.const(f"{name}.bias_dq", to_np(qb))], tail_out,
                                          name=G.fresh(f"{name}/Add")))
        else:
            nodes[0].output[0] = tail_out[0]
        G.replace[id(node)] = nodes
        tail = nodes[-1]
    else:   # MatMul (+ Add with the bias initializer)
        nodes[0].output[0] = node.output[0]
        G.replace[id(node)] = nodes
        tail = nodes[0]
        if where is not None:
            add, i = where
            add.input[i] = G.const(f"{name}.bias_dq", to_np(qb))
            tail = add
    _output_qdq(G, name, w, tail)


def _dynamic(G: Graph, name: str, w: QuantWrapper, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    wq = to_np(w.w_q.integer(w.weight)).astype(np.int8)          # (N, K)
    scale = to_np(w.w_q.scale).reshape(-1)
    n_out = wq.shape[0]
    scale = np.broadcast_to(scale, (n_out,)).astype(np.float32)
    ins = [node.input[0], G.const(f"{name}.weight_quantized", np.ascontiguousarray(wq.T)),
           G.const(f"{name}.weight_scale", scale), G.const(f"{name}.weight_zero_point", np.zeros(n_out, np.int8))]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        ins.append(node.input[2])
    G.replace[id(node)] = [helper.make_node("DynamicQuantizeMatMul", ins, list(node.output),
                                            name=G.fresh(f"{name}/DynamicQuantizeMatMul"), domain=MS)]
    G.uses_ms = True


def _weight_only(G: Graph, name: str, w: QuantWrapper, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    wq = w.w_q
    codes = to_np(wq.integer(w.weight)).astype(np.int32)            # (N, G, block)
    if wq.symmetric:
        codes = codes + 8                                         # MatMulNBits default zero point is 8
    n_out, groups, block = codes.shape
    k = w.weight.shape[1]
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)   # (N, G, block/2), low nibble first
    ins = [node.input[0], G.const(f"{name}.weight_int4", packed),
           G.const(f"{name}.weight_scale", to_np(wq.scale).reshape(-1).astype(np.float32))]
    if not wq.symmetric:
        zp = to_np(wq.zero_point).astype(np.int32)                  # (N, G)
        if groups % 2:
            zp = np.pad(zp, ((0, 0), (0, 1)))
        ins.append(G.const(f"{name}.weight_zero_point", (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8).reshape(-1)))
    out = list(node.output)
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
    mm_out = [G.fresh(f"{name}_matmul")] if has_bias else out
    nodes = [helper.make_node("MatMulNBits", ins, mm_out, name=G.fresh(f"{name}/MatMulNBits"), domain=MS,
                              K=k, N=n_out, bits=4, block_size=block)]
    if has_bias:
        nodes.append(helper.make_node("Add", [mm_out[0], node.input[2]], out, name=G.fresh(f"{name}/Add")))
    G.replace[id(node)] = nodes
    G.uses_ms = True


def _fp16(G: Graph, name: str, w: QuantWrapper, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    targets = [(node, 1)]
    where = bias_input(G, node, to_np(w.bias) if w.bias is not None else None, name)
    if where is not None:
        targets.append(where)          # Conv/Gemm input 2, or the Add after a MatMul
    for n, i in targets:
        arr = numpy_helper.to_array(G.inits[n.input[i]]).astype(np.float16)
        half = G.const(f"{n.input[i]}_fp16", arr)
        out = G.fresh(f"{n.input[i]}_fp32")
        G.before[id(n)].append(helper.make_node("Cast", [half], [out], to=TensorProto.FLOAT,
                                                name=G.fresh(f"{name}/Cast")))
        n.input[i] = out


_REWRITES = {"static": _static, "dynamic": _dynamic, "weight_only": _weight_only, "fp16": _fp16}


def export_quantized(model: torch.nn.Module, example: torch.Tensor, path: str | Path, *,
                     exporter: str = "auto", opset: int = 18, weight_storage: str | None = None) -> Path:
    """Write the deployable single-file ONNX model for a model returned by ``quantize_``/``qat_``
    (not yet checked on a runtime: :func:`autocompress.targets.onnxruntime.export_quantized` is
    this plus the parity check against the PyTorch simulation).

    The per-layer report (mode, bits, storage, reason) is embedded as metadata
    ``autocompress.quantization``. ``weight_storage`` ("int8" | "packed") overrides the config's
    choice for sub-8-bit Linear weights ("packed": 2/4-bit codes in ``MatMulNBits``).
    """
    path = Path(path)
    wrappers = wrappers_of(model)
    if weight_storage is not None:
        if weight_storage not in ("int8", "packed"):
            raise ValueError(f"weight_storage must be 'int8' or 'packed', got {weight_storage!r}")
        for w in wrappers.values():
            w.storage = weight_storage
    if not wrappers:
        raise ExportError("export_quantized: the model has no quantized layers (call quantize_ first)")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp = export_onnx(float_view(model), example, Path(tmp) / "float.onnx", exporter=exporter, opset=opset)
        onnx_model = onnx.load(str(fp))
    G = Graph(onnx_model)
    for name, w in wrappers.items():
        if w.mode == "fp32":
            continue
        wt = to_np(w.weight)
        node, wname, transposed = find_weight(G, name, wt)
        check_node(name, node, wname, transposed)
        if w.mode in ("dynamic", "weight_only") and node.op_type == "Conv":
            raise ExportError(f"{name}: mode {w.mode} supports Linear layers only")
        _REWRITES[w.mode](G, name, w, node, wname, transposed)
    out = G.finish(quant_report(model).to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(out, str(path))
    onnx.checker.check_model(str(path))
    return path


def quantization_metadata(path: str | Path) -> dict[str, Any]:
    """The per-layer report embedded in an exported file."""
    m = onnx.load(str(path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == "autocompress.quantization":
            return json.loads(p.value)
    return {}

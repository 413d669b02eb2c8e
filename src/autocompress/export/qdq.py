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

The result is verified against the PyTorch simulation before it is returned.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from autocompress.export.onnx import ExportError, ParityError, export_onnx, run, session
from autocompress.outputs import call_model, pick_output
from autocompress.quantize.fake_quant import QuantWrapper
from autocompress.quantize.ptq import float_view, quant_report, wrappers_of

log = logging.getLogger(__name__)

_MS = "com.microsoft"


class _Graph:
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
        if self.uses_ms and not any(o.domain == _MS for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(_MS, 1))
        del self.model.metadata_props[:]
        self.model.metadata_props.append(
            onnx.StringStringEntryProto(key="autocompress.quantization", value=json.dumps(report)))
        return self.model


# -- locating a layer in the graph ----------------------------------------------------------------

def _find_weight(G: _Graph, name: str, w: np.ndarray) -> tuple[onnx.NodeProto, str, bool]:
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


def _check_node(name: str, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    ok = {"Conv": (1, False), "Gemm": (1, None), "MatMul": (1, True)}.get(node.op_type)
    if ok is None or list(node.input).index(wname) != ok[0]:
        raise ExportError(f"{name}: weight feeds an unexpected ONNX node {node.op_type}{list(node.input)}")
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ExportError(f"{name}: Gemm with transA/alpha/beta is not supported")
        if bool(attrs.get("transB", 0)) == transposed:
            raise ExportError(f"{name}: Gemm transB does not match the weight layout")


def _bias_input(G: _Graph, node: onnx.NodeProto, b: np.ndarray | None, name: str = "") -> tuple | None:
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

def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _act_qdq(G: _Graph, tensor: str, q, prefix: str) -> tuple[list[onnx.NodeProto], str]:
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


def _dq_const(G: _Graph, prefix: str, q: np.ndarray, scale: np.ndarray, axis: int) -> tuple[onnx.NodeProto, str]:
    s_name = G.const(f"{prefix}_scale", scale.astype(np.float32))
    z_name = G.const(f"{prefix}_zero_point", np.zeros(scale.shape, dtype=q.dtype))
    q_name = G.const(f"{prefix}_quantized", q)
    out = G.fresh(f"{prefix}_dq")
    attrs = {"axis": axis} if scale.ndim == 1 else {}
    return helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                            name=G.fresh(f"{prefix}/DQ"), **attrs), out


def _rename_output(G: _Graph, node: onnx.NodeProto, idx: int, base: str) -> tuple[str, str]:
    """Give ``node``'s output a new name; returns (new raw name, original name for the DQ)."""
    orig = node.output[idx]
    raw = G.fresh(f"{base}_raw")
    node.output[idx] = raw
    return raw, orig


# -- per-mode rewrites -------------------------------------------------------------------------

def _input_qdq(G: _Graph, name: str, w: QuantWrapper, node: onnx.NodeProto) -> None:
    key = (node.input[0],) + tuple(float(v.detach()) for v in w.in_q.params()[:2]) + w.in_q.params()[2:]
    if key not in G.qdq_cache:     # consumers of one tensor with one grid share a Q/DQ pair
        nodes, dq = _act_qdq(G, node.input[0], w.in_q, f"{name}.input")
        G.before[id(node)] += nodes
        G.qdq_cache[key] = dq
    node.input[0] = G.qdq_cache[key]


def _output_qdq(G: _Graph, name: str, w: QuantWrapper, tail: onnx.NodeProto) -> None:
    if w.out_q.enabled:
        raw, orig = _rename_output(G, tail, 0, f"{name}.output")
        nodes, _ = _act_qdq(G, raw, w.out_q, f"{name}.output")
        nodes[-1].output[0] = orig       # consumers and graph outputs keep reading the old name
        G.after[id(tail)] += nodes


def _static(G: _Graph, name: str, w: QuantWrapper, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    if w.storage == "packed" and w.w_q.bits <= 4 and node.op_type in ("Gemm", "MatMul"):
        return _static_packed(G, name, w, node)
    _input_qdq(G, name, w, node)
    # weights: (C_out, ...) int8 with per-channel (axis 0, or 1 when the graph stores W^T)
    wq = _np(w.w_q.integer(w.weight)).astype(np.int8)
    scale = _np(w.w_q.scale)
    dq, out = _dq_const(G, f"{name}.weight", wq.T if transposed else wq, scale, 1 if transposed else 0)
    G.before[id(node)].append(dq)
    node.input[1] = out
    bias = w.bias
    where = _bias_input(G, node, _np(bias) if bias is not None else None, name)
    if where is not None:
        bnode, bi = where
        bs = w.bias_scale().detach()
        bs = bs.expand(bias.shape[0]) if bs.numel() == 1 else bs
        bq = torch.clamp(torch.round(bias.detach() / bs), -2 ** 31, 2 ** 31 - 1)
        dqb, bout = _dq_const(G, f"{name}.bias", _np(bq).astype(np.int32), _np(bs), 0)
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


def _static_packed(G: _Graph, name: str, w: QuantWrapper, node: onnx.NodeProto) -> None:
    """Sub-8-bit static Linear stored at its bit width: Q/DQ input -> MatMulNBits (2- or 4-bit codes,
    the per-channel scale repeated over blocks of <= 256, the op's limit) -> + bias -> Q/DQ output."""
    _input_qdq(G, name, w, node)
    bits = 2 if w.w_q.bits <= 2 else 4
    ints = _np(w.w_q.integer(w.weight)).astype(np.int64)          # (N, K), symmetric, zero point 0
    n_out, k = ints.shape
    block = min(256, max(16, 1 << (k - 1).bit_length()))
    groups = -(-k // block)
    offset = 2 ** (bits - 1)                                      # MatMulNBits' default zero point
    codes = np.full((n_out, groups * block), offset, dtype=np.int64)
    codes[:, :k] = ints + offset
    scale = np.broadcast_to(_np(w.w_q.scale).reshape(-1, 1), (n_out, groups)).astype(np.float32)
    ins = [node.input[0], G.const(f"{name}.weight_int{bits}", _pack(codes.reshape(n_out, groups, block), bits)),
           G.const(f"{name}.weight_scale", scale.reshape(-1))]
    mm = G.fresh(f"{name}_matmul")
    nodes = [helper.make_node("MatMulNBits", ins, [mm], name=G.fresh(f"{name}/MatMulNBits"), domain=_MS,
                              K=k, N=n_out, bits=bits, block_size=block)]
    G.uses_ms = True
    qb = w.quantized_bias()
    where = _bias_input(G, node, _np(w.bias) if w.bias is not None else None, name)
    if node.op_type == "Gemm":
        tail_out = list(node.output)
        if qb is not None:      # the int32-grid bias, as float: exactly what the simulation adds
            nodes.append(helper.make_node("Add", [mm, G.const(f"{name}.bias_dq", _np(qb))], tail_out,
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
            add.input[i] = G.const(f"{name}.bias_dq", _np(qb))
            tail = add
    _output_qdq(G, name, w, tail)


def _dynamic(G: _Graph, name: str, w: QuantWrapper, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    wq = _np(w.w_q.integer(w.weight)).astype(np.int8)          # (N, K)
    scale = _np(w.w_q.scale).reshape(-1)
    n_out = wq.shape[0]
    scale = np.broadcast_to(scale, (n_out,)).astype(np.float32)
    ins = [node.input[0], G.const(f"{name}.weight_quantized", np.ascontiguousarray(wq.T)),
           G.const(f"{name}.weight_scale", scale), G.const(f"{name}.weight_zero_point", np.zeros(n_out, np.int8))]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        ins.append(node.input[2])
    G.replace[id(node)] = [helper.make_node("DynamicQuantizeMatMul", ins, list(node.output),
                                            name=G.fresh(f"{name}/DynamicQuantizeMatMul"), domain=_MS)]
    G.uses_ms = True


def _weight_only(G: _Graph, name: str, w: QuantWrapper, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    wq = w.w_q
    codes = _np(wq.integer(w.weight)).astype(np.int32)            # (N, G, block)
    if wq.symmetric:
        codes = codes + 8                                         # MatMulNBits default zero point is 8
    n_out, groups, block = codes.shape
    k = w.weight.shape[1]
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)   # (N, G, block/2), low nibble first
    ins = [node.input[0], G.const(f"{name}.weight_int4", packed),
           G.const(f"{name}.weight_scale", _np(wq.scale).reshape(-1).astype(np.float32))]
    if not wq.symmetric:
        zp = _np(wq.zero_point).astype(np.int32)                  # (N, G)
        if groups % 2:
            zp = np.pad(zp, ((0, 0), (0, 1)))
        ins.append(G.const(f"{name}.weight_zero_point", (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8).reshape(-1)))
    out = list(node.output)
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
    mm_out = [G.fresh(f"{name}_matmul")] if has_bias else out
    nodes = [helper.make_node("MatMulNBits", ins, mm_out, name=G.fresh(f"{name}/MatMulNBits"), domain=_MS,
                              K=k, N=n_out, bits=4, block_size=block)]
    if has_bias:
        nodes.append(helper.make_node("Add", [mm_out[0], node.input[2]], out, name=G.fresh(f"{name}/Add")))
    G.replace[id(node)] = nodes
    G.uses_ms = True


def _fp16(G: _Graph, name: str, w: QuantWrapper, node: onnx.NodeProto, wname: str, transposed: bool) -> None:
    targets = [(node, 1)]
    where = _bias_input(G, node, _np(w.bias) if w.bias is not None else None, name)
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
                     exporter: str = "auto", verify: bool = True, opset: int = 18,
                     weight_storage: str | None = None, verify_inputs: torch.Tensor | None = None) -> Path:
    """Write the deployable single-file ONNX model for a model returned by ``quantize_``/``qat_``.

    With ``verify`` the ONNX Runtime output on ``verify_inputs`` (default ``example``) is compared with the PyTorch simulation
    (:class:`ParityError` if top-1 disagrees or outputs drift beyond a few quantization steps).
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
    G = _Graph(onnx_model)
    for name, w in wrappers.items():
        if w.mode == "fp32":
            continue
        wt = _np(w.weight)
        node, wname, transposed = _find_weight(G, name, wt)
        _check_node(name, node, wname, transposed)
        if w.mode in ("dynamic", "weight_only") and node.op_type == "Conv":
            raise ExportError(f"{name}: mode {w.mode} supports Linear layers only")
        _REWRITES[w.mode](G, name, w, node, wname, transposed)
    out = G.finish(quant_report(model).to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(out, str(path))
    onnx.checker.check_model(str(path))
    if verify:
        verify_parity(model, path, example if verify_inputs is None else verify_inputs)
    return path


def verify_parity(model: torch.nn.Module, path: str | Path, inputs: torch.Tensor) -> dict[str, float]:
    """Simulation vs runtime on ``inputs``: a wrong mapping shows up as large, widespread drift;
    rare one-step rounding differences (integer vs float accumulation) are tolerated."""
    with torch.no_grad():
        ref = pick_output(call_model(model, inputs)).numpy()     # tensor, tuple or ModelOutput: its logits
    got = run(session(path), inputs)
    if got.shape != ref.shape:
        raise ParityError(f"{path}: ONNX output shape {got.shape} != PyTorch {ref.shape}")
    diff = np.abs(got - ref)
    span = float(np.abs(ref).max()) + 1e-6
    rel = float(diff.max()) / span
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean()) if ref.ndim > 1 else 1.0
    if not np.isfinite(rel) or rel > 0.05 or (ref.shape[0] >= 20 and agree < 0.95):
        raise ParityError(f"{path}: ONNX Runtime disagrees with the quantized PyTorch model: "
                          f"max |diff| {diff.max():.3g} ({rel:.1%} of the output range), top-1 agreement "
                          f"{agree:.1%} on {ref.shape[0]} inputs")
    return {"max_abs_diff": float(diff.max()), "relative": rel, "top1_agreement": agree}


def quantization_metadata(path: str | Path) -> dict[str, Any]:
    """The per-layer report embedded in an exported file."""
    m = onnx.load(str(path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == "autocompress.quantization":
            return json.loads(p.value)
    return {}


# -- ONNX Runtime's own quantizers (the peers benchmarks compare against) -------------------------

def ort_quantize_static(src: str | Path, dst: str | Path, calibration: torch.Tensor | np.ndarray,
                        batch_size: int = 64, **kwargs: Any) -> Path:
    """``onnxruntime.quantization.quantize_static`` with its defaults (QDQ, MinMax, per-tensor int8),
    calibrated on the same samples we use; ``kwargs`` override its options."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    x = calibration.numpy() if isinstance(calibration, torch.Tensor) else np.asarray(calibration)
    name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: x[i:i + batch_size].astype(np.float32)} for i in range(0, len(x), batch_size)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), _Reader(), **kwargs)
    return Path(dst)


def ort_quantize_dynamic(src: str | Path, dst: str | Path, **kwargs: Any) -> Path:
    """``onnxruntime.quantization.quantize_dynamic`` with its defaults."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(dst), **kwargs)
    return Path(dst)

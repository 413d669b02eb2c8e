"""Compressed weights inside the deployed ONNX file, decoded by stock ONNX operators.

A pruned and clustered model keeps its zeros and its few shared values when it is exported as
plain float32: the ``.onnx`` file is as big as the uncompressed one. :func:`pack_model` rewrites
each large initializer into the smallest exact encoding of

- ``raw``: unchanged;
- ``codebook``: at most 256 distinct values (weight sharing, int8 grids): a table plus one
  ``ceil(log2 K)``-bit index per element, decoded by ``Gather`` on the table;
- ``sparse``: the non-zeros' positions as relative gaps of ``g`` bits (a gap code ``2^g - 1``
  means "skip that many zeros, no value": Deep Compression's filler without a value) and their
  values as codebook indices (or raw values when there are too many distinct ones), decoded by
  ``CumSum`` + ``Compress`` + ``ScatterND``;

bit fields packed little-endian into ``uint8`` initializers and unpacked with ``BitShift`` /
``BitwiseAnd``. Every operator is in the default ONNX domain (opset 18), so a plain
``onnxruntime`` install runs the file; its constant folding (on by default) decodes the weights
once when the session is created, so inference runs the same dense kernels as the fp32 model.
The size that counts is the file on disk: the folded weights live only in the session's memory.
Decoding is exact (the same values come back bit for bit).

Why gaps rather than ONNX's own ``sparse_initializer`` or zeros left to zip: on a LeNet-5 pruned
to 96 % in fc1 and clustered to 4/5 bits, this file is 37 kB (31 kB zipped); sparse initializers
with int32 indices and fp32 values are 172 kB (53 kB zipped), dense 4/5-bit codes 225 kB (36 kB
zipped). ONNX Runtime would also run with graph optimizations off, decoding on every call (slow).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

_META = "autocompress.packed"
_MAX_GENERIC_BITS = 1 << 26    # beyond this many bits, widths round up to 1/2/4/8 (cheaper to unpack)


@dataclass
class Packed:
    """How one initializer is stored: ``encoding`` raw | codebook | sparse, and its bytes before / after."""

    name: str
    encoding: str
    raw_bytes: int
    packed_bytes: int
    detail: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# -- encodings (numpy) ----------------------------------------------------------------------------

def _bits_for(k: int) -> int:
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1


def _fit_bits(bits: int, count: int) -> int:
    """Widths that do not divide 8 unpack through a per-bit intermediate; keep it bounded."""
    if count * bits <= _MAX_GENERIC_BITS:
        return bits
    return next(b for b in (1, 2, 4, 8) if b >= bits)


def _pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``codes`` < 2^bits -> little-endian bit stream in bytes (first code lowest bits)."""
    if bits == 8:
        return codes.astype(np.uint8)
    planes = (codes.astype(np.uint16)[:, None] >> np.arange(bits, dtype=np.uint16)) & 1
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little")


def _gaps(pos: np.ndarray, bits: int) -> np.ndarray:
    """Gap codes for sorted non-zero positions: ``d - 1`` for a step ``d <= cap``, else fillers
    (code ``cap``: advance ``cap`` positions, no value) before the real entry."""
    cap = (1 << bits) - 1
    d = np.diff(pos, prepend=-1)
    fill = -(-d // cap) - 1                          # ceil(d / cap) - 1 fillers before each entry
    real = np.cumsum(fill + 1) - 1
    out = np.full(int(real[-1]) + 1 if len(real) else 0, cap, dtype=np.int64)
    out[real] = d - fill * cap - 1
    return out


def _entries(pos: np.ndarray, bits: int) -> int:
    cap = (1 << bits) - 1
    d = np.diff(pos, prepend=-1)
    return int((-(-d // cap)).sum())


def _plan(a: np.ndarray) -> tuple[str, int, dict]:
    """(encoding, bytes, parameters) of the smallest exact encoding of ``a``."""
    flat = a.ravel()
    n, item = flat.size, flat.dtype.itemsize
    best = ("raw", n * item, {})
    table = np.unique(flat)
    if len(table) <= 256:
        b = _fit_bits(_bits_for(len(table)), n)
        best = min(best, ("codebook", -(-n * b // 8) + len(table) * item, {"bits": b}), key=lambda c: c[1])
    pos = np.flatnonzero(flat)
    if 0 < len(pos) < n:
        nz = table[table != 0] if len(table) <= 257 else None
        vb = _fit_bits(_bits_for(len(nz)), len(pos)) if nz is not None and len(nz) <= 256 else None
        values = -(-len(pos) * vb // 8) + len(nz) * item if vb else len(pos) * item
        for gb in range(1, 9):
            e = _entries(pos, gb)
            gbf = _fit_bits(gb, e)
            size = -(-e * gbf // 8) + values
            if size < best[1]:
                best = ("sparse", size, {"gap_bits": gbf, "value_bits": vb})
    return best


# -- decoding graph -------------------------------------------------------------------------------

class _Builder:
    """Emits decoder nodes with short generated names (names are bytes in the file) and shares
    small constants (shapes, axes, 1, 0) between all decoders of one model."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.count = 0
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.shared: dict[tuple, str] = {}

    def fresh(self) -> str:
        while True:
            self.count += 1
            name = f"~{np.base_repr(self.count, 36).lower()}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def const(self, arr: np.ndarray) -> str:
        # asarray, not ascontiguousarray (which makes scalars 1-D): CumSum's axis must be 0-D
        # by the spec; ONNX Runtime accepts 1-D, onnx's reference evaluator does not
        arr = np.asarray(arr, order="C")
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 16 else None
        if key is not None and key in self.shared:
            return self.shared[key]
        name = self.fresh()
        self.inits.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self.shared[key] = name
        return name

    def op(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def unpack(self, codes: np.ndarray, bits: int) -> str:
        """int64 tensor [len(codes)] read back from the packed bytes initializer."""
        n, data = len(codes), _pack_bits(codes, bits)
        packed = self.const(data)
        if bits == 8:
            return self.op("Cast", [packed], to=TensorProto.INT64)
        i64 = lambda v: self.const(np.array(v, dtype=np.int64))   # noqa: E731
        col = self.op("Unsqueeze", [packed, i64([1])])
        if 8 % bits == 0:      # whole fields per byte: shift each field down, mask it
            per = 8 // bits
            fields = self.op("BitShift", [col, self.const(np.arange(0, 8, bits, dtype=np.uint8))],
                             direction="RIGHT")
            fields = self.op("BitwiseAnd", [fields, self.const(np.array((1 << bits) - 1, np.uint8))])
            flat = self.op("Reshape", [fields, i64([-1])])
            if per * len(data) != n:       # the last byte's unused fields
                flat = self.op("Slice", [flat, i64([0]), i64([n])])
            return self.op("Cast", [flat], to=TensorProto.INT64)
        bits_ = self.op("BitShift", [col, self.const(np.arange(8, dtype=np.uint8))], direction="RIGHT")
        bits_ = self.op("BitwiseAnd", [bits_, self.const(np.array(1, np.uint8))])
        flat = self.op("Slice", [self.op("Reshape", [bits_, i64([-1])]), i64([0]), i64([n * bits])])
        grid = self.op("Cast", [self.op("Reshape", [flat, i64([n, bits])])], to=TensorProto.INT32)
        weighted = self.op("Mul", [grid, self.const((1 << np.arange(bits)).astype(np.int32))])
        summed = self.op("ReduceSum", [weighted, i64([1])], keepdims=0)
        return self.op("Cast", [summed], to=TensorProto.INT64)


def _decoder(B: _Builder, name: str, a: np.ndarray, encoding: str, p: dict) -> None:
    flat = a.ravel()
    shape = B.const(np.array(a.shape, dtype=np.int64))
    if encoding == "codebook":
        table = np.unique(flat)
        idx = B.unpack(np.searchsorted(table, flat), p["bits"])
        dense = B.op("Gather", [B.const(table), idx], axis=0)
        B.op("Reshape", [dense, shape], out=name)
        return
    pos = np.flatnonzero(flat)
    gb, cap = p["gap_bits"], (1 << p["gap_bits"]) - 1
    g = B.unpack(_gaps(pos, gb), gb)
    is_fill = B.op("Equal", [g, B.const(np.array(cap, np.int64))])
    step = B.op("Where", [is_fill, B.const(np.array(cap, np.int64)),
                          B.op("Add", [g, B.const(np.array(1, np.int64))])])
    at = B.op("Sub", [B.op("CumSum", [step, B.const(np.array(0, np.int64))]),
                      B.const(np.array(1, np.int64))])
    # every entry is scattered, fillers too: a filler sits on a position that is truly zero and
    # writes 0 there (no Compress: ONNX Runtime does not constant-fold it)
    index = B.op("Unsqueeze", [at, B.const(np.array([1], np.int64))])
    vals = flat[pos]
    if p["value_bits"]:
        table = np.unique(vals)
        values = B.op("Gather", [B.const(table),
                                 B.unpack(np.searchsorted(table, vals), p["value_bits"])], axis=0)
    else:
        values = B.const(vals)
    # entry -> its value: the count of real entries up to it, minus one (a leading filler -> 0)
    real = B.op("Cast", [B.op("Not", [is_fill])], to=TensorProto.INT64)
    which = B.op("Max", [B.op("Sub", [B.op("CumSum", [real, B.const(np.array(0, np.int64))]),
                                      B.const(np.array(1, np.int64))]),
                         B.const(np.array(0, np.int64))])
    entry = B.op("Where", [is_fill, B.const(np.zeros(1, dtype=a.dtype)),
                           B.op("Gather", [values, which], axis=0)])
    zeros = B.op("ConstantOfShape", [B.const(np.array([flat.size], np.int64))],
                 value=numpy_helper.from_array(np.zeros(1, dtype=a.dtype)))
    B.op("Reshape", [B.op("ScatterND", [zeros, index, entry]), shape], out=name)


# -- the pass -------------------------------------------------------------------------------------

_DTYPES = (np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64)


def pack_model(model: onnx.ModelProto, *, min_elements: int = 256) -> list[Packed]:
    """Rewrite ``model``'s initializers (in place) into their smallest exact stock-ONNX encoding.

    Initializers with fewer than ``min_elements`` elements, of other types, in external data, read
    by non-default-domain operators (``MatMulNBits`` and friends need their own layout) or by a
    subgraph, and those no encoding makes smaller (the decoder's nodes counted) stay as they are."""
    g = model.graph
    if _opset(model) < 18:
        log.info("weights not packed: opset %d < 18 lacks BitwiseAnd (export with opset >= 18)", _opset(model))
        return []
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return []     # If/Loop bodies may read outer initializers: decoders would have to go inside
    foreign = {i for n in g.node if n.domain not in ("", "ai.onnx") for i in n.input}
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    report, keep, B = [], [], _Builder(taken)
    for t in g.initializer:
        a = None
        if (t.name not in foreign and t.data_location != TensorProto.EXTERNAL
                and math.prod(t.dims) >= min_elements):
            a = numpy_helper.to_array(t)
            if a.dtype.type not in _DTYPES:
                a = None
        if a is None:
            keep.append(t)
            continue
        encoding, _size, p = _plan(a)
        if encoding != "raw":
            n0, i0, shared0 = len(B.nodes), len(B.inits), dict(B.shared)
            _decoder(B, t.name, a, encoding, p)
            new = B.inits[i0:]
            packed = (sum(len(n.SerializeToString()) for n in B.nodes[n0:])
                      + sum(len(i.SerializeToString()) for i in new))
            if packed < a.nbytes:
                report.append(Packed(t.name, encoding, a.nbytes, packed,
                                     ", ".join(f"{k}={v}" for k, v in p.items())))
                continue
            del B.nodes[n0:], B.inits[i0:]      # not worth it: forget this decoder
            B.shared = shared0
        keep.append(t)
    if not report:
        return []
    del g.initializer[:]
    g.initializer.extend(keep + B.inits)
    nodes = B.nodes + list(g.node)          # decoders first: they read initializers only
    del g.node[:]
    g.node.extend(nodes)
    names = {r.name for r in report}
    rest = [i for i in g.input if i.name not in names]     # IR < 4 lists initializers as inputs
    del g.input[:]
    g.input.extend(rest)
    _strip_debug(model, keep_shapes=bool(foreign))
    model.metadata_props.append(onnx.StringStringEntryProto(
        key=_META, value=json.dumps([r.to_dict() for r in report])))
    return report


def _strip_debug(model: onnx.ModelProto, keep_shapes: bool) -> None:
    """Drop what only a debugger reads: per-node exporter metadata (stack traces with local paths,
    several hundred bytes per node), doc strings, and the shape hints ONNX Runtime re-infers
    (kept when custom-domain operators might need them)."""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    if not keep_shapes:
        del model.graph.value_info[:]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def pack_onnx(src: str | Path, dst: str | Path | None = None, *, min_elements: int = 256) -> list[Packed]:
    """:func:`pack_model` on a file (``dst`` defaults to overwriting ``src``); the result is
    checked by the ONNX checker. Returns what was packed (empty: the file is unchanged)."""
    src = Path(src)
    dst = Path(dst) if dst is not None else src
    model = onnx.load(str(src))
    report = pack_model(model, min_elements=min_elements)
    if report or dst != src:
        onnx.save(model, str(dst))
        onnx.checker.check_model(str(dst))
    return report


def unpack_model(model: onnx.ModelProto) -> list[str]:
    """Undo :func:`pack_model` in place: the decoders run once (onnx's reference evaluator) and their outputs
    become plain initializers again, for tools that read weights from initializers (converters,
    viewers). Returns the names restored (empty: nothing was packed)."""
    from onnx.reference import ReferenceEvaluator

    names = [r["name"] for r in next((json.loads(p.value) for p in model.metadata_props if p.key == _META), [])]
    if not names:
        return []
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    need, todo = [], list(names)
    while todo:                          # the decoders: everything the packed tensors come from
        n = producer.get(todo.pop())
        if n is not None and all(n is not m for m in need):
            need.append(n)
            todo += [i for i in n.input if i]
    drop = {id(n) for n in need}
    sub = helper.make_graph([n for n in g.node if id(n) in drop], "decode", [], [onnx.ValueInfoProto(name=x) for x in names],
                            list(g.initializer))
    dec = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    # onnx's own evaluator (no runtime needed): the decoders are a few stock integer operators
    values = ReferenceEvaluator(dec).run(names, {})
    rest = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(rest)
    used = {i for n in rest for i in n.input} | {o.name for o in g.output}
    inits = [t for t in g.initializer if t.name in used] + [numpy_helper.from_array(v, x) for x, v in zip(names, values)]
    del g.initializer[:]
    g.initializer.extend(inits)
    kept = [p for p in model.metadata_props if p.key != _META]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    return names


def packing_metadata(path: str | Path) -> list[dict]:
    """What :func:`pack_onnx` recorded in a file: per initializer, its encoding and bytes."""
    m = onnx.load(str(path), load_external_data=False)
    return next((json.loads(p.value) for p in m.metadata_props if p.key == _META), [])

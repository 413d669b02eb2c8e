"""ONNX in: any ONNX file becomes an ``nn.Module`` that every technique and the search accept.

    model = autocompress.from_onnx("model.onnx")        # converted, then checked on ONNX Runtime
    model.input_names, model.output_names               # the file's own names, for the export

The converter is onnx2torch (maintained, a torch.fx GraphModule of real ``nn.Conv2d`` /
``nn.Linear`` / ``nn.BatchNorm2d`` layers, which pruning and quantization need). Before the module
is returned it is run beside ONNX Runtime on the original file, on random inputs of the declared
shapes and dtypes, and must agree within ``atol``: a converter bug never reaches a compression run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from autocompress.frontends._canonical import canonicalize
from autocompress.frontends._onnx2torch import drop_needless_allowzero, onnx2torch
from autocompress.frontends.errors import FrontendError

log = logging.getLogger(__name__)

_NP_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_}


class OnnxModel(nn.Module):
    """A converted ONNX graph (``self.net``, a GraphModule) and what the export needs of the original.

    ``input_names`` / ``output_names`` are the file's names; ``input_shapes`` its declared shapes,
    a symbolic dimension kept as its name (e.g. ``("batch", 28, 28, 1)`` for a channels-last image).
    """

    def __init__(self, net: nn.Module, input_names: Sequence[str], output_names: Sequence[str],
                 input_shapes: Sequence[tuple], source: str) -> None:
        super().__init__()
        self.net = net
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.input_shapes = [tuple(s) for s in input_shapes]
        self.source = source
        self.parity: dict[str, float] = {}     # output -> max |diff| vs ONNX Runtime, from from_onnx

    def forward(self, x, *more):
        # the first input named apart: torch.export (ONNX dynamo, ExecuTorch) matches dynamic
        # shapes given for one input against it, which a bare *args signature would not allow
        return self.net(x, *more)

    @property
    def channels_last(self) -> bool:
        """True when the (first) input looks like an NHWC image: what a Keras CNN takes."""
        s = self.input_shapes[0] if self.input_shapes else ()
        return len(s) == 4 and s[-1] in (1, 3, 4) and s[1] not in (1, 3, 4)


def from_onnx(path: str | Path, *, atol: float = 1e-4, shapes: Mapping[str, Sequence[int]] | None = None,
              check: bool = True, samples: int = 4, seed: int = 0) -> OnnxModel:
    """Convert the ONNX file at ``path`` to an :class:`OnnxModel` and check it against ONNX Runtime.

    ``shapes`` gives concrete input shapes (by input name) for the parity check where the file's
    are symbolic beyond the batch; by default a symbolic batch is ``samples`` and other symbolic
    dimensions 8. Raises :class:`FrontendError` naming the unsupported operator(s) and node(s), or
    the output and difference when the converted module disagrees with ONNX Runtime beyond ``atol``.
    """
    import onnx

    path = Path(path)
    if not path.exists():
        raise FrontendError(f"{path}: ONNX file does not exist")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise FrontendError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    from autocompress.export.packed import unpack_model
    unpack_model(proto)         # our own packed weights (a deployed model.onnx): plain again
    inits = {i.name for i in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in inits]
    in_shapes = [_declared_shape(v) for v in inputs]
    out_names = [v.name for v in proto.graph.output]
    o2t = onnx2torch()          # loads the converter (and our extra converters) before any look-up
    proto = _supported_version(proto, path)
    proto = _ort_basic(proto, path)
    drop_needless_allowzero(proto)
    try:
        gm = o2t.convert(proto)
    except NotImplementedError as e:
        raise FrontendError(f"{path}: cannot convert to PyTorch: {_node_failures(proto) or e}") from None
    feeds = _random_feeds(inputs, in_shapes, shapes or {}, samples, seed)
    # shapes for the rewrites come from another batch size than the check's, so a rewrite that
    # baked the batch in would fail the check
    probe = _random_feeds(inputs, in_shapes, _rebatched(shapes or {}, inputs, in_shapes, 3), 3, seed + 1)
    try:
        canonicalize(gm, [torch.from_numpy(a) for a in probe.values()])
    except Exception as e:  # noqa: BLE001 - the rewrites are an optimisation: keep onnx2torch's graph
        log.warning("%s: graph rewrites skipped (%s: %s); techniques may find fewer layers",
                    path.name, type(e).__name__, str(e)[:200])
        gm = o2t.convert(proto)
    model = OnnxModel(gm, [v.name for v in inputs], out_names, in_shapes, str(path)).eval()
    if check:
        diff = parity(model, path, feeds)
        if not np.isfinite(max(diff.values())) or max(diff.values()) > atol:
            worst = max(diff, key=diff.get)
            raise FrontendError(f"{path}: the converted module disagrees with ONNX Runtime on output "
                                f"{worst!r}: max |diff| {diff[worst]:.3g} > {atol:.3g}; "
                                f"the converter mistranslates an operator of this graph")
        log.info("from_onnx %s: parity with ONNX Runtime, max |diff| %s", path.name, diff)
        model.parity = diff
    return model


def parity(model: OnnxModel, path: str | Path, feeds: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Largest absolute difference per output between ``model`` and ONNX Runtime on ``feeds``."""
    from autocompress.targets.onnxruntime import session

    ref = session(path).run(None, dict(feeds))
    with torch.no_grad():
        got = model(*[torch.from_numpy(a) for a in feeds.values()])
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    if len(got) != len(ref):
        raise FrontendError(f"{path}: converted module returns {len(got)} outputs, the file {len(ref)}")
    out = {}
    for name, g, r in zip(model.output_names, got, ref):
        g = g.detach().numpy()
        if g.shape != r.shape:
            raise FrontendError(f"{path}: output {name!r} has shape {g.shape} after conversion, {r.shape} "
                                f"on ONNX Runtime")
        out[name] = float(np.abs(g.astype(np.float64) - r.astype(np.float64)).max()) if r.size else 0.0
    return out


# -- what the converter supports ---------------------------------------------------------------

CONVERTER_OPSET = 17     # onnx2torch covers the standard operators up to this opset


def _supported_version(proto, path: Path):
    """``proto`` if the converter covers its operators, else (for opsets it does not know yet) the
    same graph down-converted by ONNX's version converter; the parity check still uses the file."""
    try:
        _check_supported(proto, path)
        return proto
    except FrontendError as first:
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset <= CONVERTER_OPSET:
            raise
        from onnx import version_converter
        try:
            lower = version_converter.convert_version(proto, CONVERTER_OPSET)
        except Exception:  # noqa: BLE001 - not convertible: the first message names the operators
            raise first from None
        _check_supported(lower, path)
        log.info("%s: opset %d down-converted to %d for the converter", path.name, opset, CONVERTER_OPSET)
        return lower

def _check_supported(proto, path: Path) -> None:
    """Every operator the converter lacks, with the nodes using it, in one message."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    missing: dict[str, list[str]] = {}
    for i, n in enumerate(proto.graph.node):
        domain = n.domain or ""
        if domain == "ai.onnx":
            domain = ""
        try:
            get_converter(operation_type=n.op_type, version=opsets.get(domain, 1), domain=domain)
        except NotImplementedError:
            key = f"{domain + '::' if domain else ''}{n.op_type} (opset {opsets.get(domain, '?')})"
            missing.setdefault(key, []).append(n.name or f"#{i}")
    if missing:
        parts = [f"{op} at node(s) {', '.join(nodes[:5])}{' ...' if len(nodes) > 5 else ''}"
                 for op, nodes in missing.items()]
        raise FrontendError(f"{path}: operator(s) not supported by the ONNX-to-PyTorch converter: "
                            f"{'; '.join(parts)}. Re-export the model without them (e.g. a lower opset "
                            f"or the standard domain), or register a converter with "
                            f"onnx2torch.node_converters.add_converter")


def _ort_basic(proto, path: Path):
    """The graph after ONNX Runtime's basic rewrites when the converter takes all of it, else ``proto``.

    Exporters such as Keras' write a layout change around every op; ONNX Runtime pushes them to
    the input and folds constants, which leaves the techniques plain layers to work on."""
    import tempfile

    import onnx

    from autocompress.targets.onnxruntime import optimize_basic

    with tempfile.TemporaryDirectory(prefix="autocompress-onnx-") as d:
        try:
            src = Path(d) / "in.onnx"
            onnx.save(proto, str(src))
            opt = onnx.load(str(optimize_basic(src, Path(d) / "opt.onnx")))
            _check_supported(opt, path)
            _plain_node_names(opt)
            return opt
        except Exception as e:  # noqa: BLE001 - an optimisation only: convert the graph as written
            log.info("%s: ONNX Runtime's graph rewrites not used (%s: %s)", path.name, type(e).__name__,
                     str(e)[:200])
            return proto


def _plain_node_names(proto) -> None:
    """Node names become module names: ONNX Runtime's fused nodes ('MatMul/MatMulAddFusion') would
    put '/' into parameter names."""
    import re

    seen: set[str] = set()
    for i, n in enumerate(proto.graph.node):
        name = re.sub(r"\W", "_", n.name or f"node_{i}").strip("_") or f"node_{i}"
        while name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        n.name = name


def _node_failures(proto) -> str:
    """Run each node's converter alone to name the nodes whose attributes it refuses."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    graph = OnnxGraph(proto.graph)
    bad = []
    for name, node in graph.nodes.items():
        try:
            get_converter(operation_type=node.operation_type, version=opsets.get(node.domain or "", 1),
                          domain=node.domain or "")(node, graph)
        except NotImplementedError as e:
            bad.append(f"{node.operation_type} at node {name}: {e}")
        except Exception:  # noqa: BLE001 - only refusals are reported here
            continue
    return "; ".join(bad[:5])


# -- inputs ------------------------------------------------------------------------------------

def _declared_shape(v) -> tuple:
    dims = v.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _rebatched(shapes: Mapping[str, Sequence[int]], inputs, in_shapes, batch: int) -> dict[str, tuple]:
    """The user's shapes with a symbolic leading (batch) dimension set to ``batch``."""
    out = {}
    for v, declared in zip(inputs, in_shapes):
        if v.name in shapes:
            s = [int(d) for d in shapes[v.name]]
            if declared and not isinstance(declared[0], int) and s:
                s[0] = batch
            out[v.name] = tuple(s)
    return out


def _random_feeds(inputs, in_shapes, shapes: Mapping[str, Sequence[int]], batch: int,
                  seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for v, declared in zip(inputs, in_shapes):
        if v.name in shapes:
            shape = tuple(int(s) for s in shapes[v.name])
        else:
            shape = tuple(d if isinstance(d, int) else (batch if i == 0 else 8) for i, d in enumerate(declared))
        dtype = _NP_DTYPES.get(v.type.tensor_type.elem_type)
        if dtype is None:
            raise FrontendError(f"input {v.name!r}: element type {v.type.tensor_type.elem_type} is not supported")
        if dtype == np.bool_:
            feeds[v.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[v.name] = rng.integers(0, 2, shape).astype(dtype)   # valid as ids, masks and indices
        else:
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
    return feeds

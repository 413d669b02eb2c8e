"""Loading onnx2torch, and what it lacks for the graphs today's exporters write.

onnx2torch (the converter we use, see :mod:`autocompress.frontends.onnx_in`) stops at opset 17 for
the Reduce* family and refuses ``Reshape(allowzero=1)``, both of which torch's dynamo exporter (and
so Keras 3's ``export(format="onnx")``) emits. The converters below fill exactly those gaps with
onnx2torch's own modules; everything else is onnx2torch's.
"""

from __future__ import annotations

from typing import Any

import torch

_LOADED: dict[str, Any] = {}
_REDUCE_V18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
               "ReduceMin", "ReduceProd", "ReduceSumSquare")


def _torchvision_schemas() -> None:
    """onnx2torch imports torchvision (for NMS/RoIAlign), whose C extension cannot load against the
    CPU torch here; declaring its two op schemas first lets the Python part import."""
    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision's ops are already declared
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LOADED["torchvision_lib"] = lib   # the schemas live as long as this object


def onnx2torch() -> Any:
    """The onnx2torch package, with our extra converters registered (once)."""
    if "module" in _LOADED:
        return _LOADED["module"]
    _torchvision_schemas()
    try:
        import onnx2torch as o2t
    except ModuleNotFoundError:
        from autocompress.frontends.errors import FrontendError
        raise FrontendError("reading ONNX models needs onnx2torch: pip install 'autocompress[onnx]'") from None
    _register(o2t)
    _LOADED["module"] = o2t
    return o2t


def _register(o2t: Any) -> None:
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    def reduce_v18(node, graph):
        # opset 18 moved `axes` from an attribute to an input; constant axes map onto the static module
        axes = None
        if len(node.input_values) > 1 and node.input_values[1]:
            try:
                axes = [int(a) for a in get_const_value(node.input_values[1], graph).tolist()]
            except KeyError:
                raise NotImplementedError(f"{node.operation_type} with axes computed at run time") from None
        if not axes and node.attributes.get("noop_with_empty_axes", 0):
            raise NotImplementedError(f"{node.operation_type} with noop_with_empty_axes=1")
        return OperationConverterResult(
            torch_module=OnnxReduceStaticAxes(operation_type=node.operation_type, axes=axes,
                                              keepdims=node.attributes.get("keepdims", 1)),
            onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))

    for op in _REDUCE_V18:
        if OperationDescription("", op, 18) not in _CONVERTER_REGISTRY:
            add_converter(operation_type=op, version=18)(reduce_v18)


def drop_needless_allowzero(model: Any) -> None:
    """``Reshape(allowzero=1)`` differs from ``allowzero=0`` only when the target shape holds a 0;
    with a constant shape free of zeros (what exporters write) the attribute is dropped in place."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    for n in model.graph.node:
        if n.op_type != "Reshape":
            continue
        keep = [a for a in n.attribute if not (a.name == "allowzero" and a.i == 1)]
        if len(keep) != len(n.attribute) and n.input[1] in consts and (consts[n.input[1]] != 0).all():
            del n.attribute[:]
            n.attribute.extend(keep)

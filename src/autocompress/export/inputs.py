"""Model inputs and outputs as models have them, for export and ONNX Runtime runs.

An input is one tensor, a tuple of tensors (positional) or a dict of tensors (keyword: ``input_ids``,
``attention_mask``); the graph's input names follow (``input``, ``input_1``, ... or the dict's keys)
and every tensor keeps its dtype (token ids stay int64 end to end).
"""

from __future__ import annotations

from typing import Any, Mapping, Union

import numpy as np
import onnx
import torch
from torch import nn

from autocompress.outputs import pick_output

Inputs = Union[torch.Tensor, tuple, list, Mapping[str, torch.Tensor]]

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(bool)": np.bool_, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def as_args(x: Inputs) -> tuple:
    if isinstance(x, Mapping):
        return tuple(x.values())
    if isinstance(x, (tuple, list)):
        return tuple(x)
    return (x,)


def input_names(x: Inputs) -> list[str]:
    if isinstance(x, Mapping):
        return [str(k) for k in x]
    n = len(as_args(x))
    return ["input"] + [f"input_{i}" for i in range(1, n)]


class _Picked(nn.Module):
    """Positional call of the user's model (keyword names restored) returning only its logits."""

    def __init__(self, model: nn.Module, keys: list[str] | None, key: str) -> None:
        super().__init__()
        self.model, self.keys, self.key = model, keys, key

    def forward(self, *args):
        out = self.model(**dict(zip(self.keys, args))) if self.keys else self.model(*args)
        return pick_output(out, self.key)


def with_picked_output(model: nn.Module, example: Inputs, key: str = "logits") -> nn.Module:
    """``model`` itself when it takes positional tensors and returns a tensor, else a wrapper."""
    keys = list(example) if isinstance(example, Mapping) else None
    with torch.no_grad():
        out = model(**example) if keys else model(*as_args(example))
    if keys is None and isinstance(out, torch.Tensor):
        return model
    return _Picked(model, keys, key).eval()


def ort_feed(sess, x: Any) -> dict[str, np.ndarray]:
    """ONNX Runtime's input dict for ``x``, each array cast to the dtype the graph declares."""
    specs = sess.get_inputs()
    if isinstance(x, Mapping):
        missing = [s.name for s in specs if s.name not in x]
        if missing:
            raise ValueError(f"inputs {missing} of the ONNX graph are missing; got {list(x)}")
        vals = [x[s.name] for s in specs]
    else:
        vals = list(as_args(x)) if isinstance(x, (tuple, list, torch.Tensor)) else [x]
        if len(vals) != len(specs):
            raise ValueError(f"the ONNX graph takes {len(specs)} inputs {[s.name for s in specs]}, got {len(vals)}")
    feed = {}
    for s, v in zip(specs, vals):
        arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        feed[s.name] = arr.astype(_ORT_DTYPES.get(s.type, arr.dtype), copy=False)
    return feed


def fixed_batch_io(model: onnx.ModelProto) -> list[str]:
    """Names of graph inputs / outputs whose first dimension is a fixed number."""
    out = []
    for v in [*model.graph.input, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and not dims[0].dim_param:
            out.append(v.name)
    return out


def synthetic_feed(sess, batch: int, input_shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of batch ``batch`` for timing: float inputs random, integer inputs (token ids, masks)
    ones. ``input_shape`` (no batch dim) sizes every input of that rank; others use the graph's
    static dims."""
    feed = {}
    for s in sess.get_inputs():
        rest = list(input_shape) if len(s.shape) == len(input_shape) + 1 else \
            [d if isinstance(d, int) else 1 for d in s.shape[1:]]
        dtype = _ORT_DTYPES.get(s.type, np.float32)
        shape = (batch, *rest)
        feed[s.name] = rng.random(shape, dtype=np.float32) if dtype == np.float32 else np.ones(shape, dtype)
    return feed

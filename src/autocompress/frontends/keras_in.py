"""Keras in: a Keras 3 model goes through Keras' own ONNX export, then :func:`from_onnx`.

    os.environ["KERAS_BACKEND"] = "torch"     # before importing keras: no TensorFlow needed
    model = autocompress.from_keras(keras_model)

The returned module takes what the Keras model takes: channels-last (NHWC) images stay NHWC, so the
user's data goes in untransposed; inside, the converted graph runs convolutions in NCHW (see
:mod:`autocompress.frontends._canonical`). Keras' exporter is used rather than a layer-by-layer
translation because it covers every layer Keras can run; our converter checks the result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from autocompress.frontends.errors import FrontendError
from autocompress.frontends.onnx_in import OnnxModel, from_onnx

# onnx2torch converts every op of opset <= 17; Keras' default (20) uses Cast/Reshape versions it lacks
KERAS_OPSET = 17


def from_keras(model: Any, *, path: str | Path | None = None, atol: float = 1e-4,
               opset: int = KERAS_OPSET) -> OnnxModel:
    """Convert a built Keras 3 model to an :class:`OnnxModel` (checked against ONNX Runtime).

    ``path``: where to keep the intermediate ONNX file (default: a temporary folder, removed after).
    """
    try:
        import keras
    except ModuleNotFoundError:
        raise FrontendError("from_keras needs Keras 3: pip install 'autocompress[keras]' and set "
                            "KERAS_BACKEND=torch before importing keras") from None
    if not isinstance(model, keras.Model):
        raise FrontendError(f"from_keras expects a keras.Model, got {type(model).__name__}")
    if not getattr(model, "_called", False):
        _build(model, keras)
    if path is not None:
        return _export_and_convert(model, Path(path), atol, opset)
    with tempfile.TemporaryDirectory(prefix="autocompress-keras-") as d:
        return _export_and_convert(model, Path(d) / f"{model.name or 'model'}.onnx", atol, opset)


def _build(model: Any, keras: Any) -> None:
    """Keras exports only a model that has run once: run it on zeros of its declared input shape."""
    import numpy as np

    try:
        shapes = [tuple(2 if d is None else d for d in t.shape) for t in model.inputs]
    except (AttributeError, ValueError):
        raise FrontendError(f"Keras model {model.name!r} has never been called and declares no input "
                            f"shape; build it (keras.Input(shape=...)) or call it on a batch first") from None
    args = [np.zeros(s, dtype=np.float32) for s in shapes]
    model(args[0] if len(args) == 1 else args)


def _export_and_convert(model: Any, path: Path, atol: float, opset: int) -> OnnxModel:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.export(str(path), format="onnx", verbose=False, opset_version=opset)
    except Exception as e:  # noqa: BLE001 - Keras' own exporter refused: say which model and why
        raise FrontendError(f"Keras could not export {model.name!r} to ONNX: {type(e).__name__}: {e}") from None
    out = from_onnx(path, atol=atol)
    out.source = f"keras:{model.name}"
    return out

"""Models from other frameworks, converted at the door: any ONNX file, and Keras 3 models.

    model = from_onnx("model.onnx")          # checked against ONNX Runtime before it is returned
    model = from_keras(keras_model)          # through Keras' own ONNX export; keeps NHWC inputs

Everything downstream (techniques, search, export) sees an ordinary ``nn.Module``.
"""

from autocompress.frontends.errors import FrontendError
from autocompress.frontends.keras_in import from_keras
from autocompress.frontends.onnx_in import OnnxModel, from_onnx

__all__ = ["FrontendError", "OnnxModel", "from_keras", "from_onnx"]

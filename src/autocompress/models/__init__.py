"""Reference models (Deep Compression, Table 1) and safe weight loading.

The trained baselines are loaded by :func:`autocompress.baselines.load_baseline` (it may retrain them)."""

from autocompress.models.lenet import LeNet5, LeNet300100, MODELS, build_model
from autocompress.models.weights_io import WeightsError, baseline_path, load_weights, save_weights

__all__ = ["LeNet5", "LeNet300100", "MODELS", "build_model", "WeightsError", "baseline_path",
           "load_weights", "save_weights"]

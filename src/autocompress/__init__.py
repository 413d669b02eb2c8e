"""autocompress: automatic neural-network compression, measured on ONNX Runtime.

Public surface; implementation modules are private-by-convention. Importing this package stays
lean: heavy runtimes (onnxruntime, optuna, matplotlib) load only when a feature needs them.
"""

from autocompress.config import Config, ConfigError
from autocompress.data import DataError, Splits, from_datasets, load_mnist, load_npz
from autocompress.train import TrainConfig, evaluate, fit

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "DataError", "Splits", "TrainConfig", "evaluate", "fit",
           "from_datasets", "load_mnist", "load_npz", "__version__"]

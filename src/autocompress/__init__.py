"""autocompress: automatic neural-network compression, measured on ONNX Runtime.

Public surface. Importing the package stays lean: every name, torch included, loads on first use
(``__getattr__`` below), so ``import autocompress`` and ``autocompress --help`` do not pay for torch.

    import autocompress as ac
    result = ac.compress(model, ac.load_mnist(), ac.Budget(max_drop=0.3, min_size_ratio=20))
"""

from importlib import import_module

from autocompress.config import Config, ConfigError   # no torch: plain dataclasses + YAML

__version__ = "0.1.0"

# name -> module that defines it (one verb per technique, plus the automatic loop)
_LAZY = {
    "DataError": "autocompress.data", "Splits": "autocompress.data", "from_datasets": "autocompress.data",
    "load_mnist": "autocompress.data", "load_npz": "autocompress.data",
    "TrainConfig": "autocompress.train", "evaluate": "autocompress.train", "fit": "autocompress.train",
    "prune_": "autocompress.prune", "PruneConfig": "autocompress.prune",
    "prune_channels_": "autocompress.prune", "StructuredPruneConfig": "autocompress.prune",
    "sensitivity": "autocompress.prune",
    "quantize_": "autocompress.quantize", "PTQConfig": "autocompress.quantize",
    "qat_": "autocompress.quantize", "QATConfig": "autocompress.quantize",
    "factorize_": "autocompress.factorize", "FactorizeConfig": "autocompress.factorize",
    "cluster_": "autocompress.encode", "ClusterConfig": "autocompress.encode",
    "save_compressed": "autocompress.encode", "load_compressed": "autocompress.encode",
    "distill": "autocompress.distill", "DistillConfig": "autocompress.distill",
    "export_onnx": "autocompress.export", "check_parity": "autocompress.targets.onnxruntime",
    "compress": "autocompress.search", "apply_recipe": "autocompress.search",
    "Budget": "autocompress.search", "Recipe": "autocompress.search", "Result": "autocompress.search",
    "SearchOptions": "autocompress.search", "TrainingOptions": "autocompress.search",
    "ResultOptions": "autocompress.search",
    "from_onnx": "autocompress.frontends", "from_keras": "autocompress.frontends",
    "FrontendError": "autocompress.frontends",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")


__all__ = ["Config", "ConfigError", "__version__", *_LAZY]

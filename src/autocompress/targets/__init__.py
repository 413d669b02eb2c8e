"""Deployment targets: one module per runtime (ONNX Runtime, ExecuTorch), found by name.

``targets.get("executorch")`` gives a :class:`Target` (export, run, time, size, parity);
``targets.available()`` lists those whose runtime is installed. A runtime package is imported only
inside its own target module, when that target is first used.
"""

from autocompress.targets.base import (LatencyStats, ParityError, ParityReport, Target,
                                       UnknownTargetError, available, for_file, get, names, register,
                                       require)

__all__ = ["LatencyStats", "ParityError", "ParityReport", "Target", "UnknownTargetError", "available",
           "for_file", "get", "names", "register", "require"]

"""The techniques the search combines, one module each, and their registry.

Importing this package registers the built-in techniques in the order their steps run
(structured, factorize, prune, cluster, quantize; distill changes every step's fine-tune). A new
technique is one module that builds a ``Technique`` and calls ``register`` (see registry.py).
This package imports torch and the techniques' own parts, never a deployment runtime nor the
search (a step gets the trial's context as an argument: _common.py says what it may use).
"""

from autocompress.techniques.registry import (COMMON, KINDS, Choice, Step, Technique, all_steps,
                                              all_techniques, check_options, get, names, register,
                                              share, unregister)
from autocompress.techniques import structured, factorize, prune, cluster, quantize, distill  # noqa: F401,E402  (registers)

__all__ = ["COMMON", "KINDS", "Choice", "Step", "Technique", "all_steps", "all_techniques", "check_options",
           "get", "names", "register", "share", "unregister"]

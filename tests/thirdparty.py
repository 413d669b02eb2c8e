"""Import torchvision / timm / transformers in tests on our CPU torch.

The torchvision wheel's C extension is built against a CUDA torch and cannot load here; its import
then fails on an unguarded registration of ``torchvision::nms``. Defining the two op schemas first
lets the pure-Python model code import (no torchvision op is ever *called* by the models we build).
timm and transformers import torchvision too, so every test goes through :func:`import_thirdparty`.
"""

from __future__ import annotations

import importlib

import torch

_LIB = None


def _define_torchvision_ops() -> None:
    global _LIB
    if _LIB is not None:
        return
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:          # already defined (by torchvision itself or an earlier import)
        lib = True
    _LIB = lib


def import_thirdparty(name: str):
    """``import_thirdparty("torchvision")`` etc.: the module, after the op-schema workaround."""
    _define_torchvision_ops()
    return importlib.import_module(name)

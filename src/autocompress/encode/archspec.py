"""Architecture descriptions that rebuild a model WITHOUT pickle or arbitrary code.

A description is JSON:

- ``{"kind": "registry", "name": "lenet5", "overrides": {...}}``: a bundled model
  (:func:`autocompress.models.build_model`);
- ``{"kind": "spec", "tree": {...}}``: a module tree of common layers (Sequential, Linear, Conv,
  BatchNorm, activations, pooling, Flatten, ...), each ``{"type": name, "kwargs": {...}}`` looked up
  in :data:`LAYERS` (a fixed table: no class is ever found by an arbitrary name);
- ``{"kind": "tree", "tree": {...}}``: classes from torchvision, timm, transformers or ``torch.nn``
  (any model those libraries build, pruned or not), by import path from an allow-list, with their
  attributes (:mod:`autocompress.encode.modtree`);
- ``{"kind": "factory", "label": "MyNet", "overrides": {...}}``: the caller's ``model_factory()``.

``overrides`` maps a module path to a module-tree spec replacing what the constructor built there:
this is how a low-rank-factorized or otherwise rewired bundled model is described.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.fx
from torch import nn

from autocompress.encode.modtree import TreeError, build_tree, describe_tree


class ArchError(ValueError):
    """The architecture cannot be described or rebuilt; the message names the module path."""


def _kw(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    def get(m: nn.Module) -> dict[str, Any]:
        out = {}
        for n in names:
            v = getattr(m, n)
            out[n] = list(v) if isinstance(v, tuple) else v
        return out
    return get


def _with_bias(get: Callable[[nn.Module], dict[str, Any]]) -> Callable[[nn.Module], dict[str, Any]]:
    return lambda m: {**get(m), "bias": m.bias is not None}


_CONV = _with_bias(_kw("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                       "groups", "padding_mode"))
_BN = _kw("num_features", "eps", "momentum", "affine", "track_running_stats")
_POOL = _kw("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG = _kw("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")

# type name -> (class, kwargs extractor). Extending it (register_layer) is the only way to add types.
LAYERS: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict[str, Any]]]] = {
    "Linear": (nn.Linear, _with_bias(_kw("in_features", "out_features"))),
    "Conv1d": (nn.Conv1d, _CONV),
    "Conv2d": (nn.Conv2d, _CONV),
    "BatchNorm1d": (nn.BatchNorm1d, _BN),
    "BatchNorm2d": (nn.BatchNorm2d, _BN),
    "LayerNorm": (nn.LayerNorm, lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                                           "elementwise_affine": m.elementwise_affine,
                                           "bias": getattr(m, "bias", None) is not None}),
    "ReLU": (nn.ReLU, lambda m: {}),
    "ReLU6": (nn.ReLU6, lambda m: {}),
    "GELU": (nn.GELU, _kw("approximate")),
    "SiLU": (nn.SiLU, lambda m: {}),
    "Tanh": (nn.Tanh, lambda m: {}),
    "Sigmoid": (nn.Sigmoid, lambda m: {}),
    "Softmax": (nn.Softmax, _kw("dim")),
    "Identity": (nn.Identity, lambda m: {}),
    "Dropout": (nn.Dropout, _kw("p")),
    "Flatten": (nn.Flatten, _kw("start_dim", "end_dim")),
    "MaxPool1d": (nn.MaxPool1d, _POOL),
    "MaxPool2d": (nn.MaxPool2d, _POOL),
    "AvgPool2d": (nn.AvgPool2d, _AVG),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: {"output_size": m.output_size
                                                           if isinstance(m.output_size, int)
                                                           else list(m.output_size)}),
}
_BY_CLASS = {cls: name for name, (cls, _) in LAYERS.items()}


def register_layer(name: str, cls: type[nn.Module], kwargs_of: Callable[[nn.Module], dict[str, Any]]) -> None:
    """Let artifacts describe (and rebuild) ``cls`` as ``cls(**kwargs_of(module))``; parameters and
    buffers are restored afterwards from the stored state dict."""
    if name in LAYERS and LAYERS[name][0] is not cls:
        raise ArchError(f"layer type name {name!r} is already registered for {LAYERS[name][0].__name__}")
    LAYERS[name] = (cls, kwargs_of)
    _BY_CLASS[cls] = name


def module_spec(m: nn.Module, path: str = "") -> dict[str, Any]:
    """JSON description of a module tree made of :data:`LAYERS` and ``nn.Sequential``."""
    if type(m) is nn.Sequential:
        return {"type": "Sequential", "children": [[n, module_spec(c, f"{path}.{n}".lstrip("."))]
                                                   for n, c in m.named_children()]}
    name = _BY_CLASS.get(type(m))
    if name is None:
        raise ArchError(f"module {path or '<root>'} is a {type(m).__name__}, which the artifact cannot "
                        f"describe (known layer types: {sorted(LAYERS)} and Sequential); pass "
                        f"model_factory= to save_compressed/load_compressed, or register_layer()")
    return {"type": name, "kwargs": LAYERS[name][1](m)}


_MAX_DEPTH = 64
_REFUSED_KWARGS = {"device", "dtype"}      # where and in what type is ours to decide, not the file's


def build_spec(spec: Any, path: str = "", depth: int = 0) -> nn.Module:
    if depth > _MAX_DEPTH:
        raise ArchError(f"architecture at {path or '<root>'}: nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ArchError(f"architecture at {path or '<root>'}: malformed module spec")
    t = spec["type"]
    if t == "Sequential":
        children = spec.get("children")
        if not isinstance(children, list):
            raise ArchError(f"architecture at {path or '<root>'}: Sequential without children list")
        seq = nn.Sequential()
        for item in children:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise ArchError(f"architecture at {path}: malformed Sequential child")
            if not item[0] or "." in item[0] or item[0] in seq._modules:
                raise ArchError(f"architecture at {path}: bad or repeated child name {item[0]!r}")
            seq.add_module(item[0], build_spec(item[1], f"{path}.{item[0]}".lstrip("."), depth + 1))
        return seq
    if t not in LAYERS:
        raise ArchError(f"architecture at {path or '<root>'}: unknown layer type {t!r}")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ArchError(f"architecture at {path}: kwargs must be a mapping")
    if _REFUSED_KWARGS & set(kwargs):
        raise ArchError(f"architecture at {path or '<root>'}: {t} may not set {sorted(_REFUSED_KWARGS & set(kwargs))}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return LAYERS[t][0](**kwargs)
    except Exception as e:              # any constructor complaint means the description is bad
        raise ArchError(f"architecture at {path or '<root>'}: cannot build {t}({kwargs}): "
                        f"{type(e).__name__}: {e}"[:500]) from None


def _kind(m: nn.Module) -> type:
    # torch.fx gives every GraphModule (e.g. a converted ONNX graph) a class of its own, copies included
    return torch.fx.GraphModule if isinstance(m, torch.fx.GraphModule) else type(m)


def _same(a: nn.Module, b: nn.Module) -> bool:
    if _kind(a) is not _kind(b):
        return False
    name = _BY_CLASS.get(type(a))
    return name is None or LAYERS[name][1](a) == LAYERS[name][1](b)


def diff_overrides(model: nn.Module, base: nn.Module, path: str = "") -> dict[str, Any]:
    """Module paths where ``model`` differs from ``base`` (what the constructor builds), with the
    spec of what ``model`` has there. Raises if a difference cannot be described."""
    if not _same(model, base):
        if not path:
            raise ArchError(f"the model is a {type(model).__name__} but the constructor builds a "
                            f"{type(base).__name__}")
        return {path: module_spec(model, path)}
    mine, theirs = dict(model.named_children()), dict(base.named_children())
    if list(mine) != list(theirs) and type(model) is nn.Sequential:
        return {path: module_spec(model, path)} if path else {"": module_spec(model)}
    out: dict[str, Any] = {}
    extra = [n for n in mine if n not in theirs]
    if extra:
        raise ArchError(f"module {path or '<root>'} ({type(model).__name__}) has children {extra} that its "
                        f"constructor does not create; the artifact cannot describe them")
    for n, child in mine.items():
        out.update(diff_overrides(child, theirs[n], f"{path}.{n}".lstrip(".")))
    for n in theirs:
        if n not in mine:
            raise ArchError(f"module {path or '<root>'}: child {n!r} of the constructor's model was removed")
    return out


def apply_overrides(model: nn.Module, overrides: dict[str, Any]) -> nn.Module:
    if not isinstance(overrides, dict):
        raise ArchError("architecture: overrides must be a mapping")
    for path, spec in overrides.items():
        new = build_spec(spec, path)
        if path == "":
            return new
        *parents, leaf = path.split(".")
        parent = model
        for p in parents:
            if p not in dict(parent.named_children()):
                raise ArchError(f"architecture: override path {path!r} does not exist in the model")
            parent = getattr(parent, p)
        if leaf not in dict(parent.named_children()):
            raise ArchError(f"architecture: override path {path!r} does not exist in the model")
        setattr(parent, leaf, new)
    return model


def describe(model: nn.Module, model_factory: Callable[[], nn.Module] | None = None) -> dict[str, Any]:
    """The JSON architecture of ``model`` (see module docstring)."""
    from autocompress.models.lenet import MODELS

    # a bundled model or a tree of common layers is described by itself even when a factory is given,
    # so the artifact loads anywhere (`autocompress export` has no factory to pass)
    for name, (ctor, _) in MODELS.items():
        if type(model) is ctor:
            try:
                return {"kind": "registry", "name": name, "overrides": diff_overrides(model, ctor())}
            except ArchError:
                if model_factory is None:
                    raise
    try:
        return {"kind": "spec", "tree": module_spec(model)}
    except ArchError:
        pass
    try:             # torchvision / timm / Hugging Face / torch.nn classes: rebuilt from their attributes
        return {"kind": "tree", "tree": describe_tree(model)}
    except TreeError as e:
        if model_factory is None:
            raise ArchError(f"cannot describe {type(model).__name__} without a model_factory: {e}; "
                            f"pass model_factory= (a callable building the model) to save_compressed "
                            f"and load_compressed") from None
    return {"kind": "factory", "label": type(model).__qualname__,
            "overrides": diff_overrides(model, model_factory())}


def rebuild(arch: Any, model_factory: Callable[[], nn.Module] | None = None,
            device: str | None = None) -> nn.Module:
    """Build the model ``arch`` describes. ``device="meta"`` builds the bundled model and every spec
    without memory (to check sizes before allocating); the caller's ``model_factory`` always runs as is."""
    import contextlib

    import torch

    from autocompress.models.lenet import MODELS

    on = (lambda: torch.device(device)) if device else contextlib.nullcontext
    if not isinstance(arch, dict):
        raise ArchError("architecture description is not a mapping")
    kind = arch.get("kind")
    if kind == "spec":
        with on():
            return build_spec(arch.get("tree"))
    if kind == "registry":
        name = arch.get("name")
        if not isinstance(name, str) or name not in MODELS:
            raise ArchError(f"architecture names bundled model {name!r}; known: {sorted(MODELS)}")
        with on():
            return apply_overrides(MODELS[name][0](), arch.get("overrides", {}))
    if kind == "tree":
        try:
            return build_tree(arch.get("tree"), device=torch.device(device) if device else None)
        except TreeError as e:
            raise ArchError(f"architecture: {e}") from None
    if kind == "factory":
        if model_factory is None:
            raise ArchError(f"this artifact holds a custom model ({arch.get('label')}): pass "
                            f"model_factory= (a callable building it) to load_compressed")
        model = model_factory()
        if type(model).__qualname__ != arch.get("label"):
            raise ArchError(f"model_factory built a {type(model).__qualname__}, the artifact holds a "
                            f"{arch.get('label')}")
        with on():
            return apply_overrides(model, arch.get("overrides", {}))
    raise ArchError(f"unknown architecture kind {kind!r}")


__all__ = ["ArchError", "LAYERS", "register_layer", "module_spec", "build_spec", "describe", "rebuild",
           "diff_overrides", "apply_overrides"]

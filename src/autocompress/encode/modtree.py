"""Describe and rebuild a module tree of classes from well-known libraries, without pickle and
without running any constructor.

A torchvision / timm / Hugging Face model (or one of ``torch.nn`` layers) is, once built, plain data:
per module its class, its plain attributes (ints, strings, tuples, a Hugging Face config, a
reference to an activation class), its children, and the names, shapes and dtypes of its parameters
and buffers. That is what this module records - after structural pruning too, because the pruned
sizes live in exactly those attributes and shapes - and it rebuilds the tree with ``cls.__new__``
plus ``nn.Module.__init__``, never the class's own ``__init__``; the forward code that then runs is
the library's own, installed code.

Trust: a file names classes and functions by import path, and a path is only ever imported when it
lies under :data:`ALLOWED` and names the object canonically (``obj.__module__`` + ``__qualname__``,
no private components), so nothing outside those packages - ``os.system`` reached through some
module's imports, say - can be named. Modules must be ``nn.Module`` subclasses, configs Hugging Face
``PretrainedConfig`` subclasses, enums ``Enum`` subclasses. Sizes of values stored inline are bounded.
"""

from __future__ import annotations

import enum
import functools
import importlib
import math
from typing import Any

import torch
from torch import nn

ALLOWED = ("torch.nn", "torchvision.models", "torchvision.ops", "timm.models", "timm.layers",
           "transformers.models", "transformers.activations", "transformers.pytorch_utils",
           "autocompress")
MAX_INLINE = 4096         # values of a non-persistent buffer kept in the description
_MAX_DEPTH = 64
_MODULE_INTERNALS = frozenset(vars(nn.Module()))   # hooks and tables nn.Module.__init__ recreates
_DTYPE = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16,
                                                      torch.float64, torch.int64, torch.int32,
                                                      torch.int16, torch.int8, torch.uint8, torch.bool)}


class TreeError(ValueError):
    """The tree cannot be described or rebuilt; the message names the module path and attribute."""


def _allowed(mod: str) -> bool:
    return any(mod == r or mod.startswith(r + ".") for r in ALLOWED)


@functools.lru_cache(maxsize=1)
def _builtins() -> dict[int, tuple[str, Any]]:
    """torch.nn.functional's C functions (gelu, ...): their own names point into torch._C."""
    import torch.nn.functional as F
    return {id(f): (f"torch.nn.functional:{n}", f) for n, f in vars(F).items()
            if not n.startswith("_") and type(f).__name__ == "builtin_function_or_method"}


def _path_of(obj: Any, where: str) -> str:
    if id(obj) in _builtins() and _builtins()[id(obj)][1] is obj:
        return _builtins()[id(obj)][0]
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (isinstance(mod, str) and isinstance(qual, str)) or not _allowed(mod) or "<" in qual:
        raise TreeError(f"{where}: {obj!r} is not from a package the artifact may name ({', '.join(ALLOWED)})")
    return f"{mod}:{qual}"


def resolve(path: Any, where: str) -> Any:
    """The object an import path ``module:qualname`` from a file names, if it may be named at all."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise TreeError(f"{where}: malformed import path {path!r}")
    mod, qual = path.split(":")
    parts = qual.split(".")
    if not _allowed(mod) or any(not p.isidentifier() or p.startswith("_") for p in parts + mod.split(".")):
        raise TreeError(f"{where}: {path!r} is not under the packages an artifact may name "
                        f"({', '.join(ALLOWED)})")
    try:
        obj: Any = importlib.import_module(mod)
        for p in parts:
            obj = getattr(obj, p)
    except Exception as e:          # not installed, renamed in another version, fails to import
        raise TreeError(f"{where}: cannot import {path}: {type(e).__name__}: {e}"[:400]) from None
    if _builtins().get(id(obj), (None,))[0] == path:
        return obj
    if getattr(obj, "__module__", None) != mod or getattr(obj, "__qualname__", None) != qual:
        raise TreeError(f"{where}: {path!r} is not that object's own name")    # re-exported imports
    return obj


# -- attribute values ----------------------------------------------------------------------

def _enc(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, str)) or (type(v) is int):
        return v
    if type(v) is float:
        return v if math.isfinite(v) else {"$": "float", "v": repr(v)}
    if type(v) in (list, tuple):
        return {"$": type(v).__name__, "v": [_enc(x, where) for x in v]}
    if type(v) in (set, frozenset):
        return {"$": type(v).__name__, "v": [_enc(x, where) for x in sorted(v, key=repr)]}
    if type(v) is dict and all(isinstance(k, str) for k in v):
        return {"$": "dict", "v": {k: _enc(x, f"{where}[{k!r}]") for k, x in v.items()}}
    if type(v) is dict and all(type(k) in (int, bool, str, float) for k in v):     # e.g. id2label
        return {"$": "pairs", "v": [[k, _enc(x, f"{where}[{k!r}]")] for k, x in v.items()]}
    if isinstance(v, torch.dtype):
        return {"$": "dtype", "v": str(v).removeprefix("torch.")}
    if isinstance(v, enum.Enum):
        return {"$": "enum", "cls": _path_of(type(v), where), "v": _enc(v.value, where)}
    if isinstance(v, functools.partial):
        return {"$": "partial", "f": _enc(v.func, where), "args": _enc(list(v.args), where),
                "kw": _enc(dict(v.keywords), where)}
    cfg = _hf_config_type()
    if cfg is not None and isinstance(v, cfg):
        attn = getattr(v, "_attn_implementation", None)       # chosen at build time, not in to_dict()
        return {"$": "hfconfig", "cls": _path_of(type(v), where), "v": _enc(v.to_dict(), where),
                "attn": attn if isinstance(attn, str) else None}
    if isinstance(v, type) or callable(v) and hasattr(v, "__qualname__"):
        return {"$": "ref", "v": _path_of(v, where)}
    raise TreeError(f"{where} is a {type(v).__name__}, which the artifact cannot describe")


def _hf_config_type() -> type | None:
    import sys
    mod = sys.modules.get("transformers")       # never imported here unless the user's model did
    return getattr(mod, "PretrainedConfig", None) if mod is not None else None


def _dec(v: Any, where: str, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise TreeError(f"{where}: value nested too deep")
    if not isinstance(v, dict):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TreeError(f"{where}: malformed value")
    kind, x = v.get("$"), v.get("v")
    if kind in ("list", "tuple", "set", "frozenset") and isinstance(x, list):
        out = [_dec(i, where, depth + 1) for i in x]
        try:
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](out)
        except TypeError:                     # an unhashable member of a set
            raise TreeError(f"{where}: malformed set") from None
    if kind == "dict" and isinstance(x, dict):
        return {k: _dec(i, where, depth + 1) for k, i in x.items()}
    if kind == "pairs" and isinstance(x, list):
        if not all(isinstance(i, list) and len(i) == 2 and isinstance(i[0], (int, float, str)) for i in x):
            raise TreeError(f"{where}: malformed mapping")
        return {i[0]: _dec(i[1], where, depth + 1) for i in x}
    if kind == "float" and x in ("inf", "-inf", "nan"):
        return float(x)
    if kind == "dtype" and x in _DTYPE:
        return _DTYPE[x]
    if kind == "enum":
        cls = resolve(v.get("cls"), where)
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise TreeError(f"{where}: {v.get('cls')} is not an enum")
        try:
            return cls(_dec(x, where, depth + 1))
        except ValueError as e:
            raise TreeError(f"{where}: {e}") from None
    if kind == "partial":
        f = _dec(v.get("f"), where, depth + 1)
        args, kw = _dec(v.get("args"), where, depth + 1), _dec(v.get("kw"), where, depth + 1)
        if not (callable(f) and isinstance(args, list) and isinstance(kw, dict)):
            raise TreeError(f"{where}: malformed partial")
        return functools.partial(f, *args, **kw)
    if kind == "hfconfig":
        cls, cfg = resolve(v.get("cls"), where), _hf_config_type()
        if cfg is None or not (isinstance(cls, type) and issubclass(cls, cfg)):
            raise TreeError(f"{where}: {v.get('cls')} is not a Hugging Face config class")
        d = _dec(x, where, depth + 1)
        if not isinstance(d, dict):
            raise TreeError(f"{where}: malformed config")
        try:
            built = cls.from_dict(d)
            if isinstance(v.get("attn"), str):
                built._attn_implementation = v["attn"]          # the library validates the name
            return built
        except Exception as e:
            raise TreeError(f"{where}: config {v.get('cls')} cannot be built: {type(e).__name__}: {e}"[:400]) from None
    if kind == "ref":
        return resolve(x, where)
    raise TreeError(f"{where}: unknown value kind {kind!r}")


# -- modules -------------------------------------------------------------------------------

def _tensor_meta(t: torch.Tensor, where: str) -> list:
    if t.dtype not in _DTYPE.values():
        raise TreeError(f"{where} has dtype {t.dtype}")
    return [list(t.shape), str(t.dtype).removeprefix("torch.")]


def describe_tree(m: nn.Module, path: str = "") -> dict[str, Any]:
    where = path or "<root>"
    node: dict[str, Any] = {"cls": _path_of(type(m), f"module {where}"), "attrs": {}, "params": [],
                            "buffers": [], "children": []}
    for k, v in vars(m).items():
        if k in _MODULE_INTERNALS or k in ("_flat_weights", "_flat_weight_refs"):   # RNNs rebuild these
            continue
        if isinstance(v, torch.Tensor):
            raise TreeError(f"module {where}: attribute {k!r} is a tensor that is neither a parameter "
                            f"nor a buffer; the artifact cannot describe it")
        node["attrs"][k] = _enc(v, f"module {where}, attribute {k!r}")
    node["attrs"]["training"] = False
    for k, p in m._parameters.items():
        node["params"].append([k, None] if p is None else [k, *_tensor_meta(p, f"{where}.{k}"), p.requires_grad])
    for k, b in m._buffers.items():
        persistent = k not in m._non_persistent_buffers_set
        entry = [k, None] if b is None else [k, *_tensor_meta(b, f"{where}.{k}"), persistent]
        if b is not None and not persistent:     # not in the state dict: its values travel here
            if b.numel() > MAX_INLINE:
                raise TreeError(f"module {where}: non-persistent buffer {k!r} has {b.numel()} values, "
                                f"more than the {MAX_INLINE} an artifact keeps inline")
            entry.append(b.detach().cpu().reshape(-1).tolist())
        node["buffers"].append(entry)
    for k, c in m._modules.items():
        node["children"].append([k, None if c is None else describe_tree(c, f"{path}.{k}".lstrip("."))])
    return node


def _empty(meta: Any, where: str, device: torch.device | None) -> torch.Tensor:
    if not (isinstance(meta, list) and len(meta) >= 2 and isinstance(meta[0], list) and meta[1] in _DTYPE
            and all(type(s) is int and s >= 0 for s in meta[0])):
        raise TreeError(f"{where}: malformed tensor description")
    return torch.empty(meta[0], dtype=_DTYPE[meta[1]], device=device)


def build_tree(node: Any, path: str = "", device: torch.device | None = None, depth: int = 0) -> nn.Module:
    where = f"module {path or '<root>'}"
    if depth > _MAX_DEPTH:
        raise TreeError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(node, dict) or not all(isinstance(node.get(k), t) for k, t in
                                             (("attrs", dict), ("params", list), ("buffers", list),
                                              ("children", list))):
        raise TreeError(f"{where}: malformed description")
    cls = resolve(node.get("cls"), where)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TreeError(f"{where}: {node.get('cls')} is not a torch module class")
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in node["attrs"].items():
        if not isinstance(k, str) or k in _MODULE_INTERNALS - {"training"} or k.startswith("__"):
            raise TreeError(f"{where}: attribute {k!r} may not be set")
        m.__dict__[k] = _dec(v, f"{where}, attribute {k!r}")
    for entry in node["params"]:
        name = _name(entry, where, m)
        m._parameters[name] = None if entry[1] is None else nn.Parameter(
            _empty(entry[1:3], f"{where}.{name}", device), requires_grad=bool(entry[3:4] and entry[3]))
    for entry in node["buffers"]:
        name = _name(entry, where, m)
        if entry[1] is None:
            m._buffers[name] = None
            continue
        t = _empty(entry[1:3], f"{where}.{name}", device)
        persistent = bool(entry[3:4] and entry[3])
        if not persistent:
            vals = entry[4] if len(entry) > 4 else None
            if not isinstance(vals, list) or len(vals) != t.numel() or t.numel() > MAX_INLINE:
                raise TreeError(f"{where}: non-persistent buffer {name!r} lacks its values")
            if t.device.type != "meta":
                t = torch.tensor(vals, dtype=t.dtype).reshape(t.shape)
            m._non_persistent_buffers_set.add(name)
        m._buffers[name] = t
    for entry in node["children"]:
        name = _name(entry, where, m)
        m._modules[name] = None if entry[1] is None else build_tree(
            entry[1], f"{path}.{name}".lstrip("."), device, depth + 1)
    if isinstance(m, nn.RNNBase):
        m._init_flat_weights()
    return m


def _name(entry: Any, where: str, m: nn.Module) -> str:
    if not (isinstance(entry, list) and len(entry) >= 2 and isinstance(entry[0], str)
            and entry[0].isidentifier() or (isinstance(entry, list) and entry and isinstance(entry[0], str)
                                            and entry[0].isdigit())):
        raise TreeError(f"{where}: malformed entry {str(entry)[:80]}")
    if entry[0] in m._parameters or entry[0] in m._buffers or entry[0] in m._modules:
        raise TreeError(f"{where}: {entry[0]!r} appears twice")
    return entry[0]


__all__ = ["ALLOWED", "MAX_INLINE", "TreeError", "build_tree", "describe_tree", "resolve"]

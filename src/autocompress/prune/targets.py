"""Which weights a pruning pass may touch: prunable parameters found by module type, then filtered.

A *target* is one weight tensor, named by its qualified parameter name (``"fc1.weight"``,
``"rnn.weight_hh_l0"``, ``"encoder.layers.0.self_attn.in_proj_weight"``). Filters accept either the
module name or the parameter name, with shell-style wildcards (``"features.*"``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, Literal

from torch import nn

LayerKind = Literal["conv", "linear", "rnn", "attention"]
ALL_KINDS: tuple[LayerKind, ...] = ("conv", "linear", "rnn", "attention")


@dataclass(frozen=True)
class Target:
    name: str            # qualified parameter name, e.g. "fc1.weight"
    module_name: str     # owning module, e.g. "fc1"
    param_name: str      # attribute on the module, e.g. "weight"
    kind: LayerKind
    module: nn.Module

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.param_name)


def _weights_of(name: str, module: nn.Module, parent: nn.Module | None) -> Iterable[tuple[str, LayerKind]]:
    """(param attribute, kind) of the prunable weights a module owns directly. Biases and norms are
    never pruned: they are tiny and zeroing them shifts activations instead of removing work."""
    if isinstance(module, nn.MultiheadAttention):
        for p in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(module, p, None) is not None:
                yield p, "attention"
    elif isinstance(module, nn.modules.conv._ConvNd):
        yield "weight", "conv"
    elif isinstance(module, nn.Linear):
        # MHA's out_proj is a Linear subclass; it belongs to the attention layer
        yield "weight", ("attention" if isinstance(parent, nn.MultiheadAttention) else "linear")
    elif isinstance(module, nn.RNNBase):
        for p, _ in module.named_parameters(recurse=False):
            if p.startswith("weight_"):          # weight_ih_l0, weight_hh_l0, ..._reverse
                yield p, "rnn"


def matches(patterns: Iterable[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def find_targets(model: nn.Module, kinds: Iterable[LayerKind] = ALL_KINDS, include: Iterable[str] = (),
                 exclude: Iterable[str] = ()) -> list[Target]:
    """Prunable weights of ``model`` in module order. ``include`` empty = all; ``exclude`` wins."""
    kinds, include, exclude = set(kinds), list(include), list(exclude)
    bad = kinds - set(ALL_KINDS)
    if bad:
        raise ValueError(f"unknown layer kind(s) {sorted(bad)}; expected a subset of {list(ALL_KINDS)}")
    parents = {id(c): m for m in model.modules() for c in m.children()}
    out = []
    for mname, module in model.named_modules():
        for pname, kind in _weights_of(mname, module, parents.get(id(module))):
            full = f"{mname}.{pname}" if mname else pname
            if kind not in kinds:
                continue
            if include and not matches(include, mname, full):
                continue
            if matches(exclude, mname, full):
                continue
            out.append(Target(full, mname, pname, kind, module))
    return out


def check_names_exist(model: nn.Module, names: Iterable[str], field: str) -> None:
    """Raise naming ``field`` if a pattern matches no module or parameter (a typo must not pass)."""
    known = [n for n, _ in model.named_modules()] + [n for n, _ in model.named_parameters()]
    for pat in names:
        if not any(fnmatch.fnmatchcase(k, pat) for k in known):
            close = [k for k in known if k and (pat.split(".")[0] in k)][:5]
            raise ValueError(f"{field}: {pat!r} matches no layer of {type(model).__name__}"
                             + (f" (similar: {close})" if close else f"; layers are {[k for k in known if k][:12]}"))

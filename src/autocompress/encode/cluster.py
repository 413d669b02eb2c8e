"""Weight clustering / sharing (Deep Compression, section 3): k-means per layer with k = 2^bits.

After :func:`cluster_` every selected weight tensor holds at most ``2^bits`` distinct non-zero values
(its codebook); zeros (a pruning mask) stay exactly zero and belong to no cluster. The model keeps its
plain ``nn.Linear`` / ``nn.Conv*`` modules, so it runs, exports and trains as before.

Fine-tuning the shared centroids (the paper's Fig. 3): a gradient hook on each clustered weight
replaces the gradient of every member by the *sum* of its cluster's gradients. Every member of a
cluster then receives the same update from any element-wise optimizer (SGD, momentum, Adam), so the
members stay equal and the centroid moves by ``lr * sum(grad)`` as in the paper. Pass
:func:`sync_clusters` as a step hook of :func:`autocompress.train.fit`: after each optimizer step it
re-snaps the weights onto their codebook (fp16-representable centroids by default, kept as an fp32
master copy so small updates are not lost to rounding) and re-applies the zero mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from autocompress.config import Config, ConfigError

log = logging.getLogger(__name__)

Init = Literal["linear", "density", "kmeans++"]


@dataclass
class ClusterConfig(Config):
    bits: int = 5                          # global: k = 2^bits centroids per layer
    conv_bits: int | None = None           # overrides ``bits`` for convolutions (paper: 8)
    linear_bits: int | None = None         # overrides ``bits`` for Linear layers (paper: 5)
    layer_bits: dict[str, int] = field(default_factory=dict)   # module name -> bits (wins over all)
    init: Init = "linear"                  # the paper found linear init best (keeps large weights)
    layers: list[str] | None = None        # module names; None = every Linear / Conv weight
    iters: int = 30                        # k-means (Lloyd) iterations
    codebook_dtype: Literal["fp32", "fp16"] = "fp16"   # fp16 halves codebook storage, exact on load
    seed: int = 0                          # k-means++ sampling

    def validate(self) -> None:
        for name, b in [("bits", self.bits), ("conv_bits", self.conv_bits),
                        ("linear_bits", self.linear_bits), *[(f"layer_bits[{k}]", v)
                                                             for k, v in self.layer_bits.items()]]:
            if b is not None and not 1 <= b <= 8:
                raise ConfigError(f"ClusterConfig.{name} must be in 1..8 (k = 2^bits <= 256), got {b}")
        if self.iters < 0:
            raise ConfigError(f"ClusterConfig.iters must be >= 0, got {self.iters}")

    def bits_for(self, name: str, module: nn.Module) -> int:
        if name in self.layer_bits:
            return self.layer_bits[name]
        if isinstance(module, nn.modules.conv._ConvNd) and self.conv_bits is not None:
            return self.conv_bits
        if isinstance(module, nn.Linear) and self.linear_bits is not None:
            return self.linear_bits
        return self.bits


@dataclass
class _ClusterState:
    """Per clustered weight: flat assignment, zero mask, fp32 master codebook, what is shown."""

    idx: torch.Tensor        # (numel,) int64 cluster of each element (0 where masked)
    mask: torch.Tensor       # (numel,) bool, False = pruned zero (member of no cluster)
    master: torch.Tensor     # (k,) fp32 centroids, accumulate updates exactly
    shown: torch.Tensor      # (k,) centroids as written into the weight (rounded to codebook dtype)
    fp16: bool
    hooked: int = 0          # id() of the Parameter our gradient hook is on (re-hook after deepcopy)
    active: bool = True      # False after strip_clusters_: the hook passes gradients through


_ATTR = "_ac_cluster"        # module attribute holding {param_name: _ClusterState}


def _on(st: "_ClusterState", device: torch.device) -> "_ClusterState":
    """The state's tensors on the weight's ``device``: a fine-tune on an accelerator moves the
    model (and its buffers) but not this plain attribute, so it follows lazily, once per move."""
    if st.idx.device != device:
        st.idx, st.mask = st.idx.to(device), st.mask.to(device)
        st.master, st.shown = st.master.to(device), st.shown.to(device)
    return st


# -- 1-D k-means -----------------------------------------------------------------------------

def _init_centroids(v: torch.Tensor, k: int, init: Init, seed: int) -> torch.Tensor:
    """v: (n,) non-zero weights -> (k,) initial centroids."""
    if init == "linear":      # evenly spaced over [min, max]
        return torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    if init == "density":     # evenly spaced on the CDF: centroids where the weights are dense
        q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return torch.quantile(v.double() if v.numel() <= 1 << 24 else v[:1 << 24].double(), q)
    gen = torch.Generator().manual_seed(seed)       # k-means++: D^2 sampling
    vd = v.double()
    c = [vd[torch.randint(len(vd), (1,), generator=gen)].item()]
    d2 = (vd - c[0]) ** 2
    for _ in range(1, k):
        tot = float(d2.sum())
        if tot <= 0:
            break
        j = int(torch.multinomial(d2 / tot, 1, generator=gen))
        c.append(vd[j].item())
        d2 = torch.minimum(d2, (vd - c[-1]) ** 2)
    return torch.tensor(sorted(c), dtype=torch.float64)


def _assign(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of each value; c sorted ascending (1-D: boundaries are the midpoints)."""
    mids = (c[1:] + c[:-1]) / 2
    return torch.searchsorted(mids, v.contiguous())


def kmeans_1d(v: torch.Tensor, k: int, init: Init = "linear", iters: int = 30,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars. Returns (centroids (k',) float64 sorted, assignment (n,) int64),
    k' <= k (empty clusters are dropped)."""
    vd = v.double()
    c = torch.unique(_init_centroids(v, min(k, max(1, v.numel())), init, seed))  # sorted, distinct
    for _ in range(iters):
        a = _assign(vd, c)
        cnt = torch.bincount(a, minlength=len(c))
        sums = torch.zeros(len(c), dtype=torch.float64).index_add_(0, a, vd)
        new = torch.where(cnt > 0, sums / cnt.clamp(min=1), c)
        new, _ = torch.sort(new)
        if torch.equal(new, c):
            break
        c = new
    a = _assign(vd, c)
    used = torch.bincount(a, minlength=len(c)) > 0
    c = c[used]
    return c, _assign(vd, c)


# -- public API ------------------------------------------------------------------------------

def _targets(model: nn.Module, cfg: ClusterConfig) -> list[tuple[str, nn.Module]]:
    mods = dict(model.named_modules())
    if cfg.layers is not None:
        missing = [n for n in cfg.layers if n not in mods]
        if missing:
            raise ConfigError(f"ClusterConfig.layers: no module named {missing} in "
                              f"{type(model).__name__}; weight layers are "
                              f"{[n for n, m in mods.items() if _clusterable(m)]}")
        bad = [n for n in cfg.layers if not _clusterable(mods[n])]
        if bad:
            raise ConfigError(f"ClusterConfig.layers: {bad} have no 'weight' parameter to cluster")
        return [(n, mods[n]) for n in cfg.layers]
    return [(n, m) for n, m in mods.items() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]


def _clusterable(m: nn.Module) -> bool:
    return isinstance(getattr(m, "weight", None), nn.Parameter)


def _round(c: torch.Tensor, fp16: bool) -> torch.Tensor:
    return c.to(torch.float16).to(torch.float32) if fp16 else c.to(torch.float32)


def cluster_(model: nn.Module, config: ClusterConfig | None = None,
             masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Cluster the weights of ``model`` in place; returns it.

    ``masks`` (module name -> bool tensor shaped like its weight, True = kept) marks pruned weights;
    without it, exact zeros are taken as pruned. Pruned weights stay 0 and join no cluster.
    """
    cfg = config or ClusterConfig()
    masks = masks or {}
    for name, mod in _targets(model, cfg):
        w = mod.weight
        k = 2 ** cfg.bits_for(name, mod)
        mask = masks.get(name)
        mask = (w.detach() != 0) if mask is None else mask.to(torch.bool)
        if mask.shape != w.shape:
            raise ValueError(f"cluster_: mask for {name!r} has shape {tuple(mask.shape)}, "
                             f"weight has {tuple(w.shape)}")
        flat_mask = mask.reshape(-1)
        vals = w.detach().reshape(-1)[flat_mask].float()
        if vals.numel() == 0:
            log.warning("cluster_: %s is entirely zero, nothing to cluster", name)
            continue
        c, a = kmeans_1d(vals, k, cfg.init, cfg.iters, cfg.seed)
        idx = torch.zeros(w.numel(), dtype=torch.int64)
        idx[flat_mask] = a
        fp16 = cfg.codebook_dtype == "fp16"
        st = _ClusterState(idx=idx, mask=flat_mask.clone(), master=c.float(),
                           shown=_round(c, fp16), fp16=fp16)
        states = getattr(mod, _ATTR, None) or {}
        states["weight"] = st
        object.__setattr__(mod, _ATTR, states)
        _write(w, st)
        _hook(w, st)
        log.debug("cluster_: %s -> %d centroids over %d non-zero weights", name, len(c), vals.numel())
    return model


def _write(w: torch.Tensor, st: _ClusterState) -> None:
    _on(st, w.device)
    with torch.no_grad():
        # pruned positions get exactly 0 (not shown[0] * 0, which could be -0.0)
        flat = torch.where(st.mask, st.shown[st.idx], torch.zeros((), dtype=st.shown.dtype))
        w.copy_(flat.view_as(w).to(w.dtype))


def _hook(w: nn.Parameter, st: _ClusterState) -> None:
    """Gradient of each member := sum of its cluster's gradients (0 on pruned weights)."""
    if st.hooked == id(w):
        return

    def shared_grad(g: torch.Tensor) -> torch.Tensor:
        if not st.active:
            return g
        _on(st, g.device)
        idx, mask = st.idx, st.mask
        gf = g.reshape(-1)
        k = len(st.shown)
        sums = torch.zeros(k, dtype=gf.dtype, device=gf.device).index_add_(0, idx[mask], gf[mask])
        return torch.where(mask, sums[idx], torch.zeros((), dtype=gf.dtype)).view_as(g)

    w.register_hook(shared_grad)
    st.hooked = id(w)


def _states(model: nn.Module):
    for name, mod in model.named_modules():
        for pname, st in (getattr(mod, _ATTR, None) or {}).items():
            yield name, mod, pname, st


@torch.no_grad()
def sync_clusters(model: nn.Module) -> None:
    """Step hook for :func:`autocompress.train.fit`: fold the optimizer's update into the centroids
    and re-snap each clustered weight onto its codebook (zeros re-applied)."""
    for _, mod, pname, st in _states(model):
        w = getattr(mod, pname)
        _on(st, w.device)
        flat = w.detach().reshape(-1).float()
        k, dev = len(st.shown), w.device
        a, v = st.idx[st.mask], flat[st.mask]
        hi = torch.full((k,), -torch.inf, device=dev).scatter_reduce_(0, a, v, "amax")
        lo = torch.full((k,), torch.inf, device=dev).scatter_reduce_(0, a, v, "amin")
        cnt = torch.bincount(a, minlength=k)
        mean = torch.zeros(k, device=dev).index_add_(0, a, v) / cnt.clamp(min=1)
        # members normally stay equal (shared gradients); if something broke that, use their mean
        now = torch.where(cnt == 0, st.shown, torch.where(hi == lo, hi, mean))
        st.master += now - st.shown
        st.shown = _round(st.master, st.fp16)
        _write(w, st)
        if isinstance(w, nn.Parameter):
            _hook(w, st)


def cluster_hooks(model: nn.Module) -> list[Callable[[nn.Module], None]]:
    """The step hooks to pass to ``fit(..., hooks=...)`` while fine-tuning a clustered model."""
    return [sync_clusters]


def codebooks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.<param>": (k,) centroids}`` of every clustered weight (as written in the model)."""
    return {f"{n}.{p}" if n else p: st.shown.clone() for n, _, p, st in _states(model)}


def strip_clusters_(model: nn.Module) -> nn.Module:
    """Forget the clustering state (weights keep their shared values); gradients flow freely again.
    Hooks already on a Parameter cannot be removed individually, so they are made pass-through."""
    for _, _, _, st in list(_states(model)):
        st.active = False
    for mod in model.modules():
        if hasattr(mod, _ATTR):
            object.__delattr__(mod, _ATTR)
    return model

"""What a deployment target is, and the registry that names them.

A :class:`Target` turns a PyTorch model into the file a runtime ships (``export``), runs that file
(``load`` / ``run``), times it (``time``, several files interleaved in one process), weighs it
(``size``) and checks it against PyTorch (``parity``, ``accuracy``). Each target is one module
under ``targets/`` and the only place its runtime package is imported, lazily: importing the
registry (or any technique) loads no runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
import statistics
import time as _time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from autocompress.outputs import call_model, pick_output
from autocompress.runtime_results import LatencyStats, ParityError, ParityReport  # noqa: F401 - re-exported


class UnknownTargetError(ValueError):
    """No deployment target of that name is registered (the message lists those that are)."""


Runner = Callable[[np.ndarray], np.ndarray]   # one loaded model: float32 batch in, first output out


class Target:
    """One deployment runtime. Subclasses set ``name``, ``suffix``, ``package`` and implement
    ``export`` and ``load``; timing, running, size and parity have runtime-neutral defaults."""

    name: str = ""
    suffix: str = ""          # file suffix of the deployed model, with the dot (".onnx", ".pte")
    package: str = ""         # the Python package the runtime needs (checked by available())
    label: str = ""           # how reports name the runtime ("ONNX Runtime", "ExecuTorch")
    # True: ``export(quantized=True)`` quantizes a plain float model itself from ``calibration``;
    # False: it writes the model's own quantization wrappers (their calibrated ranges)
    requantizes: bool = False
    # export options for a file that is only timed (speed probes: search/speed_probe.py): the
    # quickest faithful export, not the one that ships
    probe_opts: dict[str, Any] = {}

    @property
    def filename(self) -> str:
        return "model" + self.suffix

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    # -- to implement -------------------------------------------------------------------
    def export(self, model: nn.Module, example: torch.Tensor, path: str | Path, *, quantized: bool = False,
               calibration: torch.Tensor | None = None, **opts: Any) -> Path:
        """Write the deployable file for ``model``; ``quantized`` asks for the runtime's int8 form
        (``calibration``: real inputs for its activation ranges)."""
        raise NotImplementedError

    def load(self, path: str | Path, threads: int = 1) -> Runner:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    def run(self, path: str | Path, inputs: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.load(path)(inputs)      # each runner converts (ORT keeps int64 ids and dicts)

    def size(self, path: str | Path) -> int:
        """Bytes of the deployable file (self-contained: the file is the whole model)."""
        return Path(path).stat().st_size

    def accuracy(self, path: str | Path, loader: Iterable, threads: int = 1) -> float:
        """Top-1 accuracy of the deployed file on this runtime (the accuracy a deployment gets)."""
        runner = self.load(path, threads)
        correct = total = 0
        for x, y in loader:
            out = runner(x)
            correct += int((out.argmax(-1) == np.asarray(y)).sum())
            total += len(y)
        return correct / max(total, 1)

    def parity(self, model: nn.Module, path: str | Path, inputs: torch.Tensor, *, atol: float = 1e-3,
               rtol: float = 0.0, min_agreement: float = 1.0) -> ParityReport:
        """Compare PyTorch and this runtime on real ``inputs``; raise :class:`ParityError` if the
        largest absolute difference exceeds ``atol + rtol * max|PyTorch output|`` or top-1
        agreement is below ``min_agreement``."""
        model.eval()
        with torch.no_grad():
            ref = pick_output(call_model(model, inputs)).numpy()
        got = self.run(path, inputs)
        if got.shape != ref.shape:
            raise ParityError(f"{path}: {self.label} output shape {got.shape} != PyTorch {ref.shape}")
        diff = float(np.abs(got - ref).max())
        tol = atol + rtol * float(np.abs(ref).max())
        agree = float((got.argmax(-1) == ref.argmax(-1)).mean()) if ref.ndim > 1 else 1.0
        rep = ParityReport(diff, agree, int(ref.shape[0]))
        if not np.isfinite(diff) or diff > tol or agree < min_agreement:
            raise ParityError(f"{path}: {self.label} disagrees with PyTorch: max |diff| {diff:.3g} "
                              f"(tolerance {tol:.3g}), top-1 agreement {agree:.2%} "
                              f"(required {min_agreement:.2%}) on {rep.samples} inputs")
        return rep

    def time(self, paths: Mapping[str, str | Path], input_shape: tuple[int, ...],
             batch_sizes: Iterable[int] = (1, 64), threads: int = 1, warmup: int = 10,
             runs: int = 100) -> dict[str, dict[int, LatencyStats]]:
        """Median latency of each file, runs *interleaved* (A, B, A, B, ...) in one process so a
        burst of load on a shared machine hits all alike and their ratio stays trustworthy.
        ``input_shape`` excludes the batch dimension."""
        runners = {k: self.load(p, threads) for k, p in paths.items()}
        return interleaved(runners, input_shape, batch_sizes, warmup=warmup, runs=runs)


def interleaved(runners: Mapping[str, Runner], input_shape: tuple[int, ...], batch_sizes: Iterable[int],
                *, warmup: int = 10, runs: int = 100) -> dict[str, dict[int, LatencyStats]]:
    out: dict[str, dict[int, LatencyStats]] = {k: {} for k in runners}
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        x = rng.random((b, *input_shape), dtype=np.float32)
        for r in runners.values():
            for _ in range(warmup):
                r(x)
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(runs):
            for k, r in runners.items():
                t0 = _time.perf_counter()
                r(x)
                times[k].append((_time.perf_counter() - t0) * 1e3)
        for k, ts in times.items():
            ts.sort()
            out[k][b] = LatencyStats(statistics.median(ts), ts[int(0.9 * (len(ts) - 1))], len(ts))
    return out


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


# -- registry ---------------------------------------------------------------------------------

# name -> "module:Class"; the module is imported only when the target is asked for
_REGISTRY: dict[str, str] = {
    "onnxruntime": "autocompress.targets.onnxruntime:OnnxRuntimeTarget",
    "executorch": "autocompress.targets.executorch:ExecuTorchTarget",
}
_LOADED: dict[str, Target] = {}


def register(name: str, spec: str | type[Target]) -> None:
    """Add a target: ``spec`` is a :class:`Target` subclass or ``"module:Class"`` (imported lazily)."""
    if isinstance(spec, type):
        _LOADED[name] = spec()
        spec = f"{spec.__module__}:{spec.__qualname__}"
    _REGISTRY[name] = spec


def names() -> list[str]:
    """Every registered target, installed or not."""
    return sorted(_REGISTRY)


def get(name: str) -> Target:
    """The target called ``name``; a clear error naming the registered ones (and which of them
    are installed) when there is none, or when its runtime package is missing."""
    if name not in _REGISTRY:
        raise UnknownTargetError(f"unknown runtime {name!r}: choose from {names()} "
                                 f"(installed here: {available()})")
    if name not in _LOADED:
        mod, cls = _REGISTRY[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(mod), cls)()
    t = _LOADED[name]
    return t


def require(name: str) -> Target:
    """Like :func:`get`, but also fails clearly when the runtime's package is not installed."""
    t = get(name)
    if not t.installed():
        raise UnknownTargetError(f"runtime {name!r} needs the {t.package!r} package, which is not "
                                 f"installed: pip install 'autocompress[{name}]' (installed here: {available()})")
    return t


def for_file(path: str | Path) -> Target:
    """The target whose deployed files end like ``path`` (``.onnx``, ``.pte``)."""
    suffix = Path(path).suffix
    for n in names():
        if get(n).suffix == suffix:
            return require(n)
    raise UnknownTargetError(f"{path}: no deployment target writes {suffix or 'suffix-less'} files; "
                             f"known: {', '.join(f'{n} ({get(n).suffix})' for n in names())}")


def available() -> list[str]:
    """Registered targets whose runtime package is installed here."""
    return [n for n in names() if get(n).installed()]

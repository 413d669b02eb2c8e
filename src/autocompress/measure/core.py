"""Accuracy on a chosen split, parameter / non-zero counts, MACs, bytes and deployed latency.

Decisions use the ``val`` split; reports use ``test``. The deployed file is measured on a deployment
target (:mod:`autocompress.targets`, ONNX Runtime by default); latency of models that are compared
is measured interleaved in one process (:meth:`autocompress.targets.Target.time`).
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autocompress.data import Splits
from autocompress import targets
from autocompress.runtime_results import upgraded


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def fp32_bytes(model: nn.Module) -> int:
    """What the parameters weigh stored densely as float32 (the paper's "before" size)."""
    return 4 * count_params(model)


def zipped_bytes(path: str | Path) -> int:
    """Bytes of the file alone in a DEFLATE zip archive: what an app package ships."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(str(path), Path(path).name)
    return buf.tell()


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass for ``example`` (dense, as executed).

    Uses torch's own FLOP counter (covers conv, matmul, attention, RNN cells via their matmuls);
    one MAC = two FLOPs.
    """
    model.eval()
    counter = FlopCounterMode(display=False)
    # the fused attention fast path hides its matmuls from the counter: count the plain path
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            model(**example) if isinstance(example, dict) else model(*example) if isinstance(example, tuple) \
                else model(example)   # keyword / several inputs (token ids + attention mask)
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)
    return counter.get_total_flops() // 2


@dataclass
class Measurement:
    """One model, measured. Accuracies are in [0, 1]; latency maps batch size -> median ms."""

    name: str
    params: int
    nonzero: int
    macs: int
    fp32_bytes: int
    # the deployed file on ``runtime`` (a .onnx for ONNX Runtime, a .pte for ExecuTorch)
    deployed_bytes: int | None = None
    storage_bytes: int | None = None   # compressed artifact, when there is one
    accuracy: dict[str, float] = field(default_factory=dict)      # split -> accuracy (PyTorch)
    deployed_accuracy: dict[str, float] = field(default_factory=dict)  # split -> accuracy (on ``runtime``)
    latency_ms: dict[int, float] = field(default_factory=dict)
    deployed_path: str | None = None
    runtime: str = "onnxruntime"
    runtime_label: str | None = None   # how reports name the runtime (the target's label)
    zipped_bytes: int | None = None    # the deployed file DEFLATE-zipped (what an app ships)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        d = upgraded(d)
        d["latency_ms"] = {int(k): float(v) for k, v in d.get("latency_ms", {}).items()}
        return cls(**d)


def measure(model: nn.Module, data: Splits, name: str = "model", *, splits: tuple[str, ...] = ("test",),
            deployed_path: str | Path | None = None, export: bool = True, limit: int | None = None,
            runtime: str = "onnxruntime") -> Measurement:
    """Static measurements plus accuracy on ``splits``; exports through the ``runtime`` target (or
    uses ``deployed_path``, the deployed file) and measures the deployed model's accuracy on that
    runtime. Latency is measured by :func:`compare`."""
    from autocompress.train import evaluate

    example = data.example_input(1)
    m = Measurement(name, count_params(model), count_nonzero(model), count_macs(model, example),
                    fp32_bytes(model), runtime=runtime)
    target = targets.require(runtime)
    m.runtime_label = target.label
    for s in splits:
        m.accuracy[s] = evaluate(model, data.loader(s, 1000, limit=limit))
    if deployed_path is None and export:
        deployed_path = Path(tempfile.mkdtemp(prefix="autocompress-")) / f"{name}{target.suffix}"
        target.export(model, example, deployed_path)
    if deployed_path is not None:
        m.deployed_path = str(deployed_path)
        m.deployed_bytes = target.size(deployed_path)
        m.zipped_bytes = zipped_bytes(deployed_path)
        for s in splits:
            m.deployed_accuracy[s] = target.accuracy(deployed_path, data.loader(s, 1000, limit=limit))
    return m


def compare(measurements: Mapping[str, Measurement], input_shape: tuple[int, ...],
            batch_sizes: tuple[int, ...] = (1, 64), threads: int = 1, runs: int = 100,
            warmup: int = 10) -> None:
    """Fill ``latency_ms`` of each measurement, running their deployed files interleaved on their
    runtime (all of them must share one: latency across runtimes is not compared here)."""
    paths = {k: m.deployed_path for k, m in measurements.items() if m.deployed_path}
    runtimes = {m.runtime for k, m in measurements.items() if m.deployed_path}
    if len(runtimes) > 1:
        raise ValueError(f"compare: measurements on different runtimes {sorted(runtimes)}; time each apart")
    target = targets.require(runtimes.pop() if runtimes else "onnxruntime")
    lat = target.time(paths, input_shape, batch_sizes, threads=threads, runs=runs, warmup=warmup)
    for k, per_batch in lat.items():
        measurements[k].latency_ms = {b: s.median_ms for b, s in per_batch.items()}

"""What every deployment runtime's checks report: parity against PyTorch and latency.

Plain records with no runtime imported, shared by ``export/`` (ONNX Runtime) and ``targets/`` (any
runtime), so that one ``ParityError`` is caught whichever runtime raised it.
"""

from __future__ import annotations

from dataclasses import dataclass


class ParityError(AssertionError):
    """The runtime disagrees with PyTorch beyond the tolerance: the export is not deployable."""


@dataclass
class ParityReport:
    max_abs_diff: float
    top1_agreement: float
    samples: int

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "samples": self.samples}


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "runs": self.runs}

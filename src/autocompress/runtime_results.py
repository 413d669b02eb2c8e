"""What every deployment runtime's checks report: parity against PyTorch and latency (and the
measurement field names that older result files used).

Plain records with no runtime imported, shared by ``export/`` (ONNX Runtime) and ``targets/`` (any
runtime), so that one ``ParityError`` is caught whichever runtime raised it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The deployed file's measurement fields were named for ONNX alone before they covered every
# runtime; result and report files written then are still read (``Measurement.from_dict``, the
# reports, ``check``) through :func:`upgraded`.
OLD_NAMES = {"onnx_bytes": "deployed_bytes", "ort_accuracy": "deployed_accuracy", "onnx_path": "deployed_path"}


def upgraded(m: dict | None) -> dict:
    """A copy of a measurement dict with the old field names renamed (a new name present wins)."""
    out = dict(m or {})
    for old, new in OLD_NAMES.items():
        if old in out:
            v = out.pop(old)
            out.setdefault(new, v)
    return out


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

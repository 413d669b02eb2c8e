"""The CI gate: is this compressed model still within budget, and no worse than the baseline report?

``check`` measures a candidate ONNX model on ONNX Runtime — test-split accuracy, size, and latency as
a *ratio* to the fp32 reference model timed interleaved in the same process (a noisy CI runner slows
both alike, so the ratio holds where milliseconds would flip) — and compares it with

* the budget (``Budget``: allowed accuracy drop, size ratio/bytes, speed-up/latency), and
* the baseline ``report.json`` kept in the user's repository (its ``final`` measurement), within
  a :class:`Tolerance`.

The verdict comes as a markdown summary (for a pull-request comment) and JUnit XML (for CI).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from autocompress.config import Config, ConfigError
from autocompress.data import Splits
from autocompress.report.tables import accuracy_of, fmt_bytes, fmt_pct, latency_of, md_table
from autocompress.search.budget import Budget

log = logging.getLogger(__name__)


class CheckInputError(ValueError):
    """The check cannot run as asked (missing file, nothing to compare against); not a regression."""


@dataclass
class Tolerance(Config):
    """How much worse than the baseline report a candidate may measure before it is a regression.

    ``accuracy_points``: test accuracy may be this many percentage points lower.
    ``size_rel``: size may grow by this fraction. ``speedup_rel``: the speed-up over the fp32
    reference (a ratio measured in one run) may shrink by this fraction.
    """

    accuracy_points: float = 0.2
    size_rel: float = 0.05
    speedup_rel: float = 0.25

    def validate(self) -> None:
        for name in ("accuracy_points", "size_rel", "speedup_rel"):
            if getattr(self, name) < 0:
                raise ConfigError(f"Tolerance.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class CheckItem:
    group: str          # "budget" or "baseline"
    name: str
    passed: bool
    measured: str
    required: str
    detail: str = ""


@dataclass
class CheckResult:
    items: list[CheckItem]
    figures: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(i.passed for i in self.items)

    def to_markdown(self) -> str:
        failed = [i for i in self.items if not i.passed]
        head = ("## autocompress check: passed" if not failed else
                f"## autocompress check: REGRESSION ({len(failed)} of {len(self.items)} checks failed)")
        rows = [[f"{i.group}: {i.name}", i.measured, i.required, "pass" if i.passed else "**FAIL**"]
                for i in self.items]
        f = self.figures
        notes = [f"Measured on ONNX Runtime (CPU, {f.get('threads', 1)} thread(s)) on the test split "
                 f"({f.get('test_samples', '?')} samples) in {self.duration_s:.1f} s."]
        if f.get("speedup") is not None:
            notes.append(f"Latency is a ratio to the fp32 reference, timed interleaved in the same run "
                         f"(batch {f.get('latency_batch')}: {f['reference_ms']:.3f} ms fp32 vs "
                         f"{f['candidate_ms']:.3f} ms).")
        notes += [f"- {i.group} {i.name}: {i.detail}" for i in failed if i.detail]
        return "\n".join([head, "", md_table(["check", "measured", "required", "result"], rows), "",
                          *notes, ""])

    def to_junit(self) -> str:
        suites = ET.Element("testsuites")
        suite = ET.SubElement(suites, "testsuite", name="autocompress.check", tests=str(len(self.items)),
                              failures=str(sum(not i.passed for i in self.items)), errors="0",
                              time=f"{self.duration_s:.3f}")
        for i in self.items:
            case = ET.SubElement(suite, "testcase", classname=f"autocompress.check.{i.group}",
                                 name=i.name, time="0")
            if not i.passed:
                fail = ET.SubElement(case, "failure", message=f"{i.name}: measured {i.measured}, "
                                                              f"required {i.required}")
                fail.text = i.detail or fail.get("message")
            ET.SubElement(case, "system-out").text = f"measured {i.measured}; required {i.required}"
        ET.indent(suites)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "duration_s": self.duration_s, "figures": self.figures,
                "items": [i.__dict__ for i in self.items]}


# -- getting a candidate ONNX model -------------------------------------------------------------

def _load_compressed(path: Path, model_factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A compressed storage artifact as a model; a corrupt file is bad input, not a regression.

    ``model_factory`` builds the architecture of a custom model class (the run config's model)."""
    from autocompress.encode import StorageError, load_compressed  # loaded only when needed

    if not Path(path).exists():
        raise CheckInputError(f"artifact {path} does not exist")
    try:
        out = load_compressed(path, model_factory) if model_factory else load_compressed(path)
    except StorageError as e:
        raise CheckInputError(f"cannot load the compressed artifact: {e}") from None
    return out[0] if isinstance(out, tuple) else out


def onnx_from_model(model: nn.Module, data: Splits, path: Path) -> Path:
    """Export ``model`` for the runtime its file suffix names (.onnx, .pte)."""
    from autocompress import targets

    return targets.for_file(path).export(model.eval(), data.example_input(1), path)


def onnx_from_artifact(artifact: str | Path, data: Splits, workdir: Path,
                       model_factory: Callable[[], nn.Module] | None = None,
                       suffix: str = ".onnx") -> tuple[Path, int]:
    """Load a compressed storage artifact, export it (``suffix``: which runtime's file); return
    (deployed path, artifact bytes)."""
    artifact = Path(artifact)
    model = _load_compressed(artifact, model_factory)
    return onnx_from_model(model, data, workdir / f"candidate{suffix}"), artifact.stat().st_size


# -- the check itself ----------------------------------------------------------------------------

def budget_from(baseline: dict | None, budget: Budget | None) -> Budget:
    if budget is not None:
        return budget
    if baseline and baseline.get("budget"):
        return Budget.from_dict(baseline["budget"], "baseline report.json: budget")
    return Budget()


def _size_of_final(final: dict, storage: bool) -> float | None:
    """The baseline's size of the same kind as the candidate's (artifact vs artifact, ONNX vs ONNX)."""
    return final.get("storage_bytes" if storage else "onnx_bytes") or None


def run_check(candidate_onnx: str | Path, data: Splits, *, baseline: dict | None = None,
              budget: Budget | None = None, reference_onnx: str | Path | None = None,
              storage_bytes: int | None = None, fp32_bytes: int | None = None,
              tolerance: Tolerance | None = None, limit: int | None = None, runs: int = 60) -> CheckResult:
    """Measure ``candidate_onnx`` (and ``reference_onnx``, the fp32 model) and judge it.

    ``storage_bytes``: size of the compressed artifact when there is one; otherwise the ONNX file
    counts. ``fp32_bytes`` (the "before" size) defaults to the baseline report's, else the
    reference ONNX file's size. ``limit`` caps test samples (smoke tests only: the baseline report
    was measured on the whole split).
    """
    from autocompress import targets

    t0 = time.perf_counter()
    tol = tolerance or Tolerance()
    budget = budget_from(baseline, budget)
    candidate_onnx = Path(candidate_onnx)
    for p in (candidate_onnx, reference_onnx):
        if p is not None and not Path(p).exists():
            raise CheckInputError(f"ONNX model {p} does not exist")
    try:   # the runtime that runs the candidate, from its file (.onnx: ONNX Runtime, .pte: ExecuTorch)
        target = targets.for_file(candidate_onnx)
    except targets.UnknownTargetError as e:
        raise CheckInputError(str(e)) from None
    if reference_onnx is not None and Path(reference_onnx).suffix != candidate_onnx.suffix:
        raise CheckInputError(f"the reference {reference_onnx} and the candidate {candidate_onnx} are for "
                              f"different runtimes: time them on the same one")
    ort_accuracy, onnx_bytes = target.accuracy, target.size
    base_m, final_m = (baseline or {}).get("baseline") or {}, (baseline or {}).get("final") or {}
    needs_ref = budget.min_speedup is not None
    if needs_ref and reference_onnx is None:
        raise CheckInputError("the budget asks for a speed-up (min_speedup) but there is no fp32 reference "
                              "model to time against: pass --reference-onnx FP32.onnx or --config CONFIG.yaml")
    loader = data.loader("test", 1000, limit=limit)
    n_test = len(loader.dataset)  # type: ignore[arg-type]
    acc = ort_accuracy(candidate_onnx, loader, threads=budget.threads)
    if reference_onnx is not None:
        ref_acc, ref_label = ort_accuracy(reference_onnx, loader, threads=budget.threads), "fp32 reference"
    else:
        ref_acc, _ = accuracy_of(base_m)
        ref_label = "baseline report's fp32 model"
    if ref_acc is None:
        raise CheckInputError("no reference accuracy: pass --reference-onnx/--config, or a baseline report "
                              "with baseline.accuracy.test")
    fp32 = fp32_bytes or base_m.get("fp32_bytes") or (onnx_bytes(reference_onnx) if reference_onnx else None)
    use_storage = budget.size_of == "storage" and storage_bytes is not None
    size = storage_bytes if use_storage else onnx_bytes(candidate_onnx)
    size_kind = "storage artifact" if use_storage else f"{target.suffix[1:].upper()} file"

    figures: dict[str, Any] = {"test_samples": n_test, "threads": budget.threads, "accuracy": acc,
                               "reference_accuracy": ref_acc, "size_bytes": size, "size_kind": size_kind,
                               "fp32_bytes": fp32, "latency_batch": budget.latency_batch, "speedup": None}
    lat_c = None
    if reference_onnx is not None:
        lat = target.time({"fp32": reference_onnx, "candidate": candidate_onnx}, data.input_shape,
                          (budget.latency_batch,), threads=budget.threads, runs=runs)
        ref_ms, lat_c = lat["fp32"][budget.latency_batch].median_ms, lat["candidate"][budget.latency_batch].median_ms
        figures.update(reference_ms=ref_ms, candidate_ms=lat_c, speedup=ref_ms / lat_c)

    items: list[CheckItem] = []
    # budget: the same constraints the search used (Budget.allowed_accuracy keeps the semantics)
    floor = budget.allowed_accuracy(ref_acc)
    items.append(CheckItem("budget", "accuracy", acc >= floor - 1e-12, fmt_pct(acc), f">= {fmt_pct(floor)}",
                           f"test accuracy {fmt_pct(acc)} is below {fmt_pct(floor)} ({ref_label} "
                           f"{fmt_pct(ref_acc)}, max drop {budget.max_drop:g} {budget.drop_mode})"))
    if budget.min_size_ratio is not None:
        if fp32 is None:
            raise CheckInputError("the budget asks for a size ratio but the fp32 size is unknown: pass a "
                                  "baseline report, --config, or --reference-onnx")
        ratio = fp32 / max(size, 1)
        items.append(CheckItem("budget", "size ratio", ratio >= budget.min_size_ratio, f"{ratio:.1f}x",
                               f">= {budget.min_size_ratio:g}x",
                               f"{size_kind} {fmt_bytes(size)} vs fp32 {fmt_bytes(fp32)}"))
    if budget.max_size_bytes is not None:
        items.append(CheckItem("budget", "size", size <= budget.max_size_bytes, fmt_bytes(size),
                               f"<= {fmt_bytes(budget.max_size_bytes)}", f"{size_kind} is {size} B"))
    if budget.min_speedup is not None:
        sp = figures["speedup"]
        items.append(CheckItem("budget", "speed-up", sp >= budget.min_speedup, f"{sp:.2f}x",
                               f">= {budget.min_speedup:g}x", f"at batch {budget.latency_batch}, interleaved "
                               f"with the fp32 reference in this run"))
    if budget.max_latency_ms is not None:
        if lat_c is None:
            lat_c = target.time({"candidate": candidate_onnx}, data.input_shape, (budget.latency_batch,),
                                threads=budget.threads, runs=runs)["candidate"][budget.latency_batch].median_ms
        items.append(CheckItem("budget", "latency", lat_c <= budget.max_latency_ms, f"{lat_c:.3f} ms",
                               f"<= {budget.max_latency_ms:g} ms", "absolute time: depends on the machine"))

    # baseline report: no regression beyond the tolerance
    if final_m:
        b_acc, _ = accuracy_of(final_m)
        if b_acc is not None:
            need = b_acc - tol.accuracy_points / 100
            items.append(CheckItem("baseline", "accuracy", acc >= need - 1e-12, fmt_pct(acc),
                                   f">= {fmt_pct(need)}", f"baseline report {fmt_pct(b_acc)}, tolerance "
                                   f"{tol.accuracy_points:g} points"))
        b_size = _size_of_final(final_m, use_storage)
        if b_size:
            limit_b = b_size * (1 + tol.size_rel)
            items.append(CheckItem("baseline", "size", size <= limit_b, fmt_bytes(size), f"<= {fmt_bytes(limit_b)}",
                                   f"{size_kind} grew from {fmt_bytes(b_size)} (tolerance {tol.size_rel:.0%})"))
        b_fin, b_ref = latency_of(final_m, budget.latency_batch), latency_of(base_m, budget.latency_batch)
        if figures["speedup"] is not None and b_fin and b_ref:
            b_sp = b_ref / b_fin
            need_sp = b_sp * (1 - tol.speedup_rel)
            items.append(CheckItem("baseline", "speed-up", figures["speedup"] >= need_sp,
                                   f"{figures['speedup']:.2f}x", f">= {need_sp:.2f}x",
                                   f"baseline report {b_sp:.2f}x (tolerance {tol.speedup_rel:.0%})"))
    res = CheckResult(items, figures, time.perf_counter() - t0)
    log.info("check %s in %.1f s", "passed" if res.passed else "FAILED", res.duration_s)
    return res


def check(*, config: Any = None, weights: str | None = None, onnx: str | Path | None = None,
          artifact: str | Path | None = None, reference_onnx: str | Path | None = None,
          data: Splits | str | None = None, baseline: dict | None = None, budget: Budget | None = None,
          tolerance: Tolerance | None = None, limit: int | None = None) -> CheckResult:
    """``check`` from what a user has at hand (what the CLI calls).

    ``config`` (a :class:`~autocompress.runconfig.RunConfig`) supplies the data, the fp32
    reference model (with ``weights`` overriding its weights) and, without ``onnx``/``artifact``,
    the candidate itself. ``data`` (Splits or a data spec such as ``'mnist'``) replaces its data.
    """
    from autocompress import runconfig
    from autocompress.measure import fp32_bytes

    if onnx is not None and artifact is not None:
        raise CheckInputError("pass at most one of --onnx and --artifact")
    if config is None and onnx is None and artifact is None:
        raise CheckInputError("nothing to check: pass --config CONFIG.yaml, --onnx MODEL.onnx or --artifact FILE")
    if isinstance(data, str):
        data = runconfig.data_from_spec(data, Path.cwd(), "data (--data)")
    elif data is None and config is not None:
        data = runconfig.load_data(config)
    if data is None:
        raise CheckInputError("check needs the test data: pass --config CONFIG.yaml or --data SPEC")
    with tempfile.TemporaryDirectory(prefix="autocompress-check-") as d:
        tmp = Path(d)   # exported reference/candidate live only as long as the check
        reference = Path(reference_onnx) if reference_onnx else None
        # files we export are for the runtime of the file given, else the budget's
        given = onnx or reference_onnx
        suffix = Path(given).suffix if given else _runtime_suffix(budget, baseline, config)
        fp32 = storage = None
        if config is not None:
            model = runconfig.load_model(config, weights=weights)
            fp32 = fp32_bytes(model)
            if reference is None:
                reference = onnx_from_model(model, data, tmp / f"reference{suffix}")
        if artifact is not None:
            factory = runconfig.model_factory(config) if config is not None else None
            candidate, storage = onnx_from_artifact(artifact, data, tmp, factory, suffix)
        else:
            candidate = Path(onnx) if onnx is not None else reference
        return run_check(candidate, data, baseline=baseline, budget=budget, reference_onnx=reference,
                         storage_bytes=storage, fp32_bytes=fp32, tolerance=tolerance, limit=limit)


def _runtime_suffix(budget: Budget | None, baseline: dict | None, config: Any) -> str:
    from autocompress import targets
    b = budget or getattr(config, "budget", None) or budget_from(baseline, None)
    return targets.require(b.runtime).suffix


def read_baseline(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise CheckInputError(f"baseline report {p} does not exist (a run writes OUT_DIR/report.json)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckInputError(f"baseline report {p} is not valid JSON: {e}") from None


def write_outputs(result: CheckResult, summary: str | Path | None = None,
                  junit: str | Path | None = None) -> None:
    for path, text in ((summary, result.to_markdown), (junit, result.to_junit)):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text())

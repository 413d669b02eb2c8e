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

from autocompress.check_noise import (Z99, accuracy_tolerance, is_uncompressed, measure_speedup,
                                      size_tolerance)
from autocompress.config import Config, ConfigError
from autocompress.data import Splits
from autocompress.runtime_results import upgraded
from autocompress.report.tables import accuracy_of, fmt_bytes, fmt_pct, latency_of, md_table
from autocompress.search import budget_rules
from autocompress.search.budget import Budget

log = logging.getLogger(__name__)


class CheckInputError(ValueError):
    """The check cannot run as asked (missing file, nothing to compare against); not a regression."""


@dataclass
class Tolerance(Config):
    """How much worse than the baseline report a candidate may measure before it is a regression.

    ``accuracy_points``: test accuracy may be this many percentage points lower, and at least
    ``z`` binomial standard errors of the test accuracy (``check_noise``; ``z=0``: exactly the points).
    ``size_rel``: size may grow by this fraction (None: 5 % for a deployed file, 15 % for an
    entropy-coded storage artifact). ``speedup_rel``: the speed-up over the fp32 reference (a ratio
    measured interleaved in one run) may shrink by this fraction.
    """

    accuracy_points: float = 0.2
    size_rel: float | None = None
    speedup_rel: float = 0.25
    z: float = Z99

    def validate(self) -> None:
        for name in ("accuracy_points", "size_rel", "speedup_rel", "z"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"Tolerance.{name} must be >= 0, got {v}")


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
        if f.get("accuracy_se_points") is not None:
            notes.append(f"Accuracy noise: one standard error on {f.get('test_samples')} samples is "
                         f"{f['accuracy_se_points']:.2f} points; the baseline tolerance applied is "
                         f"{f['accuracy_tolerance_points']:.2f} points.")
        if f.get("speedup") is not None:
            ci = f.get("speedup_ci") or [f["speedup"], f["speedup"]]
            notes.append(f"Latency is a ratio to the fp32 reference: median of {f.get('timing_rounds', '?')} "
                         f"interleaved rounds, ~95 % interval [{ci[0]:.2f}, {ci[1]:.2f}] "
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
    return final.get("storage_bytes" if storage else "deployed_bytes") or None


def budget_items(budget: Budget, base: dict, cand: dict, context: dict[str, str] | None = None) -> list[CheckItem]:
    """The budget's checks: one item per rule of :mod:`autocompress.search.budget_rules` (the rules
    the search's constraints come from), ``context`` (rule name -> text) added to each item's detail."""
    items = []
    for v in budget_rules.judge(budget, base, cand):
        ctx = (context or {}).get(v.rule.name, "")
        why = ctx if v.passed else budget_rules.message(budget, base, v) + (f" ({ctx})" if ctx else "")
        items.append(CheckItem("budget", v.rule.label, v.passed, v.measured, v.required, why))
    return items


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
    accuracy_on, file_bytes = target.accuracy, target.size
    # a report written before the deployed_* names is read too
    base_m, final_m = upgraded((baseline or {}).get("baseline")), upgraded((baseline or {}).get("final"))
    needs_ref = budget.min_speedup is not None
    if needs_ref and reference_onnx is None:
        raise CheckInputError("the budget asks for a speed-up (min_speedup) but there is no fp32 reference "
                              "model to time against: pass --reference-onnx FP32.onnx or --config CONFIG.yaml")
    loader = data.loader("test", 1000, limit=limit)
    n_test = len(loader.dataset)  # type: ignore[arg-type]
    acc = accuracy_on(candidate_onnx, loader, threads=budget.threads)
    if reference_onnx is not None:
        ref_acc, ref_label = accuracy_on(reference_onnx, loader, threads=budget.threads), "fp32 reference"
    else:
        ref_acc, _ = accuracy_of(base_m)
        ref_label = "baseline report's fp32 model"
    if ref_acc is None:
        raise CheckInputError("no reference accuracy: pass --reference-onnx/--config, or a baseline report "
                              "with baseline.accuracy.test")
    fp32 = fp32_bytes or base_m.get("fp32_bytes") or (file_bytes(reference_onnx) if reference_onnx else None)
    use_storage = budget.size_of == "storage" and storage_bytes is not None
    size = storage_bytes if use_storage else file_bytes(candidate_onnx)
    size_kind = "storage artifact" if use_storage else f"{target.suffix[1:].upper()} file"
    if budget.min_size_ratio is not None and fp32 is None:
        raise CheckInputError("the budget asks for a size ratio but the fp32 size is unknown: pass a "
                              "baseline report, --config, or --reference-onnx")

    figures: dict[str, Any] = {"test_samples": n_test, "threads": budget.threads, "accuracy": acc,
                               "reference_accuracy": ref_acc, "size_bytes": size, "size_kind": size_kind,
                               "fp32_bytes": fp32, "latency_batch": budget.latency_batch, "speedup": None}
    lat_c = None
    if reference_onnx is not None:   # median of per-round ratios, the two timed back to back
        t = measure_speedup(target, reference_onnx, candidate_onnx, data.input_shape, budget.latency_batch,
                            budget.threads, max_rounds=4 * runs)
        lat_c = t.cand_ms
        figures.update(reference_ms=t.ref_ms, candidate_ms=t.cand_ms, speedup=t.speedup,
                       speedup_ci=[t.low, t.high], timing_rounds=t.rounds)

    if budget.max_latency_ms is not None and lat_c is None:
        lat_c = target.time({"candidate": candidate_onnx}, data.input_shape, (budget.latency_batch,),
                            threads=budget.threads, runs=runs)["candidate"][budget.latency_batch].median_ms
    # budget: the same rules the search's constraints come from
    items = budget_items(budget, {"accuracy": ref_acc, "fp32_bytes": fp32, "latency_ms": figures.get("reference_ms")},
                         {"accuracy": acc, "size_bytes": size, "latency_ms": lat_c, "speedup": figures["speedup"]},
                         {"accuracy": f"test split; the reference is the {ref_label}",
                          "size_ratio": f"{size_kind} {fmt_bytes(size)} vs fp32 {fmt_bytes(fp32)}",
                          "size_bytes": f"{size_kind} is {size} B",
                          "speedup": f"at batch {budget.latency_batch}, interleaved with the fp32 reference "
                                     f"in this run",
                          "latency_ms": "absolute time: depends on the machine"})

    if final_m:
        items += _baseline_items(final_m, base_m, figures, tol, use_storage, budget.latency_batch,
                                 file_bytes(reference_onnx) if reference_onnx else None)
    res = CheckResult(items, figures, time.perf_counter() - t0)
    log.info("check %s in %.1f s", "passed" if res.passed else "FAILED", res.duration_s)
    return res


def _baseline_items(final_m: dict, base_m: dict, f: dict, tol: Tolerance, use_storage: bool, batch: int,
                    reference_file_bytes: int | None) -> list[CheckItem]:
    """No regression against the kept report beyond tolerances that cover the measurement's noise."""
    items = []
    acc, size, kind = f["accuracy"], f["size_bytes"], f["size_kind"]
    b_acc, _ = accuracy_of(final_m)
    if b_acc is not None:
        at = accuracy_tolerance(tol.accuracy_points, b_acc, f["test_samples"], tol.z)
        need = b_acc - at.points / 100
        f.update(accuracy_tolerance_points=at.points, accuracy_se_points=at.se_points)
        items.append(CheckItem("baseline", "accuracy", acc >= need - 1e-12, fmt_pct(acc), f">= {fmt_pct(need)}",
                               f"baseline report {fmt_pct(b_acc)}; {at.rule}"))
    b_size = _size_of_final(final_m, use_storage)
    if b_size:
        rel, rule = size_tolerance(tol.size_rel, use_storage)
        limit_b = b_size * (1 + rel)
        items.append(CheckItem("baseline", "size", size <= limit_b, fmt_bytes(size), f"<= {fmt_bytes(limit_b)}",
                               f"{kind} {fmt_bytes(size)} vs the report's {fmt_bytes(b_size)} ({rule})"))
    # an uncompressed file must not pass because the kept report's file of that kind was large too
    fp32_same_kind = f["fp32_bytes"] if use_storage else (reference_file_bytes or base_m.get("deployed_bytes"))
    compressed_before = [final_m.get(k) for k in ("storage_bytes", "deployed_bytes")
                         if final_m.get(k) and f["fp32_bytes"] and final_m[k] * 1.5 <= f["fp32_bytes"]]
    if compressed_before and is_uncompressed(size, fp32_same_kind):
        items.append(CheckItem("baseline", "compressed", False, fmt_bytes(size), f"< {fmt_bytes(0.9 * fp32_same_kind)}",
                               f"the {kind} is as large as the fp32 model ({fmt_bytes(fp32_same_kind)}): it is not "
                               f"compressed, while the report's result was; check the storage artifact "
                               f"(--artifact) or deploy a compressed file"))
    b_fin, b_ref = latency_of(final_m, batch), latency_of(base_m, batch)
    if f["speedup"] is not None and b_fin and b_ref:
        b_sp = b_ref / b_fin
        need_sp = b_sp * (1 - tol.speedup_rel)
        lo, hi = f["speedup_ci"]
        items.append(CheckItem("baseline", "speed-up", hi >= need_sp, f"{f['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]",
                               f">= {need_sp:.2f}x", f"baseline report {b_sp:.2f}x, tolerance {tol.speedup_rel:.0%}; "
                               f"fails only when the ~95 % interval of the interleaved ratio is below it"))
    return items


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


def against_original(report: dict, original: dict, budget: Budget) -> tuple[bool, str]:
    """``apply``'s budget is relative to the weights it was given; this says whether the result
    also holds against the *original* run's fp32 reference (its report.json), so regressed
    weights replayed within budget still show as a regression."""
    ref, _ = accuracy_of((original or {}).get("baseline"))
    acc, label = accuracy_of((report or {}).get("final"))
    if ref is None or acc is None:
        return True, "the original run's report has no test accuracy to compare with"
    v = budget_rules.verdict(budget, "accuracy", {"accuracy": ref}, {"accuracy": acc})
    ok, floor = v.passed, v.limit
    return ok, (f"against the original reference ({fmt_pct(ref)} in the run's report): test accuracy "
                f"{fmt_pct(acc)} ({label}) {'meets' if ok else 'is below'} the floor {fmt_pct(floor)}")


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

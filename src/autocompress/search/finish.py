"""Turn a finished (or interrupted) study into a :class:`Result` measured on the test split."""

from __future__ import annotations

import json
import logging
import math

from autocompress.measure import compare, measure
from autocompress.search.recipe import Recipe
from autocompress.search.result import Result, TrialRecord
from autocompress.search.rungs import EARLY

log = logging.getLogger(__name__)


def trial_records(study) -> list[TrialRecord]:
    out = []
    for t in study.trials:
        a = t.user_attrs
        state = {"FAIL": "failed"}.get(t.state.name, t.state.name.lower())
        if state == "pruned" and str(a.get("note", "")).startswith(EARLY):
            state = EARLY           # stopped at a rung of its fine-tune (search/rungs.py)
        out.append(TrialRecord(
            number=t.number, state=state, recipe=a.get("recipe", {}),
            val_accuracy=a.get("val_accuracy"), size_bytes=a.get("size_bytes"),
            deployed_bytes=a.get("deployed_bytes", a.get("onnx_bytes")), storage_bytes=a.get("storage_bytes"),
            latency_ms=a.get("latency_ms"), base_latency_ms=a.get("base_latency_ms"),
            feasible=state == "complete" and not a.get("violations", ["?"]),
            duration_s=float(a.get("duration_s") or (t.duration.total_seconds() if t.duration else 0.0)),
            note="; ".join(a.get("violations", [])) or a.get("note", "") or _fail_reason(t)))
    return out


def _fail_reason(t) -> str:
    return str(t.system_attrs.get("fail_reason", ""))[:300] if t.state.name == "FAIL" else ""


def pareto_front(records: list[TrialRecord]) -> list[int]:
    """Trials not dominated on (accuracy up, size down, latency ratio down)."""
    pts = [(r.number, r.val_accuracy, r.size_bytes,
            (r.latency_ms / r.base_latency_ms) if (r.latency_ms and r.base_latency_ms) else math.inf)
           for r in records if r.state == "complete" and r.val_accuracy is not None]
    front = []
    for n, a, s, l in pts:
        dominated = any((a2 >= a and s2 <= s and l2 <= l) and (a2 > a or s2 < s or l2 < l)
                        for _, a2, s2, l2 in pts)
        if not dominated:
            front.append(n)
    return sorted(front)


def blocking_layers(sensitivity: dict, k: int = 3) -> list[str]:
    """The layers whose accuracy falls fastest under each technique: what blocks the budget."""
    from autocompress.search.steps import sensitivity_curves
    worst: dict[str, float] = {}
    for _tech, per_layer in sensitivity_curves(sensitivity).items():
        if not isinstance(per_layer, dict):
            continue
        for layer, curve in per_layer.items():
            if isinstance(curve, dict) and curve:
                worst[layer] = max(worst.get(layer, 0.0), max(curve.values()) - min(curve.values()))
    return [n for n, _ in sorted(worst.items(), key=lambda kv: -kv[1])[:k] if _ > 0]


def layer_table(model, sensitivity: dict) -> dict[str, dict]:
    """Per layer, what each technique reports of it (techniques/, their ``layer_report``: the
    sparsity, the bit width, ...) and its sensitivity curves, for the report."""
    from torch import nn

    from autocompress.techniques import all_techniques
    reporters = [t.layer_report for t in all_techniques() if t.layer_report is not None]
    layers: dict[str, dict] = {}
    if model is not None:
        weights: dict[int, str] = {}
        for name, m in model.named_modules():
            w = getattr(m, "weight", None)
            # a wrapper (fake quantization) shows its inner layer's weight: one row, the wrapper's
            if not isinstance(w, nn.Parameter) or w.dim() < 2 or id(w) in weights:
                continue
            weights[id(w)] = name
            row: dict = {}
            for report in reporters:
                row.update({k: v for k, v in report(m).items() if v is not None or k not in row})
            layers[name] = row | {"sensitivity": {}}
    from autocompress.search.steps import sensitivity_curves
    for tech, per_layer in sensitivity_curves(sensitivity).items():
        if isinstance(per_layer, dict):
            for layer, curve in per_layer.items():
                if isinstance(curve, dict):
                    layers.setdefault(layer, {"sensitivity": {}})["sensitivity"][tech] = curve
    return layers


REMEASURE_S = (3.0, 10.0)   # (quick, normal): the winner's speed-up is timed again this long


def final_reserve_s(t_measure_base: float, base_onnx, data, budget, quick: bool) -> float:
    """Seconds the end of a search needs: measuring the winner as the baseline was measured
    (``t_measure_base``, with a margin), the latency
    table (both models, batch 1 and 64), the speed-up re-measurement and writing the report."""
    import time

    from autocompress import targets
    run = targets.require(budget.runtime).load(base_onnx, budget.threads)
    x = next(iter(data.loader("val", 64)))[0]     # real inputs: token ids + mask stay as the graph takes them
    t0 = time.perf_counter()
    for _ in range(3):
        run(x)
    per_run = (time.perf_counter() - t0) / 3
    runs = 30 if quick else 100
    table = 2 * (runs + 10) * per_run * 1.1
    remeasure = REMEASURE_S[0 if quick else 1] if budget.needs_latency() else 0.0
    # the winner is measured like the baseline was: 1.3x covers a slower quantized PyTorch model
    return 1.3 * t_measure_base + table + remeasure + 3.0


def failure_summary(records: list[TrialRecord]) -> str:
    """'3 failed (2x ValueError: ..., 1x ...), 1 stopped by the deadline, 2 pruned early (...)' or ''."""
    from collections import Counter

    from autocompress.search.trial import STOPPED
    failed = Counter(r.note.split(" (similar")[0][:120] for r in records if r.state == "failed")
    stopped = sum(r.state == "pruned" and r.note.startswith(STOPPED) for r in records)
    early = sum(r.state == EARLY for r in records)
    parts = []
    if failed:
        why = "; ".join(f"{n}x {reason or 'no reason recorded'}" for reason, n in failed.most_common(3))
        parts.append(f"{sum(failed.values())} trial(s) failed ({why})")
    if stopped:
        parts.append(f"{stopped} stopped by the deadline")
    if early:
        parts.append(f"{early} {EARLY} (hopeless at a rung of the fine-tune)")
    return ", ".join(parts)


def build_result(study, shared, title: str, elapsed: float) -> Result:
    from autocompress import targets
    from autocompress.search.steps import rebuild_best

    target = targets.require(shared.budget.runtime)
    records = trial_records(study)
    best_meta_path = shared.out_dir / "best" / "best.json"
    base_m = shared.base_measurement or measure(shared.model, shared.data, "baseline", splits=("val", "test"),
                                                deployed_path=shared.base_onnx, runtime=target.name)
    fails = failure_summary(records)
    sens = shared.ctx.sensitivity
    if not best_meta_path.exists():
        msg = "no trial completed; nothing to deploy" + (f"; {fails}" if fails else "")
        compare({"baseline": base_m}, tuple(shared.data.input_shape))
        return Result(None, None, shared.budget, base_m, None, False, msg, records,
                      [], layer_table(shared.model, sens), blocking_layers(sens), {}, title)
    meta = json.loads(best_meta_path.read_text())
    recipe = Recipe.from_dict(meta["attrs"]["recipe"])
    best_dir = shared.out_dir / "best"
    model = rebuild_best(shared, recipe, meta["trial"])
    deployed = best_dir / target.filename
    final = measure(model, shared.data, "compressed", splits=("val", "test"),
                    deployed_path=deployed, runtime=target.name)
    final.storage_bytes = (best_dir / "model.acz").stat().st_size if (best_dir / "model.acz").exists() else None
    base_m.storage_bytes = None
    compare({"baseline": base_m, "compressed": final}, tuple(shared.data.input_shape),
            runs=30 if shared.quick else 100)
    met = bool(meta.get("feasible"))
    speed_note = ""
    if shared.budget.needs_latency():
        met, speed_note = _remeasure(shared, deployed, met)
    n_done = sum(r.state == "complete" for r in records)
    if met:
        msg = (f"budget met by trial {meta['trial']} ({recipe.describe()}) after {n_done} trial(s) "
               f"in {elapsed:.0f} s")
    else:
        viol = "; ".join(meta["attrs"].get("violations", []))
        msg = (f"budget NOT met after {n_done} trial(s) in {elapsed:.0f} s; closest: trial {meta['trial']} "
               f"({recipe.describe()}): {viol}")
    msg += speed_note + (f"; {fails}" if fails else "")
    res = Result(model, recipe, shared.budget, base_m, final, met, msg, records, pareto_front(records),
                 layer_table(model, sens), [] if met else blocking_layers(sens),
                 {target.suffix[1:]: str(deployed), "storage": str(best_dir / "model.acz"),
                  "recipe": str(best_dir / "recipe.yaml")}, title)
    res.export(shared.out_dir)
    log.info(msg)
    return res


def _remeasure(shared, onnx_path, met: bool) -> tuple[bool, str]:
    """Time the winner against the baseline again, longer, before declaring it: a speed-up seen
    once during the search may have been a lucky burst. A winner slower than the baseline is
    never called a speed-up; a ``min_speedup`` the re-measurement misses is not met."""
    from autocompress.search.trial import speedup
    t = speedup(shared, onnx_path, max_time_s=REMEASURE_S[0 if shared.quick else 1])
    b = shared.budget
    note = (f"; re-measured speed-up {t.speedup:.2f}x at batch {b.latency_batch} "
            f"(95 % interval {t.low:.2f}-{t.high:.2f}, {t.rounds} interleaved rounds)")
    if t.speedup < 1.0:
        note = (f"; re-measured: {1 / t.speedup:.2f}x SLOWER than the baseline at batch {b.latency_batch} "
                f"({t.rounds} interleaved rounds): no speed-up")
    if b.min_speedup is not None and t.speedup < b.min_speedup:
        met = False
    if b.objective == "fastest" and t.speedup < 1.0:
        # the original itself is faster: "fastest" is not met by a slower model, however small
        # (SmallResNet: int8 with low-rank read 1.05x in its trial, 0.90x re-measured)
        met = False
    return met, note

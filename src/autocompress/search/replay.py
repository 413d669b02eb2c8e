"""Replay a found recipe on the next sprint's model (no search), and inspect sensitivity."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from autocompress.data import Splits
from autocompress import safefs, targets
from autocompress.measure import compare, measure
from autocompress.search.budget import Budget
from autocompress.search.finish import layer_table
from autocompress.search.loop import _copier
from autocompress.search.recipe import Recipe
from autocompress.search.result import Result, TrialRecord
from autocompress.search.steps import TrialContext, apply_recipe_steps, deploy, measure_sensitivity
from autocompress.train import evaluate as _evaluate

log = logging.getLogger(__name__)


def _context(model: nn.Module, data: Splits, out: Path, teacher: nn.Module | None,
             evaluate: Callable | None, finetune: Callable | None, budget: Budget, seed: int,
             quick: bool, model_factory: Callable[[], nn.Module] | None = None) -> TrialContext:
    loader = data.loader("val", 1000, limit=2000 if quick else None)
    val = (lambda m: _evaluate(m, loader)) if evaluate is None else (lambda m: float(evaluate(m, loader)))
    teacher = (teacher or copy.deepcopy(model)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return TrialContext(data=data, teacher=teacher, example=data.example_input(1), evaluate=val,
                        finetune=finetune, seed=seed, quick=quick, work_dir=out / "work", budget=budget,
                        model_factory=model_factory or _copier(model))


@safefs.holds_out_dir()
def apply_recipe(model: nn.Module, recipe: Recipe | dict | str | Path, data: Splits, *,
                 out_dir: str | Path = "runs/apply", teacher: nn.Module | None = None,
                 evaluate: Callable | None = None, finetune: Callable | None = None,
                 budget: Budget | None = None, seed: int = 0, quick: bool = False,
                 model_factory: Callable[[], nn.Module] | None = None) -> Result:
    """Apply ``recipe`` (a Recipe, its dict, or a recipe.yaml path) to ``model`` and measure the
    result against the same model uncompressed. ``result.met`` checks ``budget`` when given."""
    t0 = time.time()
    if isinstance(recipe, (str, Path)):
        recipe = Recipe.from_yaml(Path(recipe))
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    budget = budget or Budget()
    out = safefs.make_dir(out_dir)
    safefs.refuse_planted_links(out)
    model = model.eval()
    from autocompress.validate import check_run_inputs
    check_run_inputs(model, data, class_labels=evaluate is None or finetune is None)
    ctx = _context(model, data, out, teacher, evaluate, finetune, budget, seed, quick, model_factory)
    target = targets.require(budget.runtime)
    base_onnx = target.export(model, ctx.example, out / f"baseline{target.suffix}")
    base = measure(model, data, "baseline", splits=("val", "test"), deployed_path=base_onnx, runtime=target.name)
    compressed = apply_recipe_steps(copy.deepcopy(model), recipe, ctx)
    stage = safefs.staging_dir(out / "best")      # best/ changes as one unit
    art = deploy(compressed, recipe, ctx, stage)
    safefs.swap_in_dir(stage, out / "best")
    art = {**art, "deployed": out / "best" / Path(art["deployed"]).name, "storage": out / "best" / "model.acz"}
    final = measure(compressed, data, "compressed", splits=("val", "test"), deployed_path=art["deployed"],
                    runtime=target.name)
    final.storage_bytes = art["storage_bytes"]
    compare({"baseline": base, "compressed": final}, tuple(data.input_shape), runs=30 if quick else 100)
    size = final.storage_bytes if budget.size_of == "storage" else final.deployed_bytes
    b = budget.latency_batch
    # a runtime that quantizes the model itself runs a file that is not our simulation: its own
    # validation accuracy decides (as in the search)
    val_acc = final.deployed_accuracy["val"] if target.requantizes and recipe.quant != "none" and evaluate is None \
        else final.accuracy["val"]
    viol = budget.violations(
        {"accuracy": base.accuracy["val"], "fp32_bytes": base.fp32_bytes, "latency_ms": base.latency_ms.get(b)},
        {"accuracy": val_acc, "size_bytes": size, "latency_ms": final.latency_ms.get(b)})
    rec = TrialRecord(0, "complete", recipe.to_dict(), val_acc, size, final.deployed_bytes,
                      final.storage_bytes, final.latency_ms.get(b), base.latency_ms.get(b), not viol,
                      time.time() - t0, "; ".join(viol))
    msg = (f"recipe replayed ({recipe.describe()}) in {time.time() - t0:.0f} s; "
           + ("budget met" if not viol else "budget NOT met: " + "; ".join(viol)))
    res = Result(compressed, recipe, budget, base, final, not viol, msg, [rec], [0],
                 layer_table(compressed, {}), [], {target.suffix[1:]: str(art["deployed"]), "storage": str(art["storage"])},
                 title=f"autocompress apply: {type(model).__name__}")
    res.export(out)
    log.info(msg)
    return res


def inspect(model: nn.Module, data: Splits, out_dir: str | Path = "runs/inspect",
            techniques: Sequence[str] = ("prune", "structured", "quantize"), quick: bool = False) -> dict:
    """Per-layer sensitivity under each technique (validation split), saved as JSON and plotted."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _context(model.eval(), data, out, None, None, None, Budget(), 0, quick)
    sens = measure_sensitivity(model, ctx, techniques)
    safefs.write_text(out / "sensitivity.json", json.dumps(sens, indent=1))
    try:
        from autocompress.report.plots import sensitivity_plot
        png = sensitivity_plot({"layers": layer_table(model, sens)})
        if png:
            safefs.write_bytes(out / "sensitivity.png", png)
    except ImportError:
        pass
    return sens

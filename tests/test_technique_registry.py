"""A technique is declared once (techniques/): the toy one below ("round weights to a grid") is
one module's worth of code, registered here, and it is searched, seeded, replayed and reported
with no other file changed."""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Subset

from autocompress.data import Splits, load_mnist
from autocompress.runconfig import RunConfig
from autocompress.search import Budget, Recipe, ResultOptions, SearchOptions, TrainingOptions, compress
from autocompress.search import loop, space, steps
from autocompress import techniques as tech

GRID = 1 / 64


def _round_to_grid(model: nn.Module, recipe, ctx) -> nn.Module:
    """The toy technique: every Linear weight rounded to a multiple of ``grid``."""
    g = recipe.options["grid"]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.round(m.weight / g) * g)
    return model


@pytest.fixture
def grid_technique():
    t = tech.register(tech.Technique(
        "grid", choices=(tech.Choice("grid", (0.0, GRID), 0.0),), serves=frozenset({"size"}),
        steps=(tech.Step(lambda r: r.options.get("grid", 0.0) > 0, _round_to_grid, 0.0),),
        seed_levels=({"grid": GRID},),
        layer_report=lambda m: {"grid levels": int(torch.unique(m.weight.detach()).numel())}))
    yield t
    tech.unregister("grid")


def test_registered_technique_is_in_the_space_and_the_allowed_names(grid_technique):
    assert space.CHOICES["grid"] == ("grid", [0.0, GRID], 0.0)
    assert "grid" in loop.TECHNIQUES
    assert RunConfig(model="m", data="d", techniques=["grid", "prune"]).techniques == ["grid", "prune"]
    assert _round_to_grid in [fn for _, fn, _ in steps.STEPS]
    # it serves size budgets only, so a speed budget leaves it out
    assert "grid" in space.useful(Budget(min_size_ratio=4), ["grid", "quantize"])
    assert "grid" not in space.useful(Budget(min_speedup=2, objective="fastest"), ["grid", "quantize"])
    r = space.sample(optuna.trial.FixedTrial({"grid": GRID, "finetune_epochs": 1.0}), Budget(), ["grid"])
    assert r.options == {"grid": GRID} and r.quant == "none" and r.sparsity == 0.0
    assert space.to_params(r, ["grid"]) == {"grid": GRID, "finetune_epochs": 1.0}
    assert Recipe.from_yaml(r.to_yaml()) == r and "grid=" in r.describe()


def test_registry_rejects_a_clash_and_runconfig_an_unknown_name(grid_technique):
    with pytest.raises(ValueError, match="already registered"):
        tech.register(grid_technique)
    with pytest.raises(ValueError, match="'sparsity' already belongs to prune"):
        tech.register(tech.Technique("other", choices=(tech.Choice("sparsity", (0.1,), 0.0),)))
    tech.unregister("grid")
    with pytest.raises(ValueError, match=r"techniques\[0\].*'grid'"):
        RunConfig(model="m", data="d", techniques=["grid"])


def _on_grid(model: nn.Module) -> bool:
    qs = [m.weight.detach() / GRID for m in model.modules() if isinstance(m, nn.Linear)]
    return bool(qs) and all(torch.allclose(q, torch.round(q), atol=1e-3) for q in qs)


def test_compress_seeds_replays_and_reports_a_registered_technique(grid_technique, tmp_path):
    from autocompress.search import apply_recipe
    full = load_mnist(flat=True)
    data = Splits(Subset(full.train, range(1000)), Subset(full.val, range(500)),
                  Subset(full.test, range(500)), full.input_shape, 10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    budget = Budget(max_drop=100.0, max_trials=1, time_limit_s=120)
    # no seeds given: the first trial is the one the technique's seed_levels declare
    res = compress(model, data, budget, search=SearchOptions(techniques=["grid"]),
                   training=TrainingOptions(quick=True), results=ResultOptions(out_dir=tmp_path / "run"))
    assert [t.state for t in res.trials] == ["complete"], [t.note for t in res.trials]
    assert res.recipe.options == {"grid": GRID} and _on_grid(res.model)
    # on disk the recipe is the list of the techniques' settings: the grid's own, nothing else
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["techniques"] == [{"grid": {"grid": GRID}}]
    assert "grid levels" in (tmp_path / "run" / "report.md").read_text()
    assert all(info["grid levels"] <= 2 * 64 + 1 for info in res.layers.values())   # |w| < 1 on a 1/64 grid
    # the written recipe replays the technique on a fresh copy of the model
    replayed = apply_recipe(model, tmp_path / "run" / "recipe.yaml", data, out_dir=tmp_path / "apply", quick=True)
    assert replayed.recipe.options == {"grid": GRID} and _on_grid(replayed.model)
    assert "grid levels" in (tmp_path / "apply" / "report.md").read_text()


def test_replaying_options_of_an_unregistered_technique_names_them():
    with pytest.raises(ValueError, match=r"Recipe.options \['grid'\]: no registered technique"):
        tech.check_options(Recipe(options={"grid": GRID}))


def test_importing_the_techniques_loads_no_runtime_nor_the_search():
    import subprocess
    import sys
    code = ("import sys, autocompress.techniques as t; assert t.names(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'executorch', 'onnx', "
            "'optuna') or m.startswith(('autocompress.search', 'autocompress.targets', 'autocompress.export'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_distill_declares_its_temperature_and_alpha():
    """Distillation's settings are its technique's config (no constants in the step): built and
    checked from the recipe, and a sampled trial gets today's values (T=2, alpha=0.5)."""
    from autocompress.techniques.distill import Distill
    t = tech.get("distill")
    assert t.settings(Recipe(temperature=3.0, alpha=0.25)) == Distill(distill=True, temperature=3.0, alpha=0.25)
    sampled = Recipe(**t.recipe_kwargs({"distill": True}))
    assert (sampled.distill, sampled.temperature, sampled.alpha) == (True, 2.0, 0.5)


def test_a_speed_budget_searches_only_settings_that_can_make_the_model_faster():
    # 2-4-bit weights and mixed precision shrink the file; the runtimes run them as int8 at best
    def sampled(budget):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        return [space.sample(study.ask(), budget, ("structured", "quantize", "distill")) for _ in range(60)]
    fast = sampled(Budget(max_drop=0.3, objective="fastest"))
    assert {r.quant for r in fast} == {"none", "int8", "qat"}
    assert {r.weight_bits for r in fast} == {8}
    small = sampled(Budget(max_drop=0.3, objective="smallest", min_speedup=1.5))   # both kinds: everything
    assert "mixed" in {r.quant for r in small} and {2, 4} <= {r.weight_bits for r in small}

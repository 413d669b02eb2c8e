"""A recipe on disk is the ordered list of the techniques' own settings; earlier versions' flat
recipe files are still read."""

from __future__ import annotations

import json

import pytest
import yaml

from autocompress.config import ConfigError
from autocompress.search import Recipe


def test_a_recipe_is_the_ordered_list_of_its_techniques_settings():
    r = Recipe(structured_ratio=0.5, sparsity=0.9, cluster_bits=4, quant="int8", finetune_epochs=2.0)
    doc = yaml.safe_load(r.to_yaml())
    assert [next(iter(e)) for e in doc["techniques"]] == ["structured", "prune", "cluster", "quantize", "distill"]
    assert doc["techniques"][1] == {"prune": {"sparsity": 0.9}}
    assert doc["finetune_epochs"] == 2.0 and set(doc) == {"techniques", "finetune_epochs", "lr"}
    assert Recipe.from_yaml(r.to_yaml()) == r and Recipe.from_json(r.to_json()) == r
    # a technique left out is off; distillation too
    assert Recipe.from_dict({"techniques": [{"prune": {"sparsity": 0.8}}]}) == Recipe(sparsity=0.8, distill=False)
    assert Recipe.from_dict({"techniques": [{"quantize": {"quant": "qat"}}]}).weight_bits == 8   # its default


def test_distillation_settings_are_the_distill_entrys_own():
    r = Recipe(sparsity=0.9, temperature=4.0, alpha=0.3)
    doc = yaml.safe_load(r.to_yaml())
    assert doc["techniques"][-1] == {"distill": {"distill": True, "temperature": 4.0, "alpha": 0.3}}
    assert Recipe.from_yaml(r.to_yaml()) == r and Recipe.from_json(r.to_json()) == r
    assert "distilled (T=4, alpha=0.3)" in r.describe()
    # left out: today's values (T=2, alpha=0.5), in either form
    listed = Recipe.from_dict({"techniques": [{"distill": {"distill": True}}]})
    assert (listed.temperature, listed.alpha) == (2.0, 0.5) == (Recipe().temperature, Recipe().alpha)
    assert Recipe.from_dict({"techniques": [{"distill": None}]}) == Recipe()
    with pytest.raises(ConfigError, match=r"distill.alpha must be in \[0, 1\], got 1.5"):
        Recipe(alpha=1.5)                         # checked when built, not only when read


def test_flat_recipe_files_of_earlier_versions_still_replay(tmp_path):
    flat = {"structured_ratio": 0.0, "layer_ratios": {}, "round_to": 8, "rank_energy": None, "sparsity": 0.9,
            "cluster_bits": 4, "quant": "none", "weight_bits": 8, "act_bits": 8, "distill": True,
            "finetune_epochs": 2.0, "lr": 0.001, "options": {}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(flat))
    (tmp_path / "recipe.json").write_text(json.dumps(flat))
    want = Recipe(sparsity=0.9, cluster_bits=4, finetune_epochs=2.0)
    assert Recipe.from_yaml(tmp_path / "recipe.yaml") == want == Recipe.from_yaml(tmp_path / "recipe.json")
    assert Recipe.from_dict({"sparsity": 0.5}) == Recipe(sparsity=0.5)


@pytest.mark.parametrize("doc, match", [
    ({"techniques": [{"prun": {"sparsity": 0.9}}]}, r"techniques\[0\]: unknown technique 'prun'.*did you mean 'prune'"),
    ({"techniques": [{"prune": {"sparsity": 1.5}}]}, r"prune.sparsity must be in \[0, 1\)"),
    ({"techniques": [{"prune": {"sparsty": 0.5}}]}, r"techniques\[0\].prune: unknown key\(s\) \['sparsty'\]"),
    ({"techniques": [{"cluster": {"cluster_bits": 4}}, {"prune": {"sparsity": 0.9}}]},
     r"techniques\[1\]: 'prune' listed after 'cluster'; techniques run in the order"),
    ({"techniques": [{"prune": {}, "cluster": {}}]}, r"techniques\[0\]: expected one technique name"),
    ({"techniques": [], "epochs": 1}, r"unknown key\(s\) \['epochs'\]"),
    ({"techniques": [{"distill": {"temperature": 0}}]}, r"distill.temperature must be > 0"),
    ({"techniques": [{"distill": {"alpha": -0.1}}]}, r"distill.alpha must be in \[0, 1\]"),
    ({"techniques": [{"distill": {"temprature": 3}}]}, r"techniques\[0\].distill: unknown key\(s\) \['temprature'\]"),
])
def test_a_bad_recipe_file_names_the_entry(doc, match):
    with pytest.raises(ConfigError, match=match):
        Recipe.from_dict(doc)


def test_the_report_describes_a_recipe_dict_of_either_form():
    from autocompress.report.tables import describe_recipe
    listed = Recipe(sparsity=0.9, cluster_bits=4, distill=False).to_dict()
    assert describe_recipe(listed) == "sparsity=0.9, cluster_bits=4, finetune_epochs=1, lr=0.001"
    assert describe_recipe({"sparsity": 0.9, "quant": "none"}) == "sparsity=0.9"

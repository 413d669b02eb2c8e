"""The budget's rules are written once: Budget.violations, the search's Optuna constraints and the CI
gate's budget checks give the same verdict on the same measurements, at the limit and without latency."""

from types import SimpleNamespace

import pytest

from autocompress.check import budget_items
from autocompress.search import budget_rules
from autocompress.search.budget import Budget
from autocompress.search.trial import constraint_values

BASE = {"accuracy": 0.99, "fp32_bytes": 1000, "latency_ms": 2.0}
OK_ACC = 0.99   # no drop: only the rule under test can fail


def _all_three(budget: Budget, base: dict, cand: dict):
    viol = budget.violations(base, cand)
    cons = constraint_values(SimpleNamespace(budget=budget), cand, base)
    items = budget_items(budget, base, cand)
    return viol, cons, items


# (budget, candidate, the rule's name, whether it holds)
CASES = [
    # accuracy: exactly the floor (as Budget computes it, and as a decimal literal) holds
    (Budget(max_drop=0.3), {"accuracy": Budget(max_drop=0.3).allowed_accuracy(0.99), "size_bytes": 1},
     "accuracy", True),
    (Budget(max_drop=0.3), {"accuracy": 0.987, "size_bytes": 1}, "accuracy", True),
    (Budget(max_drop=0.3), {"accuracy": 0.9869, "size_bytes": 1}, "accuracy", False),
    (Budget(max_drop=1.0, drop_mode="relative"), {"accuracy": 0.99 * 0.99, "size_bytes": 1}, "accuracy", True),
    (Budget(max_drop=0.0), {"accuracy": 0.99, "size_bytes": 1}, "accuracy", True),
    (Budget(max_drop=0.0), {"accuracy": 0.9899, "size_bytes": 1}, "accuracy", False),
    # size ratio: exactly 10x holds, a byte more misses; a zero-byte candidate is not a division error
    (Budget(min_size_ratio=10), {"accuracy": OK_ACC, "size_bytes": 100}, "size_ratio", True),
    (Budget(min_size_ratio=10), {"accuracy": OK_ACC, "size_bytes": 101}, "size_ratio", False),
    (Budget(min_size_ratio=10), {"accuracy": OK_ACC, "size_bytes": 0}, "size_ratio", True),
    # size in bytes
    (Budget(max_size_bytes=100), {"accuracy": OK_ACC, "size_bytes": 100}, "size_bytes", True),
    (Budget(max_size_bytes=100), {"accuracy": OK_ACC, "size_bytes": 101}, "size_bytes", False),
    # speed-up: exactly 2x holds; slower, or latency not measured (either side), misses
    (Budget(min_speedup=2), {"accuracy": OK_ACC, "size_bytes": 1, "latency_ms": 1.0}, "speedup", True),
    (Budget(min_speedup=2), {"accuracy": OK_ACC, "size_bytes": 1, "latency_ms": 1.01}, "speedup", False),
    (Budget(min_speedup=2), {"accuracy": OK_ACC, "size_bytes": 1, "latency_ms": None}, "speedup", False),
    (Budget(min_speedup=2), {"accuracy": OK_ACC, "size_bytes": 1}, "speedup", False),
    # a ratio timed interleaved (what the search and check measure) decides over the two medians
    (Budget(min_speedup=2), {"accuracy": OK_ACC, "size_bytes": 1, "latency_ms": 1.2, "speedup": 2.0}, "speedup", True),
    (Budget(min_speedup=2), {"accuracy": OK_ACC, "size_bytes": 1, "latency_ms": 0.5, "speedup": 1.9}, "speedup", False),
    # absolute latency
    (Budget(max_latency_ms=1.5), {"accuracy": OK_ACC, "size_bytes": 1, "latency_ms": 1.5}, "latency_ms", True),
    (Budget(max_latency_ms=1.5), {"accuracy": OK_ACC, "size_bytes": 1, "latency_ms": 1.6}, "latency_ms", False),
    (Budget(max_latency_ms=1.5), {"accuracy": OK_ACC, "size_bytes": 1, "latency_ms": None}, "latency_ms", False),
]


@pytest.mark.parametrize("budget,cand,rule,holds", CASES,
                         ids=[f"{c[2]}-{'ok' if c[3] else 'miss'}-{i}" for i, c in enumerate(CASES)])
def test_violations_constraints_and_check_agree(budget, cand, rule, holds):
    viol, cons, items = _all_three(budget, BASE, cand)
    assert set(cons) == {r.name for r in budget_rules.active(budget)}
    assert rule in cons
    # the constraint's sign is the verdict (Optuna: <= 0 is feasible)
    assert (cons[rule] <= 0) is holds
    item = next(i for i in items if i.name == next(r.label for r in budget_rules.RULES if r.name == rule))
    assert item.passed is holds
    # every other rule holds here, so the three agree on the whole budget too
    assert all(v <= 0 for k, v in cons.items() if k != rule)
    assert len(viol) == (0 if holds else 1) == sum(not i.passed for i in items) == sum(v > 0 for v in cons.values())
    if not holds:
        assert item.detail == viol[0]


def test_missing_latency_is_named_and_infeasible():
    b = Budget(min_speedup=2, max_latency_ms=1.0)
    viol, cons, items = _all_three(b, dict(BASE, latency_ms=None), {"accuracy": OK_ACC, "size_bytes": 1})
    assert cons["speedup"] > 0 and cons["latency_ms"] > 0
    assert all("not measured" in v for v in viol) and len(viol) == 2
    assert [i.measured for i in items if not i.passed] == ["not measured", "not measured"]


def test_constraint_grows_with_the_miss():
    # the sampler ranks infeasible trials by how far they miss: a worse candidate has a larger value
    b = Budget(min_size_ratio=10, max_size_bytes=200)
    near = constraint_values(SimpleNamespace(budget=b), {"accuracy": OK_ACC, "size_bytes": 110}, BASE)
    far = constraint_values(SimpleNamespace(budget=b), {"accuracy": OK_ACC, "size_bytes": 400}, BASE)
    assert 0 < near["size_ratio"] < far["size_ratio"] and near["size_bytes"] <= 0 < far["size_bytes"]


def test_check_items_read_like_the_gate():
    b = Budget(max_drop=0.3, min_size_ratio=10, max_size_bytes=50)
    items = budget_items(b, BASE, {"accuracy": 0.98, "size_bytes": 200}, {"size_bytes": "ONNX file is 200 B"})
    by = {i.name: i for i in items}
    assert list(by) == ["accuracy", "size ratio", "size"]
    assert by["accuracy"].measured == "98.00 %" and by["accuracy"].required.startswith(">= 98.70")
    assert by["size ratio"].measured == "5.0x" and by["size ratio"].required == ">= 10x"
    assert by["size"].required == "<= 50 B" and by["size"].detail.endswith("(ONNX file is 200 B)")
    assert "below the allowed" in by["accuracy"].detail


def test_unknown_rule_is_named():
    with pytest.raises(KeyError, match="no budget rule 'flops'.*accuracy"):
        budget_rules.verdict(Budget(), "flops", BASE, {"accuracy": OK_ACC})

"""The automatic loop: budget in, best compressed model out (searched, resumable, distributed)."""

from autocompress.search.budget import Budget
from autocompress.search.options import ResultOptions, SearchOptions, TrainingOptions
from autocompress.search.recipe import Recipe
from autocompress.search.result import Result, TrialRecord


def __getattr__(name):
    # compress() pulls in optuna and the techniques: load them only when asked for
    if name in ("compress", "resume", "join_study", "TECHNIQUES"):
        from autocompress.search import loop
        return getattr(loop, name)
    if name in ("apply_recipe", "inspect"):
        from autocompress.search import replay
        return getattr(replay, name)
    raise AttributeError(name)


__all__ = ["Budget", "Recipe", "Result", "TrialRecord", "SearchOptions", "TrainingOptions", "ResultOptions",
           "compress", "resume", "join_study", "apply_recipe", "inspect"]

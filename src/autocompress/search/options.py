"""``compress()``'s options, grouped by what they are about: what to search, how to train,
where to keep the results. Each group is a small frozen dataclass (a mapping of its fields is
accepted too); the flat keywords of earlier versions still work, mapped onto their group with a
``DeprecationWarning``."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

STUDY = "autocompress"


@dataclass(frozen=True)
class SearchOptions:
    """What to search and how the study is kept."""
    techniques: Sequence[str] | None = None   # registered technique names (None: all of them)
    seeds: Iterable[Any] | None = None        # Recipes tried first (None: the techniques' own seeds)
    seed: int = 0
    workers: int = 1                          # local processes sharing the study
    storage: str | None = None                # Optuna storage URL (None: SQLite in out_dir)
    study_name: str = STUDY                   # tells studies apart in a shared storage
    resume: bool = False


@dataclass(frozen=True)
class TrainingOptions:
    """How a trial is fine-tuned and scored."""
    evaluate: Callable | None = None          # (model, loader) -> float; None: top-1 accuracy
    finetune: Callable | None = None          # (model) -> model; None: our loop, distilled
    device: str = "auto"                      # where our fine-tunes run ("auto": CUDA if there is one)
    quick: bool = False                       # small subsets and short fine-tunes (tests, smoke runs)


@dataclass(frozen=True)
class ResultOptions:
    """Where the results go and how they are labelled."""
    out_dir: str | Path = "runs/compress"
    title: str | None = None
    # builds the uncompressed architecture for the storage artifact (None: a copy of the model)
    model_factory: Callable[[], Any] | None = None


GROUPS = {"search": SearchOptions, "training": TrainingOptions, "results": ResultOptions}


def resolve(search: Any, training: Any, results: Any, legacy: Mapping[str, Any]
            ) -> tuple[SearchOptions, TrainingOptions, ResultOptions]:
    """The three groups, with ``legacy`` (flat keywords) moved onto theirs."""
    given = {"search": search, "training": training, "results": results}
    groups = {}
    for name, cls in GROUPS.items():
        v = given[name]
        if v is None:
            v = cls()
        elif isinstance(v, Mapping):
            v = _build(cls, v, name)
        elif not isinstance(v, cls):
            raise TypeError(f"compress({name}=...): expected {cls.__name__} or a mapping, got {type(v).__name__}")
        groups[name] = v
    owner = {f.name: g for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    moved: dict[str, dict] = {g: {} for g in GROUPS}
    for key, v in legacy.items():
        if key not in owner:
            from autocompress.config import _closest
            raise TypeError(f"compress() got an unexpected keyword argument {key!r}{_closest(key, list(owner))}")
        if given[owner[key]] is not None:
            raise TypeError(f"compress(): {key!r} given both on its own and in {owner[key]}=; give it once")
        moved[owner[key]][key] = v
    if legacy:
        warnings.warn("compress(" + ", ".join(f"{k}=" for k in legacy) + "): pass these in the grouped options "
                      + ", ".join(f"{g}={GROUPS[g].__name__}({', '.join(m)})" for g, m in moved.items() if m),
                      DeprecationWarning, stacklevel=3)
    return tuple(dataclasses.replace(groups[g], **moved[g]) if moved[g] else groups[g] for g in GROUPS)


def _build(cls, data: Mapping, name: str):
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise TypeError(f"compress({name}=...): unknown option(s) {unknown}; allowed: {allowed}")
    return cls(**data)

"""Run configs: the YAML file a user writes to compress their own model from the command line.

A run config names the model, weights, data and metric, the budget and the techniques allowed::

    model: custom_cnn:build          # 'module:function', 'path/to/file.py:function', 'lenet5'/'lenet300',
                                     # or 'path/to/model.onnx' (weights come with the file)
    weights: weights/custom_cnn.safetensors
    data: custom_cnn:data            # 'module:function', 'mnist', 'mnist-flat' or a path to an .npz
    budget: {max_drop: 0.3, min_size_ratio: 20, objective: smallest}
    techniques: [prune, quantize, cluster, distill]
    out_dir: out/custom_cnn

Relative paths (``weights``, an ``.npz`` data file) and modules named by ``module:function`` resolve
against ``base_dir`` (default: the folder of the config file), then the current directory; both are
put on ``sys.path`` the way Python puts a script's folder there, so the user's module can import its
neighbours and worker processes can unpickle its classes. ``out_dir`` is relative to the current
directory, like any command-line output option.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from autocompress.config import Config, ConfigError, _closest
from autocompress.data import Splits
from autocompress.search.budget import Budget

log = logging.getLogger(__name__)



def _technique_names() -> tuple[str, ...]:
    from autocompress.techniques import names
    return names()


def __getattr__(name: str):
    if name == "TECHNIQUES":   # the technique registry's names (techniques/)
        return _technique_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class RunConfig(Config):
    """One ``autocompress run``: what to compress, against which budget, with which techniques."""

    model: str
    data: str
    weights: str | None = None
    metric: str | None = None            # 'module:function': evaluate(model, loader) -> float
    budget: Budget = field(default_factory=Budget)
    techniques: list[str] = field(default_factory=lambda: list(_technique_names()))
    out_dir: str = "out/run"
    seed: int = 0
    workers: int = 1
    storage: str | None = None           # Optuna storage URL; default: SQLite inside out_dir
    device: str = "auto"                 # where fine-tunes run: auto (CUDA if there is one), cpu, cuda, cuda:N
    base_dir: str | None = None          # where relative paths/modules resolve; default: config's folder

    def validate(self) -> None:
        for name in ("model", "data", "out_dir"):
            if not getattr(self, name).strip():
                raise ConfigError(f"RunConfig.{name} must not be empty")
        known = _technique_names()
        if not self.techniques:
            raise ConfigError(f"RunConfig.techniques must list at least one of {list(known)}")
        for i, t in enumerate(self.techniques):
            if t not in known:
                raise ConfigError(f"RunConfig.techniques[{i}]: {t!r} is not one of {list(known)}"
                                  + _closest(t, list(known)))
        dup = sorted({t for t in self.techniques if self.techniques.count(t) > 1})
        if dup:
            raise ConfigError(f"RunConfig.techniques lists {dup} more than once")
        if self.workers < 1:
            raise ConfigError(f"RunConfig.workers must be >= 1, got {self.workers}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"RunConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.storage is not None and "://" not in self.storage:
            raise ConfigError(f"RunConfig.storage must be a database URL such as "
                              f"'sqlite:///study.db' or 'postgresql://user@host/db', got {self.storage!r}")


def load_config(path: str | Path) -> RunConfig:
    """Read a run config file; ``base_dir`` defaults to the file's folder (as an absolute path)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: pass the run config file (.yaml) inside it")
    if path.exists():
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a text file: a run config is YAML") from None
    cfg = RunConfig.from_yaml(path)
    if cfg.base_dir is None:
        cfg.base_dir = str(path.resolve().parent)
    return cfg


def _base(cfg: RunConfig) -> Path:
    return Path(cfg.base_dir) if cfg.base_dir else Path.cwd()


def resolve_path(cfg: RunConfig, value: str, field_name: str) -> Path:
    """An existing file: absolute, else relative to ``base_dir``, else to the current directory."""
    return _existing(value, _base(cfg), field_name)


def _existing(value: str, base_dir: Path | None, field_name: str) -> Path:
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [(base_dir or Path.cwd()) / p, Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise ConfigError(f"RunConfig.{field_name}: file {value!r} does not exist (looked at {tried}); "
                      f"fix the path (relative paths are read from the config file's folder)")


# -- 'module:function' -----------------------------------------------------------------------

def _add_import_dir(d: Path) -> None:
    s = str(d.resolve())
    if s not in sys.path:
        # like `python script.py` does for the script's folder; kept so workers can unpickle classes
        sys.path.insert(0, s)
        log.debug("added %s to sys.path for user modules", s)


def resolve_callable(spec: str, field_name: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """Import ``'module:function'`` or ``'path/to/file.py:function'`` (``function`` may be dotted)."""
    module, sep, attr = spec.rpartition(":")
    where = f"RunConfig.{field_name}"
    if not sep or not module or not attr:
        raise ConfigError(f"{where}: {spec!r} is not of the form 'module:function' "
                          f"(e.g. 'my_models:build' for def build() in my_models.py)")
    base_dir = base_dir or Path.cwd()
    if module.endswith(".py"):
        f = Path(module)
        f = f if f.is_absolute() else base_dir / f
        if not f.exists():
            raise ConfigError(f"{where}: file {f} does not exist; fix the path in {spec!r}")
        _add_import_dir(f.parent)
        module = f.stem
    else:
        _add_import_dir(Path.cwd())
        _add_import_dir(base_dir)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise ConfigError(
                f"{where}: cannot import module {module!r} named in {spec!r}: it must be importable from "
                f"the current directory ({Path.cwd()}) or the config's folder ({base_dir}), or installed"
            ) from None
        raise ConfigError(f"{where}: importing {module!r} failed because it imports {e.name!r}, "
                          f"which is not installed") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing: say so
        raise ConfigError(f"{where}: importing {module!r} raised {type(e).__name__}: {e}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n)))
            raise ConfigError(f"{where}: module {module!r} has no attribute {attr!r}; "
                              f"callables it defines: {names[:12]}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}: {spec!r} is a {type(obj).__name__}, not a function")
    return obj


# -- resolution ----------------------------------------------------------------------------

def load_model(cfg: RunConfig, weights: str | None = None) -> nn.Module:
    """The user's model in eval mode, with ``weights`` (or ``cfg.weights``) loaded safely.

    A bundled name without weights loads the bundled trained baseline."""
    from autocompress.baselines import load_baseline
    from autocompress.models import MODELS, build_model, load_weights

    weights = weights if weights is not None else cfg.weights
    if cfg.model.endswith(".onnx"):
        return _onnx_model(cfg, weights)
    if cfg.model in MODELS:
        if weights is None:
            return load_baseline(cfg.model, train_if_missing=False).eval()
        model = build_model(cfg.model)
    else:
        factory = resolve_callable(cfg.model, "model", _base(cfg))
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"RunConfig.model: calling {cfg.model!r}() raised {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"RunConfig.model: {cfg.model!r} returned {type(model).__name__}, "
                              f"expected a torch.nn.Module (bundled names: {sorted(MODELS)})")
    if weights is None:
        log.warning("no weights given for %s: compressing the model as its function built it", cfg.model)
    else:
        load_weights(model, resolve_path(cfg, weights, "weights"))
    return model.eval()


def _onnx_model(cfg: RunConfig, weights: str | None, check: bool = True) -> nn.Module:
    """An ONNX file carries its weights: converted and checked against ONNX Runtime on the way in."""
    from autocompress.frontends import FrontendError, from_onnx

    path = resolve_path(cfg, cfg.model, "model")
    if weights is not None and check:
        raise ConfigError(f"RunConfig.weights: {cfg.model} is an ONNX file, which holds its weights; "
                          f"remove 'weights: {weights}'")
    try:
        return from_onnx(path, check=check).eval()
    except FrontendError as e:
        raise ConfigError(f"RunConfig.model: {e}") from None


def model_factory(cfg: RunConfig) -> Callable[[], nn.Module]:
    """A zero-argument callable building the config's architecture (no weights): what a compressed
    artifact of a custom model class needs to be rebuilt."""
    from autocompress.models import MODELS, build_model

    if cfg.model.endswith(".onnx"):
        return lambda: _onnx_model(cfg, None, check=False)
    if cfg.model in MODELS:
        return lambda: build_model(cfg.model)
    return resolve_callable(cfg.model, "model", _base(cfg))


def _mnist(flat: bool) -> Callable[[], Splits]:
    def load() -> Splits:
        from autocompress.data import load_mnist
        return load_mnist(flat=flat)
    return load


BUNDLED_DATA: dict[str, Callable[[], Splits]] = {"mnist": _mnist(False), "mnist-flat": _mnist(True)}


def load_data(cfg: RunConfig) -> Splits:
    """The config's data; see :func:`data_from_spec`."""
    return data_from_spec(cfg.data, _base(cfg))


def data_from_spec(spec: str, base_dir: Path | None = None, field_name: str = "data") -> Splits:
    """Bundled MNIST (``'mnist'``, ``'mnist-flat'``), an ``.npz`` file, or the user's ``module:function``
    returning Splits or a ``(train, val, test)`` tuple of Datasets / DataLoaders / ``(x, y)`` arrays."""
    from autocompress.data import from_datasets, load_npz

    where = f"RunConfig.{field_name}"
    if spec in BUNDLED_DATA:
        return BUNDLED_DATA[spec]()
    if spec.endswith(".npz"):
        return load_npz(_existing(spec, base_dir, field_name))
    if ":" not in spec:
        raise ConfigError(f"{where}: {spec!r} is neither a bundled dataset {sorted(BUNDLED_DATA)}, "
                          f"an .npz file, nor 'module:function'")
    fn = resolve_callable(spec, field_name, base_dir)
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{where}: calling {spec!r}() raised {type(e).__name__}: {e}") from None
    if isinstance(out, Splits):
        return out
    if isinstance(out, (tuple, list)) and len(out) == 3:
        return from_datasets(*out)
    raise ConfigError(f"{where}: {spec!r} returned {type(out).__name__}; expected "
                      f"autocompress.data.Splits or a (train, val, test) tuple")


def load_metric(cfg: RunConfig) -> Callable[[nn.Module, Any], float] | None:
    """The user's ``evaluate(model, loader) -> float`` (higher is better), or None for top-1 accuracy."""
    if cfg.metric is None:
        return None
    return resolve_callable(cfg.metric, "metric", _base(cfg))

"""Typed config dataclasses that round-trip to dict / YAML / JSON.

Every technique takes a small ``@dataclass`` config. Subclass :class:`Config`; fields may be
plain scalars, ``Optional``, ``Literal``, ``Enum``, lists/tuples/dicts of those, or nested configs.
``from_dict`` rejects unknown keys and wrong types with a message that names the field path,
so a typo in a YAML recipe fails loudly instead of being ignored. Building a config in Python checks
the same way (``__post_init__``): a ``Literal`` field takes only its listed values (the message
suggests the closest), numbers must be finite, and then the subclass's ``validate`` checks ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import numbers
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T", bound="Config")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the field."""


@dataclasses.dataclass
class Config:
    """Base class: validation hook plus (de)serialisation."""

    def __post_init__(self) -> None:
        self.revalidate()

    def validate(self) -> None:  # overridden by subclasses; raise ConfigError naming the field
        pass

    def revalidate(self) -> None:
        """Check every field against its annotation, then the subclass's own rules (ranges).

        Runs when the config is built; call it again after assigning fields."""
        name = type(self).__name__
        for f_name, tp in _field_types(type(self)).items():
            _check(tp, getattr(self, f_name), f"{name}.{f_name}")
        self.validate()

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: Any, _path: str = "") -> T:
        return _load(cls, data, _path or cls.__name__)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from autocompress import safefs
            safefs.write_text(path, text)        # atomic, never through a planted symlink
        return text

    @classmethod
    def from_yaml(cls: type[T], source: str | Path) -> T:
        """Load from a YAML file path or a YAML string."""
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml", ".json"))):
            p = Path(source)
            if not p.exists():
                raise ConfigError(f"config file {p} does not exist")
            try:
                data = yaml.safe_load(p.read_text())
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: not valid YAML: {e}") from None
            return cls.from_dict(data if data is not None else {}, str(p))
        return cls.from_dict(yaml.safe_load(source) or {})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))


def _dump(v: Any) -> Any:
    if isinstance(v, Config):
        return v.to_dict()
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, (list, tuple)):
        return [_dump(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _dump(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def _load(tp: Any, data: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return data
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
        kwargs = {}
        for name, f in fields.items():
            if name in data:
                kwargs[name] = _load(hints[name], data[name], f"{path}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}.{name}: required field is missing")
        try:
            return tp(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: {e}") from None
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if data is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _load(a, data, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: value {data!r} matches none of {_tname(tp)}")
    if origin is Literal:
        if data not in get_args(tp):
            raise ConfigError(f"{path}: {data!r} is not one of {list(get_args(tp))}")
        return data
    if origin in (list, tuple):
        if not isinstance(data, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(data).__name__} {data!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(data):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(data)}")
            return tuple(_load(a, x, f"{path}[{i}]") for i, (a, x) in enumerate(zip(args, data)))
        item = args[0] if args else Any
        out = [_load(item, x, f"{path}[{i}]") for i, x in enumerate(data)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_load(kt, k, f"{path}") : _load(vt, v, f"{path}.{k}") for k, v in data.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            raise ConfigError(f"{path}: {data!r} is not one of {[m.value for m in tp]}") from None
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(data).__name__} {data!r}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ConfigError(f"{path}: expected an integer, got {type(data).__name__} {data!r}")
        return data
    if tp is bool:
        if not isinstance(data, bool):
            raise ConfigError(f"{path}: expected true/false, got {type(data).__name__} {data!r}")
        return data
    if tp is str:
        if not isinstance(data, str):
            raise ConfigError(f"{path}: expected a string, got {type(data).__name__} {data!r}")
        return data
    if tp is Path:
        if not isinstance(data, (str, Path)):
            raise ConfigError(f"{path}: expected a path string, got {type(data).__name__}")
        return Path(data)
    return data


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# -- checking values built in Python against the annotations ---------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of ``cls``'s init fields; a field whose annotation names something
    unimportable here (a TYPE_CHECKING-only name) is left unchecked rather than failing."""
    if cls not in _HINTS:
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - fall back to one field at a time
            hints = {}
            for f in dataclasses.fields(cls):
                owner = next((c for c in cls.__mro__ if f.name in getattr(c, "__annotations__", {})), cls)
                try:
                    hints[f.name] = eval(f.type, vars(sys.modules[owner.__module__])) \
                        if isinstance(f.type, str) else f.type
                except Exception:  # noqa: BLE001
                    continue
        _HINTS[cls] = {n: hints[n] for n in names if n in hints}
    return _HINTS[cls]


def _closest(value: Any, allowed: list[Any]) -> str:
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else ""


def _check(tp: Any, v: Any, path: str) -> None:
    """Raise ConfigError when ``v`` does not fit annotation ``tp``; unknown kinds of type pass."""
    origin = get_origin(tp)
    if tp is Any or isinstance(tp, TypeVar):
        return
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if v is None and type(None) in args:
            return
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(a, v, path)
            except ConfigError as e:
                errors.append(e)
        # the most telling arm's message (a Literal's suggestion beats "expected a number")
        lit = [e for a, e in zip([a for a in args if a is not type(None)], errors) if get_origin(a) is Literal]
        raise (lit or errors)[0]
    if origin is Literal:
        allowed = list(get_args(tp))
        if not any(v == a and type(v) is type(a) for a in allowed):
            raise ConfigError(f"{path}: {v!r} is not one of {allowed}{_closest(v, allowed)}")
        return
    if origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(v).__name__} {v!r}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if origin is tuple and len(args) > 1:
            for i, (a, x) in enumerate(zip(args, v)):
                _check(a, x, f"{path}[{i}]")
        elif args:
            for i, x in enumerate(v):
                _check(args[0], x, f"{path}[{i}]")
        return
    if origin is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(v).__name__} {v!r}")
        kt, vt = get_args(tp) or (Any, Any)
        for k, x in v.items():
            _check(kt, k, path)
            _check(vt, x, f"{path}[{k!r}]")
        return
    if not isinstance(tp, type):
        return
    if issubclass(tp, enum.Enum):
        if not isinstance(v, tp) and v not in {m.value for m in tp}:
            allowed = [m.value for m in tp]
            raise ConfigError(f"{path}: {v!r} is not one of {allowed}{_closest(v, allowed)}")
    elif tp is bool:
        if not isinstance(v, bool) and type(v).__name__ != "bool_":
            raise ConfigError(f"{path}: expected True/False, got {type(v).__name__} {v!r}")
    elif tp in (int, float):
        _check_number(tp, v, path)
    elif tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{path}: expected a string, got {type(v).__name__} {v!r}")
    elif tp is Path:
        if not isinstance(v, (str, Path)):
            raise ConfigError(f"{path}: expected a path, got {type(v).__name__} {v!r}")
    elif dataclasses.is_dataclass(tp) and not isinstance(v, tp):
        raise ConfigError(f"{path}: expected a {tp.__name__}, got {type(v).__name__} {v!r}")


def _check_number(tp: type, v: Any, path: str) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ConfigError(f"{path}: expected {'an integer' if tp is int else 'a number'}, "
                          f"got {type(v).__name__} {v!r}")
    if not math.isfinite(v):   # NaN slips through every range check (all comparisons are False)
        raise ConfigError(f"{path}: {v!r} is not a finite number (leave an optional limit unset, "
                          f"None / null, for 'no limit')")
    if tp is int and not isinstance(v, numbers.Integral) and not float(v).is_integer():
        raise ConfigError(f"{path}: expected an integer, got {v!r}")

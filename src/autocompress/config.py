"""Typed config dataclasses that round-trip to dict / YAML / JSON.

Every technique takes a small ``@dataclass`` config. Subclass :class:`Config`; fields may be
plain scalars, ``Optional``, ``Literal``, ``Enum``, lists/tuples/dicts of those, or nested configs.
``from_dict`` rejects unknown keys and wrong types with a message that names the field path,
so a typo in a YAML recipe fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import json
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
        self.validate()

    def validate(self) -> None:  # overridden by subclasses; raise ConfigError naming the field
        pass

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: Any, _path: str = "") -> T:
        return _load(cls, data, _path or cls.__name__)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
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

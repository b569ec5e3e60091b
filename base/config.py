"""Strict dataclass configs loaded from YAML (torch-free).

``from_dict(Cls, data)`` builds a (nested) dataclass from plain data and refuses anything it does
not understand: an unknown key is an error that names its full path and suggests the closest
known key, a value of the wrong type names the expected type. Configs are written back with
``to_dict`` so a run directory always holds the fully resolved config.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from wherevit.base.errors import WherevitError

__all__ = ["ConfigError", "from_dict", "to_dict", "load_yaml", "apply_overrides"]

T = TypeVar("T")


class ConfigError(WherevitError, ValueError):
    """A configuration file or override that does not match the schema."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` converted to type ``tp`` (a dataclass, container, Literal, Union or scalar), or a
    ``ConfigError`` naming ``path``. Dispatches to one small converter per kind of type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, path)
    if origin is typing.Literal:
        return _convert_literal(value, tp, path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, _path=path)
    if origin in (list, tuple):
        return _convert_sequence(value, tp, path)
    if origin is dict:
        return _convert_mapping(value, tp, path)
    if tp in _SCALARS:
        return _SCALARS[tp](value, path)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return value


def _convert_union(value: Any, tp: Any, path: str) -> Any:
    """The first member type that accepts ``value`` (``None`` only where the union allows it)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    rest = [a for a in args if a is not type(None)]
    if len(rest) == 1:  # Optional[X]: X's own error says what is wrong (and where, inside a nested section)
        return _convert(value, rest[0], path)
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, path)
        except ConfigError:
            pass
    raise ConfigError(f"{path}: {value!r} does not match {_type_name(tp)}")


def _convert_literal(value: Any, tp: Any, path: str) -> Any:
    args = typing.get_args(tp)
    if value not in args:
        raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
    return value


def _convert_sequence(value: Any, tp: Any, path: str) -> list | tuple:
    """A list, a variable-length tuple (``tuple[int, ...]``) or a fixed-length one, item by item."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    out = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


def _convert_mapping(value: Any, tp: Any, path: str) -> dict:
    args = typing.get_args(tp)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
    vt = args[1] if len(args) == 2 else Any
    return {str(k): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}


def _to_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    return float(value)


def _to_int(value: Any, path: str) -> int:
    # YAML writes 1e3 as a float: accept integral floats, refuse 2.5 and booleans
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    return int(value)


def _to_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    return value


def _to_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


_SCALARS = {float: _to_float, int: _to_int, bool: _to_bool, str: _to_str}


def from_dict(cls: type[T], data: Mapping[str, Any] | None, _path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    Dataclasses may define ``validate(self)`` raising ``ValueError`` for cross-field checks; it
    runs after construction and its message is prefixed with the config path.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        where = f"{_path}.{key}" if _path else key
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{where}'{hint}; known keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        where = f"{_path}.{name}" if _path else name
        kwargs[name] = _convert(value, hints[name], where)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{_path or cls.__name__}: {e}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{_path or cls.__name__}: {e}") from e
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a (nested) dataclass, suitable for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or malformed YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data

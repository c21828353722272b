"""Configuration dataclasses: their checked fields and their plain-dict / YAML round trip.

Configs are frozen dataclasses with commented defaults. ``to_dict`` / ``from_dict``
turn them into JSON-able dicts and back (nested dataclasses, tuples), so a config can be
stored beside every output, hashed, and rebuilt exactly. ``check_fields`` (called by each
config's ``__post_init__``) and ``from_dict`` hold every field to its type hint, so a
wrong key, type or value is one :class:`ConfigError` that names the key, the value and
what was expected, whether the config came from code, YAML or the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from distill.core.errors import ConfigError

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass instance -> nested dict of JSON-able values (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild dataclass ``cls`` from ``data``; absent keys take defaults.

    Values are converted to the field types where that is unambiguous (lists to tuples,
    ints to floats, whole floats such as YAML's ``1e4`` to ints, nested mappings to nested configs). An unknown key or a value of the
    wrong type is a :class:`ConfigError` that names it (``criterion.style_weight`` for a
    nested config).
    """
    return _from_dict(cls, data, prefix="", owner=cls.__name__)


def check_fields(config: Any) -> None:
    """Raise :class:`ConfigError` for the first field of ``config`` whose value does not fit its type hint.

    Meant for a frozen config's ``__post_init__``. An int stands for a float; a
    tuple field needs a tuple (a list would make the config unhashable). (Only
    :func:`from_dict` turns a whole float such as ``1e4`` into an int.)
    """
    cls = type(config)
    hints = _type_hints(cls)
    for field in dataclasses.fields(cls):
        value = getattr(config, field.name)
        coerced = _coerce(hints[field.name], value, key=field.name, owner=cls.__name__)
        if type(coerced) is not type(value) and not (type(value) is int and type(coerced) is float):
            raise _type_error(cls.__name__, field.name, hints[field.name], value)


def replace(config: T, **changes: Any) -> T:
    """``dataclasses.replace`` that also accepts dotted keys for nested configs (``criterion.style_weight``)."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[key] = value
    for head, sub in nested.items():
        direct[head] = replace(getattr(config, head), **sub)
    return dataclasses.replace(config, **direct)


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that numbers like ``1e-3`` (no dot) are floats, as in YAML 1.2 and JSON.

    PyYAML follows YAML 1.1, which reads ``1e-3`` as the string "1e-3"; a config file
    saying ``lr: 1e-3`` means the number.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_value(text: str) -> Any:
    """One YAML value, e.g. of a ``--set key=value`` option (``1e-3`` is a number, ``null`` is None)."""
    return yaml.load(text, Loader=_YamlLoader)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (an empty file gives ``{}``), with a clear error naming the file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str, owner: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
    hints = _type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(data) - names)
    if unknown:
        known = ", ".join(f"{prefix}{name}" for name in sorted(names))
        raise ConfigError(f"unknown {owner} option(s): {', '.join(prefix + name for name in unknown)}; known: {known}")
    values = {name: _coerce(hints[name], value, key=f"{prefix}{name}", owner=owner) for name, value in data.items()}
    return cls(**values)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(hint: Any, value: Any, *, key: str, owner: str) -> Any:
    """``value`` as the declared type ``hint`` where that is unambiguous; :class:`ConfigError` otherwise."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key=key, owner=owner)
            except ConfigError:
                continue
        raise _type_error(owner, key, hint, value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _type_error(owner, key, hint, value)
        return _from_dict(hint, value, prefix=f"{key}.", owner=owner)
    if origin is tuple:
        return _coerce_tuple(args, value, key=key, owner=owner, hint=hint)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise _type_error(owner, key, hint, value)
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and type(value) is float and value.is_integer():
        return int(value)  # "steps: 1e4" in YAML is the float 10000.0
    if hint in (int, bool, str) and type(value) is hint:
        return value
    if hint in (int, float, bool, str):
        raise _type_error(owner, key, hint, value)
    return value


def _coerce_tuple(args: tuple[Any, ...], value: Any, *, key: str, owner: str, hint: Any) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        value = [value]  # a lone value where a tuple is expected: ("feature",) from "feature"
    if args and args[-1] is not Ellipsis and len(value) != len(args):
        raise ConfigError(f"{owner} option {key!r}: expected {len(args)} values, got {list(value)!r}")
    inner = args[:1] * len(value) if args and args[-1] is Ellipsis else args or (Any,) * len(value)
    return tuple(_coerce(arg, item, key=f"{key}[{i}]", owner=owner) for i, (arg, item) in enumerate(zip(inner, value)))


def _type_error(owner: str, key: str, hint: Any, value: Any) -> ConfigError:
    return ConfigError(f"{owner} option {key!r}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _describe(hint: Any) -> str:
    """A type hint in words: ``int or None``, ``tuple of float``, ``CriterionConfig``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if arg is type(None) else _describe(arg) for arg in args)
    if origin is tuple:
        if args and args[-1] is Ellipsis:
            return f"tuple of {_describe(args[0])}"
        return f"tuple of ({', '.join(_describe(arg) for arg in args)})"
    if origin in (dict, Mapping) or hint is dict:
        return "mapping"
    return getattr(hint, "__name__", str(hint))

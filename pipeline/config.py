"""Typed, validated configuration read from ``params.yaml``.

Every stage owns one top-level section of ``params.yaml`` and one frozen dataclass that
describes it. :func:`load_section` turns the section into that dataclass, checking every
key and every value against the dataclass's type hints, so a misspelled key or a wrong type
is an error that names the key (``align.reg: expected float, got 'small'``).

This module never reads environment variables and never holds global state: the path of
the parameter file is always an argument.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


# Where a stage's parallel work runs (pipeline/engine.py); shared by the stages that have one.
ENGINES: tuple[str, ...] = ("local", "dask")
# tcp://host:port, tls://host:port, or host:port (Dask's own default scheme is tcp)
_SCHEDULER_ADDRESS = re.compile(r"^(?:(tcp|tls|inproc|ucx)://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class ConfigError(ValueError):
    """A parameter file or section that does not match its declared schema."""


def check_engine(engine: str, scheduler_address: str | None) -> None:
    """Validate an ``engine`` / ``scheduler_address`` pair from a stage's params section.

    Raises ``ValueError`` naming the setting: an unknown engine, an address for the local
    engine (it would be silently ignored), or an address that is not ``[scheme://]host:port``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if scheduler_address is None:
        return
    if engine != "dask":
        raise ValueError(f"scheduler_address is only used by engine 'dask' (engine is {engine!r}); remove it")
    if not _SCHEDULER_ADDRESS.match(scheduler_address):
        raise ValueError(
            f"scheduler_address must look like tcp://host:8786, got {scheduler_address!r}"
        )


def read_params(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read a YAML parameter file into a dict, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"parameter file {path} does not exist") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameter file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {path} must hold a mapping at the top level")
    return data


def load_section(cls: type[T], section: str, path: Path | str = DEFAULT_PARAMS) -> T:
    """Validate section ``section`` of the parameter file at ``path`` into ``cls``.

    A missing section gives the dataclass defaults (and fails if a field has none).
    """
    params = read_params(path)
    raw = params.get(section, {})
    if raw is None:
        raw = {}
    return from_mapping(cls, raw, where=section)


def from_mapping(cls: type[T], raw: Any, *, where: str) -> T:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(raw)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key (valid keys: {', '.join(sorted(fields))})"
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{where}.{name}"
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], where=key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        # __post_init__ range checks raise ValueError; name the section they belong to.
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config object (for logging to MLflow and writing JSON)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested config into ``a.b.c`` keys (MLflow parameters are flat)."""
    data = to_dict(obj)
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix.rstrip(".")] = data
    return out


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(tp: Any, value: Any, *, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where=where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: no type matches {_describe(value)}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: expected one of {choices}, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, where=f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        items = [_coerce(item, v, where=f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        kt, vt = args if args else (Any, Any)
        return {
            _coerce(kt, k, where=f"{where}.{k}"): _coerce(vt, v, where=f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path string, got {_describe(value)}")
        return Path(value)
    raise TypeError(f"{where}: unsupported type in schema: {tp!r}")

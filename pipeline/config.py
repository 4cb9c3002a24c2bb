"""Typed, validated configuration read from ``params.yaml``.

Every stage owns one top-level section of ``params.yaml``. :func:`load_section` turns the
section into a frozen dataclass, checking every key and every value against the dataclass's
type hints, so a misspelled key or a wrong type is an error that names the key
(``align.reg: expected a number, got 'small'``).

The library's configuration dataclasses are the single source of every setting and its
default: a stage's dataclass holds only what the stage itself needs (paths, engines,
tracking) and embeds the library's, never a copy of their fields. Two field markers (in the
field's ``metadata``, so the library declares them without importing this module) let the
params file keep its flat, readable layout:

* ``{"param": "inline"}``: a nested dataclass whose keys stand at the parent's level
  (``align.reg`` fills ``AlignConfig.options.reg``);
* ``{"param": "derived"}``: set by the stage from other facts (a seed, the property's clamp);
  such a key in params.yaml is an error, never silently overwritten.

This module never reads environment variables and never holds global state: the path of
the parameter file is always an argument.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
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


# libyaml's safe loader when PyYAML was built with it (10x faster: params.yaml is read on every command)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_params(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read a YAML parameter file into a dict, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"parameter file {path} does not exist") from exc
    try:
        data = yaml.load(text, Loader=_LOADER)
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


def paths_from(path: Path | str, section: T, *names: str) -> T:
    """``section`` with its relative path fields ``names`` read from the directory of the parameter file ``path``.

    ``dvc repro`` runs where params.yaml lies, so the file's relative directories are that
    directory's; a command given another checkout's file (``matshift predict --params``) reads the
    same ones. Unchanged when the file lies in the working directory.
    """
    base = Path(path).resolve().parent
    if base == Path.cwd().resolve():
        return section
    return dataclasses.replace(section, **{name: base / getattr(section, name) for name in names
                                           if not Path(getattr(section, name)).is_absolute()})


def _marker(f: dataclasses.Field) -> str | None:
    return f.metadata.get("param") if f.metadata else None


def _accepted(cls: type) -> dict[str, dataclasses.Field]:
    """Params keys ``cls`` accepts at its own level (inline dataclasses' keys included), by name."""
    hints = get_type_hints(cls)
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(cls):
        if not f.init or _marker(f) == "derived":
            continue
        if _marker(f) == "inline":
            out.update(_accepted(hints[f.name]))
        else:
            out[f.name] = f
    return out


def _derived(cls: type) -> set[str]:
    """Names of the ``derived`` fields of ``cls`` and of its inline dataclasses."""
    hints = get_type_hints(cls)
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        if _marker(f) == "derived":
            out.add(f.name)
        elif _marker(f) == "inline":
            out |= _derived(hints[f.name])
    return out


def from_mapping(cls: type[T], raw: Any, *, where: str) -> T:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(raw)}")
    unknown = sorted(set(raw) - set(_accepted(cls)))
    if unknown:
        hint = "set by the stage, not in params" if unknown[0] in _derived(cls) else ""
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key{f' ({hint})' if hint else ''} "
            f"(valid keys: {', '.join(sorted(_accepted(cls)))})"
        )
    return _build(cls, raw, where=where)


def _build(cls: type[T], raw: Mapping, *, where: str) -> T:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init or _marker(field) == "derived":
            continue
        if _marker(field) == "inline":
            sub = hints[field.name]
            mine = {k: v for k, v in raw.items() if k in _accepted(sub)}
            if mine:  # the keys given replace those of the parent's default (its default_factory)
                values[field.name] = _replace(_default(field, sub), _build(sub, mine, where=where), mine, where=where)
            continue
        key = f"{where}.{field.name}"
        if field.name in raw:
            value = _coerce(hints[field.name], raw[field.name], where=key)
            sub = _dataclass_of(hints[field.name])
            if sub is not None and dataclasses.is_dataclass(value) and isinstance(raw[field.name], Mapping):
                # a nested section's missing keys keep the parent's default for it (its default_factory)
                base = _default(field, sub)
                value = _replace(base if base is not None else sub(), value, raw[field.name], where=key)
            values[field.name] = value
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        # __post_init__ range checks raise ValueError; name the section they belong to.
        raise ConfigError(f"{where}: {exc}") from exc


def _dataclass_of(tp: Any) -> type | None:
    """Return the dataclass ``tp`` is, or holds as ``X | None``; else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _default(field: dataclasses.Field, cls: type) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return cls()


def _replace(base: Any, built: Any, given: Mapping, *, where: str) -> Any:
    """Return ``base`` with the fields (and inline fields, recursively) that ``given`` set taken from ``built``."""
    hints = get_type_hints(type(base))
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(base):
        if _marker(f) == "inline":
            sub_given = {k: v for k, v in given.items() if k in _accepted(hints[f.name])}
            if sub_given:
                changes[f.name] = _replace(getattr(base, f.name), getattr(built, f.name), sub_given, where=where)
        elif f.name in given:
            changes[f.name] = getattr(built, f.name)
    try:
        return dataclasses.replace(base, **changes)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config object (for logging to MLflow and writing JSON), in params.yaml's layout.

    Inline dataclasses are flattened into their parent, as in the params file; ``derived``
    fields are left out (they are not settings: the stage sets them when it uses the config).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if _marker(f) == "derived":
                continue
            value = to_dict(getattr(obj, f.name))
            if _marker(f) == "inline" and isinstance(value, dict):
                out.update(value)
            else:
                out[f.name] = value
        return out
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
    """``value`` checked (and converted: int -> float, str -> Path, list -> tuple) against type hint ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(get_args(tp), value, where=where)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: expected one of {choices}, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where=where)
    if origin in (list, tuple):
        return _coerce_sequence(origin, get_args(tp), value, where=where)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(kt, k, where=f"{where}.{k}"): _coerce(vt, v, where=f"{where}.{k}") for k, v in value.items()}
    if tp in _SCALARS:
        accepts, convert, expected = _SCALARS[tp]
        if not accepts(value):
            raise ConfigError(f"{where}: expected {expected}, got {_describe(value)}")
        return convert(value)
    raise TypeError(f"{where}: unsupported type in schema: {tp!r}")


# type -> (accepts the YAML value, converts it, what the error says is expected); bools are not numbers
_SCALARS: dict[type, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v, "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v, "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), float, "a number"),
    str: (lambda v: isinstance(v, str), lambda v: v, "a string"),
    Path: (lambda v: isinstance(v, str), Path, "a path string"),
}


def _coerce_union(args: tuple, value: Any, *, where: str) -> Any:
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


def _coerce_sequence(origin: type, args: tuple, value: Any, *, where: str) -> list | tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, where=f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    item = args[0] if args else Any
    items = [_coerce(item, v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items

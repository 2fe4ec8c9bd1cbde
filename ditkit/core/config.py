"""Typed configs from YAML files plus ``--set section.key=value`` overrides; unknown keys are errors."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml


def _check_keys(cls, data: dict, where: str):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in sorted(unknown))}; "
                         f"valid keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(sorted(fields))}")


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from nested dicts (dataclass-typed fields recurse)."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {where.rstrip('.') or '<root>'} must be a mapping, got {data!r}")
    _check_keys(cls, data, where)
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types = typing.get_type_hints(cls)
    for k, v in data.items():
        default = fields[k].default_factory() if fields[k].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[k] = from_dict(type(default), v or {}, f"{where}{k}.")
        else:
            kwargs[k] = _coerce(v, types[k], where + k)
    return cls(**kwargs)


def _coerce(value, typ, key: str):
    """Check ``value`` against a simple annotation (int, float, bool, str, X | None). YAML reads '1e-3' as a
    string, so numbers given as strings are converted."""
    args = typing.get_args(typ)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"config key {key} may not be null")
    if args:  # X | None
        typ = next(a for a in args if a is not type(None))
    if typ not in (bool, int, float, str):
        return value
    try:
        if isinstance(value, bool) != (typ is bool) or (typ is str and not isinstance(value, (str, int, float))):
            raise TypeError
        converted = typ(value) if typ is not int else int(float(value))
        if typ is int and float(value) != converted:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"config key {key}={value!r} must be of type {typ.__name__}") from None
    return converted


def set_override(data: dict, assignment: str):
    """Apply 'a.b=value' (value parsed as YAML) to nested dict ``data`` in place."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like section.key=value")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {assignment!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
    for o in overrides or []:
        set_override(data, o)
    return from_dict(cls, data)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)

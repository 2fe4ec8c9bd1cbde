"""Typed configs from YAML files plus ``--set section.key=value`` overrides; unknown keys are errors."""
from __future__ import annotations

import dataclasses
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
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in data.items():
        default = hints[k].default_factory() if hints[k].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[k] = from_dict(type(default), v or {}, f"{where}{k}.")
        else:
            kwargs[k] = v
    return cls(**kwargs)


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

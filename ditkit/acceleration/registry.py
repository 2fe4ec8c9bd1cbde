"""Recipes: acceleration methods applied to a model as hooks, composable with '+'.

A method is a dataclass subclass of :class:`Method` whose fields are its parameters (paper defaults), registered
under a name with :func:`register`. A recipe is written as a string (``"teacache:threshold=0.1+w8a8"``), a dict
(``{"teacache": {"threshold": 0.1}}``), a list of ``{"name": ..., **params}`` dicts, or a .yaml file holding
either. The life cycle, driven by :class:`ditkit.pipeline.DiTPipeline`:

    attach(model)             once: install hooks / swap modules / set attention backends
    reset(num_steps)          at the start of every generation (state never leaks between calls)
    begin_step(i, num_steps)  before the model evaluations of sampler step i
    begin_branch(branch)      before each network call: "cond", "uncond" (separate CFG calls) or "cond+uncond"
                              (one batched call whose first half is conditional); "cond" also without guidance;
                              "free" for video context guidance's extra call (nothing given, null label)
    detach(model)             restore the model exactly
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import yaml

REGISTRY: dict[str, type["Method"]] = {}


@dataclasses.dataclass
class Method:
    name: ClassVar[str] = ""

    def attach(self, model) -> None:
        pass

    def detach(self, model) -> None:
        pass

    def reset(self, num_steps: int) -> None:
        pass

    def begin_step(self, step: int, num_steps: int) -> None:
        pass

    def begin_branch(self, branch: str) -> None:
        pass

    def spec(self) -> str:
        """This method as a recipe string with only the non-default parameters."""
        params = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                  if getattr(self, f.name) != (f.default if f.default is not dataclasses.MISSING else f.default_factory())]
        return self.name + (":" + ",".join(params) if params else "")


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute 'name'")
    REGISTRY[cls.name] = cls
    return cls


def _valid_methods() -> str:
    return ", ".join(sorted(REGISTRY)) or "none registered"


def _value(text: str):
    """YAML scalar, plus numbers YAML 1.1 reads as strings ('1e9')."""
    v = yaml.safe_load(text)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    return v


def parse_recipe(spec) -> list[tuple[str, dict]]:
    """String / dict / list / path of a YAML file holding a dict or list -> [(method name, params)].
    ``None``, '' and 'none' are the empty recipe."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return []
    if isinstance(spec, str) and spec.strip().endswith((".yaml", ".yml")):
        return parse_recipe(yaml.safe_load(Path(spec.strip()).read_text()))
    if isinstance(spec, dict):
        return [(name, dict(params or {})) for name, params in spec.items()]
    if isinstance(spec, (list, tuple)):
        out = []
        for item in spec:
            if isinstance(item, str):
                out += parse_recipe(item)
            elif isinstance(item, dict) and "name" in item:
                out.append((item["name"], {k: v for k, v in item.items() if k != "name"}))
            else:
                raise ValueError(f"recipe entry {item!r} must be a string or a dict with a 'name' key")
        return out
    if not isinstance(spec, str):
        raise ValueError(f"a recipe is a string, dict or list, got {type(spec).__name__}")
    out = []
    for part in spec.split("+"):
        name, _, args = part.strip().partition(":")
        params = {}
        for kv in filter(None, (a.strip() for a in args.split(","))):
            if "=" not in kv:
                raise ValueError(f"recipe parameter {kv!r} in {part!r} must look like key=value")
            k, v = kv.split("=", 1)
            params[k.strip()] = _value(v)
        out.append((name.strip(), params))
    return out


def build_method(name: str, params: dict) -> Method:
    _load_builtin_methods()
    if name not in REGISTRY:
        raise ValueError(f"unknown acceleration method {name!r}; valid: {_valid_methods()}")
    cls = REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - fields
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {name!r}; valid: {', '.join(sorted(fields)) or 'none'}")
    return cls(**params)


class Recipe:
    """An ordered list of methods applied together."""

    def __init__(self, spec=None):
        self.methods = [build_method(n, p) for n, p in parse_recipe(spec)]
        names = [m.name for m in self.methods]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"method(s) {sorted(dup)} appear more than once in the recipe")

    def __bool__(self) -> bool:
        return bool(self.methods)

    def __str__(self) -> str:
        return "+".join(m.spec() for m in self.methods) or "none"

    def attach(self, model):
        """Attach every method in order; if one cannot apply, the ones already attached are detached again."""
        for i, m in enumerate(self.methods):
            try:
                m.attach(model)
            except Exception:
                for done in reversed(self.methods[:i]):
                    done.detach(model)
                raise

    def detach(self, model):
        for m in reversed(self.methods):
            m.detach(model)

    def reset(self, num_steps: int):
        for m in self.methods:
            m.reset(num_steps)

    def begin_step(self, step: int, num_steps: int):
        for m in self.methods:
            m.begin_step(step, num_steps)

    def begin_branch(self, branch: str):
        for m in self.methods:
            m.begin_branch(branch)

    @contextmanager
    def applied(self, model):
        self.attach(model)
        try:
            yield self
        finally:
            self.detach(model)


def _load_builtin_methods():
    """Import the modules that register the built-in methods (one file per method)."""
    from . import methods  # noqa: F401

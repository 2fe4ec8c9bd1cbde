"""Methods and recipes: an acceleration method is a dataclass subclass of :class:`Method` whose fields are its
parameters (paper defaults), registered under a name with :func:`register`. A recipe is written as a string
(``"teacache:threshold=0.1+w8a8"``), a dict (``{"teacache": {"threshold": 0.1}}``), a list of
``{"name": ..., **params}`` dicts, or a .yaml file holding either. The life cycle, driven by a pipeline:

    prepare(pipe)             before attaching: calibration on the float model's trajectories (quantization);
                              the pipeline applies no recipe meanwhile
    attach(model)             once: take hook points (:class:`~ditkit.hooks.points.HookPoints`)
    reset(num_steps)          at the start of every generation (state never leaks between calls)
    begin_step(i, num_steps)  before the model evaluations of sampler step i
    set_timestep(t)           before each sampler call of the model: the network timestep, a host number
    begin_branch(branch)      before each network call: "cond", "uncond" (separate CFG calls) or "cond+uncond"
                              (one batched call whose first half is conditional); "cond" also without guidance;
                              "free" for video context guidance's extra call (nothing given, null label)
    detach(model)             restore the model exactly (``HookPoints.release``)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import yaml

from .points import HookPoints

REGISTRY: dict[str, type["Method"]] = {}


@dataclasses.dataclass
class Method:
    name: ClassVar[str] = ""

    def prepare(self, pipe) -> None:
        pass

    def attach(self, model) -> None:
        pass

    def detach(self, model) -> None:
        HookPoints.of(model).release(self)

    def reset(self, num_steps: int) -> None:
        pass

    def begin_step(self, step: int, num_steps: int) -> None:
        pass

    def set_timestep(self, t: float) -> None:
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



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
                              "cond+uncond/cond" or "/uncond": this process's half of it (CFG parallelism);
                              "free" for video history guidance's extra call (nothing given, null label) and
                              "noised" for fractional history guidance's (history frames partly noised)
    detach(model)             restore the model exactly (``HookPoints.release``)

Parameters are declared with :func:`param` (type from the annotation; range, choices or a parser), and every recipe
is checked against the declarations when it is parsed, before any model work: a bad value names the method, the
parameter, the value, what is valid and an example; an unknown name lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar

import yaml

from .points import HookPoints

REGISTRY: dict[str, type["Method"]] = {}


@dataclasses.dataclass(frozen=True)
class Param:
    """What a method parameter accepts beyond its annotated type: numbers in [low, high] (``low_open``: > low),
    one of ``choices``, or whatever ``check(value)`` accepts (it raises ValueError saying what is expected);
    ``hint`` is added to the error, ``example`` replaces the default in it."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple | None = None
    check: Callable[[Any], Any] | None = None
    hint: str = ""
    example: Any = None

    def expected(self, kind) -> str:
        """'an integer >= 1', 'a fraction in (0, 1]', ... for a value of type ``kind`` (int or float)."""
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        noun = "an integer" if kind is int else "a fraction" if (self.low, self.high) == (0, 1) else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        return noun if kind is int else "a finite number"


def param(default=None, **declaration) -> Any:
    """A method parameter: ``interval: int = param(3, low=1)`` (see :class:`Param`)."""
    return dataclasses.field(default=default, metadata={"param": Param(**declaration)})


def _kinds(annotation) -> tuple[set, bool]:
    """({int, float, str, bool} the annotation allows, whether None is allowed); an empty set: any value."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    return {a for a in args if a in (int, float, str, bool)}, type(None) in args


def check_value(cls: type["Method"], key: str, value):
    """``value`` for parameter ``key`` of method ``cls``, normalised (an integral float for an int parameter becomes
    an int); a ValueError names the method, parameter, value, what is valid and an example."""
    field = {f.name: f for f in dataclasses.fields(cls)}[key]
    decl: Param = field.metadata.get("param", Param())
    kinds, optional = _kinds(typing.get_type_hints(cls).get(key, Any))
    example = decl.example if decl.example is not None else field.default

    def bad(expected: str):
        hint = f" ({decl.hint})" if decl.hint else ""
        eg = f", e.g. {cls.name}:{key}={example}" if example not in (None, dataclasses.MISSING) else ""
        return ValueError(f"{cls.name}: {key}={value!r} is not valid: expected {expected}{hint}{eg}")

    if value is None and (optional or not kinds):
        return value
    if decl.check is not None:
        try:
            decl.check(value)
        except ValueError as e:
            message = str(e)
            raise ValueError(f"{cls.name}: {message}" if message.startswith(f"{key}=") else str(bad(message))) \
                from None
        return value
    if not kinds:
        return value
    if bool in kinds:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if int in kinds and float not in kinds:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad(decl.expected(int))
    elif float in kinds:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise bad(decl.expected(float))
    elif str in kinds and not isinstance(value, str):
        raise bad(decl.expected(str) if decl.choices else "a string")
    if decl.choices and value not in decl.choices:
        raise bad(decl.expected(str))
    low_bad = decl.low is not None and (value <= decl.low if decl.low_open else value < decl.low)
    if low_bad or (decl.high is not None and value > decl.high):
        raise bad(decl.expected(int if isinstance(value, int) and float not in kinds else float))
    return value


def describe_params(cls: type["Method"]) -> str:
    """'interval (default 3), ...' for the error listing a method's valid parameters."""
    return ", ".join(f"{f.name} (default {f.default})" for f in dataclasses.fields(cls)) or "none"


def check_params(name: str, params: dict) -> dict:
    """``params`` of the registered method ``name`` checked against its declarations and normalised; unknown names
    list the valid ones. Names not registered are left to the caller (:func:`ditkit.acceleration.recipes.check_recipe`
    names the valid methods)."""
    cls = REGISTRY.get(name)
    if cls is None:
        return params
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {name!r}; valid: {describe_params(cls)}")
    return {k: check_value(cls, k, v) for k, v in params.items()}


@dataclasses.dataclass
class Method:
    name: ClassVar[str] = ""
    # What `ditkit tune` searches: (parameter, values from the least to the most aggressive), quality falling along
    # them; None: the method is tried as it is. ``variants``: settings of the other parameters, each searched apart.
    knob: ClassVar[tuple[str, tuple] | None] = None
    variants: ClassVar[tuple[dict, ...]] = ({},)

    def __post_init__(self):
        """Every parameter checked against its declaration (as a parsed recipe is), also when built in Python."""
        cls = type(self)
        if cls.name in REGISTRY and REGISTRY[cls.name] is cls:
            for f in dataclasses.fields(self):
                setattr(self, f.name, check_value(cls, f.name, getattr(self, f.name)))

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
    """YAML scalar, plus numbers YAML 1.1 reads as strings ('1e9'); text YAML cannot read stays text."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip()
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
        return parse_recipe(_load_yaml(Path(spec.strip())))
    if isinstance(spec, dict):
        for name, params in spec.items():
            if params is not None and not isinstance(params, dict):
                raise ValueError(f"recipe entry {name}: {params!r}: the parameters of a method are a mapping "
                                 f"(e.g. {{'fora': {{'interval': 3}}}}), or nothing for its defaults")
        return [(name, check_params(name, dict(params or {}))) for name, params in spec.items()]
    if isinstance(spec, (list, tuple)):
        out = []
        for item in spec:
            if isinstance(item, str):
                out += parse_recipe(item)
            elif isinstance(item, dict) and "name" in item:
                out.append((item["name"], check_params(item["name"], {k: v for k, v in item.items() if k != "name"})))
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
        out.append((name.strip(), check_params(name.strip(), params)))
    return out


def _load_yaml(path: Path):
    """The recipe held by a .yaml file, with clear errors for a missing or malformed file."""
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} not found: give an existing .yaml recipe file, or a recipe "
                                f"string such as 'fora:interval=3'")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"recipe file {path} is not valid YAML ({' '.join(str(e).split())}); write a mapping "
                         f"such as 'fora: {{interval: 3}}' or a list of {{name: ..., param: value}}") from None



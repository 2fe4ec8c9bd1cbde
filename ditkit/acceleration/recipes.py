"""Recipes: registered acceleration methods applied together, composable with '+' (see :mod:`ditkit.hooks.method`
for the method life cycle and the recipe syntax). Importing this module registers the built-in methods (one module
per method, listed in :data:`BUILTIN_METHOD_MODULES`), so its ``REGISTRY`` holds them."""
from __future__ import annotations

from contextlib import contextmanager

from ..hooks.method import REGISTRY, Method, check_params, parse_recipe

# The built-in methods, imported in this order: the registry's order (suites and listings follow it).
from .cache import fora, firstblockcache, teacache, magcache, taylorseer, toca, delta_dit  # isort: skip
from .attention import svg, sta, topk, fastattn, linear  # isort: skip
from .quant import w8a8, weight_only, bf16  # isort: skip

BUILTIN_METHOD_MODULES = (fora, firstblockcache, teacache, magcache, taylorseer, toca, delta_dit,
                          svg, sta, topk, fastattn, linear,
                          w8a8, weight_only, bf16)


def _valid_methods() -> str:
    return ", ".join(sorted(REGISTRY)) or "none registered"


def build_method(name: str, params: dict) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown acceleration method {name!r}; valid: {_valid_methods()}")
    return REGISTRY[name](**check_params(name, params))


def check_recipe(spec) -> list[tuple[str, dict]]:
    """The parsed recipe (:func:`~ditkit.hooks.method.parse_recipe`: every parameter checked) with its method names
    checked too, without building anything (no file is read): what a command calls before loading a model."""
    parsed = parse_recipe(spec)
    names = [name for name, _ in parsed]
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown acceleration method {name!r}; valid: {_valid_methods()}")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"method(s) {sorted(dup)} appear more than once in the recipe")
    return parsed


class Recipe:
    """An ordered list of methods applied together."""

    def __init__(self, spec=None):
        self.methods = [build_method(n, p) for n, p in check_recipe(spec)]

    def __bool__(self) -> bool:
        return bool(self.methods)

    def __str__(self) -> str:
        return "+".join(m.spec() for m in self.methods) or "none"

    def prepare(self, pipe):
        for m in self.methods:
            m.prepare(pipe)

    def attach(self, model):
        """Attach every method in order; if one cannot apply, it and the ones already attached are detached again."""
        for i, m in enumerate(self.methods):
            try:
                m.attach(model)
            except Exception:
                for done in reversed(self.methods[:i + 1]):
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

    def set_timestep(self, t: float):
        for m in self.methods:
            m.set_timestep(t)

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

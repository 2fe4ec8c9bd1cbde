"""``accelerate(pipeline_or_transformer, recipe)``: a ditkit recipe on a diffusers pipeline or bare transformer.

On a pipeline, the recipe follows the pipeline's own loop: every ``pipe(...)`` call resets it, each transformer
call tells it the step index (counted by ``scheduler.step`` calls), the host timestep (``scheduler.timesteps``,
read once per generation) and the CFG branch of the call (per the model's declared batching: one call with both
halves, or separate cond and uncond calls). On a bare transformer the caller drives it with the handle's
``reset(num_steps)``, ``begin_step(step, num_steps)``, ``set_timestep(t)`` and ``begin_branch(name)``, as ditkit's
own pipelines do. ``handle.remove()`` (or leaving ``with accelerate(...)``) restores everything.
"""
from __future__ import annotations

import inspect

import torch.nn as nn

from ..acceleration.recipes import Recipe
from .models import ADAPTERS, spec_for
from .stack import BlockStack, StackAdapter


def _transformers(target) -> tuple[list[nn.Module], object | None]:
    """(transformers, pipeline or None) of a diffusers pipeline (its ``transformer``, and ``transformer_2`` where
    there is one: Wan 2.2's low-noise expert), a transformer or a ``torch.compile``d transformer."""
    pipe = None
    if not isinstance(target, nn.Module) and isinstance(getattr(target, "transformer", None), nn.Module):
        pipe = target
        target = [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if isinstance(m, nn.Module)]
    elif not isinstance(target, nn.Module):
        raise TypeError(f"accelerate() takes a diffusers pipeline with a .transformer or a transformer module, got "
                        f"{type(target).__name__}")
    else:
        target = [target]
    return [getattr(m, "_orig_mod", m) for m in target], pipe


class Accelerated:
    """The handle of an installed recipe: ``remove()`` puts the model (and pipeline) back exactly. A pipeline with
    two transformers (Wan 2.2's experts) gets one copy of the recipe on each (``recipes``, ``adapters``)."""

    def __init__(self, target, recipe, spec: BlockStack | None = None):
        models, self.pipe = _transformers(target)
        self.spec = spec or spec_for(models[0])
        first = recipe if isinstance(recipe, Recipe) else Recipe(recipe)
        self.recipes = [first] + [Recipe(str(first)) for _ in models[1:]]
        self.adapters, self._undo = [], []
        try:
            for model, r in zip(models, self.recipes):
                self.adapters.append(StackAdapter(model, self.spec))
                r.attach(self.adapters[-1])
        except Exception:
            self._close()
            raise
        if self.pipe is not None:
            self._drive_pipeline()

    @property
    def recipe(self) -> Recipe:
        """The recipe on the (first) transformer."""
        return self.recipes[0]

    @property
    def adapter(self) -> StackAdapter:
        return self.adapters[0]

    @property
    def model(self) -> StackAdapter:
        """The adapted (first) transformer (the block-stack contract); calling it calls the transformer."""
        return self.adapters[0]

    # --- driving the recipe by hand (bare transformers) ----------------------------------------------------------
    def reset(self, num_steps: int) -> None:
        for r in self.recipes:
            r.reset(num_steps)

    def begin_step(self, step: int, num_steps: int) -> None:
        for r in self.recipes:
            r.begin_step(step, num_steps)

    def set_timestep(self, t: float) -> None:
        for r in self.recipes:
            r.set_timestep(t)

    def begin_branch(self, branch: str) -> None:
        for r in self.recipes:
            r.begin_branch(branch)

    # --- driving it from a pipeline's own loop --------------------------------------------------------------------
    def _drive_pipeline(self) -> None:
        pipe = self.pipe
        self._timesteps, self._step, self._calls, self._cfg, self._fresh = None, 0, 0, False, set()
        cls = type(pipe)
        signature = inspect.signature(cls.__call__)
        handle = self

        def call(self_, *args, **kwargs):
            bound = signature.bind(self_, *args, **kwargs)
            bound.apply_defaults()
            handle._timesteps, handle._step, handle._calls = None, 0, 0
            handle._cfg = float(bound.arguments.get("guidance_scale") or 1.0) > 1.0
            scheduler = self_.scheduler
            step = scheduler.step

            def counted_step(*a, **kw):
                out = step(*a, **kw)
                handle._step, handle._calls = handle._step + 1, 0
                return out

            scheduler.step = counted_step
            try:
                return cls.__call__(self_, *args, **kwargs)
            finally:
                del scheduler.step

        pipe.__class__ = type(cls.__name__, (cls,), {"__call__": call, "__module__": cls.__module__})
        self._undo.append(lambda: setattr(pipe, "__class__", cls))
        for adapter, recipe in zip(self.adapters, self.recipes):
            hook = adapter.model.register_forward_pre_hook(lambda module, args, r=recipe: self._before_call(r))
            self._undo.append(hook.remove)

    def _before_call(self, recipe: Recipe) -> None:
        if self._timesteps is None:                     # first call of a generation: one host copy per generation
            self._timesteps = [float(t) for t in self.pipe.scheduler.timesteps.tolist()]
            self._fresh = set()
        num_steps = len(self._timesteps)
        if id(recipe) not in self._fresh:               # each expert's recipe is reset once per generation
            recipe.reset(num_steps)
            self._fresh.add(id(recipe))
        recipe.begin_step(min(self._step, num_steps - 1), num_steps)
        recipe.set_timestep(self._timesteps[min(self._step, num_steps - 1)])
        if self.spec.cfg == "separate":
            branch = ("cond", "uncond")[min(self._calls, 1)]
        else:
            cfg = getattr(self.pipe, "do_classifier_free_guidance", self._cfg)
            branch = self.spec.cfg if cfg else "cond"
        recipe.begin_branch(branch)
        self._calls += 1

    # --- life cycle ------------------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach the recipe and restore the transformer and pipeline exactly."""
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        self._close()

    def _close(self) -> None:
        for adapter, recipe in zip(self.adapters, self.recipes):
            recipe.detach(adapter)
            adapter.close()
        self.recipes = self.recipes[:0]              # a second remove() has nothing left to undo

    def __enter__(self) -> "Accelerated":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def accelerate(target, recipe, spec: BlockStack | None = None) -> Accelerated:
    """Install ``recipe`` (a ditkit recipe string, dict, list, YAML path or :class:`Recipe`) on a diffusers pipeline
    or transformer; ``spec`` declares a model ditkit has no adapter for (:class:`BlockStack`). Returns the handle
    that removes it. Adapted classes: ``sorted(ditkit.adapters.ADAPTERS)``."""
    return Accelerated(target, recipe, spec)


__all__ = ["accelerate", "Accelerated", "ADAPTERS"]

"""What every feature-caching method shares: the hook on the block stack, per-generation state, per-sample skips.

A :class:`CachingMethod` takes the ``stack`` hook point (``model.run_stack``) of any model implementing the
block-stack contract (:mod:`ditkit.models.stack`) and runs, skips, reuses or forecasts its blocks and branches. Its
state lives in ``self.states``, one entry per (branch, token shape, step count), created on first use and cleared by
``reset`` at every generation, so changing steps, resolution or batch between calls just works and the cond / uncond
branches never share a cache. Rows of a batch never mix: in a batched CFG call ("cond+uncond", first half
conditional) every row keeps its own tensors and ``self.row_branch`` says which branch each row belongs to, so
decisions are per sample and identical to generating the samples one at a time. State is created on the device and
dtype of the tokens; schedule decisions use the host step index and timestep (``set_timestep``).

Setting ``method.trace = []`` records, for every network call, ``(step, branch, computed)`` with ``computed`` a
per-row list of bools (whole-stack methods) or one bool (schedule-driven methods); off (None) by default, since a
per-row record costs a device-to-host copy per call.

Per-module caches (FORA, TaylorSeer, ToCa, :class:`ModuleCacheMethod`): the block loop with every branch output
(attention, MLP, temporal attention, ...) routed through the method, which computes it, reuses it or forecasts it.
Outputs are cached before gating and re-applied with the current step's gates (``Branch.add``), so a reused feature
still follows the timestep.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import torch

from ...hooks.method import Method
from ...hooks.points import HookPoints
from ...models.stack import Branch, check_stack, run_blocks

BRANCH_ROWS = {"cond": ("cond",), "uncond": ("uncond",), "cond+uncond": ("cond", "uncond"),
               "uncond+cond": ("uncond", "cond"),                # diffusers pipelines' batched CFG
               "cond+uncond/cond": ("cond",), "cond+uncond/uncond": ("uncond",),   # one half per CFG-parallel process
               "free": ("free",), "noised": ("noised",)}   # video history guidance's no-history / noised-history calls


def rel_l1(a: torch.Tensor, b: torch.Tensor, shard=None) -> torch.Tensor:
    """Per-sample relative L1 change mean|a - b| / mean|b| over all but the first dim: [N, ...] x2 -> [N]. Under
    sequence parallelism (``shard``: this process holds a part of the tokens) the sums cover every process's part,
    so all processes decide alike."""
    if shard is not None:
        return shard.token_sum((a - b).abs()) / shard.token_sum(b.abs()).clamp_min(1e-12)
    return (a - b).abs().flatten(1).mean(1) / b.abs().flatten(1).mean(1).clamp_min(1e-12)


@dataclasses.dataclass
class CachingMethod(Method):
    """Base class; subclasses implement ``new_state()`` and ``forward(state, tokens [N, T, D], c)``."""

    def __post_init__(self):
        super().__post_init__()
        self.model, self.trace = None, None
        self.reset(0)

    # --- life cycle -------------------------------------------------------------------------------------------
    def attach(self, model) -> None:
        check_stack(model)
        HookPoints.of(model).set("stack", self, model, "run_stack", self._run_stack)
        self.model = model

    def detach(self, model) -> None:
        super().detach(model)
        if self.model is model:
            self.model = None

    def reset(self, num_steps: int) -> None:
        self.num_steps, self.step, self.branch, self.t = num_steps, None, "cond", None
        self.states: dict[tuple, Any] = {}
        self.trace = None if self.trace is None else []

    def begin_step(self, step: int, num_steps: int) -> None:
        self.step, self.num_steps = step, num_steps

    def set_timestep(self, t: float) -> None:
        self.t = float(t)

    def begin_branch(self, branch: str) -> None:
        if branch not in BRANCH_ROWS:
            raise ValueError(f"unknown CFG branch {branch!r}; valid: {', '.join(BRANCH_ROWS)}")
        self.branch = branch

    # --- the hook ---------------------------------------------------------------------------------------------
    def _run_stack(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.step is None:
            raise RuntimeError(f"{self.name} needs the sampler's step index: generate through a pipeline, or call "
                               f"recipe.reset(num_steps), recipe.begin_step(i, num_steps) and recipe.set_timestep(t) "
                               f"around model calls")
        names = BRANCH_ROWS[self.branch]
        if tokens.shape[0] % len(names):
            raise ValueError(f"a {self.branch!r} call needs an even batch (first half cond), got {tokens.shape[0]}")
        per = tokens.shape[0] // len(names)
        self.row_branch = [n for n in names for _ in range(per)]
        self.layout = self.model.token_layout(tokens.shape[1])
        key = (self.branch, tuple(tokens.shape), self.num_steps)
        if key not in self.states:
            self.states[key] = self.new_state()
        return self.forward(self.states[key], tokens, c)

    def new_state(self) -> SimpleNamespace:
        """Fresh state for one (branch, shape, steps) key; ``residual`` is what ``run_rows`` uses."""
        return SimpleNamespace(residual=None)

    def forward(self, state, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- helpers for subclasses -------------------------------------------------------------------------------
    def timestep(self) -> float:
        """The host network timestep of the current call."""
        if self.t is None:
            raise RuntimeError(f"{self.name} needs the network timestep of each call: generate through a pipeline, "
                               f"or call recipe.set_timestep(t) before each model call")
        return self.t

    def record(self, computed) -> None:
        if self.trace is not None:
            self.trace.append((self.step, self.branch, computed.tolist() if torch.is_tensor(computed) else computed))

    def run(self, tokens: torch.Tensor, c: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks [start, stop) of the stack, computed normally."""
        return run_blocks(self.model.stack_blocks[start:stop], tokens, c, self.layout)

    def run_rows(self, state, tokens: torch.Tensor, c: torch.Tensor, compute: torch.Tensor, start: int = 0):
        """Whole-stack residual skip, per sample: rows where ``compute`` [N] is True run blocks [start, L) and
        refresh ``state.residual``; the others return tokens + their cached residual. Rows without a residual yet
        are computed. Deciding which rows to run needs the decisions on the host: one sync per call."""
        if state.residual is None:
            compute = torch.ones_like(compute)
        self.record(compute)
        if bool(compute.all()):
            out = self.run(tokens, c, start)
            state.residual = out - tokens
            return out
        out = tokens + state.residual
        idx = compute.nonzero().squeeze(1)
        if idx.numel():
            fresh = self.run(tokens[idx], c[idx], start)
            out[idx] = fresh
            state.residual[idx] = fresh - tokens[idx]
        return out


@dataclasses.dataclass
class ModuleCacheMethod(CachingMethod):
    """Subclasses give the schedule (``is_full``) and what a branch returns on other steps (``reuse``)."""

    def new_state(self) -> SimpleNamespace:
        return SimpleNamespace(cache={})

    def is_full(self, state) -> bool:
        """Whether the current step computes every branch (a host decision from the step index)."""
        raise NotImplementedError

    def compute(self, state, i: int, branch: Branch, x: torch.Tensor) -> torch.Tensor:
        """The branch output on a full step (block i, block input x [N, T, D])."""
        return branch(x)

    def computed(self, state, key: tuple[int, str], out: torch.Tensor) -> None:
        """Called with each branch output [N, T, D] on full steps (key = (block index, branch name))."""
        state.cache[key] = out

    def reuse(self, state, key: tuple[int, str], branch: Branch, x: torch.Tensor) -> torch.Tensor:
        """The branch output on a cached step; ``branch(x)`` would compute it from the block input x [N, T, D]."""
        return state.cache[key]

    def forward(self, state, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        full = not state.cache or self.is_full(state)
        self.record(full)
        x = tokens
        for i, block in enumerate(self.model.stack_blocks):
            for branch in block.branches(c, self.layout):
                key = (i, branch.name)
                if full:
                    out = self.compute(state, i, branch, x)
                    self.computed(state, key, out)
                else:
                    out = self.reuse(state, key, branch, x)
                x = branch.add(x, out)
        return x

"""Per-module caches (FORA, TaylorSeer, ToCa): the block loop with every branch output (attention, MLP, temporal
attention, ...) routed through the method, which computes it, reuses it or forecasts it. Outputs are cached before
gating and re-applied with the current step's gates (``Branch.add``), so a reused feature still follows the
timestep."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from ..models.stack import Branch
from .cache import CachingMethod


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

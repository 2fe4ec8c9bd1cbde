"""Per-module caches (FORA, TaylorSeer, ToCa): the block loop with every attention and MLP output routed through
the method, which computes it, reuses it or forecasts it. Outputs are cached before gating and re-applied with the
current step's adaLN gates, so a reused feature still follows the timestep."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Callable

import torch

from .cache import CachingMethod

BranchFn = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class ModuleCacheMethod(CachingMethod):
    """Subclasses give the schedule (``is_full``) and what a module returns on other steps (``reuse``)."""

    def new_state(self) -> SimpleNamespace:
        return SimpleNamespace(cache={})

    def is_full(self, state) -> bool:
        """Whether the current step computes every module."""
        raise NotImplementedError

    def computed(self, state, key: tuple[int, str], out: torch.Tensor) -> None:
        """Called with each module output [N, T, D] on full steps (key = (block index, "attn" | "mlp"))."""
        state.cache[key] = out

    def reuse(self, state, key: tuple[int, str], fn: BranchFn, x: torch.Tensor) -> torch.Tensor:
        """The module output on a cached step; ``fn(x)`` would compute it from the block input x [N, T, D]."""
        return state.cache[key]

    def full_attention(self, state, i: int, fn: BranchFn, x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    def forward(self, state, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        full = not state.cache or self.is_full(state)
        self.trace.append((self.step, self.branch, full))
        layout, x = self.model.layout, tokens
        for i, block in enumerate(self.model.blocks):
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(c)
            attn = lambda h: block.attn_branch(h, shift_msa, scale_msa, layout)
            mlp = lambda h: block.mlp_branch(h, shift_mlp, scale_mlp)
            for kind, fn, gate in (("attn", attn, gate_msa), ("mlp", mlp, gate_mlp)):
                if full:
                    out = self.full_attention(state, i, fn, x) if kind == "attn" else fn(x)
                    self.computed(state, (i, kind), out)
                else:
                    out = self.reuse(state, (i, kind), fn, x)
                x = x + gate.unsqueeze(1) * out
        return x

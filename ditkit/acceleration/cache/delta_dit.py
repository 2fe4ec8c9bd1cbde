"""Delta-DiT (Chen et al., 2024; no official code): cache the delta a contiguous span of blocks adds,
Delta = F_a..b(h) - h, and re-add it to the span's current input on cached steps.

Stage-adaptive: during the first ``switch`` fraction of the steps (layout phase) the span is the rear ``span``
fraction of the blocks, afterwards (detail phase) the front one. A full step every ``interval`` steps of each stage,
starting at its first step. Defaults: interval 3 (TaylorSeer's Delta-DiT baseline); span 0.5 and switch 0.5 are
ditkit's choices (the paper's values for PixArt-alpha are not in our reference)."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import ClassVar

from ...hooks.method import param, register
from .base import CachingMethod


@register
@dataclasses.dataclass
class DeltaDiT(CachingMethod):
    name: ClassVar[str] = "delta_dit"
    knob: ClassVar[tuple] = ("interval", (2, 3, 4, 5, 6, 8, 10, 12))
    variants: ClassVar[tuple] = ({"span": 0.75},)
    interval: int = param(3, low=1)
    span: float = param(0.5, low=0, high=1, low_open=True)
    switch: float = param(0.5, low=0, high=1)

    def new_state(self):
        return SimpleNamespace(delta=None, early=None)

    def forward(self, state, tokens, c):
        depth, boundary = len(self.model.stack_blocks), math.ceil(self.switch * self.num_steps)
        k = max(1, round(self.span * depth))
        early = self.step < boundary
        a, b = (depth - k, depth) if early else (0, k)
        since = self.step if early else self.step - boundary
        full = state.delta is None or state.early != early or since % self.interval == 0
        self.record(full)
        h = self.run(tokens, c, 0, a)
        if full:
            out = self.run(h, c, a, b)
            state.delta, state.early, h = out - h, early, out
        else:
            h = h + state.delta
        return self.run(h, c, b)

"""FirstBlockCache (ParaAttention; diffusers; xDiT): always run block 0; when its residual barely moved since the
last computed step, skip blocks 1..L-1 and reuse their cached residual.

Per call: r = B0(h) - h; compute the tail if rel_l1(r, r*) >= threshold (r* = block-0 residual at the sample's last
computed call), else return B0(h) + R_tail. Default threshold 0.08 (ParaAttention's FLUX recommendation; diffusers
uses 0.05). Decisions are per sample (the references average over the batch). A skipped call still costs 1/L."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import ClassVar

import torch

from ...hooks.method import param, register
from .base import CachingMethod, rel_l1


@register
@dataclasses.dataclass
class FirstBlockCache(CachingMethod):
    name: ClassVar[str] = "firstblockcache"
    knob: ClassVar[tuple] = ("threshold", (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.2, 0.3, 0.4, 0.6))
    threshold: float = param(0.08, low=0)

    def new_state(self):
        return SimpleNamespace(residual=None, first=None)

    def forward(self, state, tokens, c):
        h1 = self.run(tokens, c, 0, 1)
        r = h1 - tokens
        if state.first is None:
            compute = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
            state.first = r
        else:
            compute = rel_l1(r, state.first, self.layout.shard) >= self.threshold
            state.first = torch.where(compute.view(-1, *[1] * (r.dim() - 1)), r, state.first)
        return self.run_rows(state, h1, c, compute, start=1)

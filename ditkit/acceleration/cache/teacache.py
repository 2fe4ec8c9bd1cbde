"""TeaCache (Liu et al., CVPR 2025; ali-vilab/TeaCache): skip the whole block stack while the accumulated,
polynomial-rescaled change of the timestep-modulated input stays under a threshold, reusing the cached residual.

Indicator u = LN(h) * (1 + scale_msa) + shift_msa of block 0 (FLUX / HunyuanVideo style): the prepared input of
block 0's first modulated branch (its first branch if none is modulated). Per network call:
r = rel_l1(u, u_prev); acc += P(r); skip (h + R_cached) if acc < threshold, else compute, cache R and set acc = 0.
The first and last steps always compute; u_prev is refreshed on every call. P is the degree-4 polynomial fitted by
``ditkit calibrate --method teacache`` (pass the file as ``coefficients=FILE``; a dict recipe may give the five
numbers c4..c0); without one P(r) = r, the uncalibrated raw drift. Deviation: r and acc are per sample (the reference
averages over the batch), so a sample's schedule never depends on its batch-mates."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, ClassVar

import torch

from ...hooks.method import param, register
from .base import CachingMethod, rel_l1
from .calibration import indicator, load_calibration

IDENTITY = (0.0, 0.0, 0.0, 1.0, 0.0)


def polyval(coefficients, r: torch.Tensor) -> torch.Tensor:
    """c4 r^4 + c3 r^3 + c2 r^2 + c1 r + c0 (highest degree first, numpy's order)."""
    out = torch.zeros_like(r)
    for coef in coefficients:
        out = out * r + coef
    return out


def _check_coefficients(value) -> None:
    """A calibration file (str) or five numbers c4..c0."""
    numbers = isinstance(value, (list, tuple)) and len(value) == 5 and \
        all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    if not (isinstance(value, str) or numbers):
        raise ValueError("a calibration file from `ditkit calibrate --method teacache`, or five numbers c4..c0")


@register
@dataclasses.dataclass
class TeaCache(CachingMethod):
    name: ClassVar[str] = "teacache"
    knob: ClassVar[tuple] = ("threshold", (0.02, 0.04, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8))
    threshold: float = param(0.1, low=0)
    coefficients: Any = param(None, check=lambda v: _check_coefficients(v), example="FILE")

    def __post_init__(self):
        if isinstance(self.coefficients, str):
            self.poly = tuple(load_calibration(self.coefficients, "teacache")["coefficients"])
        else:
            self.poly = tuple(float(x) for x in (self.coefficients or IDENTITY))
        if len(self.poly) != 5:
            raise ValueError(f"teacache: coefficients must be 5 numbers (c4..c0), got {len(self.poly)}")
        super().__post_init__()

    def new_state(self):
        return SimpleNamespace(residual=None, prev=None, acc=None)

    def forward(self, state, tokens, c):
        u = indicator(self.model, tokens, c, self.layout)
        n = tokens.shape[0]
        if state.prev is None or self.step in (0, self.num_steps - 1):
            compute = torch.ones(n, dtype=torch.bool, device=tokens.device)
            acc = torch.zeros(n, device=tokens.device)
        else:
            acc = state.acc + polyval(self.poly, rel_l1(u, state.prev, self.layout.shard).float())
            compute = acc >= self.threshold
        state.prev, state.acc = u, torch.where(compute, 0.0, acc)
        return self.run_rows(state, tokens, c, compute)

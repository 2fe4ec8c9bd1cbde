"""MagCache (Ma et al., NeurIPS 2025; Zehong-Ma/MagCache): skip the whole block stack while the error predicted
from calibrated residual-magnitude ratios stays small.

Steps before round(retention * N) compute. Afterwards, per call: gamma *= ratio, k += 1, err += |1 - gamma|; skip
(reuse this branch's residual) if err < threshold and k <= max_skips, else compute and reset gamma = 1, k = err = 0.
Defaults: the reference Wan2.1 CLI (threshold 0.12, max_skips 2, retention 0.2). The ratios come from
``ditkit calibrate --method magcache`` (``ratios=FILE``), separately for the cond and uncond branches. Deviation:
the file stores the mean residual magnitude as a curve over the network timestep, and the ratio of a call is
m(t) / m(t_previous call), so one calibration serves any step count and sampler (the reference resamples a per-step
ratio array by nearest neighbour)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import torch

from ...hooks.method import param, register
from .base import CachingMethod
from .calibration import load_calibration


@register
@dataclasses.dataclass
class MagCache(CachingMethod):
    name: ClassVar[str] = "magcache"
    knob: ClassVar[tuple] = ("threshold", (0.06, 0.12, 0.2, 0.3, 0.45, 0.6, 0.8))
    variants: ClassVar[tuple] = ({"max_skips": 6, "retention": 0.1},)
    threshold: float = param(0.12, low=0)
    max_skips: int = param(2, low=0)
    retention: float = param(0.2, low=0, high=1)
    ratios: str | None = param(None, example="FILE")

    def __post_init__(self):
        if not self.ratios:
            raise ValueError("magcache needs calibrated magnitude ratios for the model: run `ditkit calibrate --model M "
                             "--method magcache --out FILE` (same sampler and CFG) and use magcache:ratios=FILE")
        self.curves = load_calibration(self.ratios, "magcache")["curves"]
        super().__post_init__()

    def new_state(self):
        return SimpleNamespace(residual=None, mag=None, gamma=None, skips=None, err=None)

    def _magnitude(self, device) -> torch.Tensor:
        """Calibrated residual magnitude at this call's (host) timestep, per row [N], on ``device``."""
        t, out = self.timestep(), {}
        for branch in dict.fromkeys(self.row_branch):
            if branch not in self.curves:
                raise ValueError(f"magcache: the calibration file {self.ratios} has no {branch!r} curve "
                                 f"(has {sorted(self.curves)}): calibrate with the CFG setting you sample with")
            out[branch] = float(np.interp(t, *self.curves[branch]))
        return torch.tensor([out[b] for b in self.row_branch], device=device)

    def forward(self, state, tokens, c):
        mag, n, device = self._magnitude(tokens.device), tokens.shape[0], tokens.device
        if state.mag is None or self.step < int(self.retention * self.num_steps + 0.5):
            compute = torch.ones(n, dtype=torch.bool, device=device)
            gamma, skips, err = (torch.full((n,), v, device=device) for v in (1.0, 0.0, 0.0))
        else:
            gamma = state.gamma * mag / state.mag
            skips = state.skips + 1
            err = state.err + (1 - gamma).abs()
            compute = (err >= self.threshold) | (skips > self.max_skips)
        state.mag = mag
        state.gamma = torch.where(compute, 1.0, gamma)
        state.skips = torch.where(compute, 0.0, skips)
        state.err = torch.where(compute, 0.0, err)
        return self.run_rows(state, tokens, c, compute)

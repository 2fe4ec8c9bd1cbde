"""TaylorSeer (Liu et al., ICCV 2025; Shenyi-Z/TaylorSeer): forecast each block's attention and MLP outputs with a
Taylor expansion whose derivatives are finite differences between full steps.

At a full step with position p the factors become D0 = f(p), D(j+1) = (Dj - Dj_prev) / (p - p_prev); a cached step
at position q returns sum_j Dj (q - p)^j / j!. Schedule: the first ``warmup`` steps are full, then one full step every
``interval`` steps. Defaults: the reference's DiT-XL/2 setting (interval 4, order 4, 2 full warm-up steps).
Deviation: the position is the network timestep of the call instead of the step index (identical for uniformly
spaced steps; also right for Heun's second call and non-uniform schedules), known on the host, so forecasting costs
no device-to-host sync. Memory: (order + 1) x (branches per block) x L x [N, T, D]."""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from ...hooks.method import param, register
from .base import ModuleCacheMethod


@register
@dataclasses.dataclass
class TaylorSeer(ModuleCacheMethod):
    name: ClassVar[str] = "taylorseer"
    knob: ClassVar[tuple] = ("interval", (2, 3, 4, 5, 6, 7, 8, 10, 12, 16))
    variants: ClassVar[tuple] = ({"order": 1}, {"order": 2})
    interval: int = param(4, low=1)
    order: int = param(4, low=0)
    warmup: int = param(2, low=1)

    def is_full(self, state) -> bool:
        return self.step < self.warmup or (self.step - self.warmup) % self.interval == 0

    def _position(self, like: torch.Tensor) -> torch.Tensor:
        """The call's timestep as a [N, 1, 1] tensor like ``like``, made from the host value once per call."""
        key = (self.timestep(), like.shape[0], like.dtype, like.device)
        if self._position_key != key:
            self._position_key, self._position_value = key, torch.full((like.shape[0], 1, 1), key[0], dtype=like.dtype,
                                                                       device=like.device)
        return self._position_value

    def reset(self, num_steps: int) -> None:
        super().reset(num_steps)
        self._position_key = None

    def computed(self, state, key, out):
        pos, prev = self._position(out), state.cache.get(key)
        factors = [out]
        if prev is not None:
            if self._position_key[0] == prev[2]:  # same timestep again (e.g. after a Heun corrector call)
                factors += prev[1][1:]
            else:
                dp = pos - prev[0]
                for d_prev in prev[1][:self.order]:
                    factors.append((factors[-1] - d_prev) / dp)
        state.cache[key] = (pos, factors, self._position_key[0])

    def reuse(self, state, key, branch, x):
        pos, factors, _ = state.cache[key]
        dx = self._position(x) - pos
        out = factors[0]
        for j, d in enumerate(factors[1:], start=1):
            out = out + d * (dx ** j / math.factorial(j))
        return out

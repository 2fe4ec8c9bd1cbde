"""DiTFastAttn-style window attention with residual sharing (WA-RS; Yuan et al., NeurIPS 2024), training-free.

On a *full* step a layer computes full attention O and its local-window attention W and stores R = O - W; on the
following steps it computes only the window attention and outputs W + R, R reused from the last full step. The
window is a sliding tile window (1D/2D/3D, as :mod:`ditkit.acceleration.attention.sta`). Full steps are the first
``warmup`` steps and every ``refresh``-th step (0, 4, 8, ... by default; DiTFastAttn chooses them per layer by
calibration, a fixed schedule here). Residuals are kept per (layer, CFG branch) and dropped at every reset; a
shape change forces a full step.

    pipe.set_recipe("fastattn:density=0.25,refresh=4")
"""
from __future__ import annotations

import dataclasses

from ...hooks.method import param, register
from ...models.attention import TokenLayout, sdpa
from .base import AttentionMethod, image_tokens, text_dense
from .sta import parse_tile, parse_windows, sliding_tile_attention, sta_density


@register
@dataclasses.dataclass
class WindowResidualAttention(AttentionMethod):
    name = "fastattn"
    knob = ("density", (0.5, 0.35, 0.25, 0.18, 0.12))
    tile: str = param("auto", check=parse_tile, example="4x8x8")
    window: str = param("auto", check=parse_windows, example="2x3x3")
    density: float = param(0.25, low=0, high=1, low_open=True)
    warmup: int = param(1, low=0)
    refresh: int = param(4, low=1, hint="steps from one full step to the next")

    def __post_init__(self):
        super().__post_init__()
        self._tile, self._windows = parse_tile(self.tile), parse_windows(self.window)
        self.residuals = {}

    def reset(self, num_steps: int) -> None:
        super().reset(num_steps)
        self.residuals = {}

    def window_attention(self, q, k, v, layout):
        """The local-window attention W (text kept dense in a joint call)."""
        return text_dense(self.window_kernel, q, k, v, layout)

    def window_kernel(self, q, k, v, layout, lse: bool = False):
        return sliding_tile_attention(q, k, v, layout, self._tile, self._windows, self.density, lse)

    def full_step(self) -> bool:
        return self.step < self.warmup or self.step % self.refresh == 0

    def prime(self, key, q, k, v, layout):
        """Full attention; stores the residual under ``key`` and returns the full output."""
        full = sdpa(q, k, v, layout)
        self.residuals[key] = full - self.window_attention(q, k, v, layout)
        return full

    def kernel(self, q, k, v, layout, key="bench"):
        """Window attention plus the stored residual (a WA-RS step)."""
        return self.window_attention(q, k, v, layout) + self.residuals[key]

    def layout_density(self, layout: TokenLayout) -> float:
        return sta_density(layout, self._tile, self._windows, self.density)

    def make_backend(self, layer: int, num_layers: int):
        def backend(q, k, v, layout):
            if image_tokens(q, layout) < self.min_tokens:
                return sdpa(q, k, v, layout)
            key = (layer, self.branch)
            r = self.residuals.get(key)
            if self.full_step() or r is None or r.shape != q.shape:
                return self.prime(key, q, k, v, layout)
            return self.kernel(q, k, v, layout, key)
        return backend

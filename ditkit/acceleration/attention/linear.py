"""Linear attention as a drop-in backend: ReLU-kernel linear attention (LiT / SANA) computed from a softmax model's
own q, k, v, O(N d^2) instead of O(N^2 d). Training-free use changes the function a lot (it is *not* softmax
attention); it is here for per-head/per-layer experiments and for timing. A trained linear DiT (``ditkit
distill-linear``) uses :class:`ditkit.models.attention.LinearAttention` instead.

    pipe.set_recipe("linear:layers=0-1")
"""
from __future__ import annotations

import dataclasses

from ...hooks.method import register
from ...models.attention import TokenLayout, linear_attention
from .base import AttentionMethod


@register
@dataclasses.dataclass
class LinearAttentionBackend(AttentionMethod):
    name = "linear"
    min_tokens: int = 0

    def kernel(self, q, k, v, layout):
        return linear_attention(q, k, v, layout)

    def layout_density(self, layout: TokenLayout) -> float:
        return 1.0

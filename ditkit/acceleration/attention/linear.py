"""Linear attention as a drop-in backend: ReLU-kernel linear attention (LiT / SANA) computed from a softmax model's
own q, k, v, O(N d^2) instead of O(N^2 d). Training-free use changes the function a lot (it is *not* softmax
attention: a softmax-trained model then draws noise), so attaching it is refused unless ``dropin=true`` asks for
it (per-head/per-layer experiments, timing). A trained linear DiT (``ditkit distill-linear``) uses
:class:`ditkit.models.attention.LinearAttention` instead and needs no recipe.

    pipe.set_recipe("linear:layers=0-1,dropin=true")
"""
from __future__ import annotations

import dataclasses

from ...hooks.method import param, register
from ...models.attention import TokenLayout, linear_attention
from .base import AttentionMethod


@register
@dataclasses.dataclass
class LinearAttentionBackend(AttentionMethod):
    name = "linear"
    joint = False     # no log-sum-exp: a joint text-image call cannot keep its text part dense
    min_tokens: int = param(0, low=0)
    dropin: bool = param(False, example="true", hint="true runs linear attention on softmax-trained weights anyway")

    def attach(self, model) -> None:
        if not self.dropin:
            raise ValueError("linear: drop-in linear attention on a model trained with softmax attention produces "
                             "noise, not images; a linear-attention model needs a student distilled with `ditkit "
                             "distill-linear` (it uses linear attention itself, no recipe needed); to run the drop-in "
                             "anyway (experiments, timing), use linear:dropin=true")
        super().attach(model)

    def kernel(self, q, k, v, layout):
        return linear_attention(q, k, v, layout)

    def layout_density(self, layout: TokenLayout) -> float:
        return 1.0

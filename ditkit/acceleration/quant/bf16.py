"""Recipe ``bf16``: every linear layer holds bfloat16 weights and multiplies in bfloat16 (inputs cast, outputs cast
back to float32); norms, attention and the residual stream stay float32. Halves weight memory; on CPUs without
AMX it is usually slower than float32."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...hooks.method import register
from .base import QuantMethod
from .layers import BF16Linear


@register
@dataclasses.dataclass
class BF16(QuantMethod):
    name: ClassVar[str] = "bf16"

    def make_layer(self, linear, act_absmax):
        return BF16Linear.from_linear(linear)

"""Recipes ``w8`` and ``w4``: weight-only quantization for memory. ``w8``: int8, one scale per output channel (or per
``group_size`` input channels). ``w4``: int4 packed two per byte, asymmetric, fp16 scale and offset per group of
``group_size`` input channels (default 64). Weights are dequantized to float32 for every call, so these save memory
(in a checkpoint written by ``ditkit quantize``), not time.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...hooks.method import param, register
from .base import QuantMethod
from .layers import WeightOnlyLinear


@register
@dataclasses.dataclass
class W8(QuantMethod):
    name: ClassVar[str] = "w8"
    bits: ClassVar[int] = 8
    group_size: int = param(0, low=0, example=64)

    def make_layer(self, linear, act_absmax):
        return WeightOnlyLinear.from_linear(linear, bits=self.bits, group_size=self.group_size)


@register
@dataclasses.dataclass
class W4(W8):
    name: ClassVar[str] = "w4"
    bits: ClassVar[int] = 4
    group_size: int = param(64, low=0)

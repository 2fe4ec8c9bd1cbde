"""Recipe ``w8a8`` (ViDiT-Q's W8A8): int8 weights per output channel (min-max, round-to-nearest) x int8 activations
quantized at run time per token, multiplied by integer kernels (``torch._int_mm``, int32 accumulation).

    w8a8                         plain dynamic W8A8, no calibration
    w8a8:smooth=0.5              SmoothQuant balancing s_j = max|X_j|^a / max|W_j|^(1-a), calibrated on trajectories
    w8a8:float_layers=2          mixed precision: the 2 layers whose quantization hurts the output most stay float
    w8a8:weight_bits=4,group_size=64,fake=true   a W4A8 group-wise simulation (fake-quant, in float, no speed-up)
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...hooks.method import param, register
from .base import QuantMethod
from .calibration import smooth_scales
from .layers import W8A8Linear, check_w8a8

BITS = "int8 kernels (and their fake-quant simulation) run 2..8-bit codes; for 16-bit use the 'bf16' recipe"


@register
@dataclasses.dataclass
class W8A8(QuantMethod):
    name: ClassVar[str] = "w8a8"
    variants: ClassVar[tuple] = ({}, {"act": "tensor"})
    # SmoothQuant migration strength alpha in [0, 1]; None = no balancing
    smooth: float | None = param(None, low=0, high=1, example=0.5, hint="the SmoothQuant migration strength")
    # dynamic activation scale per 'token' or per 'tensor' (per call)
    act: str = param("token", choices=("token", "tensor"), hint="activation scales per 'token' or per 'tensor' factor "
                                                                   "out of the integer matmul")
    weight_bits: int = param(8, low=2, high=8, hint=BITS)
    act_bits: int = param(8, low=2, high=8, hint=BITS)
    group_size: int = param(0, low=0, example=64)   # 0 = per output channel; > 0 only with fake=true
    fake: bool = param(False)       # simulate in float (labelled FAKE-QUANT) instead of integer kernels

    def __post_init__(self):
        super().__post_init__()
        check_w8a8(self.weight_bits, self.act_bits, self.act, self.group_size, self.fake)

    def uses_activation_stats(self) -> bool:
        return self.smooth is not None

    def make_layer(self, linear, act_absmax):
        # a layer the calibration trajectories never reached has no statistics: it is quantized unsmoothed
        smooth = self.smooth is not None and act_absmax is not None
        s = smooth_scales(act_absmax, linear.weight, self.smooth) if smooth else None
        return W8A8Linear.from_linear(linear, s, weight_bits=self.weight_bits, act_bits=self.act_bits, act=self.act,
                                      group_size=self.group_size, fake=self.fake)

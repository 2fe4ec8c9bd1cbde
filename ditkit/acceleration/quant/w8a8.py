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

from ...hooks.method import register
from .base import QuantMethod
from .calibration import smooth_scales
from .layers import W8A8Linear, check_w8a8


@register
@dataclasses.dataclass
class W8A8(QuantMethod):
    name: ClassVar[str] = "w8a8"
    smooth: float | None = None     # SmoothQuant migration strength alpha in [0, 1]; None = no balancing
    act: str = "token"              # dynamic activation scale per 'token' or per 'tensor' (per call)
    weight_bits: int = 8
    act_bits: int = 8
    group_size: int = 0             # 0 = per output channel; > 0 only with fake=true
    fake: bool = False              # simulate in float (labelled FAKE-QUANT) instead of integer kernels

    def __post_init__(self):
        super().__post_init__()
        check_w8a8(self.weight_bits, self.act_bits, self.act, self.group_size, self.fake)
        if self.smooth is not None and (isinstance(self.smooth, bool) or not isinstance(self.smooth, (int, float))
                                        or not 0 <= self.smooth <= 1):
            raise ValueError(f"w8a8: smooth={self.smooth!r} is the SmoothQuant migration strength, a number in [0, 1]")

    def uses_activation_stats(self) -> bool:
        return self.smooth is not None

    def make_layer(self, linear, act_absmax):
        # a layer the calibration trajectories never reached has no statistics: it is quantized unsmoothed
        smooth = self.smooth is not None and act_absmax is not None
        s = smooth_scales(act_absmax, linear.weight, self.smooth) if smooth else None
        return W8A8Linear.from_linear(linear, s, weight_bits=self.weight_bits, act_bits=self.act_bits, act=self.act,
                                      group_size=self.group_size, fake=self.fake)

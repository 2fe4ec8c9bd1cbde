"""Drop-in replacements for ``nn.Linear`` holding quantized weights (buffers, so they save to safetensors as-is).

Every layer maps x [..., K] -> [..., N] in float32 and has ``kind`` (its key in :data:`LAYER_KINDS`), ``config()``
(the constructor arguments a checkpoint needs to rebuild it empty), ``label`` (what it computes, for outputs) and
``weight``, the float [N, K] weight it effectively applies (integer layers: dequantized on access; their codes are
the buffer ``qweight``).

- :class:`W8A8Linear`: int8 weights (per output channel) x int8 activations quantized at run time, optional
  SmoothQuant input scaling. Per token (ViDiT-Q): symmetric codes multiplied with ``torch._int_mm`` (exact int32
  accumulation; CPU and CUDA). Per tensor: fbgemm's fused dynamic int8 linear (``quantized::linear_dynamic``,
  asymmetric uint8 activations; CPU). ``fake=True`` runs the same quantization in float (a simulation, no
  speed-up) and also allows group-wise weight scales, which an integer matmul cannot apply.
- :class:`WeightOnlyLinear`: int8 (symmetric) or packed int4 (asymmetric, group-wise fp16 scales) weights, dequantized
  to float32 for each call: saves memory, not time.
- :class:`BF16Linear`: bfloat16 weights and matmul, float32 in and out.
"""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from .qtensor import (dequantize_groups, dequantize_symmetric, fake_quantize_activation, pack_int4,
                      quantize_activation, quantize_weight_groups, quantize_weight_symmetric, unpack_int4)

ACT_GRANULARITIES = ("token", "tensor")


# torch.utils.flop_counter (used by `ditkit bench`) knows no formula for the integer kernels: count their
# multiply-adds like a float matmul's, so a quantized model shows the same arithmetic, done in int8.
@register_flop_formula(torch.ops.aten._int_mm)
def _int_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


@register_flop_formula(torch.ops.quantized.linear_dynamic)
def _linear_dynamic_flops(x_shape, packed, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x_shape) * out_shape[-1]


class QuantLinear(nn.Module):
    kind = ""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def config(self) -> dict:
        raise NotImplementedError

    @property
    def label(self) -> str:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.label}"

    def _copy_bias(self, linear: nn.Linear):
        if linear.bias is not None:
            self.bias.copy_(linear.bias.detach().float())

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.in_features).float()

    def _out(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class W8A8Linear(QuantLinear):
    """int8 weight codes ``qweight`` [N, K] with float32 scales [N, G] (G = 1: per output channel), dynamic int8
    activations.

    With ``smooth`` the layer holds W * diag(s) and multiplies its input by ``smooth_inv`` = 1/s [K] first."""
    kind = "w8a8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_bits: int = 8, act_bits: int = 8,
                 act: str = "token", group_size: int = 0, smooth: bool = False, fake: bool = False):
        super().__init__(in_features, out_features, bias)
        check_w8a8(weight_bits, act_bits, act, group_size, fake)
        self.weight_bits, self.act_bits, self.act, self.group_size, self.fake = weight_bits, act_bits, act, group_size, fake
        G = in_features // group_size if group_size else 1
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, G))
        self.register_buffer("smooth_inv", torch.ones(in_features) if smooth else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, smooth: torch.Tensor | None = None, **cfg) -> "W8A8Linear":
        """``smooth`` [K]: SmoothQuant scales s (weights multiplied, inputs divided by s)."""
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, smooth=smooth is not None, **cfg)
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth[None, :]
            m.smooth_inv.copy_(1.0 / smooth)
        q, scale = quantize_weight_symmetric(w, m.weight_bits, m.group_size)
        m.qweight.copy_(q)
        m.weight_scale.copy_(scale)
        m._copy_bias(linear)
        return m.to(linear.weight.device)

    def config(self) -> dict:
        return dict(weight_bits=self.weight_bits, act_bits=self.act_bits, act=self.act, group_size=self.group_size,
                    smooth=self.smooth_inv is not None, fake=self.fake)

    @property
    def kernel_act_bits(self) -> int:
        """Activation bits the integer kernel computes with (and the simulation simulates): fbgemm's per-tensor
        kernel drops to 7 bits on CPUs without VNNI."""
        return 7 if self.act == "tensor" and self.act_bits == 8 and not _has_vnni() else self.act_bits

    @property
    def label(self) -> str:
        w = f"W{self.weight_bits}" + (f" group {self.group_size}" if self.group_size else " per-channel")
        a = f"A{self.kernel_act_bits} dynamic per-{self.act}" + (", smoothed" if self.smooth_inv is not None else "")
        kernel = "int8 matmul (torch._int_mm)" if self.act == "token" else "fbgemm dynamic int8 linear"
        return f"{w} {a}, " + ("FAKE-QUANT simulation in float" if self.fake else kernel)

    @property
    def weight(self) -> torch.Tensor:
        w = dequantize_symmetric(self.qweight, self.weight_scale)
        return w if self.smooth_inv is None else w * self.smooth_inv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._flat(x)
        if self.smooth_inv is not None:
            h = h * self.smooth_inv
        if self.fake:
            h = fake_quantize_activation(h, self.kernel_act_bits, self.act)
            y = F.linear(h, dequantize_symmetric(self.qweight, self.weight_scale))
        elif self.act == "token":
            hq, s = quantize_activation(h, self.act_bits)
            y = torch._int_mm(hq, self.qweight.t()).float().mul_(s).mul_(self.weight_scale.view(1, -1))
        else:
            if h.device.type != "cpu":
                raise ValueError(f"act='tensor' runs fbgemm's CPU kernel; on {h.device.type} use act='token'")
            y = torch.ops.quantized.linear_dynamic(h.contiguous(), self._fbgemm_weight(), not _has_vnni())
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return self._out(y, x)

    def _fbgemm_weight(self):
        """The codes and bias prepacked for fbgemm, built on first use and again whenever ``qweight`` changes."""
        key = (self.qweight.data_ptr(), self.qweight._version)
        if self.__dict__.get("_packed_key") != key:
            zeros = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():         # quantized tensors are deprecated (kept: fbgemm needs them)
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(self.qweight, self.weight_scale.view(-1).double(), zeros, 0)
                self._packed = torch.ops.quantized.linear_prepack(qw, self.bias)
            self._packed_key = key
        return self._packed


@functools.cache
def _has_vnni() -> bool:
    """x86 VNNI (int8 dot products into int32): without it fbgemm's uint8 x int8 pairs can saturate int16, so the
    per-tensor kernel then uses 7-bit activations (``reduce_range``), as PyTorch's own dynamic quantization does."""
    try:
        return "vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def check_w8a8(weight_bits: int, act_bits: int, act: str, group_size: int, fake: bool) -> None:
    """Raise a ValueError naming what to use instead for settings the integer kernels cannot run."""
    for what, bits in (("weight_bits", weight_bits), ("act_bits", act_bits)):
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"{what}={bits!r}: int8 kernels (and their fake-quant simulation) run 2..8-bit codes; "
                             f"for 16-bit use the 'bf16' recipe")
    if act not in ACT_GRANULARITIES:
        raise ValueError(f"act={act!r}: activation scales must be per 'token' or per 'tensor' so they factor out of "
                         f"the integer matmul; valid: {', '.join(ACT_GRANULARITIES)}")
    if act == "tensor" and act_bits != 8 and not fake:
        raise ValueError(f"act_bits={act_bits} with act='tensor': fbgemm's per-tensor kernel takes 8-bit activations "
                         f"only; use act='token' (any 2..8 bits) or fake=true")
    if not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size={group_size!r} must be 0 (per output channel) or a positive group size")
    if group_size and not fake:
        raise ValueError(f"group_size={group_size}: group-wise weight scales vary along the reduction dimension and "
                         f"cannot be applied after an int8 matmul, so no kernel here runs them; use group_size=0 "
                         f"(per output channel), fake=true to simulate, or the weight-only 'w4' recipe")


class WeightOnlyLinear(QuantLinear):
    """Weight-only storage in ``qweight``. bits 8: int8 codes [N, K], float32 scales [N, G], symmetric. bits 4: packed
    uint8 [N, K/2] (two codes per byte), fp16 scale and low [N, G], asymmetric. G = K / group_size (1 if group_size 0)."""
    kind = "weight_only"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8, group_size: int = 0):
        super().__init__(in_features, out_features, bias)
        if bits not in (4, 8):
            raise ValueError(f"weight-only bits={bits!r}: stored widths are 8 (int8) and 4 (two codes per byte); "
                             f"for other widths simulate with 'w8a8:weight_bits={bits},fake=true'")
        if not isinstance(group_size, int) or group_size < 0 or (group_size and in_features % group_size):
            raise ValueError(f"group_size={group_size!r} does not divide in_features={in_features}; use 0 (per output "
                             f"channel) or a divisor of every quantized layer's input width")
        if bits == 4 and (group_size or in_features) % 2:
            raise ValueError(f"int4 packing needs an even group size / input width, got {group_size or in_features}")
        self.bits, self.group_size = bits, group_size
        G = in_features // group_size if group_size else 1
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("weight_scale", torch.ones(out_features, G))
            self.register_buffer("weight_low", None)
        else:
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("weight_scale", torch.ones(out_features, G, dtype=torch.float16))
            self.register_buffer("weight_low", torch.zeros(out_features, G, dtype=torch.float16))

    @classmethod
    def from_linear(cls, linear: nn.Linear, **cfg) -> "WeightOnlyLinear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, **cfg)
        if m.bits == 8:
            q, scale = quantize_weight_symmetric(linear.weight, 8, m.group_size)
        else:
            codes, scale, low = quantize_weight_groups(linear.weight, 4, m.group_size or m.in_features)
            q = pack_int4(codes)
            m.weight_low.copy_(low)
        m.qweight.copy_(q)
        m.weight_scale.copy_(scale)
        m._copy_bias(linear)
        return m.to(linear.weight.device)

    def config(self) -> dict:
        return dict(bits=self.bits, group_size=self.group_size)

    @property
    def label(self) -> str:
        g = f"group {self.group_size}" if self.group_size else "per-channel"
        return f"W{self.bits} {g} weight-only, dequantized to float32 per call"

    @property
    def weight(self) -> torch.Tensor:
        """float32 [N, K], dequantized."""
        if self.bits == 8:
            return dequantize_symmetric(self.qweight, self.weight_scale)
        return dequantize_groups(unpack_int4(self.qweight), self.weight_scale, self.weight_low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(F.linear(self._flat(x), self.weight), x)


class BF16Linear(QuantLinear):
    """bfloat16 weight [N, K] and bias; inputs cast to bfloat16, outputs back to the input dtype."""
    kind = "bf16"

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.bfloat16))
        if bias:
            self.bias = self.bias.bfloat16()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "BF16Linear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        m.weight.copy_(linear.weight.detach())
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m.to(linear.weight.device)

    def config(self) -> dict:
        return {}

    @property
    def label(self) -> str:
        return "bf16 weights and matmul"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(torch.bfloat16), self.weight, self.bias)
        return y.to(x.dtype)


LAYER_KINDS: dict[str, type[QuantLinear]] = {c.kind: c for c in (W8A8Linear, WeightOnlyLinear, BF16Linear)}


def empty_layer(kind: str, in_features: int, out_features: int, bias: bool, config: dict) -> QuantLinear:
    """An uninitialised layer of ``kind`` to load a checkpoint's buffers into."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown quantized layer kind {kind!r}; valid: {', '.join(LAYER_KINDS)}")
    return LAYER_KINDS[kind](in_features, out_features, bias, **config)

"""Integer quantization of tensors: symmetric per-channel / per-token int8, group-wise asymmetric int4 with two values
packed per byte. Plain torch, device-agnostic.

Conventions: a weight is [N out, K in]; an activation is [M rows (tokens), K]. A symmetric b-bit code lies in
[-qmax, qmax], qmax = 2^(b-1) - 1 (int8: +-127), and dequantizes as q * scale. A group-wise asymmetric b-bit code
lies in [0, 2^b - 1] and dequantizes as q * scale + low, with one (scale, low) pair per group of ``group_size``
consecutive input channels of an output row.
"""
from __future__ import annotations

import torch

EPS = 1e-12


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def quantize_weight_symmetric(w: torch.Tensor, bits: int = 8, group_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (codes int8 [N, K] in [-qmax, qmax], scale float32 [N, G]); round-to-nearest, min-max range.

    ``group_size`` 0 is one scale per output channel (G = 1), otherwise one per group of input channels (G = K/g)."""
    N, K = w.shape
    g = group_size or K
    if K % g:
        raise ValueError(f"group_size {group_size} does not divide the {K} input channels")
    wg = w.detach().float().reshape(N, K // g, g)
    scale = wg.abs().amax(dim=-1).clamp_min(EPS) / qmax(bits)
    q = torch.round(wg / scale[..., None]).clamp_(-qmax(bits), qmax(bits)).to(torch.int8)
    return q.reshape(N, K), scale


def dequantize_symmetric(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """codes [N, K], scale [N, G] -> float32 [N, K]."""
    N, K = q.shape
    G = scale.shape[1]
    return (q.reshape(N, G, K // G).float() * scale.float()[..., None]).reshape(N, K)


def quantize_weight_groups(w: torch.Tensor, bits: int, group_size: int,
                           scale_dtype=torch.float16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] -> (codes uint8 [N, K] in [0, 2^bits - 1], scale [N, K/g], low [N, K/g]) in ``scale_dtype``.

    Asymmetric min-max per group; the codes are computed with the rounded (stored) scale and low, so dequantizing
    with the stored values is exactly what was optimised."""
    N, K = w.shape
    if group_size <= 0 or K % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {K} input channels")
    g = w.detach().float().reshape(N, K // group_size, group_size)
    low = g.amin(dim=-1).to(scale_dtype)
    scale = ((g.amax(dim=-1) - low.float()) / (2 ** bits - 1)).clamp_min(1e-8).to(scale_dtype)
    q = torch.round((g - low.float()[..., None]) / scale.float()[..., None]).clamp_(0, 2 ** bits - 1)
    return q.to(torch.uint8).reshape(N, K), scale, low


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """codes [N, K] (any integer dtype), scale / low [N, K/g] -> float32 [N, K]."""
    N, K = q.shape
    G = scale.shape[1]
    w = q.reshape(N, G, K // G).float() * scale.float()[..., None] + low.float()[..., None]
    return w.reshape(N, K)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., K] in [0, 15], K even -> uint8 [..., K/2]; element 2i in the low nibble, 2i+1 in the high."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of channels, got {q.shape[-1]}")
    if q.dtype != torch.uint8 or int(q.max()) > 15:
        raise ValueError("int4 packing needs uint8 codes in [0, 15]")
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> uint8 codes [..., K] in [0, 15] (inverse of :func:`pack_int4`)."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)


def quantize_activation(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token quantization (ViDiT-Q) of x [M, K]: (codes int8 [M, K], scale float32 [M, 1])."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(EPS).div_(qmax(bits))
    return x.div(scale).round_().to(torch.int8), scale


def fake_quantize_activation(x: torch.Tensor, bits: int = 8, granularity: str = "token") -> torch.Tensor:
    """Quantize-dequantize x [M, K] in float. ``token``: exactly the rounding of :func:`quantize_activation`.
    ``tensor``: one asymmetric range [min(x, 0), max(x, 0)] over the whole call with 2^bits levels and an integer
    zero point, as fbgemm's dynamic linear chooses it."""
    if granularity == "token":
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(EPS).div_(qmax(bits))
        return x.div(scale).round_().mul_(scale)
    levels = 2 ** bits - 1
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = ((hi - lo) / levels).clamp_min(EPS)
    zero = torch.round(-lo / scale).clamp(0, levels)
    return (torch.round(x / scale) + zero).clamp_(0, levels).sub_(zero).mul_(scale)

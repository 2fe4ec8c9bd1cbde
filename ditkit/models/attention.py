"""The single attention entry point of every ditkit model.

Models never call SDPA directly: they call :func:`attention` with the token layout of the sequence, so that an
attention backend (sparse, linear, sequence-parallel, ...) can be installed per layer by a recipe without touching
model code. A backend is any callable ``fn(q, k, v, layout) -> out`` with q, k, v of shape [B, heads, N, head_dim].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenLayout:
    """How the N tokens of a sequence are arranged: frames x height x width (row-major, frames outermost)."""

    frames: int
    height: int
    width: int

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
    """Dense softmax attention, the reference backend. q, k, v: [B, heads, N, head_dim]."""
    return F.scaled_dot_product_attention(q, k, v)


class Attention(torch.nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm layout: keys ``qkv`` and ``proj``).

    ``backend`` is None for dense SDPA; acceleration recipes set it on individual layers.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = torch.nn.Linear(dim, dim)
        self.backend = None

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                   # each [B, heads, N, head_dim]
        out = (self.backend or sdpa)(q, k, v, layout)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))

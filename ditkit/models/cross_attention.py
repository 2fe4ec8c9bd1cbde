"""Cross-attention to text, shared by the text-conditioned models (PixArt, the captioned VideoDiT).

Tokens x [N, T, D] attend to projected text states [N, L, D] where the text mask [N, L] is True (PixArt's block:
queries from the unnormalised tokens, output projection zero-initialised by the models). Keys and values depend
only on the text, so :class:`TextKeys` keeps them per text tensor and computes them once per generation and CFG
branch, not at every sampler step.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CrossAttention(nn.Module):
    """Tokens x [N, T, D] attend to text states [N, L, D] where ``mask`` [N, L] is True."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def keys_values(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text [N, L, D] -> k, v [N, heads, L, head_dim]."""
        N, L, _ = text.shape
        return tuple(self.kv(text).view(N, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        q = self.q(x).view(N, T, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(N, T, D))


class CaptionProjection(nn.Module):
    """Text states [N, L, C_text] -> [N, L, D]: linear, tanh-GELU, linear (PixArt's caption projection)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(in_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TextKeys:
    """``project(text)``, text [*B, L, C_text] (B: batch dims, e.g. [N] or per frame [N, F]) -> (projected text
    [*B, L, D], ``keys(cross)`` -> that cross-attention's k, v [*B, heads, L, head_dim]). Outside autograd both are
    kept while the same text tensor comes back (a sampler passes one per generation and CFG branch; the last
    ``keep`` are kept; an in-place change of a kept tensor is not seen)."""

    def __init__(self, projection: nn.Module, keep: int = 4):
        self.projection, self.keep = projection, keep
        self.entries: list[tuple] = []           # (text tensor, projected, {cross id: (k, v)}), newest last

    def project(self, text: torch.Tensor):
        if torch.is_grad_enabled():
            projected = self.projection(text)
            return projected, lambda cross: _keys_values(cross, projected)
        entry = next((e for e in self.entries if e[0] is text), None)
        if entry is None:
            entry = (text, self.projection(text), {})
            self.entries = self.entries[-(self.keep - 1):] + [entry]
        _, projected, held = entry

        def keys(cross):
            if id(cross) not in held:
                held[id(cross)] = _keys_values(cross, projected)
            return held[id(cross)]
        return projected, keys


def _keys_values(cross: CrossAttention, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """projected [*B, L, D] -> k, v [*B, heads, L, head_dim]."""
    batch = projected.shape[:-2]
    k, v = cross.keys_values(projected.reshape(-1, *projected.shape[-2:]))
    return k.view(*batch, *k.shape[1:]), v.view(*batch, *v.shape[1:])

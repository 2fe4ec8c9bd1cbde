"""Rotary position embedding (RoPE) over a (frames, height, width) token grid.

The head dimension d is split into three bands, one 1D RoPE per axis (theta = 1e4), CogVideoX-style:
t : h : w = d/4 : 3d/8 : 3d/8 (16 : 24 : 24 for d = 64). Channel pairs (2i, 2i+1) are rotated together. Because each
band rotates by angle (position * frequency), q . k depends only on the position *difference* of q and k on every axis.
"""
from __future__ import annotations

from functools import lru_cache

import torch


def cogvideox_split(head_dim: int) -> tuple[int, int, int]:
    """Band widths (t, h, w), each even, t ~ d/4 and h = w ~ 3d/8."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    t = 2 * round(head_dim / 8)
    h = 2 * ((head_dim - t) // 4)
    return t, h, head_dim - t - h


def _angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """[N] positions -> [N, dim/2] angles pos * theta^(-2i/dim), float64."""
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return positions.double()[:, None] * freqs[None]


@lru_cache(maxsize=32)
def _tables(grid: tuple[int, int, int], split: tuple[int, int, int], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [F*H*W, d/2] for tokens ordered frames outermost, then rows, then columns."""
    f, h, w = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    ang = torch.cat([_angles(p.flatten(), d, theta) for p, d in zip((f, h, w), split) if d], dim=1)
    return ang.cos().float(), ang.sin().float()


class Rotary:
    """Callable applying RoPE to q or k [B, heads, N, d] with N = F*H*W tokens of ``grid`` (frames, height, width);
    ``split`` gives the band widths (t, h, w) summing to d (default: CogVideoX's). The cos/sin tables [N, d/2] are
    kept per (device, dtype) of the inputs met, so a call copies nothing: build one Rotary per grid and reuse it."""

    def __init__(self, head_dim: int, grid: tuple[int, int, int], split: tuple[int, int, int] | None = None,
                 theta: float = 1e4):
        split = split or cogvideox_split(head_dim)
        if sum(split) != head_dim or any(d % 2 for d in split):
            raise ValueError(f"RoPE bands {split} must be even and sum to the head dimension {head_dim}")
        self.cos, self.sin = _tables(tuple(grid), tuple(split), theta)
        self._copies = {(self.cos.device, self.cos.dtype): (self.cos, self.sin)}
        self._parts: dict[tuple[int, int], Rotary] = {}

    def part(self, start: int, stop: int) -> "Rotary":
        """The embedding of tokens [start, stop) of the grid alone (the part of a sequence one process holds under
        sequence parallelism); built once per range."""
        if (start, stop) not in self._parts:
            part = object.__new__(Rotary)
            part.cos, part.sin = self.cos[start:stop], self.sin[start:stop]
            part._copies, part._parts = {(part.cos.device, part.cos.dtype): (part.cos, part.sin)}, {}
            self._parts[(start, stop)] = part
        return self._parts[(start, stop)]

    def tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, d/2] on ``device`` in ``dtype`` (converted once, then cached)."""
        key = (device, dtype)
        if key not in self._copies:
            self._copies[key] = (self.cos.to(device, dtype), self.sin.to(device, dtype))
        return self._copies[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] != self.cos.shape[0]:
            raise ValueError(f"RoPE table has {self.cos.shape[0]} positions, got {x.shape[-2]} tokens")
        cos, sin = self.tables(x.device, x.dtype)
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)               # [..., N, d/2] each
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

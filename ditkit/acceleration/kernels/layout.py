"""Token-order transforms for sparse attention. Each maps [B, heads, N, d] to [B, heads, N, d] and has an exact
inverse, so a backend can permute q, k, v, attend to contiguous blocks and un-permute its output.

- tiles: frame-major raster order -> 3D tiles (tf, th, tw) contiguous, tiles in raster order over the tile grid.
- temporal: frame-major (frame outer, position inner) -> token-major (position outer, frame inner), so the same
  spatial position in consecutive frames is contiguous (Sparse VideoGen's layout transformation).
"""
from __future__ import annotations

import torch

from ...models.attention import TokenLayout


def fit_tile(layout: TokenLayout, tile: tuple[int, int, int]) -> tuple[int, int, int]:
    """The largest tile <= ``tile`` (per dim) whose sides divide the layout's frames, height and width."""
    return tuple(max(d for d in range(1, min(t, n) + 1) if n % d == 0) for t, n in zip(tile, layout.shape))


def auto_tile(layout: TokenLayout, tile: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """``tile`` (or the default: 4x8x8 = 256 tokens for video, 1x16x16 for images) fitted to the layout. Tiles of
    >= 256 tokens keep the CPU SDPA kernel efficient (BENCHMARKS.md, attention section)."""
    return fit_tile(layout, tile or ((4, 8, 8) if layout.frames > 1 else (1, 16, 16)))


def tile_grid(layout: TokenLayout, tile: tuple[int, int, int]) -> tuple[int, int, int]:
    if any(n % t for n, t in zip(layout.shape, tile)):
        raise ValueError(f"tile {tile} does not divide the layout {layout.shape}; use fit_tile")
    return tuple(n // t for n, t in zip(layout.shape, tile))


def to_tiles(x: torch.Tensor, layout: TokenLayout, tile: tuple[int, int, int]) -> torch.Tensor:
    """Frame-major [B, h, N, d] -> tile-major [B, h, N, d]."""
    (gf, gh, gw), (a, b, c) = tile_grid(layout, tile), tile
    B, H, N, D = x.shape
    x = x.reshape(B, H, gf, a, gh, b, gw, c, D).permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
    return x.reshape(B, H, N, D)


def from_tiles(x: torch.Tensor, layout: TokenLayout, tile: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`to_tiles`."""
    (gf, gh, gw), (a, b, c) = tile_grid(layout, tile), tile
    B, H, N, D = x.shape
    x = x.reshape(B, H, gf, gh, gw, a, b, c, D).permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
    return x.reshape(B, H, N, D)


def from_tiles_attention(got, layout: TokenLayout, tile: tuple[int, int, int]):
    """:func:`from_tiles` of a kernel's result: out [B, h, N, d], or (out, log-sum-exp [B, h, N])."""
    if isinstance(got, tuple):
        return from_tiles(got[0], layout, tile), from_tiles(got[1][..., None], layout, tile)[..., 0]
    return from_tiles(got, layout, tile)


def to_temporal(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Frame-major [B, h, F*S, d] -> token-major [B, h, S*F, d] (S = height * width)."""
    B, H, N, D = x.shape
    return x.reshape(B, H, layout.frames, N // layout.frames, D).transpose(2, 3).reshape(B, H, N, D)


def from_temporal(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Inverse of :func:`to_temporal`."""
    B, H, N, D = x.shape
    return x.reshape(B, H, N // layout.frames, layout.frames, D).transpose(2, 3).reshape(B, H, N, D)

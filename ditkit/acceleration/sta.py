"""Sliding Tile Attention (STA, Zhang et al., ICML 2025), 2D and 3D, training-free.

Tokens are regrouped into (tf, th, tw) tiles; each query tile attends to the (wf, wh, ww) window of tiles around it,
the window's centre clamped inside the tile grid, so every (query tile, key tile) pair is fully dense or empty and
the whole call is block-sparse attention over tiles (4-D SDPA on gathered tiles). Windows can differ per head
(``window="3x3x3;1x5x5;..."``, one per head); ``window="auto"`` takes the largest window whose density does not
exceed ``density``. The first ``full_steps`` fraction of sampling steps uses full attention (STA: 12 of 50).
Tiles are ``tile`` (default 4x8x8 for video, 1x16x16 for images; STA uses 6x8x8) shrunk per dimension to divide
the layout.

    pipe.set_recipe("sta:window=2x3x3")          # or "sta:density=0.25" / per head "sta:window=1x4x4;4x2x2"
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..attention.blocksparse import block_sparse_attention, window_index
from ..attention.layout import auto_tile, from_tiles, tile_grid, to_tiles
from ..attention.method import AttentionMethod, dense_fraction, parse_triples
from ..models.attention import TokenLayout
from .registry import register


def auto_window(grid: tuple[int, int, int], density: float) -> tuple[int, int, int]:
    """Shrink the full grid one tile at a time along its largest window side until prod(w)/prod(grid) <= density."""
    w = list(grid)
    while math.prod(w) > density * math.prod(grid) and max(w) > 1:
        w[w.index(max(w))] -= 1
    return tuple(w)


def sliding_tile_attention(q, k, v, layout: TokenLayout | None, tile=None, windows=None,
                           density: float = 0.25) -> torch.Tensor:
    """q, k, v [B, h, N, d] frame-major; ``windows``: one (wf, wh, ww) for all heads, a list of one per head, or None
    (auto from ``density``). Returns [B, h, N, d]."""
    layout = layout or TokenLayout(1, 1, q.shape[2])
    tile = auto_tile(layout, tile)
    grid = tile_grid(layout, tile)
    H = q.shape[1]
    windows = windows or [auto_window(grid, density)]
    if len(windows) not in (1, H):
        raise ValueError(f"give one STA window or one per head ({H}), got {len(windows)}")
    qt, kt, vt = (to_tiles(t, layout, tile) for t in (q, k, v))
    T = math.prod(tile)
    if len(set(windows)) == 1:
        out = block_sparse_attention(qt, kt, vt, window_index(grid, windows[0], q.device)[None, None], T)
    else:
        out = torch.empty_like(qt)
        for w in sorted(set(windows)):
            heads = torch.tensor([h for h in range(H) if windows[h] == w], device=q.device)
            sel = lambda t: t.index_select(1, heads)
            out[:, heads] = block_sparse_attention(sel(qt), sel(kt), sel(vt), window_index(grid, w, q.device)[None, None], T)
    return from_tiles(out, layout, tile)


def sta_density(layout: TokenLayout, tile=None, windows=None, density: float = 0.25) -> float:
    """Fraction of query-key pairs computed (mean over heads)."""
    grid = tile_grid(layout, auto_tile(layout, tile))
    windows = windows or [auto_window(grid, density)]
    return sum(math.prod(min(w, g) for w, g in zip(win, grid)) for win in windows) / len(windows) / math.prod(grid)


@register
@dataclasses.dataclass
class SlidingTileAttention(AttentionMethod):
    name = "sta"
    tile: str = "auto"
    window: str = "auto"
    density: float = 0.25
    full_steps: float = 0.24

    def kernel(self, q, k, v, layout):
        windows = parse_triples(self.window)
        return sliding_tile_attention(q, k, v, layout, parse_triples(self.tile, [None])[0], windows, self.density)

    def layout_density(self, layout: TokenLayout) -> float:
        return sta_density(layout, parse_triples(self.tile, [None])[0], parse_triples(self.window), self.density)

    def dense(self, layer: int, num_layers: int) -> bool:
        return dense_fraction(self.step, self.num_steps, self.full_steps)

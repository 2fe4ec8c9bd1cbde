"""Sliding Tile Attention (STA, Zhang et al., ICML 2025), 2D and 3D, training-free.

Tokens are regrouped into (tf, th, tw) tiles; each query tile attends to the (wf, wh, ww) window of tiles around it,
the window's centre clamped inside the tile grid, so every (query tile, key tile) pair is fully dense or empty and
the whole call is block-sparse attention over tiles (4-D SDPA on gathered tiles). Windows can differ per head
(``window="3x3x3;1x5x5;..."``, one per head); ``window="auto"`` takes the largest window whose density does not
exceed ``density``; ``window="search"`` runs STA's training-free mask search online: at a layer's first sparse
call of a generation every window shape of that many tiles is scored per head on sampled query rows (MSE vs exact
attention) and the best is kept for the rest of the generation. The first ``full_steps`` fraction of sampling
steps uses full attention (STA: 12 of 50).
Tiles are ``tile`` (default 4x8x8 for video, 1x16x16 for images; STA uses 6x8x8) shrunk per dimension to divide
the layout. Recipe strings are parsed once, at construction; the tile plan (fitted tile, grid, block patterns on the
device) is built once per layout, windows and device (:func:`tile_plan`).

    pipe.set_recipe("sta:window=2x3x3")   # or "sta:density=0.25", "sta:window=search", per head "sta:window=1x4x4;4x2x2"
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import torch

from ...hooks.method import param, register
from ...models.attention import TokenLayout, sdpa
from ..kernels.blocksparse import BlockPattern, block_sparse_attention, window_index
from ..kernels.layout import auto_tile, from_tiles_attention, tile_grid, to_tiles
from .base import AttentionMethod, dense_fraction, image_tokens, parse_triples, text_dense


def auto_window(grid: tuple[int, int, int], density: float) -> tuple[int, int, int]:
    """Shrink the full grid one tile at a time along its largest window side until prod(w)/prod(grid) <= density."""
    w = list(grid)
    while math.prod(w) > density * math.prod(grid) and max(w) > 1:
        w[w.index(max(w))] -= 1
    return tuple(w)


def _triples(spec, what: str, expected: str):
    """:func:`parse_triples` with a clear error: a list of positive (f, h, w), or None for 'auto'."""
    try:
        out = parse_triples(spec)
    except ValueError:
        out = []
    if out is not None and (not out or any(d < 1 for t in out for d in t)):
        raise ValueError(f"{what}={spec!r} is not valid: expected {expected}")
    return out


def parse_tile(spec) -> tuple[int, int, int] | None:
    """'auto' | 'FxHxW' | 'HxW' (tokens) -> (tf, th, tw), or None (auto)."""
    out = _triples(spec, "tile", "'auto' or one tile FxHxW or HxW of positive integers (tokens), e.g. 4x8x8")
    if out is not None and len(out) != 1:
        raise ValueError(f"tile={spec!r} is not valid: expected one tile FxHxW or HxW, got {len(out)}")
    return out[0] if out else None


def parse_windows(spec, search: bool = False) -> tuple | str | None:
    """'auto' | 'FxHxW' | 'FxHxW;FxHxW;...' (tiles, one per head) [| 'search'] -> tuple of (wf, wh, ww), 'search',
    or None (auto)."""
    if search and spec == "search":
        return spec
    expected = ("'auto'" + (", 'search'" if search else "") + " or windows FxHxW or HxW of positive integers "
                "(tiles), one for all heads or one per head separated by ';', e.g. 2x3x3 or 1x4x4;4x2x2")
    out = _triples(spec, "window", expected)
    return tuple(out) if out is not None else None


class TilePlan(NamedTuple):
    """The fixed part of an STA call on one layout: the fitted tile, its grid, tokens per tile and one
    (heads, block pattern) per group of heads whose windows have the same number of tiles (heads None: all)."""
    tile: tuple[int, int, int]
    grid: tuple[int, int, int]
    tokens: int
    groups: tuple[tuple[torch.Tensor | None, BlockPattern], ...]


@functools.lru_cache(maxsize=64)
def tile_plan(layout: TokenLayout, tile: tuple | None, windows: tuple | None, density: float,
              device: torch.device) -> TilePlan:
    """The :class:`TilePlan` of ``windows`` (one, one per head, or None: auto from ``density``), built once per
    (layout, tile, windows, density, device); index tensors on ``device``."""
    tile = auto_tile(layout, tile)
    grid = tile_grid(layout, tile)
    windows = [tuple(min(w, g) for w, g in zip(win, grid)) for win in (windows or [auto_window(grid, density)])]
    if len(set(windows)) == 1:
        groups = ((None, BlockPattern(window_index(grid, windows[0])[None, None], device)),)
    else:
        groups = []
        for size in sorted({math.prod(w) for w in windows}):
            heads = [h for h in range(len(windows)) if math.prod(windows[h]) == size]
            idx = torch.stack([window_index(grid, windows[h]) for h in heads])[None]       # [1, h', nt, K]
            groups.append((torch.tensor(heads, device=device), BlockPattern(idx, device)))
        groups = tuple(groups)
    return TilePlan(tile, grid, math.prod(tile), groups)


def sliding_tile_attention(q, k, v, layout: TokenLayout | None, tile=None, windows=None,
                           density: float = 0.25, lse: bool = False):
    """q, k, v [B, h, N, d] frame-major; ``windows``: one (wf, wh, ww) for all heads, a list of one per head, or None
    (auto from ``density``). Heads whose windows have the same number of tiles share one call; the tile plan is
    cached (:func:`tile_plan`). Returns [B, h, N, d]; with ``lse``, (out, log-sum-exp [B, h, N])."""
    layout = layout or TokenLayout(1, 1, q.shape[2])
    H = q.shape[1]
    if windows and len(windows) not in (1, H):
        raise ValueError(f"give one STA window or one per head ({H}), got {len(windows)}")
    plan = tile_plan(layout, tuple(tile) if tile else None, tuple(map(tuple, windows)) if windows else None,
                     density, q.device)
    qt, kt, vt = (to_tiles(t, layout, plan.tile) for t in (q, k, v))
    if plan.groups[0][0] is None:                                 # one window for all heads
        got = block_sparse_attention(qt, kt, vt, plan.groups[0][1], plan.tokens, lse=lse)
    else:
        got = (torch.empty_like(qt), torch.empty(qt.shape[:3], device=q.device)) if lse else torch.empty_like(qt)
        for sel, pattern in plan.groups:
            part = block_sparse_attention(*(t.index_select(1, sel) for t in (qt, kt, vt)), pattern, plan.tokens,
                                          lse=lse)
            if lse:
                got[0][:, sel], got[1][:, sel] = part
            else:
                got[:, sel] = part
    return from_tiles_attention(got, layout, plan.tile)


def window_candidates(grid: tuple[int, int, int], size: int) -> list[tuple[int, int, int]]:
    """Every window shape of exactly ``size`` tiles that fits the grid (the search space of the mask search)."""
    return [(a, b, size // (a * b)) for a in range(1, grid[0] + 1) for b in range(1, grid[1] + 1)
            if size % (a * b) == 0 and size // (a * b) <= grid[2]]


def search_windows(q, k, v, layout: TokenLayout, tile, candidates, rows: int = 64, generator=None) -> list:
    """STA's training-free mask search, online: per head, the candidate window whose attention on ``rows`` sampled
    query rows has the lowest MSE vs exact attention (errors pooled over the batch, i.e. over CFG halves)."""
    B, H, N, D = q.shape
    grid = tile_grid(layout, tile)
    ids = to_tiles(torch.arange(N, dtype=torch.float64).view(1, 1, N, 1), layout, tile).view(-1).long()
    tile_of = torch.empty(N, dtype=torch.long).scatter_(0, ids, torch.arange(N) // math.prod(tile)).to(q.device)
    r = torch.randperm(N, generator=generator)[:rows].to(q.device)
    p = torch.softmax((q[:, :, r] @ k.transpose(-2, -1)) * D ** -0.5, dim=-1)           # [B, h, R, N]
    exact = p @ v
    errors = []
    for window in candidates:
        nt = math.prod(grid)
        adjacent = torch.zeros(nt, nt, dtype=torch.bool, device=q.device)
        adjacent.scatter_(1, window_index(grid, window, q.device), True)
        pm = p * adjacent[tile_of[r]][:, tile_of]
        out = (pm @ v) / pm.sum(-1, keepdim=True).clamp_min(1e-30)
        errors.append((out - exact).pow(2).mean(dim=(0, 2, 3)))                          # [h]
    return [candidates[i] for i in torch.stack(errors).argmin(0).tolist()]


def sta_density(layout: TokenLayout, tile=None, windows=None, density: float = 0.25) -> float:
    """Fraction of query-key pairs computed (mean over heads)."""
    grid = tile_grid(layout, auto_tile(layout, tile))
    windows = windows or [auto_window(grid, density)]
    return sum(math.prod(min(w, g) for w, g in zip(win, grid)) for win in windows) / len(windows) / math.prod(grid)


@register
@dataclasses.dataclass
class SlidingTileAttention(AttentionMethod):
    name = "sta"
    knob = ("density", (0.5, 0.35, 0.25, 0.18, 0.12))
    tile: str = param("auto", check=parse_tile, example="4x8x8")
    window: str = param("auto", check=lambda w: parse_windows(w, search=True), example="2x3x3")
    density: float = param(0.25, low=0, high=1, low_open=True)
    full_steps: float = param(0.24, low=0, high=1)

    def __post_init__(self):
        super().__post_init__()
        self._tile = parse_tile(self.tile)
        self._windows = parse_windows(self.window, search=True)
        self.reset(self.num_steps)

    def kernel(self, q, k, v, layout, layer=None, lse: bool = False):
        layout = layout or TokenLayout(1, 1, q.shape[2])
        if self._windows != "search":
            return sliding_tile_attention(q, k, v, layout, self._tile, self._windows, self.density, lse)
        key = (layer, q.shape, layout)
        if key not in self.searched:
            tile = auto_tile(layout, self._tile)
            grid = tile_grid(layout, tile)
            candidates = window_candidates(grid, math.prod(auto_window(grid, self.density)))
            self.searched[key] = tuple(search_windows(q, k, v, layout, tile, candidates, generator=self.generator))
        return sliding_tile_attention(q, k, v, layout, self._tile, self.searched[key], lse=lse)

    def layout_density(self, layout: TokenLayout) -> float:
        windows = None if self._windows == "search" else self._windows
        return sta_density(layout, self._tile, windows, self.density)

    def dense(self, layer: int, num_layers: int) -> bool:
        return dense_fraction(self.step, self.num_steps, self.full_steps)

    def reset(self, num_steps: int) -> None:
        super().reset(num_steps)
        self.searched, self.generator = {}, torch.Generator().manual_seed(0)

    def make_backend(self, layer: int, num_layers: int):
        def backend(q, k, v, layout):
            if image_tokens(q, layout) < self.min_tokens or self.dense(layer, num_layers):
                return sdpa(q, k, v, layout)
            return text_dense(functools.partial(self.kernel, layer=layer), q, k, v, layout)
        return backend

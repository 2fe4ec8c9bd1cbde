"""Block-sparse top-k attention (the critical-block selection of SLA / AdaSpa-style estimation), training-free.

Tokens are grouped into (tf, th, tw) tiles (spatially coherent blocks). Block scores are estimated from pooled
queries and keys, S = mean_tile(q) . mean_tile(k - mean(k)) (SLA centres the keys); each query tile keeps the
``density`` fraction of key tiles with the highest scores (at least its own tile), per sample and head, and
attends exactly to them (block-sparse 4-D SDPA on gathered tiles). The tile geometry is computed once per layout;
the selected blocks are data-dependent and gathered per call.

    pipe.set_recipe("topk:density=0.25")
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from ...hooks.method import param, register
from ...models.attention import TokenLayout
from ..kernels.blocksparse import block_sparse_attention
from ..kernels.layout import auto_tile, from_tiles_attention, tile_grid, to_tiles
from .base import AttentionMethod, dense_fraction
from .sta import parse_tile


def topk_blocks(qt: torch.Tensor, kt: torch.Tensor, block: int, keep: int) -> torch.Tensor:
    """qt, kt [B, h, N, d] in block order -> [B, h, nb, keep] key blocks with the highest pooled scores, the
    diagonal block always included."""
    B, H, N, D = qt.shape
    nb = N // block
    qp = qt.reshape(B, H, nb, block, D).mean(3)
    kp = (kt - kt.mean(2, keepdim=True)).reshape(B, H, nb, block, D).mean(3)
    scores = qp @ kp.transpose(-2, -1)                                               # [B, h, nb, nb]
    scores.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    return scores.topk(min(keep, nb), dim=-1).indices.sort(dim=-1).values


@functools.lru_cache(maxsize=64)
def topk_geometry(layout: TokenLayout, tile: tuple | None, density: float) -> tuple[tuple, int, int, int]:
    """(fitted tile, number of tiles nb, tokens per tile, key tiles kept per query tile), once per layout."""
    tile = auto_tile(layout, tile)
    nb = math.prod(tile_grid(layout, tile))
    return tile, nb, math.prod(tile), max(1, round(density * nb))


def topk_attention(q, k, v, layout: TokenLayout | None, tile=None, density: float = 0.25, lse: bool = False):
    """q, k, v [B, h, N, d] frame-major -> [B, h, N, d]; with ``lse``, (out, log-sum-exp [B, h, N])."""
    layout = layout or TokenLayout(1, 1, q.shape[2])
    tile, nb, T, keep = topk_geometry(layout, tuple(tile) if tile else None, density)
    qt, kt, vt = (to_tiles(t, layout, tile) for t in (q, k, v))
    idx = topk_blocks(qt, kt, T, keep)
    got = block_sparse_attention(qt, kt, vt, idx, T, lse=lse)
    return from_tiles_attention(got, layout, tile)


@register
@dataclasses.dataclass
class TopKAttention(AttentionMethod):
    name = "topk"
    knob = ("density", (0.5, 0.35, 0.25, 0.18, 0.12))
    density: float = param(0.25, low=0, high=1, low_open=True)
    tile: str = param("auto", check=parse_tile, example="4x8x8")
    dense_steps: float = param(0.0, low=0, high=1)

    def __post_init__(self):
        super().__post_init__()
        self._tile = parse_tile(self.tile)

    def kernel(self, q, k, v, layout, lse: bool = False):
        return topk_attention(q, k, v, layout, self._tile, self.density, lse)

    def layout_density(self, layout: TokenLayout) -> float:
        _, nb, _, keep = topk_geometry(layout, self._tile, self.density)
        return keep / nb

    def dense(self, layer: int, num_layers: int) -> bool:
        return dense_fraction(self.step, self.num_steps, self.dense_steps)

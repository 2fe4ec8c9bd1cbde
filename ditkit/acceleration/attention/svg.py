"""Sparse VideoGen (SVG, Xi et al., ICML 2025), training-free.

Each head is either *spatial* (attends within its frame and neighbouring frames) or *temporal* (attends to the
same position across frames). Per call, SVG profiles ``rows`` sampled query rows: their exact attention is compared
(MSE) with the attention restricted to each candidate mask, and every (sample, head) gets the better mask — with
batched CFG a sample is a CFG half, as in SVG. Both masks are one banded block mask of ``density`` x N keys per
query block: spatial heads use it in frame-major order, temporal heads after the layout transformation to
token-major order (same position, consecutive frames), so each group attends to contiguous key windows
(overlapping strided views, nothing gathered).
The band is centred on the query block and clamped inside the sequence, so every query computes the same number
of keys. The first ``dense_steps`` of the sampling steps and ``dense_layers`` of the layers stay dense (SVG's f_t,
f_l; generic defaults). ``sparsity`` is the kept density, as in SVG's code (HunyuanVideo 0.25, Wan 0.3).

    pipe.set_recipe("svg:sparsity=0.25")
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from ...hooks.method import param, register
from ...models.attention import TokenLayout, sdpa
from ..kernels.blocksparse import band_attention, band_index
from ..kernels.layout import to_temporal
from .base import AttentionMethod, dense_fraction


def fit_block(n: int, block: int) -> int:
    """The largest divisor of n that is <= block."""
    return max(d for d in range(1, min(block, n) + 1) if n % d == 0)


def band_geometry(n: int, density: float, block: int) -> tuple[int, int, int]:
    """(block size fitted to n, number of blocks, band width in blocks) of a band keeping ``density`` of n keys.
    A sequence too short for ``density`` at this block size gets smaller blocks: at least ceil(1 / density) of
    them, so the band stays sparse (e.g. 256 tokens at density 0.25: 4 blocks of 64, not one dense block of 256)."""
    block = fit_block(n, min(block, max(1, n // math.ceil(1 / density - 1e-9))))
    nb = n // block
    return block, nb, min(nb, max(1, round(density * nb)))


@functools.lru_cache(maxsize=64)
def band_plan(n: int, density: float, block: int) -> tuple[int, int, int, torch.Tensor]:
    """:func:`band_geometry` plus its :func:`band_index` [nb, width] on the CPU (the profiling groups its sampled
    rows on the host), once per (n, density, block)."""
    block, nb, width = band_geometry(n, density, block)
    return block, nb, width, band_index(nb, width)


def candidate_outputs(q, k, v, layout: TokenLayout, idx, block: int, rows: torch.Tensor, kv_temporal=None):
    """Outputs of the sampled query ``rows`` [R] (frame-major positions) under exact attention, the spatial band and
    the temporal band, each [B, h, R, d]. A band output is attention over the query block's window of ``idx``
    [nb, K] only: one SDPA call per distinct window on the rows that share it, in frame-major order for the spatial
    band and token-major order for the temporal one; ``kv_temporal``: k, v already in token-major order. The rows
    are grouped by window on the host: give ``rows`` and ``idx`` on the CPU (no device synchronisation)."""
    F = layout.frames
    S = q.shape[2] // F
    rows, window_start = rows.cpu(), idx[:, 0].cpu()
    qr = q[:, :, rows.to(q.device)]
    outs = [sdpa(qr, k, v)]
    k_t, v_t = kv_temporal or (to_temporal(k, layout), to_temporal(v, layout))
    for qpos, (kk, vv) in ((rows, (k, v)), ((rows % S) * F + rows // S, (k_t, v_t))):
        qpos, order = qpos.sort()
        starts, counts = window_start[qpos // block].unique_consecutive(return_counts=True)
        q_sorted, out = qr[:, :, order.to(q.device)], torch.empty_like(outs[0])
        end = 0
        for start, count in zip(starts.tolist(), counts.tolist()):
            keys, end = slice(start * block, (start + idx.shape[1]) * block), end + count
            out[:, :, end - count:end] = sdpa(q_sorted[:, :, end - count:end], kk[:, :, keys], vv[:, :, keys])
        outs.append(out[:, :, order.argsort().to(q.device)])
    return outs


def classify_heads(q, k, v, layout: TokenLayout, idx, block: int, rows: int = 64, generator=None,
                   kv_temporal=None) -> torch.Tensor:
    """[B, h] bool on q's device, True = temporal: the candidate mask with the lower MSE vs exact attention on
    sampled rows (drawn on the CPU with ``generator``)."""
    r = torch.randperm(q.shape[2], generator=generator)[:rows].sort().values
    exact, spatial, temporal = candidate_outputs(q, k, v, layout, idx, block, r, kv_temporal)
    err = torch.stack([(o - exact).pow(2).mean(dim=(-1, -2)) for o in (spatial, temporal)], dim=-1)  # [B, h, 2]
    return err[..., 1] < err[..., 0]


def head_runs(temporal: torch.Tensor) -> list[tuple[int, slice, bool]]:
    """[B, h] bool -> (sample, head slice, temporal) for every run of consecutive heads of one kind. This is the one
    host synchronisation of an SVG call: which kernel each (sample, head) runs is decided from the profiling."""
    runs = []
    for b, row in enumerate(temporal.tolist()):
        start = 0
        for h in range(1, len(row) + 1):
            if h == len(row) or row[h] != row[start]:
                runs.append((b, slice(start, h), row[start]))
                start = h
    return runs


def sparse_videogen(q, k, v, layout: TokenLayout | None, density: float = 0.25, block: int = 256, rows: int = 64,
                    generator=None, lse: bool = False):
    """q, k, v [B, h, N, d] frame-major (any strides, last dim contiguous) -> [B, h, N, d]. Spatial heads attend on
    views of q, k, v and write into the output in place; temporal heads copy q to token-major order and their
    output back (k, v in token-major order are shared with the profiling). With ``lse``, (out, log-sum-exp
    [B, h, N])."""
    B, H, N, D = q.shape
    layout = layout or TokenLayout(1, 1, N)
    block, nb, width, idx = band_plan(N, density, block)
    if layout.frames == 1:                                   # one frame: the two masks coincide
        return band_attention(q, k, v, block, width, lse=lse)
    k_t, v_t = to_temporal(k, layout), to_temporal(v, layout)
    temporal = classify_heads(q, k, v, layout, idx, block, rows, generator, (k_t, v_t))
    out = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    out_lse = torch.empty(B, H, N, device=q.device) if lse else None
    F, S = layout.frames, N // layout.frames
    for b, heads, in_time in head_runs(temporal):
        at = (slice(b, b + 1), heads)
        if in_time:
            got = band_attention(to_temporal(q[at], layout), k_t[at], v_t[at], block, width, lse=lse)
            out_t, lse_t = got if lse else (got, None)
            out[at].unflatten(2, (F, S)).transpose(2, 3).copy_(out_t.unflatten(2, (S, F)))
            if lse:
                out_lse[at].unflatten(2, (F, S)).transpose(2, 3).copy_(lse_t.unflatten(2, (S, F)))
        else:
            got = band_attention(q[at], k[at], v[at], block, width, out=out[at], lse=lse)
            if lse:
                out_lse[at] = got[1]
    return (out, out_lse) if lse else out


def svg_density(layout: TokenLayout, density: float = 0.25, block: int = 256, rows: int = 64) -> float:
    """Fraction of query-key pairs one call computes: the band, plus (several frames) the profiling's exact rows over
    all N keys and both candidate bands on those rows."""
    N = layout.num_tokens
    block, nb, width = band_geometry(N, density, block)
    if layout.frames == 1:
        return width / nb
    r = min(rows, N)
    return width / nb + (r * N + 2 * r * width * block) / N ** 2


@register
@dataclasses.dataclass
class SparseVideoGen(AttentionMethod):
    name = "svg"
    knob = ("sparsity", (0.5, 0.35, 0.25, 0.18, 0.12))
    sparsity: float = param(0.25, low=0, high=1, low_open=True, hint="the kept density")
    rows: int = param(64, low=1, hint="profiled query rows")
    block: int = param(256, low=1, hint="tokens per block")
    dense_steps: float = param(0.075, low=0, high=1)
    dense_layers: float = param(0.025, low=0, high=1)
    seed: int = param(0, low=0)

    def __post_init__(self):
        super().__post_init__()
        self.generator = torch.Generator().manual_seed(self.seed)

    def reset(self, num_steps: int) -> None:
        super().reset(num_steps)
        self.generator = torch.Generator().manual_seed(self.seed)

    def kernel(self, q, k, v, layout, lse: bool = False):
        return sparse_videogen(q, k, v, layout, self.sparsity, self.block, self.rows, self.generator, lse)

    def layout_density(self, layout: TokenLayout) -> float:
        return svg_density(layout, self.sparsity, self.block, self.rows)

    def dense(self, layer: int, num_layers: int) -> bool:
        return dense_fraction(layer, num_layers, self.dense_layers) or \
            dense_fraction(self.step, self.num_steps, self.dense_steps)

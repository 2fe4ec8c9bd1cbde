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

import torch

from ..attention.blocksparse import band_attention, band_index
from ..attention.layout import from_temporal, to_temporal
from ..attention.method import AttentionMethod, dense_fraction
from ..models.attention import TokenLayout, sdpa
from .registry import register


def fit_block(n: int, block: int) -> int:
    """The largest divisor of n that is <= block."""
    return max(d for d in range(1, min(block, n) + 1) if n % d == 0)


def candidate_outputs(q, k, v, layout: TokenLayout, idx, block: int, rows: torch.Tensor, kv_temporal=None):
    """Outputs of the sampled query ``rows`` [R] (frame-major positions) under exact attention, the spatial band and
    the temporal band, each [B, h, R, d]. A band output is attention over the query block's window of ``idx``
    [nb, K] only (SDPA on that key window, the rows of one window together), in frame-major order for the spatial
    band and token-major order for the temporal one; ``kv_temporal``: k, v already in token-major order."""
    F = layout.frames
    S = q.shape[2] // F
    qr = q[:, :, rows]
    outs = [sdpa(qr, k, v)]
    k_t, v_t = kv_temporal or (to_temporal(k, layout), to_temporal(v, layout))
    for qpos, (kk, vv) in ((rows, (k, v)), ((rows % S) * F + rows // S, (k_t, v_t))):
        out, qblock = torch.empty_like(outs[0]), qpos // block
        for b in qblock.unique().tolist():
            sel = (qblock == b).nonzero().view(-1)
            keys = slice(int(idx[b, 0]) * block, (int(idx[b, -1]) + 1) * block)
            out[:, :, sel] = sdpa(qr[:, :, sel], kk[:, :, keys], vv[:, :, keys])
        outs.append(out)
    return outs


def classify_heads(q, k, v, layout: TokenLayout, idx, block: int, rows: int = 64, generator=None,
                   kv_temporal=None) -> torch.Tensor:
    """[B, h] bool, True = temporal: the candidate mask with the lower MSE vs exact attention on sampled rows."""
    r = torch.randperm(q.shape[2], generator=generator)[:rows].sort().values.to(q.device)
    exact, spatial, temporal = candidate_outputs(q, k, v, layout, idx, block, r, kv_temporal)
    err = torch.stack([(o - exact).pow(2).mean(dim=(-1, -2)) for o in (spatial, temporal)], dim=-1)  # [B, h, 2]
    return err[..., 1] < err[..., 0]


def sparse_videogen(q, k, v, layout: TokenLayout | None, density: float = 0.25, block: int = 256, rows: int = 64,
                    generator=None) -> torch.Tensor:
    """q, k, v [B, h, N, d] frame-major -> [B, h, N, d]."""
    B, H, N, D = q.shape
    layout = layout or TokenLayout(1, 1, N)
    block = fit_block(N, block)
    nb = N // block
    idx = band_index(nb, max(1, round(density * nb)), q.device)
    if layout.frames == 1:                                   # one frame: the two masks coincide
        return band_attention(q.contiguous(), k.contiguous(), v.contiguous(), block, idx.shape[1])
    k_t, v_t = to_temporal(k, layout), to_temporal(v, layout)  # shared by the profiling and the temporal heads
    temporal = classify_heads(q, k, v, layout, idx, block, rows, generator, (k_t, v_t)).view(-1)
    attend = lambda q_, k_, v_: band_attention(q_.contiguous(), k_.contiguous(), v_.contiguous(), block, idx.shape[1])
    in_time = lambda q_, k_t_, v_t_: from_temporal(attend(to_temporal(q_, layout), k_t_, v_t_), layout)
    if not temporal.any():
        return attend(q, k, v)
    if temporal.all():
        return in_time(q, k_t, v_t)
    flat = [t.reshape(1, B * H, N, D) for t in (q, k, v, k_t, v_t)]
    out = torch.empty_like(flat[0])
    for fn, sel, tensors in ((attend, (~temporal).nonzero().view(-1), flat[:3]),
                             (in_time, temporal.nonzero().view(-1), flat[:1] + flat[3:])):
        out[:, sel] = fn(*(t.index_select(1, sel) for t in tensors))
    return out.view(B, H, N, D)


def svg_density(layout: TokenLayout, density: float = 0.25, block: int = 256) -> float:
    N = layout.num_tokens
    nb = N // fit_block(N, block)
    return max(1, round(density * nb)) / nb


@register
@dataclasses.dataclass
class SparseVideoGen(AttentionMethod):
    name = "svg"
    sparsity: float = 0.25
    rows: int = 64
    block: int = 256
    dense_steps: float = 0.075
    dense_layers: float = 0.025
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.generator = torch.Generator().manual_seed(self.seed)

    def reset(self, num_steps: int) -> None:
        super().reset(num_steps)
        self.generator = torch.Generator().manual_seed(self.seed)

    def kernel(self, q, k, v, layout):
        return sparse_videogen(q, k, v, layout, self.sparsity, self.block, self.rows, self.generator)

    def layout_density(self, layout: TokenLayout) -> float:
        return svg_density(layout, self.sparsity, self.block)

    def dense(self, layer: int, num_layers: int) -> bool:
        return dense_fraction(layer, num_layers, self.dense_layers) or \
            dense_fraction(self.step, self.num_steps, self.dense_steps)

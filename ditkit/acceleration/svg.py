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
from ..models.attention import TokenLayout
from .registry import register


def fit_block(n: int, block: int) -> int:
    """The largest divisor of n that is <= block."""
    return max(d for d in range(1, min(block, n) + 1) if n % d == 0)


def candidate_outputs(q, k, v, layout: TokenLayout, idx, block: int, rows: torch.Tensor):
    """Outputs of the sampled query ``rows`` [R] (frame-major positions) under exact attention, the spatial band and
    the temporal band, each [B, h, R, d]. All three come from one row of exact probabilities [B, h, R, N] in
    frame-major key order: a band keeps the keys whose block (in its token order) lies in the query block's window
    of ``idx`` [nb, K], and is renormalised over them, which equals attending to those keys only."""
    N, F = q.shape[2], layout.frames
    S = N // F
    p = torch.softmax((q[:, :, rows] * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
    pos = torch.arange(N, device=q.device)
    to_t = lambda i: (i % S) * F + i // S                    # frame-major index -> token-major position
    outs = [p @ v]
    for qpos, kpos in ((rows, pos), (to_t(rows), to_t(pos))):
        window = idx[qpos // block]                                  # [R, K] key blocks of each row's query block
        kb = kpos // block
        pk = p * ((kb >= window[:, :1]) & (kb <= window[:, -1:]))    # band windows are consecutive blocks
        outs.append((pk @ v) / pk.sum(-1, keepdim=True).clamp_min(1e-30))
    return outs


def classify_heads(q, k, v, layout: TokenLayout, idx, block: int, rows: int = 64, generator=None) -> torch.Tensor:
    """[B, h] bool, True = temporal: the candidate mask with the lower MSE vs exact attention on sampled rows."""
    r = torch.randperm(q.shape[2], generator=generator)[:rows].sort().values.to(q.device)
    exact, spatial, temporal = candidate_outputs(q, k, v, layout, idx, block, r)
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
    temporal = classify_heads(q, k, v, layout, idx, block, rows, generator).view(-1)
    attend = lambda q_, k_, v_: band_attention(q_.contiguous(), k_.contiguous(), v_.contiguous(), block, idx.shape[1])
    in_time = lambda q_, k_, v_: from_temporal(attend(*(to_temporal(t, layout) for t in (q_, k_, v_))), layout)
    if not temporal.any():
        return attend(q, k, v)
    if temporal.all():
        return in_time(q, k, v)
    flat = [t.reshape(1, B * H, N, D) for t in (q, k, v)]
    out = torch.empty_like(flat[0])
    for fn, sel in ((attend, (~temporal).nonzero().view(-1)), (in_time, temporal.nonzero().view(-1))):
        out[:, sel] = fn(*(t.index_select(1, sel) for t in flat))
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

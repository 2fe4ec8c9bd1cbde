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


def band_outputs(p: torch.Tensor, v: torch.Tensor, qpos: torch.Tensor, idx: torch.Tensor, block: int,
                 key_index: torch.Tensor | None = None) -> torch.Tensor:
    """Outputs of sampled query rows under the band mask, computed over each row's kept key window only.
    v [B, h, N, d] in the band's token order; qpos [R] the rows' positions in that order; p [B, h, R, N] exact
    attention probabilities with keys in v's order, or (with ``key_index`` [N]: column of p of each position in v's
    order) in another order. Returns [B, h, R, d] (renormalised over the kept keys)."""
    out = v.new_empty(*p.shape[:3], v.shape[-1])
    qblock = qpos // block
    for b in qblock.unique().tolist():                       # rows of one query block share one key window
        sel = (qblock == b).nonzero().view(-1)
        keys = slice(int(idx[b, 0]) * block, (int(idx[b, -1]) + 1) * block)
        pk = p[:, :, sel, keys] if key_index is None else p[:, :, sel].index_select(-1, key_index[keys])
        out[:, :, sel] = (pk @ v[:, :, keys]) / pk.sum(-1, keepdim=True).clamp_min(1e-30)
    return out


def classify_heads(q, k, v, layout: TokenLayout, idx, block: int, rows: int = 64, generator=None,
                   v_temporal: torch.Tensor | None = None) -> torch.Tensor:
    """[B, h] bool, True = temporal: the candidate mask with the lower MSE vs exact attention on sampled rows.
    ``v_temporal``: v already in token-major order, if the caller has it."""
    B, H, N, D = q.shape
    r = torch.randperm(N, generator=generator)[:rows].sort().values.to(q.device)
    p = torch.softmax((q[:, :, r] * D ** -0.5) @ k.transpose(-2, -1), dim=-1)       # [B, h, R, N] frame-major keys
    exact = p @ v
    S, F = N // layout.frames, layout.frames
    to_t = lambda pos: (pos % S) * F + pos // S                      # frame-major index -> token-major position
    frame_major = torch.arange(N, device=q.device).view(F, S).t().reshape(-1)   # token-major position -> index
    spatial = band_outputs(p, v, r, idx, block)
    v_t = to_temporal(v, layout) if v_temporal is None else v_temporal
    temporal = band_outputs(p, v_t, to_t(r), idx, block, key_index=frame_major)
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
    v_t = to_temporal(v, layout)                             # shared by the profiling and the temporal heads
    temporal = classify_heads(q, k, v, layout, idx, block, rows, generator, v_temporal=v_t).view(-1)
    attend = lambda q_, k_, v_: band_attention(q_.contiguous(), k_.contiguous(), v_.contiguous(), block, idx.shape[1])
    in_time = lambda q_, k_, vt_: from_temporal(attend(to_temporal(q_, layout), to_temporal(k_, layout), vt_), layout)
    if not temporal.any():
        return attend(q, k, v)
    if temporal.all():
        return in_time(q, k, v_t)
    flat = [t.reshape(1, B * H, N, D) for t in (q, k, v, v_t)]
    out = torch.empty_like(flat[0])
    for fn, sel, (q_, k_, v_) in ((attend, (~temporal).nonzero().view(-1), flat[:3]),
                                  (in_time, temporal.nonzero().view(-1), flat[:2] + flat[3:])):
        out[:, sel] = fn(*(t.index_select(1, sel) for t in (q_, k_, v_)))
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

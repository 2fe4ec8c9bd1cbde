"""The single attention entry point of every ditkit model.

Models never call SDPA directly: they call an :class:`Attention` module with the token layout of the sequence, so
that an attention backend (sparse, linear, sequence-parallel, ...) can be installed per layer by a recipe without
touching model code. A backend is any callable ``fn(q, k, v, layout) -> out`` with q, k, v of shape
[B, heads, N, head_dim]; :class:`HeadSplit` gives different heads of one layer different backends.
:class:`LinearAttention` is the LiT / SANA linear-attention module that replaces :class:`Attention` in a linear DiT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenLayout:
    """How the N tokens of a sequence are arranged: ``text`` tokens (dual-stream models carry them through their
    blocks; 0 otherwise), then frames x height x width image tokens (row-major, frames outermost).

    ``shard``: under sequence parallelism (:mod:`ditkit.parallel.sequence`), this process holds only a contiguous
    part of the sequence; the shard says which, and runs attention across the processes. The sizes stay global.
    ``text_mask``: a joint call's text padding mask, [B, 1, 1, text] bool (True: attend), when it has one."""

    frames: int
    height: int
    width: int
    text: int = 0
    shard: Any = field(default=None, compare=False, repr=False)
    text_mask: Any = field(default=None, compare=False, repr=False)

    @property
    def num_tokens(self) -> int:
        return self.text + self.frames * self.height * self.width

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.frames, self.height, self.width


Backend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "TokenLayout | None"], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
    """Dense softmax attention, the reference backend. q, k, v: [B, heads, N, head_dim]; a joint call's padded text
    keys (``layout.text_mask``) masked."""
    if layout is None or layout.text_mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    keys = F.pad(layout.text_mask, (0, k.shape[2] - layout.text), value=True)     # image keys always attended
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keys)


def sdpa_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense softmax attention and its log-sum-exp: q [B, H, m, d], k, v [B, H, n, d] -> out [B, H, m, d],
    lse [B, H, m] (float32). Fused kernels where PyTorch exposes the LSE, the math path elsewhere and with a boolean
    key ``mask`` [B, 1, 1, n] (True: attend; a query with no key left gets lse -inf and a zero output)."""
    if mask is None and q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)[:2]
        return out, lse.float()
    if mask is None and q.device.type == "cuda":
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
        return out, lse[..., :q.shape[2]].float()
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = scores.logsumexp(-1)
    return (scores - lse[..., None]).exp().nan_to_num(0.0).to(v.dtype) @ v, lse


def merge_attention(out: torch.Tensor, lse: torch.Tensor, part: torch.Tensor, part_lse: torch.Tensor):
    """Two partial attentions over disjoint key sets (outputs [B, H, m, d], LSEs [B, H, m]) -> the attention over
    their union (out in float32) and its LSE."""
    new = torch.logaddexp(lse, part_lse)
    return out * (lse - new).exp()[..., None] + part.float() * (part_lse - new).exp().nan_to_num(0.0)[..., None], new


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout | None = None,
                     eps: float = 1e-6) -> torch.Tensor:
    """ReLU-kernel linear attention (LiT, SANA), O(N d^2): relu(q) (relu(k)^T v) / (relu(q) . sum_j relu(k_j) + eps).
    q, k, v [B, heads, N, d] -> [B, heads, N, d]; computed in float32."""
    dtype = v.dtype
    q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
    kv = k.transpose(-2, -1) @ v                                 # [B, heads, d, d]
    z = k.sum(dim=-2).unsqueeze(-1)                              # [B, heads, d, 1]
    return ((q @ kv) / (q @ z + eps)).to(dtype)


def eager(fn):
    """``fn`` itself; inside a ``torch.compile`` trace, ``fn`` kept out of the compiled graph (recipes' backends and
    observers make Python-side decisions, so they run eagerly between compiled regions)."""
    return torch.compiler.disable(fn) if torch.compiler.is_compiling() else fn


class HeadSplit:
    """A backend that runs different backends on different heads: ``groups`` is [(head indices, backend)], covering
    every head exactly once (``None`` = dense SDPA). Each group is one call on its heads only."""

    def __init__(self, groups: Sequence[tuple[Sequence[int], Backend | None]]):
        self.groups = [(torch.as_tensor(list(h), dtype=torch.long), fn) for h, fn in groups if len(h)]
        self._device_heads: dict = {}
        self._subsets: dict = {}
        heads = torch.cat([h for h, _ in self.groups]).sort().values
        if not torch.equal(heads, torch.arange(len(heads))):
            raise ValueError(f"HeadSplit groups must cover heads 0..H-1 exactly once, got {heads.tolist()}")

    def __call__(self, q, k, v, layout=None):
        if len(self.groups) == 1:
            return (self.groups[0][1] or sdpa)(q, k, v, layout)
        out = torch.empty_like(q)
        for heads, fn in self.groups:
            heads = self._on(heads, q.device)
            sel = lambda t: t.index_select(1, heads)
            out[:, heads] = (fn or sdpa)(sel(q), sel(k), sel(v), layout)
        return out

    def subset(self, start: int, stop: int) -> "HeadSplit":
        """The backend of heads [start, stop) alone, renumbered from 0 (Ulysses gives each process a range of
        heads); built once per range."""
        key = (start, stop)
        if key not in self._subsets:
            groups = [([int(h) - start for h in heads if start <= h < stop], fn) for heads, fn in self.groups]
            self._subsets[key] = HeadSplit(groups)
        return self._subsets[key]

    def _on(self, heads: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The head indices on ``device``, copied once per device."""
        key = (id(heads), device)
        if key not in self._device_heads:
            self._device_heads[key] = heads.to(device)
        return self._device_heads[key]


class Attention(torch.nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm layout: keys ``qkv`` and ``proj``).

    ``backend`` is None for dense SDPA; acceleration recipes set it on individual layers. ``observer(q, k)``, if
    set, sees the queries and keys of every call (ToCa's attention scores).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = torch.nn.Linear(dim, dim)
        self.backend = None
        self.observer = None

    def qkv_heads(self, x: torch.Tensor, rope=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, D] -> q, k, v, each [B, heads, N, head_dim]; ``rope`` (optional): a rotary position embedding,
        a callable applied to q and k."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            q, k = rope(q), rope(k)
        if self.observer is not None:
            eager(self.observer)(q, k)
        return q, k, v

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None, rope=None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv_heads(x, rope)
        if layout is not None and layout.shard is not None:       # this process holds a part of the sequence
            out = layout.shard.attention(self.backend, q, k, v, layout)
        else:
            out = sdpa(q, k, v) if self.backend is None else eager(self.backend)(q, k, v, layout)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class LinearAttention(Attention):
    """LiT linear attention: ReLU-kernel linear attention (usually with fewer heads than the softmax model) plus a
    depth-wise ``conv x conv`` convolution of V over each frame's token grid, added to the output (zero-initialised,
    so a student starts as pure linear attention). Keys ``qkv`` / ``proj`` as in :class:`Attention`, plus ``dwconv``.
    """

    def __init__(self, dim: int, num_heads: int, conv: int = 5, qkv_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias)
        self.backend = linear_attention
        self.dwconv = torch.nn.Conv2d(dim, dim, conv, padding=conv // 2, groups=dim) if conv else None
        if self.dwconv is not None:
            torch.nn.init.zeros_(self.dwconv.weight)
            torch.nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None, rope=None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv_heads(x, rope)
        out = eager(self.backend)(q, k, v, layout).transpose(1, 2).reshape(B, N, D)
        if self.dwconv is not None:
            if layout is None or layout.num_tokens != N:
                raise ValueError(f"LinearAttention's depth-wise conv needs the token layout of the {N} tokens")
            F_, H, W = layout.shape
            grid = v.transpose(1, 2).reshape(B * F_, H, W, D).permute(0, 3, 1, 2)       # [B*F, D, H, W]
            out = out + self.dwconv(grid).permute(0, 2, 3, 1).reshape(B, N, D)
        return self.proj(out)

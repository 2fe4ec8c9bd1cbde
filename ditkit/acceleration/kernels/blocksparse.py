"""Block-sparse softmax attention as dense 4-D SDPA calls on gathered key/value blocks, and the block patterns the
sparse backends use (bands in 1D, sliding windows over a 3D tile grid).

Measured on CPU (BENCHMARKS.md, attention section): one gathered 5-D SDPA call falls back to the math kernel, so the
kernel folds (heads x query blocks) into SDPA's head dimension and keeps every call 4-D; query blocks are
processed in chunks so the gathered keys/values never exceed ``max_temp_mb`` (small temporaries are also
reused by the allocator instead of being page-faulted in anew on every call: at 4,096 tokens, block 256, top-4,
2 MB chunks run in 85 ms where 16 MB chunks took 105 ms, one thread). Query blocks that share their key window
(clamped sliding windows) are attended together, with the window gathered once or sliced when it is a run. A
fixed pattern is analysed once (:class:`BlockPattern`), so a call on it makes no host synchronisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.attention import sdpa_with_lse


def attend(q, k, v, lse: bool):
    """Dense SDPA on 4-D q, k, v; with ``lse``, (out, log-sum-exp [.., m] float32) for merging with other keys."""
    return sdpa_with_lse(q, k, v) if lse else F.scaled_dot_product_attention(q, k, v)


class BlockPattern:
    """A block pattern idx [B or 1, h or 1, nb, K] (long: the K key blocks of each query block) on ``device``, with
    the host-side decisions of :func:`block_sparse_attention` taken once: block-diagonal, or (one pattern for all
    heads) the distinct key windows and their query blocks, each a slice when it is a run of consecutive blocks.
    Build it once for a fixed pattern (sliding windows); a per-call index (top-k) is analysed in the call."""

    def __init__(self, idx: torch.Tensor, device=None):
        self.idx = idx.to(device if device is not None else idx.device)
        nb, K = idx.shape[-2:]
        shared = idx.shape[:2] == (1, 1)
        self.diagonal = shared and K == 1 and torch.equal(idx.view(-1), torch.arange(nb, device=idx.device))
        self.windows = None                         # [(query blocks, key blocks)] per distinct window
        if shared and not self.diagonal:
            windows, owner = idx.view(nb, K).unique(dim=0, return_inverse=True)
            if len(windows) < nb:
                self.windows = [(self._blocks((owner == u).nonzero().view(-1)), self._blocks(w))
                                for u, w in enumerate(windows)]
        self._flat = {}

    def _blocks(self, sel: torch.Tensor):
        """Block indices -> a slice if they are a run, else a long tensor on the pattern's device."""
        a, b = int(sel[0]), int(sel[-1])
        return slice(a, b + 1) if b - a + 1 == len(sel) else sel.to(self.idx.device)

    def flat(self, B: int, H: int) -> torch.Tensor:
        """[B, h, nb, K] indices into the [B*h*nb] flattened blocks of a [B, h, nb, ...] tensor."""
        if (B, H) not in self._flat:
            nb, K = self.idx.shape[-2:]
            offsets = torch.arange(B * H, device=self.idx.device).view(B, H, 1, 1) * nb
            self._flat[B, H] = (offsets + self.idx).expand(B, H, nb, K)
        return self._flat[B, H]


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx, block: int,
                           max_temp_mb: float = 2, lse: bool = False):
    """q, k, v [B, h, N, d] in block order (N = nb * block); ``idx``: a :class:`BlockPattern` or a long tensor
    [B or 1, h or 1, nb, K], the K key blocks each query block attends to (exact softmax over their K * block keys).
    Returns [B, h, N, d]; with ``lse``, (out, the log-sum-exp [B, h, N] of each query over its keys)."""
    B, H, N, D = q.shape
    pattern = idx if isinstance(idx, BlockPattern) else BlockPattern(idx)
    nb, K = N // block, pattern.idx.shape[-1]
    if nb * block != N:
        raise ValueError(f"sequence length {N} is not a multiple of the block size {block}")
    qb, kb, vb = (t.reshape(B, H, nb, block, D) for t in (q, k, v))
    if pattern.diagonal:
        got = attend(*(t.reshape(B, H * nb, block, D) for t in (qb, kb, vb)), lse)
        return (got[0].view(B, H, N, D), got[1].view(B, H, N)) if lse else got.view(B, H, N, D)
    if pattern.windows is not None:
        return shared_window_attention(qb, kb, vb, pattern.windows, lse)
    # Gather each query block's K key blocks from the flattened [B*h*nb, block, d] blocks with index_select
    # (advanced indexing over (sample, head, block) is ~3x slower on CPU).
    flat_idx = pattern.flat(B, H)
    kf, vf = (t.reshape(B * H * nb, block, D) for t in (kb, vb))
    chunk = max(1, int(max_temp_mb * 2 ** 20 // (2 * B * H * K * block * D * q.element_size())))
    out = torch.empty_like(qb)
    out_lse = torch.empty(B, H, nb, block, device=q.device) if lse else None
    for s in range(0, nb, chunk):
        sel = flat_idx[:, :, s:s + chunk]
        c = sel.shape[2]
        kg, vg = (t.index_select(0, sel.reshape(-1)).view(B, H * c, K * block, D) for t in (kf, vf))
        got = attend(qb[:, :, s:s + c].reshape(B, H * c, block, D), kg, vg, lse)
        if lse:
            got, out_lse[:, :, s:s + c] = got[0], got[1].view(B, H, c, block)
        out[:, :, s:s + c] = got.view(B, H, c, block, D)
    return (out.view(B, H, N, D), out_lse.view(B, H, N)) if lse else out.view(B, H, N, D)


def shared_window_attention(qb, kb, vb, windows, lse: bool = False):
    """Block-sparse attention where query blocks share key windows (clamped sliding windows): one SDPA call per
    distinct window, its keys/values gathered once (or sliced, if the window is a run of consecutive blocks) and its
    query blocks stacked. qb, kb, vb [B, h, nb, block, d]; ``windows``: [(query blocks, key blocks)], each a slice
    or a long index tensor (:attr:`BlockPattern.windows`). Returns [B, h, nb * block, d] (with ``lse``, and the
    log-sum-exp [B, h, nb * block])."""
    B, H, nb, block, D = qb.shape
    out = torch.empty_like(qb)
    out_lse = torch.empty(B, H, nb, block, device=qb.device) if lse else None

    def blocks(t, sel):                                             # [B, h, len(sel) * block, d], a view if a run
        return (t[:, :, sel] if isinstance(sel, slice) else t.index_select(2, sel)).reshape(B, H, -1, D)

    def put(into, rows, o):
        if isinstance(rows, slice):
            into[:, :, rows] = o
        else:
            into.index_copy_(2, rows, o)

    for rows, keys in windows:
        o = attend(blocks(qb, rows), blocks(kb, keys), blocks(vb, keys), lse)
        if lse:
            o, o_lse = o
            put(out_lse, rows, o_lse.view(B, H, -1, block))
        put(out, rows, o.view(B, H, -1, block, D))
    return (out.view(B, H, nb * block, D), out_lse.view(B, H, nb * block)) if lse else out.view(B, H, nb * block, D)


def band_index(num_blocks: int, width: int, device=None) -> torch.Tensor:
    """[nb, width]: each block's ``width`` consecutive neighbour blocks, centred and clamped inside the sequence
    (so every query block computes the same number of keys)."""
    width = min(width, num_blocks)
    start = (torch.arange(num_blocks, device=device) - width // 2).clamp(0, num_blocks - width)
    return start[:, None] + torch.arange(width, device=device)


def window_index(grid: tuple[int, int, int], window: tuple[int, int, int], device=None) -> torch.Tensor:
    """[nt, K] for a tile grid (gf, gh, gw) in raster order: the tiles of the (wf, wh, ww) window around each tile,
    centre clamped inside the grid (Sliding Tile Attention); K = wf * wh * ww."""
    window = tuple(min(w, g) for w, g in zip(window, grid))
    axes = []
    for g, w in zip(grid, window):
        start = (torch.arange(g, device=device) - w // 2).clamp(0, g - w)
        axes.append(start[:, None] + torch.arange(w, device=device))             # [g, w]
    (gf, gh, gw), (wf, wh, ww) = grid, window
    f, h, w = axes
    idx = ((f[:, None, None, :, None, None] * gh + h[None, :, None, None, :, None]) * gw
           + w[None, None, :, None, None, :])                                    # [gf, gh, gw, wf, wh, ww]
    return idx.reshape(gf * gh * gw, wf * wh * ww)


def band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, width: int,
                   out: torch.Tensor | None = None, lse: bool = False):
    """Attention of each query block to its ``width`` neighbouring key blocks (:func:`band_index`), with nothing
    gathered: the key/value windows of the interior query blocks are overlapping strided views of k and v, and the
    clamped edge blocks are two more calls. q, k, v [B, h, N, d] (any strides, last dim contiguous) -> [B, h, N, d],
    written into ``out`` (e.g. a view of a larger tensor) when given; with ``lse``, (out, log-sum-exp [B, h, N])."""
    B, H, N, D = q.shape
    nb = N // block
    K = min(width, nb)
    if K == nb:
        dense = attend(q, k, v, lse)
        if not lse:
            return dense if out is None else out.copy_(dense)
        return (dense[0] if out is None else out.copy_(dense[0])), dense[1]
    out = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device) if out is None else out
    out_lse = torch.empty(B, H, N, device=q.device) if lse else None

    def put(at, got):
        if lse:
            got, out_lse[:, :, at] = got
        out[:, :, at] = got

    head_end = K // 2 + 1                                   # query blocks [0, head_end) see key blocks [0, K)
    tail_start = max(head_end, nb - K + K // 2)             # query blocks [tail_start, nb) see the last K
    rows = lambda a, b: slice(a * block, b * block)
    put(rows(0, head_end), attend(q[:, :, rows(0, head_end)], k[:, :, rows(0, K)], v[:, :, rows(0, K)], lse))
    put(rows(tail_start, nb), attend(q[:, :, rows(tail_start, nb)], k[:, :, rows(nb - K, nb)],
                                     v[:, :, rows(nb - K, nb)], lse))
    n = tail_start - head_end
    if n > 0:
        for b in range(B):                                  # [h, n, K*block, d] windows sliding by one block
            win = lambda t: t[b].as_strided((H, n, K * block, D), (t.stride(1), block * t.stride(2), t.stride(2), 1),
                                            t[b].storage_offset() + (head_end - K // 2) * block * t.stride(2))
            qi = q[b, :, rows(head_end, tail_start)].unflatten(1, (n, block))
            got = attend(qi, win(k), win(v), lse)
            if lse:
                out_lse[b, :, rows(head_end, tail_start)] = got[1].flatten(1, 2)
                got = got[0]
            out[b, :, rows(head_end, tail_start)] = got.flatten(1, 2)
    return (out, out_lse) if lse else out

"""Attention over a sequence split across processes: Ulysses, ring, and their 2-D combination (USP), exact.

Every process holds a contiguous part of the sequence (its queries, keys and values, [B, H, n_i, d]); parts may be
uneven (``sizes``). Shapes: B batch (x calls), H heads, n_i this process's tokens, n = sum(sizes), d head dim.

- **Ulysses** (DeepSpeed-Ulysses): one all-to-all turns sequence parts into head parts, so each of the U processes
  holds the whole sequence for H/U of the heads and runs any backend on it (sparse ones included, with the whole
  layout); a second all-to-all brings the output back to sequence parts. Head counts U does not divide: the
  H mod U remaining heads are not moved; their keys and values are all-gathered and each process attends its own
  queries to them (for a non-dense backend, which needs every query, the queries are gathered too and each process
  keeps its rows), so compute stays balanced and every head count works.
- **Ring** (Ring Attention): queries stay; the R parts of keys and values travel around the ring, one hop per
  step (sent while the current part is computed), and partial outputs are merged exactly with the log-sum-exp rule
  out = sum_j exp(lse_j - lse) out_j, lse = log sum_j exp(lse_j). Dense attention only: a sparse pattern needs all
  keys of a query at once.
- **USP** (Fang & Zhao, 2024): Ulysses inside groups of U, ring across the R groups; process (r, u) holds part
  r*U + u, so after the Ulysses all-to-all a process holds ring part r for its heads.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as differentiable

from ..models.attention import HeadSplit, merge_attention, sdpa, sdpa_with_lse
from .mesh import all_gather_rows, traffic


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sizes: list[int], index: int, group) -> torch.Tensor:
    """Queries q [B, H, m, d] (any part) against keys / values of the ring: this process holds part ``index``
    (k, v [B, H, sizes[index], d]); the R = len(sizes) parts travel around ``group``."""
    R = len(sizes)
    if R == 1:
        return sdpa(q, k, v)
    kv = torch.stack([k, v]).contiguous()                          # [2, B, H, n_r, d]: one message per hop
    send_to = dist.get_global_rank(group, (index + 1) % R)
    recv_from = dist.get_global_rank(group, (index - 1) % R)
    out = lse = None
    for step in range(R):
        pending = None
        if step < R - 1:                                           # the next part arrives while this one computes
            incoming = kv.new_empty(2, *kv.shape[1:3], sizes[(index - step - 1) % R], kv.shape[-1])
            pending = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, send_to, group),
                                              dist.P2POp(dist.irecv, incoming, recv_from, group)])
            traffic.add(kv, 1)
        part, part_lse = sdpa_with_lse(q, kv[0], kv[1])
        out, lse = (part.float(), part_lse) if out is None else merge_attention(out, lse, part, part_lse)
        if pending is not None:
            for request in pending:
                request.wait()
            kv = incoming
    return out.to(q.dtype)


def head_backend(backend, start: int, stop: int):
    """The backend of heads [start, stop) of a layer (a :class:`HeadSplit` is cut to those heads)."""
    return backend.subset(start, stop) if isinstance(backend, HeadSplit) else backend


def all_to_all(parts: list[torch.Tensor], receive: list[tuple[int, ...]], group) -> list[torch.Tensor]:
    """Send ``parts[j]`` to process j of ``group``; returns the tensors received, of shapes ``receive``
    (differentiable when the parts require grad)."""
    send = torch.cat([p.reshape(-1) for p in parts])
    counts = [math.prod(s) for s in receive]
    if send.requires_grad:                                 # training: the backward pass is the reverse all-to-all
        out = differentiable.all_to_all_single_autograd(send, counts, [p.numel() for p in parts], group)
        out = differentiable.wait_tensor(out)
    else:
        out = send.new_empty(sum(counts))
        dist.all_to_all_single(out, send, counts, [p.numel() for p in parts], group=group)
    for j, p in enumerate(parts):
        if j != dist.get_rank(group):                        # its own part stays
            traffic.add(p, 1)
    return [chunk.view(s) for chunk, s in zip(out.split(counts), receive)]


def sequence_attention(shard, backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout) -> torch.Tensor:
    """Attention of this process's queries over the whole sequence of ``shard`` (a
    :class:`~ditkit.parallel.sequence.SequenceShard`): q, k, v [B, H, n_i, d] -> [B, H, n_i, d]. ``backend`` (None:
    dense) gets the whole sequence of its heads and ``layout`` without the shard."""
    U, R = shard.ulysses_size, shard.ring_size
    u, r = shard.ulysses_index, shard.ring_index
    whole = layout.__class__(layout.frames, layout.height, layout.width, layout.text)
    dense = backend is None
    if R > 1 and q.requires_grad:
        raise ValueError("ring attention is for inference here (its key / value exchange has no backward pass): "
                         "train with train.ulysses_degree")
    if not dense and R > 1:
        raise ValueError("a sparse or custom attention backend needs every key of a query at once, which ring "
                         "attention does not give: use --ulysses-degree instead of --ring-degree with it")
    ring_sizes = [sum(shard.sizes[g * U:(g + 1) * U]) for g in range(R)]      # tokens of each ring part
    mine = shard.sizes[r * U:(r + 1) * U]                                    # Ulysses parts of my ring part
    B, H, n, d = q.shape
    per, rest = divmod(H, U)

    def attend(qh, kh, vh, start, stop):                   # whole ring part of heads [start, stop)
        if dense:
            return ring_attention(qh, kh, vh, ring_sizes, r, shard.ring_group)
        return head_backend(backend, start, stop)(qh, kh, vh, whole)

    if U == 1:
        return attend(q, k, v, 0, H)
    out = q.new_empty(B, H, n, d)
    if per:
        qkv = torch.stack([q, k, v])[:, :, :U * per].unflatten(2, (U, per))     # [3, B, U, per, n, d]
        received = all_to_all([qkv[:, :, j] for j in range(U)], [(3, B, per, m, d) for m in mine], shard.ulysses_group)
        qh, kh, vh = torch.cat(received, dim=3).unbind(0)                          # [B, per, n_ring, d]
        heads = attend(qh, kh, vh, u * per, (u + 1) * per)
        offsets = [0, *torch.tensor(mine).cumsum(0).tolist()]
        back = all_to_all([heads[:, :, offsets[j]:offsets[j + 1]] for j in range(U)], [(B, per, n, d)] * U,
                          shard.ulysses_group)
        out[:, :U * per] = torch.cat(back, dim=1)
    if rest:                                               # heads U does not divide: gather their keys and values
        tail = slice(U * per, H)
        kt = all_gather_rows(k[:, tail], mine, 2, shard.ulysses_group)
        vt = all_gather_rows(v[:, tail], mine, 2, shard.ulysses_group)
        if dense:
            out[:, tail] = ring_attention(q[:, tail], kt, vt, ring_sizes, r, shard.ring_group)
        else:
            qt = all_gather_rows(q[:, tail], mine, 2, shard.ulysses_group)
            start = sum(mine[:u])
            out[:, tail] = head_backend(backend, U * per, H)(qt, kt, vt, whole)[:, :, start:start + n]
    return out


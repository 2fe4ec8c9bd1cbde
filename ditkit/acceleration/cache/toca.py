"""ToCa, token-wise caching (Zou et al., ICLR 2025; Shenyi-Z/ToCa): between full steps every attention output is
reused and each MLP refreshes only its top-scoring tokens, scattering them back into the cache.

Score of a token = how much attention it received at the last full step (column sum of the attention map, mean
over heads, normalised by its max) + 0.25 x (steps since its last refresh) / interval; the best token of every 2x2
cell of the token grid then gets a bonus of 0.6 x max score. The refreshed fraction is
rho = ratio * f_step * f_layer * 2.5 (MLP factor; attention's is 0), f_step = 1 + w_s - 2 w_s s / N,
f_layer = 1 + w_l - 2 w_l l / (L - 1), clamped to [0, 1]. Defaults: the reference's DiT DDIM-50 setting
(interval 3, ratio 0.07, w_s 2.0, w_l -0.2). Scores need explicit attention probabilities: on full steps they are
computed next to the model's attention backend (an extra n x n product per attention call, counted in FLOPs), from
the block's last attention branch (a VDT block: its spatial attention, after the temporal one), mapped back to token
order; the cell bonus applies per frame. Only token-wise branches (MLPs) refresh tokens; attention
branches are reused whole.

Under sequence parallelism every process scores its own queries against all keys (gathered), the column sums and
the normalising max are reduced over the processes, and the selection runs on the gathered score map, so every
process refreshes exactly the tokens one process would (each recomputes those in its part)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ...hooks.method import param, register
from ...hooks.points import HookPoints
from ...models.attention import Attention, TokenLayout
from ...models.stack import attention_to_tokens
from .base import ModuleCacheMethod

MLP_FACTOR, STALENESS_WEIGHT, CELL_BONUS = 2.5, 0.25, 0.6


@register
@dataclasses.dataclass
class ToCa(ModuleCacheMethod):
    name: ClassVar[str] = "toca"
    knob: ClassVar[tuple] = ("interval", (2, 3, 4, 5, 6, 8, 10, 12))
    interval: int = param(3, low=1)
    ratio: float = param(0.07, low=0, high=1)
    step_weight: float = param(2.0)
    layer_weight: float = param(-0.2)

    def is_full(self, state) -> bool:
        return self.step % self.interval == 0

    def attach(self, model) -> None:
        if getattr(model, "whole_block_branches", False):
            raise ValueError(f"toca cannot apply to {type(model.model).__name__}: it refreshes the MLP output of "
                             f"selected tokens, but this adapted model's blocks are single whole-block branches "
                             f"(attention and MLP together); use fora, taylorseer or a whole-stack cache")
        super().attach(model)
        points = HookPoints.of(model)
        layers = model.attention_layers() if hasattr(model, "attention_layers") else \
            [m for m in model.modules() if isinstance(m, Attention)]
        for i, attn in enumerate(layers):
            points.set(f"attention.{i}.observer", self, attn, "observer", self._observe)
        self._scoring = None

    def _observe(self, q, k):
        """Attention observer: on a scoring branch, record the attention each token received, [N, T]."""
        if self._scoring is None:
            return
        state, i, branch = self._scoring
        shard, layout = self.layout.shard, self.layout
        if shard is not None:                         # this process's part of the tokens, whole frames
            frames = shard.sizes[shard.index] // (layout.height * layout.width) or 1
            layout = TokenLayout(frames, layout.height, layout.width) if frames > 1 or layout.frames > 1 else \
                TokenLayout(1, 1, shard.sizes[shard.index])
            call = None if branch.axis == "space" else shard if branch.axis == "all" else \
                shard.per(self.layout.height * self.layout.width)
        if shard is None or call is None:             # the call holds its whole sequences
            probs = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)    # [B', heads, n, n]
            received = probs.sum(dim=2).mean(dim=1)
        else:                                         # this part's queries against every key, summed over parts
            keys = call.gather(k, dim=2)
            probs = torch.softmax(q @ keys.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
            received = call.reduce(probs.sum(dim=2)).mean(dim=1)[:, call.start:call.stop]
        received = attention_to_tokens(received, branch.axis, layout)
        top = received.amax(dim=1, keepdim=True)
        state.cache[i, "score"] = received / (top if shard is None else shard.reduce(top, dist.ReduceOp.MAX))

    def compute(self, state, i, branch, x):
        """Compute the branch; an attention branch also records the token scores of block i."""
        if self.interval == 1 or branch.attention is None:
            return branch(x)
        self._scoring = (state, i, branch)
        try:
            return branch(x)
        finally:
            self._scoring = None

    def computed(self, state, key, out):
        state.cache[key] = out
        state.cache[key, "refreshed"] = torch.full(out.shape[:2], self.step, dtype=torch.float32, device=out.device)

    def _fraction(self, layer: int) -> float:
        depth = max(len(self.model.stack_blocks) - 1, 1)
        f_step = 1 + self.step_weight - 2 * self.step_weight * self.step / self.num_steps
        f_layer = 1 + self.layer_weight - 2 * self.layer_weight * layer / depth
        return min(max(self.ratio * f_step * f_layer * MLP_FACTOR, 0.0), 1.0)

    def _select(self, state, key, k: int) -> torch.Tensor:
        """Indices [N, k] of the tokens to refresh (of the whole sequence)."""
        staleness = (self.step - state.cache[key, "refreshed"]) / self.interval
        score = state.cache[key[0], "score"] + STALENESS_WEIGHT * staleness
        if self.layout.shard is not None:
            score = self.layout.shard.gather(score)
        n, (frames, h, w) = score.shape[0], self.layout.shape
        _, best = F.max_pool2d(score.view(n * frames, 1, h, w), 2, ceil_mode=True, return_indices=True)
        best = (best.view(n, frames, -1) + h * w * torch.arange(frames, device=best.device).view(1, -1, 1)).flatten(1)
        score = score.scatter_add(1, best, CELL_BONUS * score.amax(1, keepdim=True).expand_as(best))
        return score.topk(k, dim=1).indices

    def reuse(self, state, key, branch, x):
        cached = state.cache[key]
        shard = self.layout.shard
        k = int(self._fraction(key[0]) * (x.shape[1] if shard is None else sum(shard.sizes)))
        if not branch.token_wise or k == 0 or (key[0], "score") not in state.cache:
            return cached
        idx = self._select(state, key, k)
        refreshed = state.cache[key, "refreshed"]
        if shard is None:
            gather = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            cached = cached.scatter(1, gather, branch.compute(branch.prepare(x).gather(1, gather)))
            refreshed.scatter_(1, idx, float(self.step))
        else:
            cached = self._refresh_part(shard, idx, branch, x, cached, refreshed)
        state.cache[key] = cached
        return cached

    def _refresh_part(self, shard, idx, branch, x, cached, refreshed):
        """The selected tokens of the whole sequence, idx [N, k], that fall in this process's part, recomputed.
        Rows select different numbers of them, so the others are padded with a selected token of the row (the same
        value is written twice) or, in a row with none, with token 0 rewritten unchanged."""
        mine = (idx >= shard.start) & (idx < shard.stop)
        local = idx - shard.start
        fill = torch.where(mine.any(1), local.masked_fill(~mine, local.max() + 1).amin(1), 0)
        local = torch.where(mine, local, fill[:, None])
        gather = local.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        fresh = branch.compute(branch.prepare(x).gather(1, gather))
        keep = ~mine.any(1, keepdim=True)                             # rows with nothing to refresh here
        fresh = torch.where(keep[..., None], cached.gather(1, gather), fresh)
        stamp = torch.where(keep, refreshed.gather(1, local), torch.full_like(local, self.step, dtype=refreshed.dtype))
        refreshed.scatter_(1, local, stamp)
        return cached.scatter(1, gather, fresh)

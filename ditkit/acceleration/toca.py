"""ToCa, token-wise caching (Zou et al., ICLR 2025; Shenyi-Z/ToCa): between full steps every attention output is
reused and each MLP refreshes only its top-scoring tokens, scattering them back into the cache.

Score of a token = how much attention it received at the last full step (column sum of the attention map, mean
over heads, normalised by its max) + 0.25 x (steps since its last refresh) / interval; the best token of every 2x2
cell of the token grid then gets a bonus of 0.6 x max score. The refreshed fraction is
rho = ratio * f_step * f_layer * 2.5 (MLP factor; attention's is 0), f_step = 1 + w_s - 2 w_s s / N,
f_layer = 1 + w_l - 2 w_l l / (L - 1), clamped to [0, 1]. Defaults: the reference's DiT DDIM-50 setting
(interval 3, ratio 0.07, w_s 2.0, w_l -0.2). Scores need explicit attention probabilities: on full steps they are
computed next to the model's attention backend (an extra T x T product per layer, counted in FLOPs)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..models.attention import sdpa
from .modulecache import ModuleCacheMethod
from .registry import register

MLP_FACTOR, STALENESS_WEIGHT, CELL_BONUS = 2.5, 0.25, 0.6


@register
@dataclasses.dataclass
class ToCa(ModuleCacheMethod):
    name: ClassVar[str] = "toca"
    bench_settings: ClassVar[tuple[str, ...]] = ("toca", "toca:interval=5")
    interval: int = 3
    ratio: float = 0.07
    step_weight: float = 2.0
    layer_weight: float = -0.2

    def __post_init__(self):
        if self.interval < 1 or not 0 <= self.ratio <= 1:
            raise ValueError(f"toca: need interval >= 1 and 0 <= ratio <= 1, got interval={self.interval}, "
                             f"ratio={self.ratio}")
        super().__post_init__()

    def is_full(self, state) -> bool:
        return self.step % self.interval == 0

    def full_attention(self, state, i, fn, x):
        """Compute the attention output and record the attention each token received, [N, T]."""
        if self.interval == 1:
            return fn(x)
        attn = self.model.blocks[i].attn
        inner = attn.backend or sdpa

        def scoring(q, k, v, layout):
            probs = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)   # [N, heads, T, T]
            received = probs.sum(dim=2).mean(dim=1)
            state.cache[i, "score"] = received / received.amax(dim=1, keepdim=True)
            return inner(q, k, v, layout)
        attn.backend = scoring
        try:
            return fn(x)
        finally:
            attn.backend = None if inner is sdpa else inner

    def computed(self, state, key, out):
        state.cache[key] = out
        state.cache[key[0], "refreshed"] = torch.full(out.shape[:2], self.step, dtype=torch.float32)

    def _fraction(self, layer: int) -> float:
        depth = max(len(self.model.blocks) - 1, 1)
        f_step = 1 + self.step_weight - 2 * self.step_weight * self.step / self.num_steps
        f_layer = 1 + self.layer_weight - 2 * self.layer_weight * layer / depth
        return min(max(self.ratio * f_step * f_layer * MLP_FACTOR, 0.0), 1.0)

    def _select(self, state, layer: int, k: int) -> torch.Tensor:
        """Indices [N, k] of the tokens to refresh."""
        staleness = (self.step - state.cache[layer, "refreshed"]) / self.interval
        score = state.cache[layer, "score"] + STALENESS_WEIGHT * staleness
        n, (h, w) = score.shape[0], self.model.grid
        _, best = F.max_pool2d(score.view(n, 1, h, w), 2, ceil_mode=True, return_indices=True)
        best = best.flatten(1)
        score = score.scatter_add(1, best, CELL_BONUS * score.amax(1, keepdim=True).expand_as(best))
        return score.topk(k, dim=1).indices

    def reuse(self, state, key, fn, x):
        layer, kind = key
        cached = state.cache[key]
        k = int(self._fraction(layer) * x.shape[1])
        if kind == "attn" or k == 0:
            return cached
        idx = self._select(state, layer, k)
        gather = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        cached = cached.scatter(1, gather, fn(x.gather(1, gather)))
        state.cache[key] = cached
        state.cache[layer, "refreshed"].scatter_(1, idx, float(self.step))
        return cached

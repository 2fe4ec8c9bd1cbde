"""CFG parallelism: the conditional and unconditional halves of a batched guidance call on different processes.

A batched classifier-free-guidance call evaluates [cond; uncond] (2N rows) at once; :class:`CfgParallel` gives the
cond half to process 0 of the ``cfg`` group and the uncond half to process 1, then all-gathers the two halves, so
the guidance that follows is unchanged. A recipe on each process is told the half it computes
("cond+uncond/cond" or "cond+uncond/uncond"): its per-sample state is that of those rows in the one-process batched
call. Calls with guidance off (the conditional branch alone) run whole on both processes.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .mesh import ParallelState, traffic

HALVES = ("cond", "uncond")


class CfgParallel:
    """``model_fn(x, t, *cond)`` for :class:`~ditkit.diffusion.guidance.GuidedModel`, with :meth:`branch` as its
    branch callback; ``begin_branch`` is the recipe's."""

    def __init__(self, model_fn, state: ParallelState, begin_branch):
        self.model_fn, self.state, self.begin_branch = model_fn, state, begin_branch
        self.split = False

    def branch(self, name: str) -> None:
        self.split = name == "cond+uncond"
        self.begin_branch(f"{name}/{HALVES[self.state.index('cfg')]}" if self.split else name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return self.model_fn(x, t, *cond)
        half = x.shape[0] // 2
        rows = slice(self.state.index("cfg") * half, (self.state.index("cfg") + 1) * half)
        out = self.model_fn(x[rows], t[rows], *(c[rows] for c in cond)).contiguous()
        parts = [torch.empty_like(out) for _ in HALVES]
        dist.all_gather(parts, out, group=self.state.group("cfg"))
        traffic.add(out, 1)
        return torch.cat(parts)

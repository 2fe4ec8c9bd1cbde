"""Exact, noise-free compute accounting: transformer block evaluations counted at the branch level.

Every branch computation of a block adds rows x tokens / (T x branches of the block), so a full block on one sample
counts 1, a skipped one 0, and ToCa's partial MLP refresh of k of T tokens counts k / (T x branches). It works on
any model implementing the block-stack contract (it takes each block's ``branches`` as a hook point)."""
from __future__ import annotations

import dataclasses
from collections import defaultdict

from ..hooks.points import HookPoints
from ..models.stack import check_stack


class BlockCounter:
    """``with BlockCounter(model) as counter: ...`` then ``counter.blocks`` (float, sample-block evaluations)."""

    name = "block counter"

    def __init__(self, model):
        check_stack(model)
        self.model = model
        self.row_tokens: dict[int, int] = defaultdict(int)   # T x branches -> rows x tokens computed (exact integers)

    @property
    def blocks(self) -> float:
        return sum(n / per_block for per_block, n in self.row_tokens.items())

    def __enter__(self) -> "BlockCounter":
        points = HookPoints.of(self.model)
        for i, block in enumerate(self.model.stack_blocks):
            points.set(f"count.{i}", self, block, "branches", self._counted(block.branches))
        return self

    def _counted(self, branches):
        def counted(c, layout):
            found = branches(c, layout)
            per_block = layout.num_tokens * len(found)
            return [dataclasses.replace(b, compute=self._counting(b.compute, per_block)) for b in found]
        return counted

    def _counting(self, compute, per_block: int):
        def counted(h, *args, **kwargs):
            self.row_tokens[per_block] += h.shape[0] * h.shape[1]
            return compute(h, *args, **kwargs)
        return counted

    def __exit__(self, *exc):
        HookPoints.of(self.model).release(self)

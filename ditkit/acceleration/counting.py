"""Exact, noise-free compute accounting: transformer block evaluations counted at the branch level.

Every call of a block's ``attn_branch`` / ``mlp_branch`` adds rows x tokens / T half-blocks, so a full block on one
sample counts 1, a skipped one 0, and ToCa's partial MLP refresh of k of T tokens counts k / 2T."""
from __future__ import annotations


class BlockCounter:
    """``with BlockCounter(model) as counter: ...`` then ``counter.blocks`` (float, sample-block evaluations)."""

    def __init__(self, model):
        self.model = model
        self.half_blocks = 0.0

    @property
    def blocks(self) -> float:
        return self.half_blocks / 2

    def __enter__(self) -> "BlockCounter":
        tokens = self.model.grid[0] * self.model.grid[1]
        self._saved = []
        for block in self.model.blocks:
            for name in ("attn_branch", "mlp_branch"):
                self._saved.append((block, name, block.__dict__.get(name)))
                block.__dict__[name] = self._counted(getattr(block, name), tokens)
        return self

    def _counted(self, fn, tokens: int):
        def counted(x, *args, **kwargs):
            self.half_blocks += x.shape[0] * x.shape[1] / tokens
            return fn(x, *args, **kwargs)
        return counted

    def __exit__(self, *exc):
        for block, name, prev in reversed(self._saved):
            if prev is None:
                block.__dict__.pop(name)
            else:
                block.__dict__[name] = prev

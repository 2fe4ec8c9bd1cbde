"""The block-stack contract: what a model exposes to accelerations, so that no method depends on a model class.

A model implementing it (``DiT``, ``VideoDiT`` in every layout, the linear-attention LiT student, and the
diffusers adapters) offers:

    embed(x, t, **cond) -> (tokens [N, T, D], c)    c: conditioning, batch first: [N, D] (one vector per sample)
                                                     or [N, G, D] (one per group of T/G consecutive tokens,
                                                     e.g. per frame)
    stack_blocks                                     the transformer blocks, in order (a sequence)
    token_layout(T) -> TokenLayout                   frames x height x width of the T tokens (frame-major)
    run_stack(tokens, c) -> tokens                   the whole stack; the hook point caching methods take
    head(tokens, c) -> output                        final layer and unpatchify
    attention_layers() (optional)                    the softmax attention layers (objects with ``num_heads``,
                                                     ``backend``, ``observer``), when they are not ditkit Attention
                                                     modules

An adapted diffusers transformer embeds and finishes inside its own forward: its ``embed`` and ``head`` are None
and only the stack is exposed.

and ``forward(x, t, **cond) = head(run_stack(*embed(x, t, **cond)))``. A block offers ``branches(c, layout)``:
its residual branches in order, each a :class:`Branch`. The block computes ``x <- branch.add(x, branch(x))`` for
each branch (:func:`run_blocks`); a caching method may instead reuse or forecast a branch output, or skip blocks.
An adaLN-Zero block has attention and MLP branches whose inputs are modulated and outputs gated by the
conditioning; a plain pre-norm block (``x + attn(norm(x))``) is a branch with ``gate=None``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .attention import Attention, TokenLayout

AXES = ("all", "space", "time")       # tokens one attention call sees: all T, one frame, one position over frames


def grouped(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x [N, T, D] viewed as [N, G, T/G, D] against v [N, G, D] (or [N, D], G = 1): returns the view and v
    broadcastable to it."""
    v = v if v.dim() == 3 else v.unsqueeze(1)
    return x.view(x.shape[0], v.shape[1], -1, x.shape[-1]), v.unsqueeze(2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift; x [N, T, D], shift / scale [N, D] or per token group [N, G, D]."""
    if shift.dim() == 2:
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    xg, scale = grouped(x, scale)
    return (xg * (1 + scale) + shift.unsqueeze(2)).view_as(x)


@dataclass
class Branch:
    """One residual branch of a block: ``x + gate * compute(prepare(x))``.

    ``prepare`` maps the block input x [N, T, D] to the branch input (norm, adaLN modulation); ``compute`` is the
    module itself (attention, MLP); ``gate`` [N, D] or [N, G, D] scales its output (None: gate 1). ``attention`` is
    the branch's :class:`Attention` module (None for an MLP) and ``axis`` which tokens one of its calls sees.
    ``whole_block``: the branch is a whole block, attention included (an adapted diffusers block), so it mixes tokens
    even without an ``attention`` module. ``positional``: the branch treats each token by where it is (cross-attention
    to per-frame captions), so it does not run on a subset of tokens either."""

    name: str
    prepare: Callable[[torch.Tensor], torch.Tensor]
    compute: Callable[[torch.Tensor], torch.Tensor]
    gate: torch.Tensor | None = None
    attention: Attention | None = None
    axis: str = "all"
    whole_block: bool = False
    positional: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The branch output before gating, [N, T, D]."""
        return self.compute(self.prepare(x))

    def add(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The block's residual update with this branch's (computed, reused or forecast) output."""
        if self.gate is None:
            return x + out
        if self.gate.dim() == 2:
            return x + self.gate.unsqueeze(1) * out
        og, gate = grouped(out, self.gate)
        return x + (gate * og).view_as(x)

    @property
    def token_wise(self) -> bool:
        """True if ``compute`` treats tokens independently (an MLP), so it may run on a subset of tokens."""
        return self.attention is None and not self.whole_block and not self.positional


def run_blocks(blocks: Sequence, tokens: torch.Tensor, c: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Blocks in order, every branch computed: tokens [N, T, D] -> [N, T, D]."""
    for block in blocks:
        for branch in block.branches(c, layout):
            tokens = branch.add(tokens, branch(tokens))
    return tokens


def attention_to_tokens(received: torch.Tensor, axis: str, layout: TokenLayout) -> torch.Tensor:
    """Per-key values of one attention call, [B', n] with B' = N x (calls per sample), in token order [N, T]."""
    F, S = layout.frames, layout.height * layout.width
    if axis == "time":                                           # [N*S, F] -> [N, F*S]
        return received.view(-1, S, F).transpose(1, 2).reshape(-1, F * S)
    return received.reshape(-1, layout.num_tokens)


def check_stack(model) -> None:
    """Raise a clear error unless ``model`` implements the block-stack contract."""
    missing = [a for a in ("embed", "stack_blocks", "token_layout", "run_stack", "head") if not hasattr(model, a)]
    if missing:
        raise ValueError(f"{type(model).__name__} does not implement ditkit's block-stack contract (missing "
                         f"{', '.join(missing)}): accelerations apply to ditkit models and adapted diffusers "
                         f"transformers (see ditkit.models.stack)")

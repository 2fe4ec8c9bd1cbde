"""Regional compilation of the block stack: ``torch.compile`` applied, in place, to the modules every block repeats
(each :class:`~ditkit.models.attention.Attention` and :class:`~ditkit.models.dit.Mlp`), not to the whole network.

One compiled region per module kind serves every block (the blocks share code and shapes), so compilation costs
seconds, not minutes, and the rest stays eager: the stack loop, each branch's norm and modulation, and every
recipe's Python-side decisions (caching schedules and per-sample skips in the stack runner; attention backends and
observers, which :func:`~ditkit.models.attention.eager` keeps out of the compiled graph). Recipes therefore attach
and detach on a compiled model as on an eager one.

    compile_blocks(pipe.model)            # then pipe(...) as usual, with or without a recipe
"""
from __future__ import annotations

import torch

from .attention import Attention
from .dit import Mlp


def compile_blocks(model: torch.nn.Module, **options) -> torch.nn.Module:
    """Compile every attention and MLP module of ``model`` in place (``options`` go to ``torch.compile``, e.g.
    ``mode="max-autotune-no-cudagraphs"``); returns the model."""
    regions = [m for m in model.modules() if isinstance(m, (Attention, Mlp))]
    if not regions:
        raise ValueError(f"{type(model).__name__} has no ditkit Attention or Mlp modules to compile")
    for module in regions:
        module.compile(**options)
    return model

"""What every feature-caching method shares: the hook on the block stack, per-generation state, per-sample skips.

A :class:`CachingMethod` replaces ``model.run_blocks`` on the instance (and wraps ``model.embed`` to see the
timestep of each call). Its state lives in ``self.states``, one entry per (branch, token shape, step count), created
on first use and cleared by ``reset`` at every generation, so changing steps, resolution or batch between calls
just works and the cond / uncond branches never share a cache. Rows of a batch never mix: in a batched CFG call
("cond+uncond", first half conditional) every row keeps its own tensors and ``self.row_branch`` says which branch
each row belongs to, so decisions are per sample and identical to generating the samples one at a time.

``self.trace`` records, for every network call, ``(step, branch, computed)`` with ``computed`` a per-row list of
bools (whole-stack methods) or one bool (schedule-driven methods): the skip pattern tests and the bench read it.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import torch

from .registry import Method

BRANCH_ROWS = {"cond": ("cond",), "uncond": ("uncond",), "cond+uncond": ("cond", "uncond"),
               "free": ("free",)}                       # video context guidance's nothing-given call


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample relative L1 change mean|a - b| / mean|b| over all but the first dim: [N, ...] x2 -> [N]."""
    return (a - b).abs().flatten(1).mean(1) / b.abs().flatten(1).mean(1).clamp_min(1e-12)


@dataclasses.dataclass
class CachingMethod(Method):
    """Base class; subclasses implement ``new_state()`` and ``forward(state, tokens [N, T, D], c [N, D])``."""

    def __post_init__(self):
        self.model = None
        self.reset(0)

    # --- life cycle -------------------------------------------------------------------------------------------
    def attach(self, model) -> None:
        if not all(hasattr(model, a) for a in ("blocks", "embed", "run_blocks", "layout")) or \
                not all(hasattr(b, "attn_branch") for b in getattr(model, "blocks", [])):
            raise ValueError(f"{self.name} needs a ditkit DiT (embed / run_blocks / blocks of DiTBlock with "
                             f"attn_branch and mlp_branch); got {type(model).__name__}")
        owner = model.__dict__.get("_ditkit_stack_owner")
        if owner is not None:
            raise ValueError(f"{self.name} cannot be combined with {owner}: both replace the transformer block stack "
                             f"(use one caching method per recipe)")
        self.model = model
        self._saved = {k: model.__dict__.get(k) for k in ("embed", "run_blocks", "_ditkit_stack_owner")}
        embed = model.embed

        def embed_and_record_t(x, t, *args, **kwargs):
            self.t = t
            return embed(x, t, *args, **kwargs)
        model.embed, model.run_blocks, model._ditkit_stack_owner = embed_and_record_t, self._run_blocks, self.name

    def detach(self, model) -> None:
        if self.model is not model:
            return
        for k, v in self._saved.items():
            if v is None:
                model.__dict__.pop(k, None)
            else:
                model.__dict__[k] = v
        self.model = None

    def reset(self, num_steps: int) -> None:
        self.num_steps, self.step, self.branch, self.t = num_steps, None, "cond", None
        self.states: dict[tuple, Any] = {}
        self.trace: list[tuple[int, str, Any]] = []

    def begin_step(self, step: int, num_steps: int) -> None:
        self.step, self.num_steps = step, num_steps

    def begin_branch(self, branch: str) -> None:
        if branch not in BRANCH_ROWS:
            raise ValueError(f"unknown CFG branch {branch!r}; valid: {', '.join(BRANCH_ROWS)}")
        self.branch = branch

    # --- the hook ---------------------------------------------------------------------------------------------
    def _run_blocks(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.step is None:
            raise RuntimeError(f"{self.name} needs the sampler's step index: generate through DiTPipeline, or call "
                               f"recipe.reset(num_steps) and recipe.begin_step(i, num_steps) around model calls")
        names = BRANCH_ROWS[self.branch]
        if tokens.shape[0] % len(names):
            raise ValueError(f"a {self.branch!r} call needs an even batch (first half cond), got {tokens.shape[0]}")
        per = tokens.shape[0] // len(names)
        self.row_branch = [n for n in names for _ in range(per)]
        key = (self.branch, tuple(tokens.shape), self.num_steps)
        if key not in self.states:
            self.states[key] = self.new_state()
        return self.forward(self.states[key], tokens, c)

    def new_state(self) -> SimpleNamespace:
        """Fresh state for one (branch, shape, steps) key; ``residual`` is what ``run_rows`` uses."""
        return SimpleNamespace(residual=None)

    def forward(self, state, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- helpers for subclasses -------------------------------------------------------------------------------
    def run(self, tokens: torch.Tensor, c: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks [start, stop) of the stack, computed normally."""
        layout = self.model.layout
        for block in self.model.blocks[start:stop]:
            tokens = block(tokens, c, layout)
        return tokens

    def run_rows(self, state, tokens: torch.Tensor, c: torch.Tensor, compute: torch.Tensor, start: int = 0):
        """Whole-stack residual skip, per sample: rows where ``compute`` [N] is True run blocks [start, L) and
        refresh ``state.residual``; the others return tokens + their cached residual. Rows without a residual yet
        are computed."""
        if state.residual is None:
            compute = torch.ones_like(compute)
        self.trace.append((self.step, self.branch, compute.tolist()))
        if bool(compute.all()):
            out = self.run(tokens, c, start)
            state.residual = out - tokens
            return out
        out = tokens + state.residual
        idx = compute.nonzero().squeeze(1)
        if idx.numel():
            fresh = self.run(tokens[idx], c[idx], start)
            out[idx] = fresh
            state.residual[idx] = fresh - tokens[idx]
        return out


"""Sequence parallelism for any model implementing the block-stack contract (:mod:`ditkit.models.stack`).

:class:`SequenceParallel` takes three hook points of the model (``embed``, ``token_layout``, ``head``): after
``embed`` every process of the ring x Ulysses sequence group keeps only its contiguous part of the tokens (and of a
per-frame conditioning), the block stack runs on that part, and ``head`` gathers the whole sequence again. Token-wise
work (norms, modulation, MLPs, projections) is split with no communication; every attention call goes through
:class:`~ditkit.models.attention.Attention`, whose layout carries the :class:`SequenceShard`, and runs Ulysses, ring
or USP across the processes (:mod:`ditkit.parallel.attention`). Models with rotary embeddings rotate their part with
the global positions (``Rotary.part``); a video DiT's per-frame attention stays local (whole frames per process)
and its per-position attention over frames is split along the frames.

Caching methods see the same stack hook as on one process; what they decide from (relative changes of features) is
summed over all tokens of the group (:meth:`SequenceShard.token_sum`), so every process makes the same decision and
the output equals the one-process output.

Parts: with per-frame conditioning (``c`` [N, F', D]) each process holds whole frames (F' >= processes), else an
even split of the tokens; uneven parts are exact (the collectives take per-process sizes), not padded.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist

from ..hooks.points import HookPoints
from ..models.attention import LinearAttention
from ..models.stack import check_stack
from .attention import sequence_attention
from .mesh import ParallelState, all_gather_rows, traffic


def split(total: int, parts: int) -> list[int]:
    """``total`` units in ``parts`` contiguous parts as even as possible, the longer parts first."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


@dataclass(frozen=True)
class SequenceShard:
    """This process's part of a sequence split over the sequence group: ``sizes`` are the parts' lengths in sequence
    order, ``index`` this process's part (ring index x Ulysses degree + Ulysses index)."""

    sizes: tuple[int, ...]
    index: int
    state: ParallelState = field(compare=False, repr=False)

    @property
    def start(self) -> int:
        return sum(self.sizes[:self.index])

    @property
    def stop(self) -> int:
        return self.start + self.sizes[self.index]

    @property
    def ulysses_size(self) -> int:
        return self.state.size("ulysses")

    @property
    def ring_size(self) -> int:
        return self.state.size("ring")

    @property
    def ulysses_index(self) -> int:
        return self.state.index("ulysses")

    @property
    def ring_index(self) -> int:
        return self.state.index("ring")

    @property
    def ulysses_group(self):
        return self.state.group("ulysses")

    @property
    def ring_group(self):
        return self.state.group("ring")

    def per(self, unit: int) -> "SequenceShard":
        """The same split counted in units of ``unit`` tokens (frames of ``unit`` tokens each)."""
        return SequenceShard(tuple(s // unit for s in self.sizes), self.index, self.state)

    def attention(self, backend, q, k, v, layout):
        """Attention of this part's queries over the whole sequence (Ulysses / ring / USP)."""
        return sequence_attention(self, backend, q, k, v, layout)

    def reduce(self, x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """x reduced elementwise over the sequence group (in place; returned)."""
        dist.all_reduce(x, op=op, group=self.state.sequence_group)
        traffic.add(x, len(self.sizes) - 1)
        return x

    def token_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample sum over every token of the sequence: x [N, n_i, ...] (this part) -> [N]."""
        return self.reduce(x.flatten(1).sum(1))

    def token_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample mean over every element of the whole sequence: x [N, n_i, ...] -> [N]."""
        return self.token_sum(x) / (sum(self.sizes) * x[0, 0].numel())

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This part x [N, n_i, ...] (the sequence along ``dim``) -> the whole sequence [N, n, ...] on every
        process."""
        return all_gather_rows(x, list(self.sizes), dim, self.state.sequence_group)


class SequenceParallel:
    """Sequence parallelism installed on a model (hook points ``embed``, ``token_layout``, ``head``); ``detach``
    restores the model exactly."""

    name = "sequence parallelism"

    def __init__(self, state: ParallelState):
        self.state = state
        self.shard = self.layout = self.c = None

    @property
    def degree(self) -> int:
        return self.state.size("ring") * self.state.size("ulysses")

    def attach(self, model) -> None:
        if getattr(model, "embed", None) is None:
            raise ValueError("sequence parallelism needs the model's own embedding and head (ditkit models); adapted "
                             "diffusers transformers run on one process, or with --cfg-parallel")
        check_stack(model)
        if any(isinstance(m, LinearAttention) for m in model.modules()):
            raise ValueError("sequence parallelism does not split linear attention's depth-wise convolution yet: run "
                             "linear-attention (LiT) models on one process")
        heads = {m.num_heads for m in model.modules() if hasattr(m, "num_heads") and hasattr(m, "backend")}
        for h in heads:
            self.state.config.check_heads(h)
        points = HookPoints.of(model)
        self.model_embed, self.model_layout, self.model_head = model.embed, model.token_layout, model.head
        points.set("embed", self, model, "embed", self.embed)
        points.set("token_layout", self, model, "token_layout", self.token_layout)
        points.set("head", self, model, "head", self.head)

    def detach(self, model) -> None:
        HookPoints.of(model).release(self)

    def embed(self, *args, **kwargs):
        """The model's embedding, then this process's part: tokens [N, n_i, D] and conditioning [N, D] or the
        frames of the part [N, F'_i, D]."""
        tokens, c = self.model_embed(*args, **kwargs)
        T = tokens.shape[1]
        frames = c.shape[1] if c.dim() == 3 else 1
        if frames > 1:
            if frames < self.degree:
                raise ValueError(f"{frames} token frames cannot be split over {self.degree} processes of sequence "
                                 f"parallelism (each holds whole frames, the conditioning being per frame): generate "
                                 f"at least {self.degree} frames or lower --ulysses-degree x --ring-degree")
            unit = T // frames
            sizes = [n * unit for n in split(frames, self.degree)]
        else:
            if T < self.degree:
                raise ValueError(f"{T} tokens cannot be split over {self.degree} processes of sequence parallelism")
            unit, sizes = 1, split(T, self.degree)
        self.shard = SequenceShard(tuple(sizes), self.state.sequence_index, self.state)
        self.layout = replace(self.model_layout(T), shard=self.shard)
        self.c = c
        start, stop = self.shard.start, self.shard.stop
        return tokens[:, start:stop], (c[:, start // unit:stop // unit] if frames > 1 else c)

    def token_layout(self, num_tokens: int):
        """Inside a forward, the layout of the whole sequence with this process's shard."""
        if self.shard is not None and num_tokens == self.shard.sizes[self.shard.index]:
            return self.layout
        return self.model_layout(num_tokens)

    def head(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Gather the whole sequence, then the model's head with the whole conditioning."""
        return self.model_head(self.shard.gather(tokens), self.c)

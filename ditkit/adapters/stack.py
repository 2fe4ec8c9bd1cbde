"""A diffusers transformer behind ditkit's block-stack contract, from a declaration of how it runs its blocks.

A :class:`BlockStack` says which ModuleList(s) hold the blocks, which block argument holds the image tokens (and,
for dual-stream blocks, the text tokens they update too), what a block returns, which attention modules are
self-attention, and how to read the token grid off the forward's inputs. :class:`StackAdapter` then makes the
transformer offer ``stack_blocks``, ``token_layout``, ``run_stack`` and ``attention_layers`` without touching the
model's own code:

- its block lists are swapped for :class:`_StackList` (the same modules, so the same state-dict keys) whose
  iteration yields one :class:`_StackRun`: the model's own forward computes its embeddings, calls "the first block"
  with the arguments every block takes, and gets back what the last block would have returned, computed by
  ``adapter.run_stack(tokens, c)``; later lists iterate empty;
- tokens are the image tokens [N, T, D], or text then image tokens [N, L + T, D] for dual-stream blocks; ``c`` is a
  :class:`BlockArgs` holding every other block argument (timestep embedding, text states, masks, rotary tables),
  row-indexable so caches can run a subset of the samples;
- a block is its attention / MLP branches where its class is written out (:mod:`ditkit.adapters.blocks`: DiT,
  PixArt), else one residual branch ``block(x) - x`` (``Branch.whole_block``): every cache applies, per-module ones
  reusing whole blocks there;
- each self-attention module's processor is wrapped: while a ditkit backend is installed on it, the processor's
  call to ``torch.nn.functional.scaled_dot_product_attention`` (direct, or through diffusers' dispatcher) runs the
  backend instead, with the token layout of that call (all frames, one frame or one position over frames; in a
  joint call the text tokens too, put first for the backend, with a key padding mask when the model passes one).

Everything is put back by :meth:`StackAdapter.close`. Limits: the routing swaps the module attribute
``F.scaled_dot_product_attention`` for the duration of a wrapped processor call, so two threads must not run
adapted models with attention backends at once; written-out block branches equal the block's own forward bitwise in
float32 (in bf16 they may round differently).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.attention import TokenLayout
from ..models.stack import Branch, run_blocks
from .blocks import BLOCK_BRANCHES

Grid = Callable[[nn.Module, dict], tuple[int, int, int]]


@dataclass(frozen=True)
class BlockStack:
    """How a transformer runs its blocks (the declaration form: a new model is one of these).

    blocks          attribute names of the block ModuleLists, in the order the forward runs them; all are called
                    with the same arguments and return the same things (FLUX: dual-stream, then single-stream)
    grid            ``grid(model, forward_args) -> (frames, height, width)`` of the image tokens, from the forward's
                    arguments (by name) and the model's config
    hidden          the block argument holding the image tokens [N, T, D]
    text            the block argument holding text tokens [N, L, D] that blocks update and return (dual-stream);
                    None where text is a fixed input (cross-attention)
    returns         what a block returns, in order: ("hidden",), ("hidden", "text") or ("text", "hidden")
    self_attention  each block's softmax attention submodules over the image tokens (where backends apply)
    joint           where a joint attention call puts the ``text`` tokens beside the image tokens: "text-first"
                    (FLUX, CogVideoX) or "text-last" (SD3); backends then keep the text part dense. None: the
                    self-attention sees image tokens only
    attention_unsupported  why attention backends cannot apply to the model (None: they can)
    shared          block arguments that are not per sample (rotary tables), never split by rows
    float_modules   modules whose linear layers quantization keeps float (code reads their parameters' dtype)
    cfg             how the model's pipeline batches classifier-free guidance: "uncond+cond" or "cond+uncond" (one
                    call, that half first) or "separate" (a cond call, then an uncond call)
    """

    blocks: tuple[str, ...]
    grid: Grid
    hidden: str = "hidden_states"
    text: str | None = None
    returns: tuple[str, ...] = ("hidden",)
    self_attention: tuple[str, ...] = ("attn1",)
    joint: str | None = None
    attention_unsupported: str | None = None
    shared: tuple[str, ...] = ()
    float_modules: tuple[str, ...] = ()
    cfg: str = "uncond+cond"

    def __post_init__(self):
        if not self.blocks:
            raise ValueError("BlockStack needs at least one block list name in blocks=")
        names = {"hidden", "text"} if self.text else {"hidden"}
        if set(self.returns) != names or len(self.returns) != len(names):
            raise ValueError(f"BlockStack returns={self.returns}: a block returns {sorted(names)} in some order "
                             f"(text= is {'set' if self.text else 'not set'})")
        if self.joint not in (None, "text-first", "text-last"):
            raise ValueError(f"BlockStack joint={self.joint!r}: 'text-first', 'text-last' or None")
        if self.joint and not self.text:
            raise ValueError("BlockStack joint= needs text= (the block argument holding the text tokens)")
        if self.cfg not in ("uncond+cond", "cond+uncond", "separate"):
            raise ValueError(f"BlockStack cfg={self.cfg!r}: 'uncond+cond', 'cond+uncond' or 'separate'")


def latent_grid(patch: str | Sequence[str] = "patch_size", frames_patch: str | None = None, frame_dim: int = 2,
                input_name: str = "hidden_states") -> Grid:
    """``grid`` for models taking a latent [N, C, H, W], [N, C, F, H, W] (``frame_dim`` 2) or [N, F, C, H, W]
    (``frame_dim`` 1): (F / frames patch, H / patch, W / patch), patch sizes read from the config by name."""
    def grid(model, args):
        x, cfg = args[input_name], model.config
        p = cfg[patch] if isinstance(patch, str) else [cfg[n] for n in patch]
        ph, pw = (p, p) if isinstance(p, int) else tuple(p)[-2:]
        pf = (cfg[frames_patch] or 1) if frames_patch else (tuple(p)[0] if not isinstance(p, int) and len(p) == 3
                                                              else 1)
        frames = x.shape[frame_dim] // pf if x.dim() == 5 else 1
        return frames, x.shape[-2] // ph, x.shape[-1] // pw
    return grid


def rows_of(value, idx: torch.Tensor, rows: int):
    """``value`` with rows ``idx`` of every tensor whose first dimension is the batch (``rows``), recursively."""
    if torch.is_tensor(value):
        return value[idx] if value.dim() and value.shape[0] == rows else value
    if isinstance(value, (tuple, list)):
        return type(value)(rows_of(v, idx, rows) for v in value)
    if isinstance(value, dict):
        return {k: rows_of(v, idx, rows) for k, v in value.items()}
    return value


class BlockArgs:
    """The contract's ``c`` for an adapted model: the arguments of a block call other than its tokens, in the form
    the model's forward passed them (positional ``args``, ``kwargs``). ``c[idx]`` keeps rows ``idx`` [n] of every
    per-sample argument; ``shared`` (positions and names of rotary tables) stay whole."""

    def __init__(self, args: tuple, kwargs: dict, rows: int, shared: frozenset):
        self.args, self.kwargs, self.rows, self.shared = args, kwargs, rows, shared

    def __getitem__(self, idx: torch.Tensor) -> "BlockArgs":
        cut = lambda key, v: v if key in self.shared else rows_of(v, idx, self.rows)
        return BlockArgs(tuple(cut(i, v) for i, v in enumerate(self.args)),
                         {k: cut(k, v) for k, v in self.kwargs.items()}, len(idx), self.shared)

    def named(self, positional: Sequence[str]) -> dict:
        """The arguments by parameter name (``positional``: the block's positional parameter names)."""
        return {**{n: v for n, v in zip(positional, self.args) if v is not None}, **self.kwargs}

    def call(self, module: nn.Module, put: dict):
        """``module`` called with these arguments and ``put`` ({position or name: value}) in their places."""
        args = tuple(put.get(i, v) for i, v in enumerate(self.args))
        return module(*args, **{**self.kwargs, **{k: v for k, v in put.items() if isinstance(k, str)}})


class BlockBranch(Branch):
    """A whole block as one residual branch: its output is ``block(x) - x``; adding back the output just computed
    from x gives ``block(x)`` itself, so a step that computes everything is bitwise the model's own forward."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.compute(x)
        residual = y - x
        self.__dict__["_made"] = (x, residual, y)
        return residual

    def add(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        made = self.__dict__.get("_made")
        if made is not None and made[0] is x and made[1] is out:
            return made[2]
        return x + out


class AdaptedBlock:
    """One diffusers block as a contract block: its attention / MLP branches where the block class is written out
    (:mod:`ditkit.adapters.blocks`), else a single whole-block branch (:class:`BlockBranch`)."""

    def __init__(self, adapter: "StackAdapter", module: nn.Module):
        self.adapter, self.module = adapter, module

    def branches(self, c: "BlockArgs", layout: TokenLayout) -> list[Branch]:
        known = BLOCK_BRANCHES.get(type(self.module).__name__)
        if known is not None and not self.adapter.spec.text:
            found = known(self.module, c.named(self.adapter._positional), self.adapter._dtype)
            if found is not None:
                return found
        run = functools.partial(self.adapter.call_block, self.module, c=c)
        return [BlockBranch("block", _identity, run, whole_block=True)]


def _identity(x):
    return x


class AttentionSlot:
    """A diffusers self-attention module seen as a ditkit attention layer: ``backend`` and ``observer`` are set by
    recipes (through :class:`~ditkit.hooks.points.HookPoints`) and used by the wrapped processor."""

    def __init__(self, module: nn.Module):
        self.module, self.num_heads = module, module.heads
        self.backend = None
        self.observer = None


class _RoutedProcessor:
    """Wraps an attention processor: while its slot has a backend, the processor's dense attention call runs the
    backend instead (same q, k, v [B, heads, N, d]). Exposes the inner processor's signature (diffusers filters
    call arguments by it)."""

    def __init__(self, inner, slot: AttentionSlot, adapter: "StackAdapter"):
        self.inner, self.slot, self.adapter = inner, slot, adapter
        self.__call__ = functools.wraps(inner.__call__)(lambda *args, **kwargs: self._call(*args, **kwargs))

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def _call(self, *args, **kwargs):
        if self.slot.backend is None and self.slot.observer is None:
            return self.inner(*args, **kwargs)
        dense = F.scaled_dot_product_attention

        def routed(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **rest):
            q, k, v = query, key, value
            layout = self.adapter.attention_layout(q.shape[-2])
            if attn_mask is not None and layout is not None and layout.text:
                text_mask = self.adapter.text_padding(attn_mask, layout)
                if text_mask is not None:
                    attn_mask, layout = None, replace(layout, text_mask=text_mask)
            if (attn_mask is not None or dropout_p or is_causal or any(rest.values()) or layout is None or k.shape[-2] != q.shape[-2]
                    or (scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-12)):
                return dense(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                             **rest)
            F.scaled_dot_product_attention = dense                # the backend's own dense calls
            try:
                if layout.text:
                    return dense(q, k, v) if self.slot.backend is None else self._joint(q, k, v, layout)
                if self.slot.observer is not None:
                    self.slot.observer(q, k)
                return dense(q, k, v) if self.slot.backend is None else self.slot.backend(q, k, v, layout)
            finally:
                F.scaled_dot_product_attention = routed

        F.scaled_dot_product_attention = routed
        try:
            return self.inner(*args, **kwargs)
        finally:
            F.scaled_dot_product_attention = dense

    def _joint(self, q, k, v, layout: TokenLayout):
        """The backend on a joint call, whose tokens it takes text first (:func:`text_dense`)."""
        if self.adapter.spec.joint == "text-first":
            return self.slot.backend(q, k, v, layout)
        T = q.shape[2] - layout.text
        text_first = lambda t: torch.cat([t[:, :, T:], t[:, :, :T]], dim=2)
        out = self.slot.backend(text_first(q), text_first(k), text_first(v), layout)
        return torch.cat([out[:, :, layout.text:], out[:, :, :layout.text]], dim=2)


class _StackRun:
    """What iterating the first block list yields: a callable taking the first block's arguments and returning what
    the last block returns, computed by ``adapter.run_stack``."""

    def __init__(self, adapter: "StackAdapter"):
        self.adapter = adapter

    def __call__(self, *args, **kwargs):
        return self.adapter.run_from_block_call(args, kwargs)


class _StackList(nn.ModuleList):
    """A block list that holds the same modules but iterates as the adapter's stack: the first list yields one
    :class:`_StackRun`, later lists nothing (their blocks run inside the stack)."""

    def __init__(self, original: nn.ModuleList, run: _StackRun | None):
        super().__init__()
        self._modules = original._modules
        self.__dict__["_stack_run"] = run

    def __iter__(self):
        return iter((self._stack_run,) if self._stack_run is not None else ())


class StackAdapter(nn.Module):
    """A diffusers transformer (``model``) behind the block-stack contract, per a :class:`BlockStack` ``spec``.
    Calling the adapter calls the transformer. ``close()`` restores the transformer exactly."""


    def __init__(self, model: nn.Module, spec: BlockStack):
        super().__init__()
        self.model, self.spec = model, spec
        missing = [n for n in spec.blocks if not isinstance(getattr(model, n, None), nn.ModuleList)]
        if missing:
            raise ValueError(f"{type(model).__name__} has no block list {', '.join(missing)} (its ModuleLists: "
                             f"{', '.join(n for n, m in model.named_children() if isinstance(m, nn.ModuleList))}); "
                             f"fix BlockStack(blocks=...)")
        self._lists = {n: getattr(model, n) for n in spec.blocks}
        modules = [b for n in spec.blocks for b in self._lists[n]]
        self.stack_blocks = [AdaptedBlock(self, m) for m in modules]
        self._positional = [n for n, p in inspect.signature(modules[0].forward).parameters.items()
                            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._slots = [AttentionSlot(m.get_submodule(name)) for m in modules for name in spec.self_attention
                       if _has(m, name)]
        if spec.self_attention and not self._slots:
            raise ValueError(f"{type(model).__name__}: no block has the attention submodule(s) "
                             f"{', '.join(spec.self_attention)}; fix BlockStack(self_attention=...)")
        self._processors = [(s.module, s.module.processor) for s in self._slots]
        for slot in self._slots:
            slot.module.processor = _RoutedProcessor(slot.module.processor, slot, self)
        run = _StackRun(self)
        for i, name in enumerate(spec.blocks):
            setattr(model, name, _StackList(self._lists[name], run if i == 0 else None))
        self._where: dict = {}                        # where block calls put tokens, text, shared arguments
        self._grid_args: dict = {}
        self._grid: tuple[int, int, int] | None = None
        self._text = 0
        self._pre_hook = model.register_forward_pre_hook(self._remember_inputs, with_kwargs=True)
        self._forward_signature = inspect.signature(model.forward)

    # --- the block-stack contract --------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def run_stack(self, tokens: torch.Tensor, c: BlockArgs) -> torch.Tensor:
        return run_blocks(self.stack_blocks, tokens, c, self.token_layout(tokens.shape[1]))

    def token_layout(self, num_tokens: int) -> TokenLayout:
        """Text tokens (dual-stream) then the frames x height x width image grid of the current forward call."""
        f, h, w = self.image_grid()
        if num_tokens != self._text + f * h * w:
            raise ValueError(f"{type(self.model).__name__}: {num_tokens} stack tokens, but the input has "
                             f"{self._text} text + {f}x{h}x{w} image tokens; check the BlockStack grid")
        return TokenLayout(f, h, w, text=self._text)

    @property
    def whole_block_branches(self) -> bool:
        """True if some block is one whole-block branch (its class's branches are not written out)."""
        return any(type(b.module).__name__ not in BLOCK_BRANCHES or self.spec.text for b in self.stack_blocks)

    @property
    def float_modules(self) -> tuple[str, ...]:
        """Modules whose linear layers quantization keeps float (the declaration's ``float_modules``)."""
        return tuple(f"model.{name}." for name in self.spec.float_modules)

    @property
    def joint_attention(self) -> bool:
        """True if the self-attention is joint over text and image tokens."""
        return self.spec.joint is not None

    def attention_layers(self) -> list[AttentionSlot]:
        """The self-attention layers, in block order (what attention recipes select with layers=)."""
        if self.spec.attention_unsupported:
            raise ValueError(f"attention backends cannot apply to {type(self.model).__name__}: "
                             f"{self.spec.attention_unsupported}")
        return self._slots

    embed = head = None           # both run inside the model's own forward, around the stack

    # --- inside the model's forward ------------------------------------------------------------------------------
    def image_grid(self) -> tuple[int, int, int]:
        """(frames, height, width) of the current forward call's image tokens (the declaration's grid)."""
        if self._grid is None:
            self._grid = tuple(int(d) for d in self.spec.grid(self.model, self._grid_args))
        return self._grid

    def attention_layout(self, n: int) -> TokenLayout | None:
        """The layout of an attention call over ``n`` tokens: the whole grid, one frame, or one position over the
        frames; the text tokens and the whole grid in a joint call (``joint``); None when nothing matches."""
        f, h, w = self.image_grid()
        if self.spec.joint and n == self._text + f * h * w:
            return TokenLayout(f, h, w, text=self._text)
        for layout in (TokenLayout(f, h, w), TokenLayout(1, h, w), TokenLayout(f, 1, 1)):
            if layout.num_tokens == n:
                return layout
        return None

    def text_padding(self, mask: torch.Tensor, layout: TokenLayout) -> torch.Tensor | None:
        """A joint call's key padding mask [B, 1, 1, N] (bool, HunyuanVideo's) -> its text part [B, 1, 1, L], if
        every image key is attended (read on the host once per mask tensor); None for any other mask."""
        if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:] != (1, 1, layout.num_tokens):
            return None
        found = getattr(mask, "_ditkit_text_mask", None)
        if found is None:
            L, T = layout.text, layout.num_tokens - layout.text
            image, text = (mask[..., :T], mask[..., T:]) if self.spec.joint == "text-last" else \
                (mask[..., L:], mask[..., :L])
            found = mask._ditkit_text_mask = text if bool(image.all()) else False
        return None if found is False else found

    def _remember_inputs(self, module, args, kwargs):
        self._grid_args = self._forward_signature.bind_partial(*args, **kwargs).arguments
        self._grid = None

    def run_from_block_call(self, args: tuple, kwargs: dict):
        """The first block's call (its arguments as the model's forward passed them; every block is called the
        same way) -> what the last block returns, computed by ``run_stack``."""
        self._where = where = self._locate(args, kwargs)
        hidden, text = (self._take(args, kwargs, where[k]) for k in ("hidden", "text"))
        taken = {where["hidden"], where["text"]}
        args = tuple(None if i in taken else v for i, v in enumerate(args))
        kwargs = {k: v for k, v in kwargs.items() if k not in taken}
        self._dtype = hidden.dtype
        if self.spec.text:
            self._text = text.shape[1]
            tokens = torch.cat([text, hidden], dim=1)
        else:
            self._text, tokens = 0, hidden
        out = self.run_stack(tokens, BlockArgs(args, kwargs, tokens.shape[0], self._where["shared"]))
        return self._returned(out)

    def _locate(self, args: tuple, kwargs: dict) -> dict:
        """Where the forward puts the tokens, text and shared arguments in a block call: a position or a name, by
        the first block's signature."""
        names = self._positional

        def where(name):
            if name is None:
                return None
            if name in kwargs:
                return name
            if name in names and names.index(name) < len(args):
                return names.index(name)
            raise ValueError(f"{type(self.model).__name__}: its blocks are called without a {name!r} argument; "
                             f"fix BlockStack(hidden=..., text=...)")
        shared = {k for n in self.spec.shared for k in (n, names.index(n) if n in names else None) if k is not None}
        return {"hidden": where(self.spec.hidden), "text": where(self.spec.text), "shared": frozenset(shared)}

    @staticmethod
    def _take(args, kwargs, key):
        return None if key is None else kwargs[key] if isinstance(key, str) else args[key]

    def call_block(self, module: nn.Module, x: torch.Tensor, c: BlockArgs) -> torch.Tensor:
        """One block on stack tokens x [n, T, D] -> [n, T, D]."""
        where = self._where
        if self.spec.text:
            put = {where["text"]: x[:, :self._text], where["hidden"]: x[:, self._text:]}
        else:
            put = {where["hidden"]: x}
        out = c.call(module, put)
        if not self.spec.text:
            return out[0] if isinstance(out, (tuple, list)) else out
        got = dict(zip(self.spec.returns, out))
        text = x[:, :self._text] if got["text"] is None else got["text"]      # SD3's last block returns no text
        return torch.cat([text, got["hidden"]], dim=1)

    def _returned(self, tokens: torch.Tensor):
        if not self.spec.text:
            return tokens
        parts = {"text": tokens[:, :self._text], "hidden": tokens[:, self._text:]}
        return tuple(parts[n] for n in self.spec.returns)

    # --- life cycle ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Put the transformer back exactly as it was (block lists, processors, hooks)."""
        for name, original in self._lists.items():
            setattr(self.model, name, original)
        for module, processor in self._processors:
            module.processor = processor
        self._pre_hook.remove()


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False

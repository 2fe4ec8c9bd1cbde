"""The recipe side of attention backends: :class:`AttentionMethod` installs a backend on selected layers and heads
of every ditkit :class:`~ditkit.models.attention.Attention` and keeps the sampling state backends need (step,
CFG branch). Subclasses implement ``kernel`` (the efficient attention), ``layout_density`` and, for warm-up rules,
``dense``; methods with per-layer state override ``make_backend``.

Selections are recipe strings: ``layers="all"`` / ``"2-5"`` / ``"0;3;7"`` (``;`` because ``,`` separates
parameters), the same for ``heads``. Heads outside the selection keep the backend they had (dense by default), so
two methods can split one layer's heads: ``sta:heads=0-1+svg:heads=2`` (each head of a layer is a hook point,
:class:`~ditkit.hooks.points.HookPoints`). Calls shorter than ``min_tokens`` stay
dense (sparse attention does not pay off there, e.g. a video DiT's 8-token temporal attention).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ...hooks.method import Method, param
from ...hooks.points import HookPoints
from ...models.attention import Attention, LinearAttention, TokenLayout, merge_attention, sdpa, sdpa_with_lse


def parse_indices(spec, n: int) -> list[int]:
    """'all' | int | 'a-b;c' -> sorted indices in [0, n)."""
    if spec in (None, "all", "*"):
        return list(range(n))
    out = set()
    for part in str(spec).replace(" ", "").split(";"):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"index(es) {sorted(bad)} out of range 0..{n - 1} in {spec!r}")
    return sorted(out)


def check_indices(spec) -> None:
    """Raise a ValueError saying what is expected unless ``spec`` is 'all', an index or ranges 'a-b;c'."""
    parts = [] if spec in (None, "all", "*") else str(spec).replace(" ", "").split(";")
    for part in parts:
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError("'all', an index, or ranges and indices separated by ';' (e.g. 0-3;7)")


def parse_triples(spec, default=None) -> list[tuple[int, int, int]]:
    """'3x3x3' -> [(3, 3, 3)]; '3x3x3;1x5x5' -> one triple per head (or head group); '8x8' means 1x8x8."""
    if spec in (None, "auto"):
        return default
    out = []
    for part in str(spec).replace(" ", "").split(";"):
        dims = [int(d) for d in part.lower().split("x")]
        if len(dims) not in (2, 3):
            raise ValueError(f"expected FxHxW (or HxW), got {part!r}")
        out.append(tuple([1] * (3 - len(dims)) + dims))
    return out


def softmax_attention_layers(model) -> list[Attention]:
    """The model's softmax attention layers: an adapted model's ``attention_layers()``, else its Attention modules
    in registration order (``model.modules()``)."""
    if hasattr(model, "attention_layers"):
        return model.attention_layers()
    return [m for m in model.modules() if isinstance(m, Attention) and not isinstance(m, LinearAttention)]


def longest_attention(model) -> int | None:
    """Tokens in the longest softmax attention call of a ditkit model at its configured size (None: unknown)."""
    grid, config = getattr(model, "grid", None), getattr(model, "config", None)
    if grid is None or config is None:
        return None
    frames = config.num_frames // config.tubelet if hasattr(config, "num_frames") else 1
    if getattr(config, "layout", None) == "full3d":
        return frames * grid[0] * grid[1]
    return max(frames, grid[0] * grid[1])      # per-frame spatial calls; temporal calls over the frames


def dense_fraction(index: int, count: int, fraction: float) -> bool:
    """True for the first ``fraction`` of ``count`` items (index < fraction * count), as SVG's warm-up rule."""
    return index < math.ceil(fraction * count - 1e-9)


def image_tokens(q, layout: TokenLayout | None) -> int:
    """Image tokens of an attention call q [B, h, N, d] (the text tokens of a joint call excluded)."""
    return q.shape[2] - (layout.text if layout is not None else 0)


def text_dense(kernel, q, k, v, layout: TokenLayout | None):
    """``kernel(q, k, v, layout)`` on an image-only call. On a joint call over ``layout.text`` text tokens, then the
    image tokens (SD3, FLUX, CogVideoX), the text stays dense: text queries attend every key; image queries attend
    the text keys densely and the image keys through ``kernel(q, k, v, image_layout, lse=True)``, the two merged
    exactly by their log-sum-exps. So the sparse pattern covers image-image pairs only, and a kernel that keeps
    everything gives dense attention. ``layout.text_mask`` [B, 1, 1, L] (HunyuanVideo's padding) masks text keys.
    q, k, v [B, h, L + T, d] -> [B, h, L + T, d]."""
    if layout is None or not layout.text:
        return kernel(q, k, v, layout)
    L = layout.text
    out = torch.empty_like(q)
    out[:, :, :L] = sdpa(q[:, :, :L], k, v, layout)
    q_image, k_image, v_image = (t[:, :, L:] for t in (q, k, v))
    image, image_lse = kernel(q_image, k_image, v_image, TokenLayout(*layout.shape), lse=True)
    text, text_lse = sdpa_with_lse(q_image, k[:, :, :L], v[:, :, :L], layout.text_mask)
    out[:, :, L:] = merge_attention(image, image_lse, text, text_lse)[0]
    return out


@dataclasses.dataclass
class AttentionMethod(Method):
    joint = True      # the kernel gives log-sum-exps (``lse=True``), so joint text-image calls keep text dense
    layers: str = param("all", check=check_indices, example="0-3")
    heads: str = param("all", check=check_indices, example="0;2")
    min_tokens: int = param(1024, low=0)

    def __post_init__(self):
        super().__post_init__()
        self.step, self.num_steps, self.branch = 0, 1, "cond"

    def kernel(self, q, k, v, layout: TokenLayout | None, lse: bool = False):
        """The efficient attention itself on image tokens: q, k, v [B, h, N, d] -> [B, h, N, d]; with ``lse``,
        (out, the log-sum-exp [B, h, N] float32 of each query over the keys it attended)."""
        raise NotImplementedError

    def layout_density(self, layout: TokenLayout) -> float:
        """Fraction of query-key pairs :meth:`kernel` computes on ``layout``."""
        raise NotImplementedError

    def dense(self, layer: int, num_layers: int) -> bool:
        """True where the method's warm-up rule keeps full attention (current step, this layer)."""
        return False

    def make_backend(self, layer: int, num_layers: int):
        """The backend ``fn(q, k, v, layout)`` installed on softmax attention layer ``layer``."""
        def backend(q, k, v, layout):
            if image_tokens(q, layout) < self.min_tokens or self.dense(layer, num_layers):
                return sdpa(q, k, v, layout)
            return text_dense(self.kernel, q, k, v, layout)
        return backend

    def attach(self, model) -> None:
        attns = softmax_attention_layers(model)
        if not attns:
            raise ValueError(f"{self.name}: the model has no softmax attention layers")
        if getattr(model, "joint_attention", False) and not self.joint:
            raise ValueError(f"{self.name} cannot apply to {type(getattr(model, 'model', model)).__name__}: its "
                             f"self-attention is joint over text and image tokens, and {self.name} has no log-sum-exp "
                             f"to merge a dense text part with")
        longest = longest_attention(model)
        if longest is not None and longest < self.min_tokens:
            raise ValueError(f"{self.name}: this model's attention calls have at most {longest} tokens, fewer than "
                             f"min_tokens={self.min_tokens}, so every call would stay dense; sample a larger canvas or "
                             f"more frames, or lower min_tokens")
        points = HookPoints.of(model)
        for i in parse_indices(self.layers, len(attns)):
            a = attns[i]
            points.set_backend(i, a, self, parse_indices(self.heads, a.num_heads), self.make_backend(i, len(attns)))

    def reset(self, num_steps: int) -> None:
        self.step, self.num_steps = 0, num_steps

    def begin_step(self, step: int, num_steps: int) -> None:
        self.step, self.num_steps = step, num_steps

    def begin_branch(self, branch: str) -> None:
        self.branch = branch

"""Video DiT: DiT's embedders, adaLN-Zero blocks and final layer applied to videos [N, C, F, H, W].

Shapes: F frames (F' = F / tubelet token frames), h x w = (H/p) x (W/p) token grid, S = h*w tokens per frame,
T = F'*S tokens frame-major, hidden states [N, T, D], conditioning c [N, F', D] (timestep + label, per frame when
timesteps [N, F] or labels [N, F] are per frame): the block-stack contract of :mod:`ditkit.models.stack`, so every acceleration applies.

Attention layouts (``layout``), every attention call going through :class:`~ditkit.models.attention.Attention`:

- ``vdt``: VDT blocks = temporal attention (affine LayerNorm, no adaLN, output projection zero-initialised) over the
  F' tokens at each spatial position, then DiT's spatial attention and MLP over the S tokens of each frame.
- ``latte``: Latte's variant 1, DiT blocks interleaved spatial, temporal, spatial, ... (``depth`` of each).
- ``full3d``: DiT blocks attending over all F'*S tokens with CogVideoX-split 3D rotary embedding.

Positions: DiT's frozen 2D sin-cos table is added to every frame; time is encoded by rotary embedding inside temporal
(1D) or full (3D) attention, so the residual stream of a frame is untouched by its index and an image DiT inflates
exactly (:func:`inflate_from_dit`).

Unified mask modelling (VDT): with ``mask`` (1 = generate, 0 = given; [N or 1, 1, F, H, W]) and clean ``context``,
the input is ``mask * x + (1 - mask) * context``; with ``mask_channel`` the mask is also fed as one extra channel.

Per-frame noise levels (Diffusion Forcing, :mod:`ditkit.diffusion.frames`): with ``frame_timesteps`` the model is
trained and sampled with one timestep per frame, given frames at the clean level, so a window can mix clean,
partly noised and noisy frames (history guidance, rollouts). The network accepts [N] or [N, F] timesteps either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .attention import Attention, TokenLayout
from .dit import DiT, DiTBlock, DiTConfig, FinalLayer, LabelEmbedder, TimestepEmbedder, dit_config
from .rope import Rotary
from .stack import Branch, run_blocks

LAYOUTS = ("vdt", "latte", "full3d")


@dataclass
class VideoDiTConfig(DiTConfig):
    num_frames: int = 8           # frames the model is trained on (any multiple of ``tubelet`` is accepted)
    tubelet: int = 1              # frames per token (1 = per-frame patches)
    layout: str = "vdt"           # vdt | latte | full3d
    mask_channel: bool = True     # feed the generation mask as an extra input channel
    frame_timesteps: bool = False  # trained with one timestep per frame (given frames clean; see the module docstring)


def video_dit_config(name: str, **overrides) -> VideoDiTConfig:
    """'VideoDiT-T/4' -> VideoDiTConfig with DiT-T/4's depth, width, heads and patch; overrides set any field."""
    base = dit_config("DiT-" + name.removeprefix("VideoDiT-"))
    unknown = set(overrides) - set(VideoDiTConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown VideoDiT config keys {sorted(unknown)}; "
                         f"valid: {sorted(VideoDiTConfig.__dataclass_fields__)}")
    sizes = {k: getattr(base, k) for k in ("depth", "hidden_size", "num_heads", "patch_size")}
    return VideoDiTConfig(**{**sizes, **overrides})


class VideoPatchEmbed(nn.Module):
    """[N, C, F, H, W] -> [N, F/tubelet, S, D] with a (tubelet, p, p)-strided Conv3d; tokens row-major per frame."""

    def __init__(self, patch_size: int, tubelet: int, in_channels: int, hidden_size: int):
        super().__init__()
        kernel = (tubelet, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(3).permute(0, 2, 3, 1)


class TemporalAttention(nn.Module):
    """VDT's temporal branch: affine LayerNorm then attention over frames; no adaLN."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)


class VideoStackBlock:
    """One block of the VideoDiT stack (not a module: it refers to the model's own modules): VDT's temporal attention
    if ``temporal`` is given, then a DiT block whose attention runs along ``axis``."""

    def __init__(self, model: "VideoDiT", block: DiTBlock, axis: str, temporal: TemporalAttention | None = None):
        self.model, self.block, self.axis, self.temporal = model, block, axis, temporal

    def branches(self, c: torch.Tensor, layout: TokenLayout) -> list[Branch]:
        attend = self.model.attend
        out = []
        if self.temporal is not None:
            t = self.temporal
            out.append(Branch("temporal", t.norm, lambda h: attend(t.attn, h, layout, "time"), None, t.attn, "time"))
        return out + self.block.branches(c, layout, lambda attn, h: attend(attn, h, layout, self.axis), self.axis)


class VideoDiT(nn.Module):
    format_name = "ditkit-video-dit"

    def __init__(self, config: VideoDiTConfig | None = None, **kwargs):
        super().__init__()
        config = config or VideoDiTConfig(**kwargs)
        self.config = config
        if config.layout not in LAYOUTS:
            raise ValueError(f"unknown VideoDiT layout {config.layout!r}; valid: {', '.join(LAYOUTS)}")
        if config.attention != "softmax":
            raise ValueError("VideoDiT builds softmax attention layers (attention='softmax'); other attention kernels "
                             "apply per layer as backends")
        H, W = config.image_hw
        p = config.patch_size
        if H % p or W % p:
            raise ValueError(f"frame size {H}x{W} is not divisible by patch_size={p}")
        self.grid = (H // p, W // p)
        D = config.hidden_size
        self.in_channels, self.out_channels, self.patch_size = config.in_channels, config.out_channels, p
        self.x_embedder = VideoPatchEmbed(p, config.tubelet, config.in_channels + config.mask_channel, D)
        self.t_embedder = TimestepEmbedder(D, freq_shift=config.freq_shift)
        self.y_embedder = LabelEmbedder(config.num_classes, D, config.class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], D), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        if config.layout == "vdt":
            self.temporal = nn.ModuleList([TemporalAttention(D, config.num_heads) for _ in range(config.depth)])
        elif config.layout == "latte":
            self.temporal = nn.ModuleList([DiTBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        self.final_layer = FinalLayer(D, p, self.out_channels * config.tubelet)
        self.initialize_weights()
        if config.layout == "vdt":
            stack = [VideoStackBlock(self, b, "space", t) for b, t in zip(self.blocks, self.temporal)]
        elif config.layout == "latte":
            stack = [VideoStackBlock(self, b, axis) for pair in zip(self.blocks, self.temporal)
                     for b, axis in zip(pair, ("space", "time"))]
        else:
            stack = [VideoStackBlock(self, b, "all") for b in self.blocks]
        self.stack_blocks = tuple(stack)
        self._rotary: dict[tuple, Rotary] = {}

    def initialize_weights(self):
        """DiT's initialisation (same module names), plus zeroed temporal outputs: every block starts as identity."""
        DiT.initialize_weights(self)
        for module in getattr(self, "temporal", []):
            last = module.attn.proj if isinstance(module, TemporalAttention) else module.adaLN_modulation[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
              force_drop_ids: torch.Tensor | None = None, context: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """t [N] or per frame [N, F]. Returns tokens [N, F'*S, D] (frame-major) and per-frame conditioning c [N, F', D]."""
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != self.in_channels or tuple(x.shape[3:]) != cfg.image_hw:
            raise ValueError(f"expected video [N, {self.in_channels}, F, {cfg.image_hw[0]}, {cfg.image_hw[1]}], "
                             f"got {list(x.shape)}")
        N, _, F, H, W = x.shape
        if F % cfg.tubelet:
            raise ValueError(f"{F} frames is not a multiple of the tubelet length {cfg.tubelet}")
        if mask is not None:
            if context is None:
                raise ValueError("a mask needs the clean context video it refers to")
            mask = mask.to(x.dtype).expand(N, 1, F, H, W)
            x = mask * x + (1 - mask) * context
        if cfg.mask_channel:
            x = torch.cat([x, mask if mask is not None else x.new_ones(N, 1, F, H, W)], dim=1)
        tokens = (self.x_embedder(x) + self.pos_embed).flatten(1, 2)
        if y is None:
            y = torch.full((N,), cfg.num_classes, device=x.device, dtype=torch.long)
        y = y.reshape(N, -1)
        if y.shape[1] not in (1, F):
            raise ValueError(f"labels must be [N] or per frame [N, {F}], got {list(y.shape)}")
        t = t.reshape(N, -1)
        if t.shape[1] not in (1, F):
            raise ValueError(f"timesteps must be [N] or per frame [N, {F}], got {list(t.shape)}")
        drop = None if force_drop_ids is None else force_drop_ids.reshape(N, 1).expand_as(y).flatten()
        e = self.t_embedder(t.flatten()).view(N, t.shape[1], -1)                   # [N, 1 or F, D]
        c = e + self.y_embedder(y.flatten(), drop).view(N, y.shape[1], -1)
        c = c.expand(N, F, c.shape[-1]).unflatten(1, (F // cfg.tubelet, cfg.tubelet)).mean(2)
        return tokens, c

    def token_layout(self, num_tokens: int) -> TokenLayout:
        h, w = self.grid
        return TokenLayout(num_tokens // (h * w), h, w)

    def rotary(self, head_dim: int, grid: tuple[int, int, int], split=None) -> Rotary:
        """The rotary embedding of a (frames, height, width) grid, built once per grid."""
        key = (head_dim, grid, split)
        if key not in self._rotary:
            self._rotary[key] = Rotary(head_dim, grid, split)
        return self._rotary[key]

    def attend(self, attn: Attention, x: torch.Tensor, layout: TokenLayout, axis: str) -> torch.Tensor:
        """Attention of ``attn`` over x [N, T, D] (tokens of ``layout``) along ``axis``: 'space' (per frame),
        'time' (per position, 1D RoPE over frames) or 'all' (3D RoPE)."""
        N, T, D = x.shape
        F, h, w = layout.shape
        shard = layout.shard                 # sequence parallelism: x holds tokens [start, stop) of the F*h*w, whole frames
        local = F if shard is None else T // (h * w)
        if axis == "space":
            return attn(x.reshape(N * local, h * w, D), TokenLayout(1, h, w)).view(N, T, D)
        if axis == "time":
            seq = x.view(N, local, h * w, D).transpose(1, 2).reshape(N * h * w, local, D)
            rope = self.rotary(attn.head_dim, (F, 1, 1), (attn.head_dim, 0, 0))
            frames = None if shard is None else shard.per(h * w)
            if frames is not None:
                rope = rope.part(frames.start, frames.stop)
            out = attn(seq, TokenLayout(F, 1, 1, shard=frames), rope)
            return out.view(N, h * w, local, D).transpose(1, 2).reshape(N, T, D)
        rope = self.rotary(attn.head_dim, layout.shape)
        return attn(x, layout, rope if shard is None else rope.part(shard.start, shard.stop))

    def run_stack(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The transformer stack [N, T, D] -> [N, T, D]; the hook point of caching methods."""
        return run_blocks(self.stack_blocks, tokens, c, self.token_layout(tokens.shape[1]))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, F', S, p*p*tubelet*C_out] -> [N, C_out, F, H, W]."""
        N, F = x.shape[:2]
        (h, w), p, tt, c = self.grid, self.patch_size, self.config.tubelet, self.out_channels
        x = x.reshape(N, F, h, w, p, p, tt, c)
        return torch.einsum("nfhwpqtc->ncfthpwq", x).reshape(N, c, F * tt, h * p, w * p)

    def head(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [N, T, D], c [N, F', D] -> [N, C_out, F, H, W]."""
        N, T, D = x.shape
        F = c.shape[1]
        return self.unpatchify(self.final_layer(x.reshape(N * F, T // F, D), c.reshape(N * F, D)).view(N, F, T // F, -1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                force_drop_ids: torch.Tensor | None = None, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, F, H, W], t [N] or per-frame [N, F], y [N] or per-frame [N, F] class ids -> [N, C_out, F, H, W]."""
        tokens, c = self.embed(x, t, y, force_drop_ids, context, mask)
        return self.head(self.run_stack(tokens, c), c)


def inflate_from_dit(video: VideoDiT, image: DiT) -> VideoDiT:
    """Initialise ``video`` from a trained image DiT of the same depth, width, heads, patch, frame size and classes.

    Spatial blocks, embedders and the final layer are inherited (the patch kernel is spread over the tubelet, the mask
    channel gets zero weights, missing output channels zero); temporal parts keep their zero initialisation. For the
    'vdt' and 'latte' layouts with tubelet 1 the result computes exactly the image DiT frame by frame; 'full3d'
    attends across frames and only starts from the image weights."""
    vc, ic = video.config, image.config
    for key in ("image_hw", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio", "num_classes", "in_channels",
                "attention"):
        if getattr(vc, key) != getattr(ic, key):
            raise ValueError(f"cannot inflate: image DiT has {key}={getattr(ic, key)}, VideoDiT has {getattr(vc, key)}")
    if (vc.class_dropout_prob > 0) != (ic.class_dropout_prob > 0):
        raise ValueError("cannot inflate: the image DiT and the VideoDiT disagree on having a null (CFG) label")
    state = video.state_dict()
    p, tt, C = ic.patch_size, vc.tubelet, ic.in_channels
    m = min(video.out_channels, image.out_channels)
    for key, value in image.state_dict().items():
        if key == "x_embedder.proj.weight":
            state[key] = torch.zeros_like(state[key])
            state[key][:, :C] = value[:, :, None] / tt
        elif key.startswith("final_layer.linear."):
            out = torch.zeros_like(state[key]).view(p, p, tt, video.out_channels, -1)
            out[:, :, :, :m] = value.reshape(p, p, 1, image.out_channels, -1)[:, :, :, :m]
            state[key] = out.view_as(state[key])
        else:
            state[key] = value
    video.load_state_dict(state, strict=True)
    return video

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

Captions (``caption_channels`` > 0): every DiT block gets PixArt's cross-attention (after its attention, before its
MLP; output projection zero-initialised, so an uncaptioned model extends exactly) to text states [N, L, C_text] for
the whole video, or per frame [N, F, L, C_text] (story continuation: the tokens of frame f attend to caption f), with
their mask; c is then a :class:`VideoTextConditioning`, the per-frame tensor plus the text, sliced like it. With
``text_encoder`` the model owns the small word-level encoder it was trained with (``encode_prompts``; token ids
passed as ``text`` are encoded inside the forward, which is how training reaches the encoder).

Per-frame noise levels (Diffusion Forcing, :mod:`ditkit.diffusion.frames`): with ``frame_timesteps`` the model is
trained and sampled with one timestep per frame, given frames at the clean level, so a window can mix clean,
partly noised and noisy frames (history guidance, rollouts). The network accepts [N] or [N, F] timesteps either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .attention import Attention, TokenLayout
from .cross_attention import CaptionProjection, CrossAttention, TextKeys
from .text import SmallTextEncoder, WordTokenizer
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
    caption_channels: int = 0     # width of the text states cross-attended to (0: no captions)
    text_encoder: dict | None = None  # the small encoder owned and trained with the model: dim, depth, num_heads,
    #                                   max_length, vocabulary (:class:`~ditkit.models.text.SmallTextEncoder`)


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


class VideoTextConditioning:
    """The contract's ``c`` of a captioned VideoDiT: ``c`` [N, F', D] (timestep + label per frame), ``text_mask``
    [N, L] or per frame [N, F', L], ``keys(cross)`` -> k, v [N, heads, L, hd] (or [N, F', heads, L, hd]) of a
    cross-attention module. Indexed and shaped like ``c``: ``[rows]`` or ``[rows, frames]`` (sequence parallelism
    keeps the frames of its part) slice all of them."""

    def __init__(self, c: torch.Tensor, text_mask: torch.Tensor, keys):
        self.c, self.text_mask, self.keys = c, text_mask, keys
        self.shape = c.shape

    @property
    def per_frame(self) -> bool:
        return self.text_mask.dim() == 3

    def dim(self) -> int:
        return self.c.dim()

    def __getitem__(self, idx) -> "VideoTextConditioning":
        text_idx = idx if self.per_frame or not isinstance(idx, tuple) else idx[0]
        keys = self.keys
        return VideoTextConditioning(self.c[idx], self.text_mask[text_idx],
                                     lambda cross: tuple(x[text_idx] for x in keys(cross)))

    def cross_attend(self, cross: CrossAttention, h: torch.Tensor) -> torch.Tensor:
        """Tokens h [N, T, D] attend to the caption (per frame: each frame's tokens to its caption)."""
        k, v = self.keys(cross)
        if not self.per_frame:
            return cross(h, k, v, self.text_mask)
        N, T, D = h.shape
        frames = self.text_mask.shape[1]
        out = cross(h.reshape(N * frames, T // frames, D), k.flatten(0, 1), v.flatten(0, 1),
                    self.text_mask.flatten(0, 1))
        return out.view(N, T, D)


class VideoStackBlock:
    """One block of the VideoDiT stack (not a module: it refers to the model's own modules): VDT's temporal attention
    if ``temporal`` is given, then a DiT block whose attention runs along ``axis``, with cross-attention to the
    caption after its attention when ``cross`` is given."""

    def __init__(self, model: "VideoDiT", block: DiTBlock, axis: str, temporal: TemporalAttention | None = None,
                 cross: CrossAttention | None = None):
        self.model, self.block, self.axis, self.temporal, self.cross = model, block, axis, temporal, cross

    def branches(self, c, layout: TokenLayout) -> list[Branch]:
        attend = self.model.attend
        out = []
        if self.temporal is not None:
            t = self.temporal
            out.append(Branch("temporal", t.norm, lambda h: attend(t.attn, h, layout, "time"), None, t.attn, "time"))
        text = c if isinstance(c, VideoTextConditioning) else None
        block = self.block.branches(c if text is None else text.c, layout,
                                    lambda attn, h: attend(attn, h, layout, self.axis), self.axis)
        if self.cross is None or text is None:
            return out + block
        cross = Branch("cross", lambda x: x, lambda h: text.cross_attend(self.cross, h), positional=text.per_frame)
        return out + block[:1] + [cross] + block[1:]


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
        if config.text_encoder:
            spec = config.text_encoder
            if spec["dim"] != config.caption_channels:
                raise ValueError(f"the text encoder is {spec['dim']} wide but caption_channels="
                                 f"{config.caption_channels}: set caption_channels={spec['dim']}")
            self.text_encoder = SmallTextEncoder(WordTokenizer(spec["vocabulary"]), spec["dim"], spec["depth"],
                                                 spec["num_heads"], spec["max_length"])
            self.float_modules = ("text_encoder",)        # quantization recipes leave the encoder in float
        if config.caption_channels:
            self.caption_projection = CaptionProjection(config.caption_channels, D)
            self.cross = nn.ModuleList([CrossAttention(D, config.num_heads) for _ in range(config.depth)])
            self._text = TextKeys(self.caption_projection)
        self.initialize_weights()
        cross = list(getattr(self, "cross", [None] * config.depth))
        if config.layout == "vdt":
            stack = [VideoStackBlock(self, b, "space", t, x) for b, t, x in zip(self.blocks, self.temporal, cross)]
        elif config.layout == "latte":
            stack = [VideoStackBlock(self, b, axis, None, x if axis == "space" else None)
                     for pair, x in zip(zip(self.blocks, self.temporal), cross)
                     for b, axis in zip(pair, ("space", "time"))]
        else:
            stack = [VideoStackBlock(self, b, "all", None, x) for b, x in zip(self.blocks, cross)]
        self.stack_blocks = tuple(stack)
        self._rotary: dict[tuple, Rotary] = {}

    def initialize_weights(self):
        """DiT's initialisation (same module names), plus zeroed temporal and cross-attention outputs: every block
        starts as identity."""
        DiT.initialize_weights(self)
        for module in getattr(self, "temporal", []):
            last = module.attn.proj if isinstance(module, TemporalAttention) else module.adaLN_modulation[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        for cross in getattr(self, "cross", []):
            nn.init.zeros_(cross.proj.weight)
            nn.init.zeros_(cross.proj.bias)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
              force_drop_ids: torch.Tensor | None = None, context: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, text: torch.Tensor | None = None,
              text_mask: torch.Tensor | None = None):
        """t [N] or per frame [N, F]; text states [N, L, C_text] or per frame [N, F, L, C_text] with text_mask [N, L]
        or [N, F, L]. Returns tokens [N, F'*S, D] (frame-major) and per-frame conditioning c [N, F', D] (a
        :class:`VideoTextConditioning` for a captioned model)."""
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
        if not cfg.caption_channels:
            if text is not None:
                raise ValueError("this VideoDiT has no cross-attention (caption_channels=0): it takes no text")
            return tokens, c
        return tokens, self._text_conditioning(c, text, text_mask, F)

    def encode_prompts(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (strings; "" = the empty caption) -> states [N, L, C_text] and mask [N, L] from the model's own
        text encoder."""
        if not hasattr(self, "text_encoder"):
            raise ValueError("this VideoDiT has no text encoder of its own: give text states from the encoder it was "
                             "trained with")
        return self.text_encoder.encode(list(prompts))

    def _text_conditioning(self, c: torch.Tensor, text, text_mask, F: int) -> VideoTextConditioning:
        N, C = c.shape[0], self.config.caption_channels
        if text is not None and not text.is_floating_point() and hasattr(self, "text_encoder"):
            ids = text                                                      # token ids [N, L] or [N, F, L]
            text = self.text_encoder(ids.flatten(0, -2), text_mask.flatten(0, -2)).view(*ids.shape, -1)
        if text is None or text_mask is None or text.shape[-1] != C or text.shape[:-1] != text_mask.shape \
                or text.dim() not in (3, 4) or text.shape[0] != N or (text.dim() == 4 and text.shape[1] != F):
            got = "none" if text is None or text_mask is None else f"{list(text.shape)} and {list(text_mask.shape)}"
            raise ValueError(f"this captioned VideoDiT needs text states [N, L, {C}] (or per frame [N, {F}, L, {C}]) "
                             f"and their mask [N, L] (or [N, {F}, L]); got {got}")
        if text.dim() == 4 and self.config.tubelet > 1:
            raise ValueError(f"per-frame captions need one token frame per frame; this model has tubelet "
                             f"{self.config.tubelet}: give one caption per video")
        _, keys = self._text.project(text)
        return VideoTextConditioning(c, text_mask.bool(), keys)

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

    def head(self, x: torch.Tensor, c) -> torch.Tensor:
        """x [N, T, D], c [N, F', D] (or a :class:`VideoTextConditioning`) -> [N, C_out, F, H, W]."""
        c = c.c if isinstance(c, VideoTextConditioning) else c
        N, T, D = x.shape
        F = c.shape[1]
        return self.unpatchify(self.final_layer(x.reshape(N * F, T // F, D), c.reshape(N * F, D)).view(N, F, T // F, -1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                force_drop_ids: torch.Tensor | None = None, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, F, H, W], t [N] or per-frame [N, F], y [N] or per-frame [N, F] class ids, text states and mask as
        for :meth:`embed` -> [N, C_out, F, H, W]."""
        tokens, c = self.embed(x, t, y, force_drop_ids, context, mask, text, text_mask)
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

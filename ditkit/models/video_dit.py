"""Video DiT: DiT's embedders, adaLN-Zero blocks and final layer applied to videos [N, C, F, H, W].

Shapes: F frames (F' = F / tubelet token frames), h x w = (H/p) x (W/p) token grid, S = h*w tokens per frame,
hidden states [N, F', S, D], conditioning c [N, F', D] (timestep + label, per frame when labels are per frame).

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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .attention import Attention, TokenLayout
from .dit import DiT, DiTBlock, DiTConfig, FinalLayer, LabelEmbedder, TimestepEmbedder, dit_config, modulate
from .rope import Rotary

LAYOUTS = ("vdt", "latte", "full3d")


@dataclass
class VideoDiTConfig(DiTConfig):
    num_frames: int = 8           # frames the model is trained on (any multiple of ``tubelet`` is accepted)
    tubelet: int = 1              # frames per token (1 = per-frame patches)
    layout: str = "vdt"           # vdt | latte | full3d
    mask_channel: bool = True     # feed the generation mask as an extra input channel


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
        """Returns tokens [N, F', S, D] and per-frame conditioning c [N, F', D]."""
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
        tokens = self.x_embedder(x) + self.pos_embed
        if y is None:
            y = torch.full((N,), cfg.num_classes, device=x.device, dtype=torch.long)
        y = y.reshape(N, -1)
        if y.shape[1] not in (1, F):
            raise ValueError(f"labels must be [N] or per frame [N, {F}], got {list(y.shape)}")
        drop = None if force_drop_ids is None else force_drop_ids.reshape(N, 1).expand_as(y).flatten()
        c = self.t_embedder(t)[:, None] + self.y_embedder(y.flatten(), drop).view(N, y.shape[1], -1)
        c = c.expand(N, F, c.shape[-1]).unflatten(1, (F // cfg.tubelet, cfg.tubelet)).mean(2)
        return tokens, c

    def attend(self, attn: Attention, x: torch.Tensor, axis: str) -> torch.Tensor:
        """Attention of ``attn`` over x [N, F', S, D] along ``axis``: 'space' (per frame), 'time' (per position,
        1D RoPE over frames) or 'all' (3D RoPE)."""
        N, F, S, D = x.shape
        h, w = self.grid
        if axis == "space":
            return attn(x.reshape(N * F, S, D), TokenLayout(1, h, w)).view(N, F, S, D)
        if axis == "time":
            seq = x.transpose(1, 2).reshape(N * S, F, D)
            out = attn(seq, TokenLayout(F, 1, 1), Rotary(attn.head_dim, (F, 1, 1), (attn.head_dim, 0, 0)))
            return out.view(N, S, F, D).transpose(1, 2)
        return attn(x.reshape(N, F * S, D), TokenLayout(F, h, w), Rotary(attn.head_dim, (F, h, w))).view(N, F, S, D)

    def dit_block(self, block: DiTBlock, x: torch.Tensor, c: torch.Tensor, axis: str) -> torch.Tensor:
        """DiT's adaLN-Zero update on x [N, F', S, D] with per-frame c [N, F', D], attention along ``axis``."""
        N, F, S, D = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(c.reshape(N * F, D))
        x = x.reshape(N * F, S, D)
        a = self.attend(block.attn, modulate(block.norm1(x), shift_msa, scale_msa).view(N, F, S, D), axis)
        x = x + gate_msa.unsqueeze(1) * a.reshape(N * F, S, D)
        x = x + gate_mlp.unsqueeze(1) * block.mlp_branch(x, shift_mlp, scale_mlp)
        return x.view(N, F, S, D)

    def run_blocks(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        layout = self.config.layout
        for i, block in enumerate(self.blocks):
            if layout == "vdt":
                x = x + self.attend(self.temporal[i].attn, self.temporal[i].norm(x), "time")
            x = self.dit_block(block, x, c, "all" if layout == "full3d" else "space")
            if layout == "latte":
                x = self.dit_block(self.temporal[i], x, c, "time")
        return x

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, F', S, p*p*tubelet*C_out] -> [N, C_out, F, H, W]."""
        N, F = x.shape[:2]
        (h, w), p, tt, c = self.grid, self.patch_size, self.config.tubelet, self.out_channels
        x = x.reshape(N, F, h, w, p, p, tt, c)
        return torch.einsum("nfhwpqtc->ncfthpwq", x).reshape(N, c, F * tt, h * p, w * p)

    def head(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        N, F, S, D = x.shape
        return self.unpatchify(self.final_layer(x.reshape(N * F, S, D), c.reshape(N * F, D)).view(N, F, S, -1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                force_drop_ids: torch.Tensor | None = None, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, F, H, W], t [N], y [N] or per-frame [N, F] class ids -> [N, C_out, F, H, W]."""
        tokens, c = self.embed(x, t, y, force_drop_ids, context, mask)
        return self.head(self.run_blocks(tokens, c), c)


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

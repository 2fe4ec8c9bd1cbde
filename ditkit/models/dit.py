"""The original DiT (Peebles & Xie, 2023), exact: same modules, state-dict keys, initialisation and numerics.

Shapes: N batch, C channels, H x W image (or latent), p patch, h x w = (H/p) x (W/p) token grid, T = h*w tokens,
D hidden width. The model maps (x [N, C, H, W], t [N], y [N]) to [N, C_out, H, W], C_out = 2C with learned sigma.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from .attention import Attention, LinearAttention, TokenLayout
from .stack import Branch, modulate, run_blocks


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0) -> torch.Tensor:
    """[N] timesteps -> [N, dim] features, cosine half first (DiT). ``freq_shift=1`` reproduces diffusers' DiT port."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift))
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, freq_shift: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size
        self.freq_shift = freq_shift

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_sinusoid(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> [N, D]. Row ``num_classes`` is the null label used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is not None:
            labels = torch.where(force_drop_ids.bool(), self.num_classes, labels)
        elif self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: an attention and an MLP branch, each modulated and gated by the conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c [N, D] or [N, G, D] -> (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), same shape."""
        return self.adaLN_modulation(c).chunk(6, dim=-1)

    def branches(self, c: torch.Tensor, layout: TokenLayout, attend=None, axis: str = "all") -> list[Branch]:
        """The attention and MLP branches for conditioning c. ``attend(attn, h)`` runs the attention module on
        h [N, T, D] (default: one call over all T tokens of ``layout``); ``axis`` says which tokens a call sees."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        attend = attend or (lambda attn, h: attn(h, layout))
        return [Branch("attn", lambda x: modulate(self.norm1(x), shift_msa, scale_msa),
                       lambda h: attend(self.attn, h), gate_msa, self.attn, axis),
                Branch("mlp", lambda x: modulate(self.norm2(x), shift_mlp, scale_mlp), self.mlp, gate_mlp)]

    def forward(self, x: torch.Tensor, c: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        return run_blocks([self], x, c, layout)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    """[N, C, H, W] -> [N, T, D] with a stride-p convolution; tokens row-major (row outer, column inner)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """[M] positions -> [M, embed_dim] float64, sine half first (MAE)."""
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """[h*w, embed_dim] table; for the token at row i, column j, channels [0, D/2) encode j and [D/2, D) encode i."""
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    return np.concatenate([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], axis=1)


@dataclass
class DiTConfig:
    input_size: int | tuple[int, int] = 32     # image/latent side (or (H, W)) in pixels of the model input
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    freq_shift: float = 0.0                     # 0 = original DiT; 1 = diffusers' port
    attention: str = "softmax"                  # softmax | linear (LiT: ReLU linear attention + depth-wise conv)
    linear_heads: int = 0                       # heads of linear attention (0 = num_heads)
    linear_conv: int = 5                        # depth-wise conv kernel of linear attention (0 = none)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.input_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def to_dict(self) -> dict:
        d = asdict(self)
        if not isinstance(d["input_size"], int):
            d["input_size"] = list(d["input_size"])
        return d


class DiT(nn.Module):
    format_name = "ditkit-dit"                  # metadata "format" of its safetensors files

    def __init__(self, config: DiTConfig | None = None, **kwargs):
        super().__init__()
        config = config or DiTConfig(**kwargs)
        self.config = config
        H, W = config.image_hw
        p = config.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not divisible by patch_size={p}")
        self.grid = (H // p, W // p)
        D = config.hidden_size
        self.in_channels, self.out_channels, self.patch_size = config.in_channels, config.out_channels, p
        self.num_heads = config.num_heads
        self.x_embedder = PatchEmbed(p, config.in_channels, D)
        self.t_embedder = TimestepEmbedder(D, freq_shift=config.freq_shift)
        self.y_embedder = LabelEmbedder(config.num_classes, D, config.class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], D), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        if config.attention == "linear":
            for block in self.blocks:
                block.attn = LinearAttention(D, config.linear_heads or config.num_heads, config.linear_conv)
        elif config.attention != "softmax":
            raise ValueError(f"unknown attention {config.attention!r}; valid: softmax, linear")
        self.final_layer = FinalLayer(D, p, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.apply(_basic_init)
        if self.pos_embed.device.type != "meta":
            table = sincos_2d(self.config.hidden_size, *self.grid)
            self.pos_embed.data.copy_(torch.from_numpy(table).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def stack_blocks(self) -> nn.ModuleList:
        return self.blocks

    def token_layout(self, num_tokens: int) -> TokenLayout:
        return TokenLayout(1, *self.grid)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, p*p*C_out] -> [N, C_out, H, W]."""
        h, w = self.grid
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
              force_drop_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns tokens [N, T, D] and the conditioning vector c [N, D]."""
        if x.shape[1:] != (self.in_channels, *self.config.image_hw):
            raise ValueError(f"expected input of shape [N, {self.in_channels}, {self.config.image_hw[0]}, "
                             f"{self.config.image_hw[1]}], got {list(x.shape)}")
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t)
        if y is None:
            y = torch.full((x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long)
        return tokens, c + self.y_embedder(y, force_drop_ids)

    def run_stack(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The transformer stack [N, T, D] -> [N, T, D]; the hook point of caching methods."""
        return run_blocks(self.blocks, tokens, c, self.token_layout(tokens.shape[1]))

    def head(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.unpatchify(self.final_layer(tokens, c))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, H, W], t [N] (integer DDPM steps or flow time), y [N] class ids -> [N, C_out, H, W]."""
        tokens, c = self.embed(x, t, y, force_drop_ids)
        return self.head(self.run_stack(tokens, c), c)


_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16),
          # small configs for CPU work
          "T": (6, 192, 3), "M": (8, 256, 4)}


def dit_config(name: str, **overrides) -> DiTConfig:
    """'DiT-XL/2' -> DiTConfig (DiT-T and DiT-M are ditkit's small CPU sizes). Overrides set any other field."""
    try:
        size, patch = name.removeprefix("DiT-").split("/")
        depth, hidden, heads = _SIZES[size]
        patch = int(patch)
    except (ValueError, KeyError):
        raise ValueError(f"unknown DiT config {name!r}; valid: {', '.join(DIT_CONFIGS)}") from None
    unknown = set(overrides) - set(DiTConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown DiT config keys {sorted(unknown)}; valid: {sorted(DiTConfig.__dataclass_fields__)}")
    return DiTConfig(**{"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": patch, **overrides})


DIT_CONFIGS = [f"DiT-{s}/{p}" for s in _SIZES for p in (2, 4, 8)]

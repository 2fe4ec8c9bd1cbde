"""PixArt-alpha (Chen et al., 2023): a DiT conditioned on text through cross-attention, with adaLN-single.

Shapes as in :mod:`ditkit.models.dit`, plus text states [N, L, C_text] and their mask [N, L] (True = a real token).
The timestep embedding e [N, D] makes one modulation t = W silu(e) [N, 6D] shared by every block (adaLN-single);
block i adds its learned table [6, D] to it. A block: self-attention on the modulated tokens, cross-attention of the
tokens (unnormalised, as in PixArt) to the projected text, MLP on the modulated tokens; the attention and MLP outputs
are gated. Final layer: norm, modulation by e plus its own table [2, D], linear, unpatchify.

The block-stack contract (:mod:`ditkit.models.stack`): ``c`` is a :class:`TextConditioning` (rows cut with
``c[idx]``), each block has an 'attn', a 'cross' and an 'mlp' branch, so every caching method and attention backend
applies. Cross-attention keys and values depend only on the text, so they are kept per text tensor and computed once
per generation and branch (:class:`~ditkit.models.cross_attention.TextKeys`), not at every step.

:func:`to_diffusers` / :func:`from_diffusers` convert to and from diffusers' ``PixArtTransformer2DModel`` (same
outputs), so a ditkit-trained model runs in diffusers' PixArt pipeline and PixArt checkpoints load into ditkit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .attention import Attention, TokenLayout
from .cross_attention import CaptionProjection, CrossAttention, TextKeys
from .dit import DiT, Mlp, PatchEmbed, TimestepEmbedder, sincos_2d
from .stack import Branch, modulate, run_blocks


@dataclass
class PixArtConfig:
    input_size: int = 40
    patch_size: int = 4
    in_channels: int = 1
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    caption_channels: int = 128         # width of the text encoder's states
    learn_sigma: bool = False
    caption_dropout_prob: float = 0.1   # training: captions replaced by the empty caption (classifier-free guidance)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.input_size, self.input_size

    def to_dict(self) -> dict:
        return asdict(self)


class TextConditioning:
    """The contract's ``c`` for a PixArt model: ``t`` [N, 6D] (adaLN-single), ``e`` [N, D] (timestep embedding, for
    the final layer), ``text`` [N, L, D] (projected text states), ``mask`` [N, L], and ``keys(cross)`` -> the
    keys and values of cross-attention module ``cross`` for these rows; ``c[idx]`` keeps rows idx of all of them."""

    def __init__(self, t, e, text, mask, keys):
        self.t, self.e, self.text, self.mask, self.keys = t, e, text, mask, keys
        self.shape = t.shape                     # one vector per sample, as the contract's [N, D] (sequence parallel)

    def dim(self) -> int:
        return self.t.dim()

    def __getitem__(self, idx) -> "TextConditioning":
        keys = self.keys
        return TextConditioning(self.t[idx], self.e[idx], self.text[idx], self.mask[idx],
                                lambda cross: tuple(x[idx] for x in keys(cross)))


class PixArtBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.cross = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

    def branches(self, c: TextConditioning, layout: TokenLayout) -> list[Branch]:
        """Self-attention, cross-attention (keys and values from ``c.keys``) and MLP."""
        N = c.t.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            (self.scale_shift_table[None] + c.t.view(N, 6, -1)).unbind(1)
        return [Branch("attn", lambda x: modulate(self.norm1(x), shift_msa, scale_msa),
                       lambda h: self.attn(h, layout), gate_msa, self.attn),
                Branch("cross", lambda x: x, lambda h: self.cross(h, *c.keys(self.cross), c.mask)),
                Branch("mlp", lambda x: modulate(self.norm2(x), shift_mlp, scale_mlp), self.mlp, gate_mlp)]


class PixArt(nn.Module):
    format_name = "ditkit-pixart"

    def __init__(self, config: PixArtConfig | None = None, **kwargs):
        super().__init__()
        config = config or PixArtConfig(**kwargs)
        self.config = config
        p, D = config.patch_size, config.hidden_size
        if config.input_size % p:
            raise ValueError(f"input size {config.input_size} is not divisible by patch_size={p}")
        self.grid = (config.input_size // p, config.input_size // p)
        self.in_channels, self.out_channels, self.patch_size = config.in_channels, config.out_channels, p
        self.x_embedder = PatchEmbed(p, config.in_channels, D)
        self.register_buffer("pos_embed", torch.from_numpy(sincos_2d(D, *self.grid)).float()[None], persistent=False)
        self.t_embedder = TimestepEmbedder(D)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.y_embedder = CaptionProjection(config.caption_channels, D)
        self.blocks = nn.ModuleList([PixArtBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_table = nn.Parameter(torch.randn(2, D) / D ** 0.5)
        self.final_linear = nn.Linear(D, p * p * self.out_channels)
        self._text = TextKeys(self.y_embedder)
        self.initialize_weights()

    def initialize_weights(self):
        """PixArt's: xavier linears, small timestep layers, zero cross-attention outputs and final layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1]):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in [b.cross.proj for b in self.blocks] + [self.final_linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    stack_blocks, token_layout = DiT.stack_blocks, DiT.token_layout      # the block list, one frame of tokens

    def embed(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor):
        """x [N, C, H, W], t [N], text states [N, L, C_text], mask [N, L] -> tokens [N, T, D], c."""
        if x.shape[1:] != (self.in_channels, *self.config.image_hw):
            raise ValueError(f"expected input of shape [N, {self.in_channels}, {self.config.input_size}, "
                             f"{self.config.input_size}], got {list(x.shape)}")
        if text.dim() != 3 or text.shape[-1] != self.config.caption_channels or mask.shape != text.shape[:2]:
            raise ValueError(f"expected text states [N, L, {self.config.caption_channels}] and a mask [N, L], got "
                             f"{list(text.shape)} and {list(mask.shape)}")
        tokens = self.x_embedder(x) + self.pos_embed
        e = self.t_embedder(t)
        projected, keys = self._text.project(text)
        return tokens, TextConditioning(self.t_block(e), e, projected, mask.bool(), keys)

    def run_stack(self, tokens: torch.Tensor, c: TextConditioning) -> torch.Tensor:
        """The transformer stack [N, T, D] -> [N, T, D]; the hook point of caching methods."""
        return run_blocks(self.stack_blocks, tokens, c, self.token_layout(tokens.shape[1]))

    unpatchify = DiT.unpatchify                 # [N, T, p*p*C_out] -> [N, C_out, H, W], as DiT

    def head(self, tokens: torch.Tensor, c: TextConditioning) -> torch.Tensor:
        shift, scale = (self.final_table[None] + c.e[:, None]).unbind(1)
        return self.unpatchify(self.final_linear(modulate(self.norm_final(tokens), shift, scale)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W], t [N], text states [N, L, C_text], mask [N, L] -> [N, C_out, H, W]."""
        tokens, c = self.embed(x, t, text, mask)
        return self.head(self.run_stack(tokens, c), c)


# ditkit tensor -> the diffusers PixArtTransformer2DModel tensors it holds (several: a fused projection, split in order)
_GLOBAL = {"x_embedder.proj": "pos_embed.proj", "t_embedder.mlp.0": "adaln_single.emb.timestep_embedder.linear_1",
           "t_embedder.mlp.2": "adaln_single.emb.timestep_embedder.linear_2", "t_block.1": "adaln_single.linear",
           "y_embedder.fc1": "caption_projection.linear_1", "y_embedder.fc2": "caption_projection.linear_2",
           "final_linear": "proj_out"}
_BLOCK = {"attn.qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"), "attn.proj": ("attn1.to_out.0",),
          "cross.q": ("attn2.to_q",), "cross.kv": ("attn2.to_k", "attn2.to_v"), "cross.proj": ("attn2.to_out.0",),
          "mlp.fc1": ("ff.net.0.proj",), "mlp.fc2": ("ff.net.2",)}


def key_map(depth: int) -> list[tuple[str, tuple[str, ...]]]:
    """(ditkit key, the diffusers keys it is made of) for every tensor of a PixArt of ``depth`` blocks."""
    pairs = [("final_table", ("scale_shift_table",))]
    for ours, theirs in _GLOBAL.items():
        pairs += [(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in ("weight", "bias")]
    for i in range(depth):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        pairs.append((f"{b}scale_shift_table", (f"{d}scale_shift_table",)))
        for ours, theirs in _BLOCK.items():
            pairs += [(f"{b}{ours}.{p}", tuple(f"{d}{t}.{p}" for t in theirs)) for p in ("weight", "bias")]
    return pairs


def to_diffusers(model: PixArt):
    """The same network as a diffusers ``PixArtTransformer2DModel`` (float32, eval mode)."""
    from diffusers import PixArtTransformer2DModel
    cfg = model.config
    out = PixArtTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
        sample_size=cfg.input_size, patch_size=cfg.patch_size, caption_channels=cfg.caption_channels,
        cross_attention_dim=cfg.hidden_size, interpolation_scale=1, use_additional_conditions=False)
    own = model.state_dict()
    state = {t: part for ours, theirs in key_map(cfg.depth) for t, part in zip(theirs, own[ours].chunk(len(theirs)))}
    missing, unexpected = out.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed.pos_embed")]
    if missing or unexpected:
        raise ValueError(f"PixArt conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return out.eval()


def from_diffusers(transformer) -> PixArt:
    """A diffusers ``PixArtTransformer2DModel`` (no resolution / aspect-ratio conditions, square) as a ditkit
    PixArt with the same outputs."""
    c = transformer.config
    if c.use_additional_conditions:
        raise ValueError("this PixArt uses resolution and aspect-ratio conditions (PixArt-alpha 1024px); ditkit's "
                         "PixArt converts models without them")
    if c.norm_type != "ada_norm_single":
        raise ValueError(f"expected a PixArt (norm_type ada_norm_single), got norm_type={c.norm_type!r}")
    D = c.num_attention_heads * c.attention_head_dim
    model = PixArt(PixArtConfig(input_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels,
                                hidden_size=D, depth=c.num_layers, num_heads=c.num_attention_heads,
                                mlp_ratio=transformer.transformer_blocks[0].ff.net[2].in_features / D,
                                caption_channels=c.caption_channels,
                                learn_sigma=c.out_channels == 2 * c.in_channels))
    theirs = transformer.state_dict()
    model.load_state_dict({ours: torch.cat([theirs[t] for t in names]) for ours, names in key_map(c.num_layers)},
                          strict=True)
    return model.eval()


@torch.no_grad()
def init_from_dit(model: PixArt, dit: DiT, t_ref: float = 500.0) -> PixArt:
    """Start ``model`` from a class-conditional DiT of the same width, depth, heads and patch, as PixArt-alpha started
    from an ImageNet DiT: patch embedding, timestep embedder, self-attention, MLP and output linear are copied; the
    shared adaLN-single layer takes block 0's modulation layer, and each block's table (and the final one) is set so
    that at timestep ``t_ref`` (network units) with the null class the modulation equals the DiT's (PixArt's
    re-parameterisation). Cross-attention stays at its zero-output initialisation, so the start is the DiT's
    unconditional model at t_ref."""
    c, d = model.config, dit.config
    if (c.hidden_size, c.depth, c.num_heads, c.patch_size, c.in_channels, c.out_channels) != \
            (d.hidden_size, d.depth, d.num_heads, d.patch_size, d.in_channels, d.out_channels):
        raise ValueError(f"model.init_from needs a DiT of the same width, depth, heads, patch and channels: this PixArt "
                         f"has ({c.hidden_size}, {c.depth}, {c.num_heads}, {c.patch_size}, {c.in_channels}), the DiT "
                         f"({d.hidden_size}, {d.depth}, {d.num_heads}, {d.patch_size}, {d.in_channels})")
    model.x_embedder.load_state_dict(dit.x_embedder.state_dict())
    model.t_embedder.load_state_dict(dit.t_embedder.state_dict())
    model.final_linear.load_state_dict(dit.final_layer.linear.state_dict())
    model.t_block[1].load_state_dict(dit.blocks[0].adaLN_modulation[1].state_dict())
    e = dit.t_embedder(torch.tensor([t_ref]))                                   # [1, D]
    cond = e + dit.y_embedder.embedding_table.weight[-1:]                       # the null class
    shared = model.t_block(e).view(6, -1)
    for ours, theirs in zip(model.blocks, dit.blocks):
        ours.attn.load_state_dict(theirs.attn.state_dict())
        ours.mlp.load_state_dict(theirs.mlp.state_dict())
        ours.scale_shift_table.copy_(theirs.adaLN_modulation(cond).view(6, -1) - shared)
    model.final_table.copy_(dit.final_layer.adaLN_modulation(cond).view(2, -1) - e)
    return model


class TextToImage(nn.Module):
    """A PixArt and the text encoder it is trained with, as one module: ``forward(x, t, text, mask)`` takes token ids
    [N, L] when it owns a trainable encoder (:class:`~ditkit.models.text.SmallTextEncoder`), or text states
    [N, L, C_text] from a frozen external one (``text_encoder`` None). Its state dict (``transformer.*``,
    ``text_encoder.*``) is the layout of a ditkit text-to-image model file."""

    format_name = PixArt.format_name

    def __init__(self, transformer: PixArt, text_encoder: nn.Module | None = None):
        super().__init__()
        self.transformer, self.text_encoder = transformer, text_encoder
        self.config, self.grid = transformer.config, transformer.grid

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = text if self.text_encoder is None else self.text_encoder(text, mask)
        return self.transformer(x, t, states, mask)

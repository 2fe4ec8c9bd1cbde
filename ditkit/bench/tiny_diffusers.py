"""Tiny random diffusers transformers (diffusers 0.42.1 configurations) with example inputs, for the support matrix
and the tests: every block list has 2 blocks, every frame a 4 x 4 token grid, every batch 2 rows (one CFG pair).
Linear layers diffusers initialises to zero (adaLN-Zero gates, output projections) get small random weights, so
every block changes its input and every cache decision is non-trivial.

``TINY[class name](seed) -> (model in eval mode, inputs)``: ``model(**inputs, return_dict=False)[0]`` is the
prediction; ``inputs["hidden_states"]`` is what a sampler updates and ``inputs["timestep"]`` the network timestep
[2] on the model's own scale (``TIMESTEP_SCALE``: 1000, or 1 for FLUX, which multiplies by 1000 itself).
"""
from __future__ import annotations

import torch


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _nonzero(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            module.weight.data.normal_(0, 0.05, generator=gen)
            if module.bias is not None:
                module.bias.data.normal_(0, 0.02, generator=gen)
    return model.eval()


def _t(value: float = 500.0) -> torch.Tensor:
    return torch.tensor([value, value])


def dit(seed=0):
    from diffusers import DiTTransformer2DModel
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                  num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    gen = torch.Generator().manual_seed(seed)
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 4, 8, 8), "timestep": _t().long(),
                                   "class_labels": torch.tensor([10, 3])}        # [null label, class 3]


def pixart(seed=0):
    from diffusers import PixArtTransformer2DModel
    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                     num_layers=2, cross_attention_dim=32, caption_channels=24, sample_size=8,
                                     patch_size=2, use_additional_conditions=False)
    gen = torch.Generator().manual_seed(seed)
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 4, 8, 8),
                                   "encoder_hidden_states": _randn(gen, 2, 7, 24), "timestep": _t(),
                                   "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def sana(seed=0):
    from diffusers import SanaTransformer2DModel
    torch.manual_seed(seed)
    model = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                   num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=16,
                                   cross_attention_dim=32, caption_channels=24, sample_size=4, patch_size=1)
    gen = torch.Generator().manual_seed(seed)
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 4, 4, 4),
                                   "encoder_hidden_states": _randn(gen, 2, 7, 24), "timestep": _t()}


def sd3(seed=0):
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                  caption_projection_dim=32, pooled_projection_dim=16, pos_embed_max_size=16)
    gen = torch.Generator().manual_seed(seed)
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 4, 8, 8),
                                   "encoder_hidden_states": _randn(gen, 2, 7, 24),
                                   "pooled_projections": _randn(gen, 2, 16), "timestep": _t()}


def flux(seed=0):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                   pooled_projection_dim=16, axes_dims_rope=(4, 4, 8))
    gen = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    img_ids = torch.stack([torch.zeros(16), rows.flatten(), cols.flatten()], dim=1)      # [T, 3] (0, row, col)
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 16, 16),          # packed [N, T, 4 C]
                                   "encoder_hidden_states": _randn(gen, 2, 7, 24),
                                   "pooled_projections": _randn(gen, 2, 16), "timestep": _t() / 1000,
                                   "img_ids": img_ids, "txt_ids": torch.zeros(7, 3)}


def wan(seed=0):
    from diffusers import WanTransformer3DModel
    torch.manual_seed(seed)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2,
                                  rope_max_seq_len=32)
    gen = torch.Generator().manual_seed(seed)
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 4, 3, 8, 8),     # [N, C, F, H, W]
                                   "encoder_hidden_states": _randn(gen, 2, 12, 16), "timestep": _t()}


def cogvideox(seed=0):
    from diffusers import CogVideoXTransformer3DModel
    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                        time_embed_dim=32, text_embed_dim=24, num_layers=2, sample_width=8,
                                        sample_height=8, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                                        max_text_seq_length=8)
    gen = torch.Generator().manual_seed(seed)
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 3, 4, 8, 8),     # [N, F, C, H, W]
                                   "encoder_hidden_states": _randn(gen, 2, 8, 24), "timestep": _t().long()}


def ltx(seed=0):
    from diffusers import LTXVideoTransformer3DModel
    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                       num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                                       num_layers=2, caption_channels=24)
    gen = torch.Generator().manual_seed(seed)
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 32, 8),          # packed [N, F H W, C]
                                   "encoder_hidden_states": _randn(gen, 2, 7, 24), "timestep": _t(),
                                   "encoder_attention_mask": torch.ones(2, 7), "num_frames": 2, "height": 4,
                                   "width": 4}


def hunyuan_video(seed=0):
    from diffusers import HunyuanVideoTransformer3DModel
    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                           num_layers=2, num_single_layers=2, num_refiner_layers=2, patch_size=2,
                                           patch_size_t=1, text_embed_dim=24, pooled_projection_dim=16,
                                           rope_axes_dim=(2, 2, 4), guidance_embeds=True)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[:, 5:] = 0                                                                   # two padded text tokens
    return _nonzero(model, seed), {"hidden_states": _randn(gen, 2, 4, 2, 8, 8), "timestep": _t(),
                                   "encoder_hidden_states": _randn(gen, 2, 7, 24), "encoder_attention_mask": mask,
                                   "pooled_projections": _randn(gen, 2, 16), "guidance": torch.tensor([6e3, 6e3])}


TINY = {"DiTTransformer2DModel": dit, "PixArtTransformer2DModel": pixart, "SanaTransformer2DModel": sana,
        "SD3Transformer2DModel": sd3, "FluxTransformer2DModel": flux, "WanTransformer3DModel": wan,
        "CogVideoXTransformer3DModel": cogvideox, "LTXVideoTransformer3DModel": ltx,
        "HunyuanVideoTransformer3DModel": hunyuan_video}
TIMESTEP_SCALE = {name: 1.0 if name == "FluxTransformer2DModel" else 1000.0 for name in TINY}

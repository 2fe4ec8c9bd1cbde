"""Conversion between ditkit's DiT and diffusers' ``DiTTransformer2DModel`` (dit.md §11).

Key mapping (ditkit / original DiT -> diffusers), per block i:
``attn.qkv`` -> split in three equal chunks ``attn1.to_q / to_k / to_v``; ``attn.proj`` -> ``attn1.to_out.0``;
``mlp.fc1`` / ``mlp.fc2`` -> ``ff.net.0.proj`` / ``ff.net.2``; ``adaLN_modulation.1`` -> ``norm1.linear``; the shared
``t_embedder.mlp.{0,2}`` and ``y_embedder.embedding_table`` are copied into every block's
``norm1.emb.{timestep_embedder.linear_{1,2}, class_embedder.embedding_table}``. Model level: ``x_embedder.proj`` ->
``pos_embed.proj``, ``final_layer.adaLN_modulation.1`` -> ``proj_out_1``, ``final_layer.linear`` -> ``proj_out_2``;
``pos_embed`` is dropped (diffusers regenerates the identical table as a non-persistent buffer).

Timestep frequency shift: the original DiT embeds t with frequencies exp(-ln(1e4) i / 128) (``freq_shift=0``),
diffusers' port with exp(-ln(1e4) i / 127) (shift 1). The shift lives on the modules
(``norm1.emb.time_proj.downscale_freq_shift``), not in diffusers' config, so a diffusers model loaded with
``from_pretrained`` always uses 1. The two models compute the same function (to ~1e-6) exactly when ditkit's
``config.freq_shift`` equals the diffusers modules' shift; the converters below keep them equal by default.

diffusers' default ``norm_eps`` is 1e-5 for the MLP-branch LayerNorm (the original DiT and ditkit use 1e-6 everywhere);
``to_diffusers`` writes 1e-6, and models that use 1e-5 (such as those from diffusers' DiT converter) differ from their
ditkit conversion by about 1e-6 relative.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..attention import Attention
from ..dit import DiT, DiTConfig
from .official import empty_dit

NUM_TRAIN_TIMESTEPS = 1000


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError("diffusers interop needs diffusers: pip install diffusers") from None
    return diffusers


def dit_to_diffusers_state_dict(state_dict: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """ditkit / official DiT keys -> DiTTransformer2DModel keys (``pos_embed`` dropped, embedders copied per block)."""
    sd = dict(state_dict)
    sd.pop("pos_embed", None)
    out = {f"pos_embed.proj.{s}": sd.pop(f"x_embedder.proj.{s}") for s in ("weight", "bias")}
    t_emb = {f"timestep_embedder.linear_{j}.{s}": sd.pop(f"t_embedder.mlp.{m}.{s}")
             for j, m in ((1, 0), (2, 2)) for s in ("weight", "bias")}
    y_table = sd.pop("y_embedder.embedding_table.weight")
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        for s in ("weight", "bias"):
            for name, chunk in zip(("to_q", "to_k", "to_v"), sd.pop(f"{src}attn.qkv.{s}").chunk(3, dim=0)):
                out[f"{dst}attn1.{name}.{s}"] = chunk.clone()
            out[f"{dst}attn1.to_out.0.{s}"] = sd.pop(f"{src}attn.proj.{s}")
            out[f"{dst}ff.net.0.proj.{s}"] = sd.pop(f"{src}mlp.fc1.{s}")
            out[f"{dst}ff.net.2.{s}"] = sd.pop(f"{src}mlp.fc2.{s}")
            out[f"{dst}norm1.linear.{s}"] = sd.pop(f"{src}adaLN_modulation.1.{s}")
        out.update({f"{dst}norm1.emb.{k}": v.clone() for k, v in t_emb.items()})
        out[f"{dst}norm1.emb.class_embedder.embedding_table.weight"] = y_table.clone()
    for s in ("weight", "bias"):
        out[f"proj_out_1.{s}"] = sd.pop(f"final_layer.adaLN_modulation.1.{s}")
        out[f"proj_out_2.{s}"] = sd.pop(f"final_layer.linear.{s}")
    if sd:
        raise ValueError(f"keys with no diffusers equivalent: {sorted(sd)}")
    return out


def diffusers_to_dit_state_dict(state_dict: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """DiTTransformer2DModel keys -> ditkit / official DiT keys (without ``pos_embed``). The per-block embedder copies
    must be identical (they are after any conversion from the original); otherwise the model is not a DiT."""
    sd = dict(state_dict)
    out = {f"x_embedder.proj.{s}": sd.pop(f"pos_embed.proj.{s}") for s in ("weight", "bias")}
    emb_names = {f"timestep_embedder.linear_{j}.{s}": f"t_embedder.mlp.{m}.{s}"
                 for j, m in ((1, 0), (2, 2)) for s in ("weight", "bias")}
    emb_names["class_embedder.embedding_table.weight"] = "y_embedder.embedding_table.weight"
    diverged = []
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        for s in ("weight", "bias"):
            out[f"{dst}attn.qkv.{s}"] = torch.cat([sd.pop(f"{src}attn1.{n}.{s}") for n in ("to_q", "to_k", "to_v")])
            out[f"{dst}attn.proj.{s}"] = sd.pop(f"{src}attn1.to_out.0.{s}")
            out[f"{dst}mlp.fc1.{s}"] = sd.pop(f"{src}ff.net.0.proj.{s}")
            out[f"{dst}mlp.fc2.{s}"] = sd.pop(f"{src}ff.net.2.{s}")
            out[f"{dst}adaLN_modulation.1.{s}"] = sd.pop(f"{src}norm1.linear.{s}")
        for name, ours in emb_names.items():
            value = sd.pop(f"{src}norm1.emb.{name}")
            if i == 0:
                out[ours] = value
            elif not torch.equal(value, out[ours]):
                diverged.append(f"{src}norm1.emb.{name}")
    if diverged:
        raise ValueError(f"the per-block timestep/class embedders differ from block 0's ({', '.join(diverged[:6])}"
                         f"{' ...' if len(diverged) > 6 else ''}); a DiT shares one embedder, so this model cannot be "
                         f"converted without changing its outputs")
    for s in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{s}"] = sd.pop(f"proj_out_1.{s}")
        out[f"final_layer.linear.{s}"] = sd.pop(f"proj_out_2.{s}")
    if sd:
        raise ValueError(f"keys with no DiT equivalent: {sorted(sd)}")
    return out


def diffusers_config(cfg: DiTConfig) -> dict:
    """DiTConfig -> DiTTransformer2DModel constructor arguments."""
    H, W = cfg.image_hw
    if H != W:
        raise ValueError(f"diffusers' DiT only supports square inputs (int sample_size); this model's input is {H}x{W}")
    if cfg.mlp_ratio != 4:
        raise ValueError(f"diffusers' DiT has a fixed MLP ratio of 4; this model has mlp_ratio={cfg.mlp_ratio}")
    if cfg.class_dropout_prob <= 0:
        raise ValueError("diffusers' DiT always has a null-class row in its label table; this model was built with "
                         "class_dropout_prob=0 (no null class), so it has no diffusers equivalent")
    return dict(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
                in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth, sample_size=H,
                patch_size=cfg.patch_size, activation_fn="gelu-approximate", num_embeds_ada_norm=cfg.num_classes,
                attention_bias=True, norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-6)


def _set_freq_shift(dmodel, shift: float) -> None:
    for block in dmodel.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = shift


def to_diffusers(model: DiT, freq_shift: float | None = None):
    """ditkit DiT -> ``diffusers.DiTTransformer2DModel`` (float32, eval mode, same weights).

    ``freq_shift`` is set on the diffusers model's timestep projections; the default, ``model.config.freq_shift``,
    makes the two models agree (bit-identical outputs on CPU in our tests). Pass 1 to get stock diffusers behaviour, which is also what
    the model computes after a diffusers ``save_pretrained`` / ``from_pretrained`` round trip.
    """
    if any(type(block.attn) is not Attention for block in model.blocks):
        raise ValueError("diffusers' DiT only has softmax attention; this model has another attention type")
    dmodel = _diffusers().DiTTransformer2DModel(**diffusers_config(model.config))
    dmodel.load_state_dict(dit_to_diffusers_state_dict(model.state_dict(), model.config.depth), strict=True)
    _set_freq_shift(dmodel, model.config.freq_shift if freq_shift is None else freq_shift)
    return dmodel.eval()


def dit_config_of(dmodel, freq_shift: float | None = None) -> DiTConfig:
    """The DiTConfig of a ``diffusers.DiTTransformer2DModel`` (an error if its config is not a DiT's);
    ``freq_shift`` defaults to the shift its timestep projections use."""
    c = dmodel.config
    expected = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
                "norm_elementwise_affine": False}
    bad = {k: c[k] for k, v in expected.items() if c[k] != v}
    if bad:
        raise ValueError(f"not a DiT: the diffusers config has {bad}; a DiT has {expected}")
    emb = dmodel.transformer_blocks[0].norm1.emb
    out_channels = dmodel.out_channels
    if out_channels not in (c.in_channels, 2 * c.in_channels):
        raise ValueError(f"out_channels={out_channels} is neither in_channels={c.in_channels} (eps only) nor twice it "
                         f"(learned sigma)")
    return DiTConfig(input_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels,
                     hidden_size=c.num_attention_heads * c.attention_head_dim, depth=c.num_layers,
                     num_heads=c.num_attention_heads, mlp_ratio=4.0,
                     class_dropout_prob=emb.class_embedder.dropout_prob, num_classes=c.num_embeds_ada_norm,
                     learn_sigma=out_channels == 2 * c.in_channels,
                     freq_shift=float(emb.time_proj.downscale_freq_shift if freq_shift is None else freq_shift))


def from_diffusers(dmodel, freq_shift: float | None = None) -> DiT:
    """``diffusers.DiTTransformer2DModel`` -> ditkit DiT (eval mode, CPU).

    ``freq_shift`` defaults to the shift the diffusers model actually uses (1 for any stock diffusers model), so the
    two models agree. Pass 0 for weights that were trained with the original DiT code and converted by diffusers'
    script (e.g. the facebook/DiT-XL-2-256 / -512 repositories): that restores the original model's numerics.
    """
    cfg = dit_config_of(dmodel, freq_shift)
    model = empty_dit(cfg)
    state = diffusers_to_dit_state_dict(dmodel.state_dict(), cfg.depth)
    model.load_state_dict({**state, "pos_embed": model.pos_embed.data}, strict=True)
    return model.eval()


def save_diffusers(model: DiT, folder: str | Path) -> Path:
    """Write ``folder/transformer`` (config.json + diffusion_pytorch_model.safetensors) and ``folder/scheduler``
    (a DDIMScheduler with DiT's linear betas 1e-4..0.02 over 1000 steps, eps prediction, no clipping).

    Load with ``DiTTransformer2DModel.from_pretrained(folder, subfolder="transformer")``. diffusers then uses its
    frequency shift 1: for a model with ``freq_shift=0`` (the original DiT) reload with
    ``from_diffusers(dmodel, freq_shift=0)`` to get the exact outputs back. There is no VAE, so this is not a
    complete ``DiTPipeline`` folder.
    """
    diffusers = _diffusers()
    if model.config.freq_shift != 1:
        warnings.warn(f"this model uses freq_shift={model.config.freq_shift} but diffusers' DiTTransformer2DModel "
                      f"always embeds timesteps with shift 1, so the saved model computes different outputs in diffusers; "
                      f"load it back with from_diffusers(dmodel, freq_shift={model.config.freq_shift}) for the "
                      f"exact ones")
    folder = Path(folder)
    to_diffusers(model).save_pretrained(folder / "transformer", safe_serialization=True)
    diffusers.DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=1e-4, beta_end=0.02,
                            beta_schedule="linear", prediction_type="epsilon",
                            clip_sample=False).save_pretrained(folder / "scheduler")
    return folder

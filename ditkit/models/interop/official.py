"""Checkpoints of the original facebookresearch/DiT code (``.pt`` files): load them into ditkit's DiT, write them back.

The official state-dict layout is exactly ditkit's DiT state dict (dit.md §3): ``pos_embed`` [1, T, D],
``x_embedder.proj.*``, ``t_embedder.mlp.{0,2}.*``, ``y_embedder.embedding_table.weight`` [num_classes + 1, D],
``blocks.{i}.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}.*`` and
``final_layer.{adaLN_modulation.1, linear}.*``. The released files (``DiT-XL-2-256x256.pt``, ``DiT-XL-2-512x512.pt``)
are flat EMA state dicts of SD-VAE latent models: 4 latent channels, latent side = image side / 8.

    model = load_official_checkpoint("DiT-XL-2-256x256.pt")          # DiT-XL/2, latent 32 x 32, 1000 classes
    save_official(model, "my-dit.pt")                                  # loads into the original DiT code
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch

from ...core.checkpoint import CheckpointMismatchError, load_state_dict_strict
from ...core.outputs import atomic_write
from ..attention import Attention
from ..dit import DIT_CONFIGS, DiT, DiTConfig, dit_config, sincos_2d

VAE_STRIDE = 8  # SD VAE: image side / latent side


def empty_dit(cfg: DiTConfig) -> DiT:
    """A CPU DiT with uninitialised weights (skips the random init of weights about to be loaded) and the exact
    sin-cos position table."""
    with torch.device("meta"):
        model = DiT(cfg)
    model.to_empty(device="cpu")
    model.pos_embed.data.copy_(torch.from_numpy(sincos_2d(cfg.hidden_size, *model.grid)).float().unsqueeze(0))
    return model


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Flat state dict of an official ``.pt`` file, read with ``torch.load(weights_only=True)``.

    Accepts a flat state dict or a training checkpoint ``{"model", "ema", "opt", "args"}`` (the ``ema`` weights are
    returned, else ``model``). The ``args`` entry of training checkpoints is an ``argparse.Namespace``, which is
    allow-listed: rebuilding one runs no code. Any other pickled object is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... depending on the damage
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(e), re.IGNORECASE)
        if found:
            raise ValueError(f"{path} was refused: it holds a pickled {found.group(1)} object, not only weights, and "
                             f"unpickling it could run arbitrary code. If you trust the file, extract the weights "
                             f"once, e.g. torch.save(torch.load(path, weights_only=False)['ema'], 'ema.pt')") from None
        lines = [line for line in str(e).splitlines() if line.strip()] or [""]
        detail = next((line for line in lines if "Unsupported" in line), lines[0])
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {detail.strip()[:200]}); "
                         f"the file is corrupt or truncated: download it again") from None
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict):
        obj = obj["ema"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a DiT state dict (a dict of tensors, or a training "
                         f"checkpoint with an 'ema' or 'model' entry)")
    return obj


def _latent_size(state_dict: dict[str, torch.Tensor], patch_size: int, image_size: int | None, source: str) -> int:
    """Latent side from the position table [1, T, D] (T = (latent / p)^2) or from ``image_size`` / 8."""
    if image_size is not None and image_size % VAE_STRIDE:
        raise ValueError(f"image_size={image_size} is not a multiple of the VAE stride {VAE_STRIDE} (use 256 or 512)")
    pos = state_dict.get("pos_embed")
    if pos is None:
        if image_size is None:
            raise ValueError(f"{source} has no pos_embed to infer the resolution from: pass image_size (256 or 512)")
        return image_size // VAE_STRIDE
    if pos.ndim != 3 or math.isqrt(pos.shape[1]) ** 2 != pos.shape[1]:
        raise CheckpointMismatchError(f"{source}: pos_embed has shape {tuple(pos.shape)}, expected [1, G*G, D] "
                                      f"for a square G x G token grid")
    grid = math.isqrt(pos.shape[1])
    latent = grid * patch_size
    if image_size is not None and image_size != latent * VAE_STRIDE:
        raise ValueError(f"image_size={image_size} does not match {source}: its pos_embed has {grid}x{grid} tokens of "
                         f"patch {patch_size}, i.e. latent {latent} and image size {latent * VAE_STRIDE}; "
                         f"omit image_size or check model_name")
    return latent


def load_official_checkpoint(path: str | Path, model_name: str = "DiT-XL/2", image_size: int | None = None,
                             num_classes: int = 1000, learn_sigma: bool = True) -> DiT:
    """Official DiT ``.pt`` file -> ditkit DiT (eval mode, CPU, float32 parameters as stored).

    The resolution comes from ``pos_embed`` (1 x 256 x D -> 256 px for patch 2) or, for files without it, from
    ``image_size``; a missing position table is recomputed (it is a fixed sin-cos table). Loading is strict: a wrong
    ``model_name`` / ``num_classes`` / ``learn_sigma`` raises CheckpointMismatchError listing keys and shapes.
    """
    state_dict = read_official_state_dict(path)
    matching = architecture_of(state_dict)
    if matching and model_name not in matching:
        raise CheckpointMismatchError(f"{path} holds a {' / '.join(matching)} (depth, width and patch size read from "
                                      f"its weights), not a {model_name}: pass --model-name {matching[0]} "
                                      f"(Python: model_name={matching[0]!r})")
    patch = dit_config(model_name).patch_size
    latent = _latent_size(state_dict, patch, image_size, str(path))
    model = empty_dit(dit_config(model_name, input_size=latent, num_classes=num_classes, learn_sigma=learn_sigma))
    load_state_dict_strict(model, state_dict, str(path), optional=("pos_embed",))
    return model.eval()


def architecture_of(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The DiT config names ('DiT-XL/2') whose depth, hidden size and patch size match a state dict; empty when the
    weights do not look like a DiT (the strict load then lists the differences)."""
    patch_weight = state_dict.get("x_embedder.proj.weight")          # [hidden, C, p, p]
    if patch_weight is None or patch_weight.ndim != 4:
        return []
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    hidden, patch = patch_weight.shape[0], patch_weight.shape[-1]
    configs = {name: dit_config(name) for name in DIT_CONFIGS}
    return [name for name, c in configs.items() if (c.depth, c.hidden_size, c.patch_size) == (depth, hidden, patch)]


def save_official(model: DiT, path: str | Path) -> Path:
    """Write ``model`` as a flat state dict (with ``pos_embed``) that the original DiT code loads strictly."""
    cfg = model.config
    H, W = cfg.image_hw
    if H != W:
        raise ValueError(f"the original DiT only supports square inputs; this model's input is {H}x{W}")
    if any(type(block.attn) is not Attention for block in model.blocks):
        raise ValueError("the original DiT only has softmax attention; this model has another attention type")
    if cfg.freq_shift != 0:
        raise ValueError(f"this model uses freq_shift={cfg.freq_shift} (diffusers' timestep embedding); the original "
                         f"DiT code uses 0 and would compute different outputs. Convert it with freq_shift=0 only if "
                         f"the weights were trained with the original embedding")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))

"""Optional autoencoder between images and the space the DiT works in (latent diffusion).

``None`` means pixel space. A diffusers ``AutoencoderKL`` folder (e.g. the SD VAE used by DiT) is loaded from a local
path; latents are scaled by the VAE's scaling factor (0.18215 for the SD VAE) as in DiT.
"""
from __future__ import annotations

from pathlib import Path

import torch


def check_autoencoder_folder(path: str | Path) -> None:
    """A local AutoencoderKL folder has a config.json (nothing is downloaded); otherwise an error naming the path."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        what = "has no config.json" if folder.is_dir() else "does not exist"
        raise FileNotFoundError(f"autoencoder folder {folder} {what}: give a local diffusers AutoencoderKL folder "
                                f"(config.json + weights, e.g. a download of stabilityai/sd-vae-ft-ema; CLI: --vae)")


class Autoencoder:
    """Wraps a diffusers AutoencoderKL: images [N, 3, H, W] in [-1, 1] <-> latents [N, 4, H/8, W/8]."""

    def __init__(self, path: str, device="cpu", dtype=torch.float32):
        check_autoencoder_folder(path)
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ImportError("latent diffusion needs diffusers: pip install diffusers") from None
        self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True).to(device, dtype).eval()
        self.scale = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.latent_channels = int(self.vae.config.latent_channels)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.sample(generator) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale).sample

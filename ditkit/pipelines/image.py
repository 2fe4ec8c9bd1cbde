"""Class-conditional generation: a DiT + its diffusion process (+ optional autoencoder) behind one callable.

    pipe = ditkit.load("mnist-dit")
    images = pipe(class_labels=[0, 1, 2], num_sampling_steps=50, sampler="ddim", cfg_scale=4.0, seed=0)
    # images: [3, C, H, W] float in [-1, 1]; sample i uses seed + i whatever the batch size
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..core.config import from_dict
from ..core.configs import TrainConfig
from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.guidance import GuidedModel
from ..diffusion.samplers import NoiseSource
from ..models.dit import DiT, DiTConfig
from ..models.interop.autoencoder import Autoencoder
from ..models.interop.official import load_official_checkpoint
from .base import Pipeline, is_video_model, load_ditkit_model, resolve_model_path
from .build import build_process
from .diffusers_dit import diffusers_folder_kind, load_diffusers_dit
from .text import TextPipeline, is_text_model
from .video import VideoPipeline


def load_dit(name_or_path: str | Path, device="cpu", model_name: str = "DiT-XL/2") -> tuple[DiT, dict]:
    """Load a ditkit safetensors model, or an official DiT .pt checkpoint of architecture ``model_name`` (resolution
    read from its pos_embed); returns (model in eval mode, metadata)."""
    path = resolve_model_path(name_or_path)
    if path.suffix in (".pt", ".pth"):
        model = load_official_checkpoint(path, model_name)
        return model.to(device), {"format": "official-dit", "model_name": model_name}
    return load_ditkit_model(path, DiT, DiTConfig, device)


class DiTPipeline(Pipeline):
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device="cpu", autoencoder: str | None = None,
                        model_name: str = "DiT-XL/2") -> "DiTPipeline":
        """An official DiT .pt checkpoint (architecture ``model_name``) samples SD-VAE latents with DiT's DDPM process
        (linear betas, 1000 steps, learned sigma) and needs ``autoencoder``: a local diffusers AutoencoderKL folder.
        A local diffusers DiT folder (pipeline or transformer) is sampled through ditkit's adapter
        (:mod:`ditkit.pipelines.diffusers_dit`)."""
        if diffusers_folder_kind(name_or_path):
            return cls(*load_diffusers_dit(name_or_path, device, autoencoder))
        model, meta = load_dit(name_or_path, device, model_name)
        if meta["format"] == "official-dit":
            if not autoencoder:
                raise ValueError("official DiT checkpoints generate SD-VAE latents: pass autoencoder=<local folder of "
                                 "a diffusers AutoencoderKL, e.g. stabilityai/sd-vae-ft-ema> (CLI: --vae)")
            ae_path = autoencoder
            process = GaussianDiffusion.from_config("linear", 1000, model.config.learn_sigma)
        else:
            cfg = from_dict(TrainConfig, meta["train_config"])
            ae_path = autoencoder or cfg.model.autoencoder
            process = build_process(cfg.diffusion, model.config.learn_sigma)
        ae = None
        if ae_path:
            ae = Autoencoder(ae_path, device)
        return cls(model, process, ae, meta)

    def calibration_kwargs(self, num_samples: int, num_steps: int, seed: int) -> dict:
        """Sampling arguments of a generic calibration run: random classes (from ``seed``), guidance 4 when the model
        has a null class, the default sampler."""
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, self.num_classes, (num_samples,), generator=gen).tolist()
        cfg = 4.0 if self.model.config.class_dropout_prob > 0 else 1.0
        return dict(class_labels=labels, num_sampling_steps=num_steps, sampler=self.default_sampler, cfg_scale=cfg,
                    seed=seed)

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int], num_sampling_steps: int = 50, sampler: str = "ddim",
                 cfg_scale: float = 4.0, seed: int = 0, eta: float = 0.0, guidance_interval=None,
                 guide_channels: int | None = None, cfg_batched: bool = True, batch_size: int | None = None,
                 progress: bool = False, step_callback=None, clip_denoised: bool | None = None) -> torch.Tensor:
        """Generate one image per label; returns [N, C, H, W] in [-1, 1] (decoded if there is an autoencoder).
        ``clip_denoised`` (default: on in pixel space, off with an autoencoder) clamps data predictions to [-1, 1]."""
        labels = torch.as_tensor(list(class_labels), dtype=torch.long)
        if labels.numel() == 0:
            raise ValueError("class_labels is empty: give at least one class label")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(f"class label(s) {bad.tolist()} out of range: this model has classes 0..{self.num_classes - 1}")
        if cfg_scale != 1.0 and self.model.config.class_dropout_prob <= 0:
            raise ValueError("this model was trained without label dropout, so it has no null class for "
                             "classifier-free guidance: use cfg_scale=1")
        bs = batch_size or len(labels)
        C, (H, W) = self.model.in_channels, self.model.config.image_hw
        rows = self.sample_rows(len(labels))
        network, branch = self.guidance_split(self.model)
        outs = []
        for start in range(rows.start, rows.stop, bs):
            y = labels[start:min(start + bs, rows.stop)].to(self.device)
            noise = NoiseSource(range(seed + start, seed + start + len(y)), self.device)
            guided = GuidedModel(network, y, self.num_classes, cfg_scale, self.process, guide_channels,
                                 guidance_interval, cfg_batched or network is not self.model, branch)
            x = self.denoise(guided, noise, (C, H, W), num_sampling_steps, sampler, eta, progress, step_callback,
                             self.autoencoder is None if clip_denoised is None else clip_denoised)
            outs.append(self.autoencoder.decode(x) if self.autoencoder is not None else x)
        return self.gather_samples(torch.cat(outs), len(labels)).clamp(-1, 1)


def load(name_or_path: str | Path = "mnist-dit", device="cpu", autoencoder: str | None = None) -> DiTPipeline:
    """A bundled name, model file or diffusers DiT / PixArt folder -> its pipeline: a VideoPipeline for a ditkit
    video DiT, a TextPipeline for a text-to-image model, else a DiTPipeline."""
    if is_text_model(name_or_path) and diffusers_folder_kind(name_or_path):
        return TextPipeline.from_pretrained(name_or_path, device)
    if diffusers_folder_kind(name_or_path):
        return DiTPipeline.from_pretrained(name_or_path, device, autoencoder)
    path = resolve_model_path(name_or_path)
    if is_text_model(path):
        if autoencoder is not None:
            raise ValueError("text-to-image pipelines take no autoencoder (ditkit's PixArt runs in pixel space)")
        return TextPipeline.from_pretrained(path, device)
    if is_video_model(path):
        if autoencoder is not None:
            raise ValueError("video pipelines take no autoencoder (ditkit's video DiTs run in pixel space)")
        return VideoPipeline.from_pretrained(path, device)
    return DiTPipeline.from_pretrained(name_or_path, device, autoencoder)

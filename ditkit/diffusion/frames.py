"""Per-frame noise levels (Diffusion Forcing, Chen et al. 2024; the Diffusion Forcing Transformer of History-Guided
Video Diffusion, Song et al. 2025): every frame of a video carries its own timestep, so one network denoises a
window whose frames sit at different noise levels, and given frames are frames at the clean level.

Timesteps are [N] (one per video) or [N, F] (one per frame; both processes accept either,
:func:`~ditkit.diffusion.flow.broadcast`). Noise levels as in guidance intervals: 0 = clean, 1 = pure noise.
"""
from __future__ import annotations

import torch

from .flow import FlowMatching


def clean_timestep(process) -> float:
    """The network timestep of clean data: flow time 1 (times ``timestep_scale``), DDPM step 0."""
    return float(process.timestep_scale) if isinstance(process, FlowMatching) else 0.0


def training_timestep(process, level: float) -> float:
    """The training-time ``t`` (flow time in [0, 1], or an original DDPM step) of noise level ``level`` in [0, 1]."""
    if isinstance(process, FlowMatching):
        return 1.0 - level
    return float(round(level * (process.num_timesteps - 1)))


def given_frames_of(mask: torch.Tensor) -> torch.Tensor:
    """[N, 1, F, H, W] mask (1 = generate) -> [N, F] bool, True for frames given entirely."""
    return mask.flatten(3).amax(3)[:, 0] == 0


def frame_timesteps(t: torch.Tensor, given: torch.Tensor, clean: float) -> torch.Tensor:
    """Timesteps t [N] (or already per frame [N, F]) -> [N, F] with the ``given`` [N, F] frames at ``clean``."""
    t = t[:, None] if t.dim() == 1 else t
    return torch.where(given, torch.full_like(t, clean), t).expand(given.shape)


def noise_to_level(process, data: torch.Tensor, noise: torch.Tensor, level: float) -> tuple[torch.Tensor, float]:
    """``data`` noised to noise level ``level`` with ``noise``; returns (noisy data, its network timestep)."""
    t = training_timestep(process, level)
    if isinstance(process, FlowMatching):
        return t * data + (1 - t) * noise, t * process.timestep_scale
    index = torch.full((data.shape[0],), int(t), dtype=torch.long, device=data.device)
    return process.q_sample(data, index, noise), t

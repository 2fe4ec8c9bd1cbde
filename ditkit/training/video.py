"""Training a :class:`~ditkit.models.video_dit.VideoDiT` with unified mask modelling (``ditkit train`` runs this for
configs whose ``model.name`` starts with 'VideoDiT'; see configs/moving-mnist-vdt.yaml).

Each step draws, for every video of the global batch, a mask from the ``masks`` mixture (1 = generate); the network
sees ``mask * x_t + (1 - mask) * x_0`` (the given positions clean) and the loss covers the generated positions only.
Everything else (EMA, warm-up, clipping, checkpoints, exact resume, DDP, randomness as a pure function of
(seed, step)) is the image trainer's, see :mod:`ditkit.training.trainer`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.configs import VideoDataSection, VideoModelSection, VideoTrainConfig
from ..core.devices import resolve_device
from ..data.video import MovingMNIST, VideoFolder
from ..diffusion.masks import training_masks
from ..models.interop.diffusers_trainable import build_diffusers_video_model
from ..models.video_dit import VideoDiT, inflate_from_dit, video_dit_config
from ..pipelines.build import build_process
from ..pipelines.image import load_dit
from .parallel import TrainingGroup
from .trainer import batch_indices, prepare_training, run_training


def load_video_data(section: VideoDataSection, split: str = "train", seed: int = 0):
    if section.name == "moving-mnist":
        if section.channels != 1:
            raise ValueError("moving-mnist has 1 channel: set data.channels=1")
        return MovingMNIST(split, section.image_size, section.num_frames, section.num_digits, section.digit_size,
                           tuple(section.speed), section.switch_prob, seed)
    if section.name == "folder":
        if not section.path:
            raise ValueError("data.name=folder needs data.path=<folder of video files>")
        return VideoFolder(section.path, section.image_size, section.num_frames, section.channels, section.frame_stride)
    raise ValueError(f"unknown video dataset {section.name!r}; valid: moving-mnist, folder")


def build_video_model(section: VideoModelSection):
    """A VideoDiT, or the diffusers video class ``section.diffusers_class`` (:class:`DiffusersVideoModel`)."""
    if section.diffusers_class:
        if section.init_from:
            raise ValueError("model.init_from inflates an image DiT into a VideoDiT; drop it for model.diffusers_class")
        return build_diffusers_video_model(section.diffusers_class, section.diffusers_config, section.in_channels,
                                           section.input_size, section.num_frames, section.num_classes,
                                           section.class_dropout_prob, section.mask_channel)
    model = VideoDiT(video_dit_config(section.name, layout=section.layout, input_size=section.input_size,
                                      num_frames=section.num_frames, tubelet=section.tubelet,
                                      in_channels=section.in_channels, num_classes=section.num_classes,
                                      learn_sigma=section.learn_sigma, class_dropout_prob=section.class_dropout_prob,
                                      mask_channel=section.mask_channel))
    if section.init_from:
        inflate_from_dit(model, load_dit(section.init_from)[0])
    return model


def train_video(cfg: VideoTrainConfig, resume: str | None = None, progress: bool | None = None,
                max_steps: int | None = None, overwrite: bool = False) -> Path:
    """Train; returns the path of the exported EMA model (``<results_dir>/model.safetensors``). ``resume``,
    ``max_steps`` and ``overwrite`` as in :func:`~ditkit.training.trainer.train`."""
    t_cfg, m_cfg = cfg.train, cfg.model
    resume_path = prepare_training(cfg, resume, overwrite, m_cfg.name.replace("VideoDiT-", "DiT-", 1))
    device = resolve_device(t_cfg.device, flag="train.device")
    group = TrainingGroup(device, t_cfg.parallel, t_cfg.ulysses_degree)
    local_batch, B = group.local_batch(t_cfg.global_batch_size), t_cfg.global_batch_size
    data = load_video_data(cfg.data, seed=t_cfg.seed)
    if data.num_classes > m_cfg.num_classes:
        raise ValueError(f"dataset has {data.num_classes} classes but model.num_classes={m_cfg.num_classes}: "
                         f"set model.num_classes={data.num_classes}")

    torch.manual_seed(t_cfg.seed)
    model = build_video_model(m_cfg).to(device)
    process = build_process(cfg.diffusion, m_cfg.learn_sigma)
    lo = group.data_rank * local_batch
    part = lambda x: x[lo:lo + local_batch].to(device)
    F, (H, W) = m_cfg.num_frames, model.config.image_hw

    def losses(train_model, step: int, g: torch.Generator) -> dict:
        idx = batch_indices(t_cfg.seed, step, B, data.length) if data.length else torch.arange(step * B, (step + 1) * B)
        noise = part(torch.randn((B, m_cfg.in_channels, F, H, W), generator=g))
        if cfg.diffusion.objective == "ddpm":
            t = part(torch.randint(0, process.num_timesteps, (B,), generator=g))
        else:
            t = part(process.sample_t(B, g))
        drop = part(torch.rand(B, generator=g) < m_cfg.class_dropout_prob)
        mask = part(training_masks(B, F, H, W, cfg.masks, g))
        labelled = {"labelled": ~drop} if isinstance(data, MovingMNIST) else {}    # no identity switch unlabelled
        x, y = (v.to(device) for v in data.get(idx[lo:lo + local_batch], **labelled))
        return process.training_losses(train_model, x, t, noise, {"y": y, "force_drop_ids": drop, "context": x,
                                                                  "mask": mask}, loss_mask=mask.expand_as(x))

    return run_training(cfg, model, losses, device, group, resume_path, progress, max_steps, overwrite)

"""Training a :class:`~ditkit.models.video_dit.VideoDiT` with unified mask modelling (``ditkit train`` runs this for
configs whose ``model.name`` starts with 'VideoDiT'; see configs/moving-mnist-vdt.yaml).

Each step draws, for every video of the global batch, a mask from the ``masks`` mixture (1 = generate); the network
sees ``mask * x_t + (1 - mask) * x_0`` (the given positions clean) and the loss covers the generated positions only.
With ``model.frame_timesteps`` the network gets one timestep per frame, the given frames at the clean level, and in a
fraction ``independent_frame_noise`` of the clips every generated frame draws its own noise level (Diffusion Forcing:
the model learns to denoise windows whose frames sit at different noise levels). With ``data.captions`` the model
cross-attends to captions of the clips (Moving MNIST's: digit, identity switch, direction, bounces), one per clip or
one per frame (story continuation), encoded by a small text encoder trained with it; a caption is replaced by the
empty one with probability ``model.caption_dropout_prob``, and a digit switches identity only in clips whose label
or caption the model sees.
Everything else (EMA, warm-up, clipping, checkpoints, exact resume, DDP, randomness as a pure function of
(seed, step)) is the image trainer's, see :mod:`ditkit.training.trainer`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.configs import TextEncoderSection, VideoDataSection, VideoModelSection, VideoTrainConfig
from ..core.devices import resolve_device
from ..data.video import CAPTION_VOCABULARY, MovingMNIST, VideoFolder
from ..diffusion.frames import frame_timesteps, given_frames_of, training_timestep
from ..diffusion.masks import training_masks
from ..models.interop.diffusers_trainable import build_diffusers_video_model
from ..models.video_dit import VideoDiT, inflate_from_dit, video_dit_config
from ..pipelines.build import build_process
from ..pipelines.base import is_video_model
from ..pipelines.image import load_dit
from ..pipelines.video import load_video_dit
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


ARCHITECTURE_KEYS = ("layout", "depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio", "input_size", "tubelet",
                     "in_channels", "num_classes", "learn_sigma", "mask_channel")


FRAME_CAPTION_PROB = {"clip": 0.0, "frames": 1.0, "mixed": 0.5}   # data.captions: share of clips captioned per frame
CAPTIONED_MODULES = ("cross.", "caption_projection.", "text_encoder.")     # what captions add to a VideoDiT


def build_video_model(section: VideoModelSection, text: TextEncoderSection | None = None):
    """A VideoDiT, captioned with its own small text encoder when ``text`` is given (vocabulary: Moving MNIST's
    captions), inflated from an image DiT or started from a VideoDiT with ``init_from`` (fine-tuning may add
    per-frame timesteps and captions: the new cross-attention starts at zero output); or the diffusers video class
    ``section.diffusers_class`` (:class:`DiffusersVideoModel`)."""
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
                                      mask_channel=section.mask_channel, frame_timesteps=section.frame_timesteps,
                                      **caption_config(text)))
    if section.init_from and is_video_model(section.init_from):
        start = load_video_dit(section.init_from)[0]
        differ = {k: getattr(start.config, k) for k in ARCHITECTURE_KEYS
                  if getattr(start.config, k) != getattr(model.config, k)}
        if differ:
            raise ValueError(f"model.init_from={section.init_from} is a VideoDiT of another architecture: fine-tuning "
                             f"starts from the same one; it has {', '.join(f'{k}={v}' for k, v in differ.items())} "
                             f"(depth, width, heads and patch come from model.name)")
        missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
        new = [k for k in missing if k.startswith(CAPTIONED_MODULES) and not start.config.caption_channels]
        if unexpected or len(new) != len(missing):
            raise ValueError(f"model.init_from={section.init_from} does not fit this model: missing "
                             f"{[k for k in missing if k not in new][:4]}, unexpected {unexpected[:4]} (a captioned "
                             f"model fine-tunes from a captioned one with the same text encoder)")
    elif section.init_from:
        inflate_from_dit(model, load_dit(section.init_from)[0])
    return model


def caption_config(text: TextEncoderSection | None) -> dict:
    """The VideoDiT config keys of a captioned model with a small encoder of ``text``'s shape (none: {})."""
    if text is None:
        return {}
    return {"caption_channels": text.dim,
            "text_encoder": {"dim": text.dim, "depth": text.depth, "num_heads": text.num_heads,
                             "max_length": text.max_length, "vocabulary": list(CAPTION_VOCABULARY)}}


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
    captions = cfg.data.captions
    model = build_video_model(m_cfg, None if captions == "none" else cfg.text_encoder).to(device)
    process = build_process(cfg.diffusion, m_cfg.learn_sigma)
    lo = group.data_rank * local_batch
    part = lambda x: x[lo:lo + local_batch].to(device)
    F, (H, W) = m_cfg.num_frames, model.config.image_hw

    def losses(train_model, step: int, g: torch.Generator) -> dict:
        idx = batch_indices(t_cfg.seed, step, B, data.length) if data.length else torch.arange(step * B, (step + 1) * B)
        noise = part(torch.randn((B, m_cfg.in_channels, F, H, W), generator=g))
        draw_t = (lambda n: torch.randint(0, process.num_timesteps, (n,), generator=g)) \
            if cfg.diffusion.objective == "ddpm" else (lambda n: process.sample_t(n, g))
        t = draw_t(B)
        drop = part(torch.rand(B, generator=g) < m_cfg.class_dropout_prob)
        mask = training_masks(B, F, H, W, cfg.masks, g)
        if m_cfg.frame_timesteps:
            independent = torch.rand(B, generator=g) < cfg.independent_frame_noise
            t = torch.where(independent[:, None], draw_t(B * F).view(B, F), t[:, None])
            t = frame_timesteps(t, given_frames_of(mask), training_timestep(process, 0.0))
        t, mask = part(t), part(mask)
        told = ~drop                                    # clips whose label (or caption) the model sees
        if captions != "none":
            caption_drop = part(torch.rand(B, generator=g) < m_cfg.caption_dropout_prob)
            per_frame = part(torch.rand(B, generator=g) < FRAME_CAPTION_PROB[captions])
            told = told | ~caption_drop
        labelled = {"labelled": told} if isinstance(data, MovingMNIST) else {}     # no identity switch untold
        clips = idx[lo:lo + local_batch]
        x, y = (v.to(device) for v in data.get(clips, **labelled))
        kwargs = {"y": y, "force_drop_ids": drop, "context": x, "mask": mask}
        if captions != "none":
            texts = [[""] * F if dropped else data.frame_captions(int(i), bool(lab)) if frames else
                     [data.caption(int(i), bool(lab))] * F
                     for i, lab, dropped, frames in zip(clips, told.tolist(), caption_drop.tolist(), per_frame.tolist())]
            ids, text_mask = model.text_encoder.tokenizer.encode([c for clip in texts for c in clip],
                                                                 model.text_encoder.max_length)
            kwargs.update(text=ids.view(len(texts), F, -1).to(device), text_mask=text_mask.view(len(texts), F, -1)
                          .to(device))
        return process.training_losses(train_model, x, t, noise, kwargs, loss_mask=mask.expand_as(x))

    return run_training(cfg, model, losses, device, group, resume_path, progress, max_steps, overwrite)

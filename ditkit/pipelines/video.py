"""Conditional video generation by masking: a VideoDiT + its diffusion process behind one callable.

    pipe = VideoPipeline.from_pretrained("moving-mnist-vdt")
    context, mask = video_condition("predict", frames, pipe.num_frames, pipe.frame_shape)   # frames [C, K, H, W]
    video = pipe(context[None], mask, labels=None, num_sampling_steps=50, seed=0)           # [1, C, F, H, W]

Given positions (mask 0) of the output are the context values, bitwise; the sampler only generates the rest.
Videos longer than the model's window are continued autoregressively (:meth:`VideoPipeline.extend`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..core import checkpoint as ckpt
from ..core.config import from_dict
from ..core.configs import VideoTrainConfig
from ..diffusion.guidance import ContextGuidedModel, GuidedModel
from ..diffusion.masks import check_mask, given_frames, task_mask
from ..diffusion.samplers import NoiseSource
from ..models.interop.diffusers_trainable import VIDEO_FORMAT
from ..models.video_dit import VideoDiT, VideoDiTConfig
from .base import Pipeline, load_ditkit_model, resolve_model_path
from .diffusers_dit import load_diffusers_video
from .build import build_process


def load_video_dit(name_or_path: str | Path, device="cpu") -> tuple[VideoDiT, dict]:
    """Load a ditkit VideoDiT safetensors file (bundled name, file or results folder); returns (model, metadata)."""
    return load_ditkit_model(resolve_model_path(name_or_path), VideoDiT, VideoDiTConfig, device)


def video_condition(task: str, context: torch.Tensor | None, num_frames: int, frame_shape: tuple[int, int, int],
                    given: int | None = None, stride: int = 4, mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Place user frames for a task. Returns (context [C, F, H, W], mask [F, H, W], 1 = generate).

    ``context`` [C, K, H, W] is either a full video (K = F; the task's mask picks the given frames) or just the given
    frames in order (K = number of given frames; for predict/backward K sets how many frames are given unless
    ``given`` does). ``mask`` ([F, H, W] or [H, W] for every frame) replaces the task's mask and needs a full video.
    """
    C, H, W = frame_shape
    F = num_frames
    if context is None:
        if task != "uncond":
            raise ValueError(f"task {task!r} needs context frames (--context)")
        return torch.zeros(C, F, H, W), torch.ones(F, H, W)
    if context.dim() != 4 or tuple(context.shape[2:]) != (H, W) or context.shape[0] != C:
        raise ValueError(f"context frames are {list(context.shape[:1]) + list(context.shape[2:])} ([C, H, W]) but the "
                         f"model makes [{C}, {H}, {W}] frames: resize the input to {H}x{W} (CLI: --resize)")
    K = context.shape[1]
    if mask is not None or task == "complete":
        if K != F:
            raise ValueError(f"task {task!r} with a spatial mask needs a full {F}-frame context video, got {K} frames")
        if mask is not None and tuple(mask.shape) not in ((F, H, W), (H, W)):
            raise ValueError(f"the mask is {list(mask.shape)} but this model makes {F} frames of {H}x{W}: give a "
                             f"[{F}, {H}, {W}] or [{H}, {W}] mask (1 = generate)")
        mask = task_mask("complete", F, H, W) if mask is None else mask.float().expand(F, H, W).clone()
        return context, check_mask(mask)
    if task in ("predict", "backward") and given is None and K < F:
        given = K
    positions = given_frames(task, F, given, stride)
    if K == F:
        full = context
    elif K == len(positions):
        full = torch.zeros(C, F, H, W)
        full[:, positions] = context
    else:
        raise ValueError(f"task {task!r} with {F} frames gives frames {positions}: pass those {len(positions)} frames "
                         f"or a full {F}-frame video as context, got {K} frames")
    mask = torch.ones(F, H, W)
    mask[positions] = 0
    return full, check_mask(mask)


class VideoPipeline(Pipeline):
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device="cpu") -> "VideoPipeline":
        """A ditkit VideoDiT file, or a diffusers video transformer ditkit trained (sampled through the adapter)."""
        path = resolve_model_path(name_or_path)
        meta = ckpt.read_metadata(path) if path.suffix == ".safetensors" else {}
        if meta.get("format") == VIDEO_FORMAT:
            model = load_diffusers_video(path, meta, device)
            cfg = from_dict(VideoTrainConfig, meta["train_config"])
            return cls(model, build_process(cfg.diffusion, False), None, meta)
        model, meta = load_video_dit(name_or_path, device)
        cfg = from_dict(VideoTrainConfig, meta["train_config"])
        return cls(model, build_process(cfg.diffusion, model.config.learn_sigma), None, meta)

    @property
    def num_frames(self) -> int:
        return self.model.config.num_frames

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.model.in_channels, *self.model.config.image_hw)

    def calibration_kwargs(self, num_samples: int, num_steps: int, seed: int) -> dict:
        """Sampling arguments of a generic calibration run: unconditional videos, the default sampler."""
        return dict(num_videos=num_samples, num_sampling_steps=num_steps, sampler=self.default_sampler, cfg_scale=1.0,
                    seed=seed)

    @torch.no_grad()
    def __call__(self, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 labels: Sequence | torch.Tensor | None = None, num_videos: int | None = None,
                 num_sampling_steps: int = 50, sampler: str | None = None, cfg_scale: float = 1.0,
                 guidance_interval=None, context_scale: float = 1.0, seed: int = 0, eta: float = 0.0,
                 batch_size: int | None = None, progress: bool = False, step_callback=None) -> torch.Tensor:
        """context [N, C, F, H, W] (clean given values), mask [N or 1, 1, F, H, W] or [F, H, W] (1 = generate),
        labels [N] or per frame [N, F] (None = the null label). Without context: ``num_videos`` unconditional videos
        of the model's length. ``cfg_scale`` guides towards the labels (only at noise levels in
        ``guidance_interval``, if given), ``context_scale`` towards the given frames
        (one more network call per step; :class:`~ditkit.diffusion.guidance.ContextGuidedModel`).
        Returns [N, C, F, H, W] in [-1, 1]; video i uses seed + i whatever the batch size."""
        if context is None:
            n = num_videos or (len(labels) if labels is not None else 1)
            context = torch.zeros(n, *self.frame_shape[:1], self.num_frames, *self.frame_shape[1:])
            mask = torch.ones(1, 1, *context.shape[2:]) if mask is None else mask
        N, C, F, H, W = context.shape
        mask = torch.ones(1, 1, F, H, W) if mask is None else check_mask(mask.reshape(-1, 1, F, H, W))
        mask = mask.expand(N, 1, F, H, W)
        null = self.model.config.num_classes
        labels = torch.full((N,), null, dtype=torch.long) if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if labels.shape[0] != N or labels.dim() > 2 or (labels.dim() == 2 and labels.shape[1] != F):
            raise ValueError(f"labels must be [{N}] or per frame [{N}, {F}], got {list(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() > null):
            raise ValueError(f"labels out of range: this model has classes 0..{null - 1} ({null} = no label)")
        if context_scale != 1.0 and bool(mask.all()):
            raise ValueError(f"context_scale={context_scale} guides towards given frames, but the mask gives nothing: "
                             f"use context_scale=1 or a task with given frames")
        bs = batch_size or N
        rows = self.sample_rows(N)
        outs = []
        for start in range(rows.start, rows.stop, bs):
            sl = slice(start, min(start + bs, rows.stop))
            ctx, m, y = context[sl].to(self.device), mask[sl].to(self.device), labels[sl].to(self.device)

            def bound(x, t, y_, ctx=ctx, m=m):          # CFG may double the batch
                r = x.shape[0] // ctx.shape[0]
                return self.model(x, t, y_, context=ctx.repeat(r, 1, 1, 1, 1), mask=m.repeat(r, 1, 1, 1, 1))
            noise = NoiseSource(range(seed + start, seed + start + len(ctx)), self.device)
            network, branch = self.guidance_split(bound)
            guided = GuidedModel(network, y, null, cfg_scale, self.process, interval=guidance_interval, batched=True,
                                 branch_callback=branch)
            if context_scale != 1.0:
                free_y = torch.full((len(y),), null, dtype=torch.long, device=y.device)   # nothing given: no mask
                free = lambda x, t, free_y=free_y: self.model(x, t, free_y)
                guided = ContextGuidedModel(guided, free, context_scale, self.recipe.begin_branch)
            x = self.denoise(guided, noise, (C, F, H, W), num_sampling_steps, sampler or self.default_sampler, eta,
                             progress, step_callback)
            outs.append(torch.where(m.bool(), x.clamp(-1, 1), ctx).cpu())
        return self.gather_samples(torch.cat(outs), N)

    def extend(self, video: torch.Tensor, num_frames: int, labels: torch.Tensor | None = None,
               overlap: int | None = None, seed: int = 0, **kwargs) -> torch.Tensor:
        """Continue ``video`` [N, C, K, H, W] to ``num_frames`` frames, one model window at a time: each window gives
        the last ``overlap`` frames (default half the window) and predicts the rest. ``labels`` [N, num_frames]
        (per frame) or [N]; window w uses seed + w * N. Other arguments as for ``__call__``."""
        window = self.num_frames
        overlap = window // 2 if overlap is None else overlap
        if not 1 <= overlap < window:
            raise ValueError(f"overlap must be in [1, {window - 1}], got {overlap}")
        if video.shape[2] < overlap:
            raise ValueError(f"need at least {overlap} frames to continue from, got {video.shape[2]}")
        N, C, _, H, W = video.shape
        mask = torch.ones(1, 1, window, H, W)
        mask[:, :, :overlap] = 0
        w = 0
        while video.shape[2] < num_frames:
            start = video.shape[2] - overlap
            ctx = torch.zeros(N, C, window, H, W)
            ctx[:, :, :overlap] = video[:, :, start:]
            y = labels
            if labels is not None and labels.dim() == 2:
                y = labels[:, start:start + window]
                y = torch.cat([y, y[:, -1:].expand(N, window - y.shape[1])], dim=1)
            w += 1
            out = self(ctx, mask, y, seed=seed + w * N, **kwargs)
            video = torch.cat([video, out[:, :, overlap:overlap + num_frames - video.shape[2]]], dim=2)
        return video

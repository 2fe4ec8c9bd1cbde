"""Conditional video generation by masking: a VideoDiT + its diffusion process behind one callable.

    pipe = VideoPipeline.from_pretrained("moving-mnist-vdt")
    context, mask = video_condition("predict", frames, pipe.num_frames, pipe.frame_shape)   # frames [C, K, H, W]
    video = pipe(context[None], mask, labels=None, num_sampling_steps=50, seed=0)           # [1, C, F, H, W]

Given positions (mask 0) of the output are the context values, bitwise; the sampler only generates the rest.
Videos longer than the model's window are continued by a sliding-window rollout (:meth:`VideoPipeline.extend`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..core import checkpoint as ckpt
from ..core.config import from_dict
from ..core.configs import VideoTrainConfig
from ..diffusion.frames import clean_timestep, frame_timesteps, given_frames_of, noise_to_level
from ..diffusion.guidance import HISTORY_GUIDANCE, GuidedModel, HistoryGuidedModel, check_guidance_scale
from ..diffusion.masks import check_mask, given_frames, task_mask
from ..diffusion.samplers import NoiseSource
from ..models.interop.diffusers_trainable import VIDEO_FORMAT
from ..models.video_dit import VideoDiT, VideoDiTConfig
from .base import Pipeline, load_ditkit_model, resolve_model_path
from .diffusers_dit import load_diffusers_video
from .build import build_process

HISTORY_NOISE_SEED = 1 << 30        # video i's history noise (fractional guidance) draws from seed + i + this


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

    @property
    def frame_timesteps(self) -> bool:
        """Whether the network takes one timestep per frame (trained with per-frame noise levels)."""
        return bool(getattr(self.model.config, "frame_timesteps", False))

    @property
    def captioned(self) -> bool:
        """Whether the model cross-attends to captions (``prompt=`` / ``frame_prompts=``)."""
        return bool(getattr(self.model.config, "caption_channels", 0))

    def _prompts(self, prompt, frame_prompts, context, labels, num_videos) -> list[list[str]] | None:
        """Per video, its captions: [prompt] or one per frame; None for an uncaptioned model. Checked first."""
        if not self.captioned:
            if prompt is not None or frame_prompts is not None:
                raise ValueError("this video model has no captions (no cross-attention): drop prompt / frame_prompts "
                                 "(--prompt / --frame-prompts), or use a captioned model")
            return None
        if prompt is not None and frame_prompts is not None:
            raise ValueError("give prompt (one caption per video) or frame_prompts (one per frame), not both")
        n = context.shape[0] if context is not None else num_videos or (len(labels) if labels is not None else None)
        if frame_prompts is not None:
            out = [list(p) for p in frame_prompts]
            F = context.shape[2] if context is not None else self.num_frames
            if not all(len(p) == F and all(isinstance(c, str) for c in p) for p in out):
                raise ValueError(f"frame_prompts holds, per video, one caption per frame: {F} strings each (--frame-prompts "
                                 f"takes {F} captions)")
        else:
            prompt = "" if prompt is None else prompt
            out = [[p] for p in ([prompt] * (n or 1) if isinstance(prompt, str) else list(prompt))]
            if not all(isinstance(p[0], str) for p in out):
                raise ValueError(f"prompt must be a string or a list of strings, got {prompt!r}")
        if n is not None and len(out) == 1 and n > 1:
            out = out * n
        if n is not None and len(out) != n:
            raise ValueError(f"{len(out)} prompts for {n} videos: give one, or one per video")
        return out

    def _encode(self, prompts: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per video [prompt] -> states [n, L, C] and mask [n, L]; per video F captions -> [n, F, L, C], [n, F, L]."""
        flat = [c for p in prompts for c in p]
        with torch.no_grad():
            states, mask = self.model.encode_prompts(flat)
        per = len(prompts[0])
        if per == 1:
            return states.to(self.device), mask.to(self.device)
        return (states.view(len(prompts), per, *states.shape[1:]).to(self.device),
                mask.view(len(prompts), per, -1).to(self.device))

    def check_history_guidance(self, history_guidance: str, history_scale: float, history_noise: float) -> None:
        """Bad history-guidance settings for this model raise here, before any sampling."""
        check_guidance_scale(history_scale, "history_scale")
        if history_guidance not in HISTORY_GUIDANCE:
            raise ValueError(f"history_guidance={history_guidance!r}: valid: {', '.join(HISTORY_GUIDANCE)}")
        if not 0 < history_noise < 1:
            raise ValueError(f"history_noise={history_noise!r} is the noise level of the history in fractional "
                             f"guidance: give a number in (0, 1) (0 = clean, 1 = pure noise), e.g. 0.5")
        if history_guidance == "fractional" and history_scale != 1.0 and not self.frame_timesteps:
            raise ValueError("fractional history guidance shows the network partly noised history frames, which needs a "
                             "model trained with per-frame noise levels (model.frame_timesteps); this one takes one "
                             "timestep per video: use history_guidance='vanilla' (--history-guidance vanilla)")

    @torch.no_grad()
    def __call__(self, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 labels: Sequence | torch.Tensor | None = None, num_videos: int | None = None,
                 num_sampling_steps: int = 50, sampler: str | None = None, cfg_scale: float = 1.0,
                 guidance_interval=None, history_scale: float = 1.0, history_guidance: str = "vanilla",
                 history_noise: float = 0.5, prompt: str | Sequence[str] | None = None,
                 frame_prompts: Sequence[Sequence[str]] | None = None, history_level: float = 0.0, seed: int = 0,
                 eta: float = 0.0, batch_size: int | None = None, progress: bool = False,
                 step_callback=None) -> torch.Tensor:
        """context [N, C, F, H, W] (clean given values), mask [N or 1, 1, F, H, W] or [F, H, W] (1 = generate),
        labels [N] or per frame [N, F] (None = the null label); a captioned model also takes ``prompt`` (one per
        video, or one for all) or ``frame_prompts`` (per video, one caption per frame; story continuation), else the
        empty caption. Without context: ``num_videos`` unconditional videos of the model's length (or one per
        prompt). ``cfg_scale`` guides towards the labels and captions (only at noise levels in
        ``guidance_interval``, if given), ``history_scale`` towards the given frames with ``history_guidance``
        'vanilla' (one more network call per step) or 'fractional' (two more; the history noised to level
        ``history_noise``, models trained with per-frame noise levels only;
        :class:`~ditkit.diffusion.guidance.HistoryGuidedModel`). ``history_level`` > 0 shows the network the given
        frames noised to that level (Diffusion Forcing's stabilisation of generated history in rollouts: the model
        does not take its own slightly wrong frames for clean truth; per-frame-noise models only).
        Returns [N, C, F, H, W] in [-1, 1]; video i uses seed + i whatever the batch size."""
        self.check_history_guidance(history_guidance, history_scale, history_noise)
        if history_level and not (0 < history_level < 1 and self.frame_timesteps):
            raise ValueError(f"history_level={history_level!r}: the noise level of the given frames, in (0, 1), for "
                             f"models trained with per-frame noise levels (model.frame_timesteps); 0 = clean")
        prompts = self._prompts(prompt, frame_prompts, context, labels, num_videos)
        if context is None:
            n = num_videos or (len(labels) if labels is not None else len(prompts) if prompts is not None else 1)
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
        if history_scale != 1.0 and bool(mask.all()):
            raise ValueError(f"history_scale={history_scale} guides towards given frames, but the mask gives nothing: "
                             f"use history_scale=1 or a task with given frames")
        bs = batch_size or N
        rows = self.sample_rows(N)
        outs = []
        for start in range(rows.start, rows.stop, bs):
            sl = slice(start, min(start + bs, rows.stop))
            ctx, m, y = context[sl].to(self.device), mask[sl].to(self.device), labels[sl].to(self.device)
            seeds = range(seed + start, seed + start + len(ctx))
            null_y = torch.full_like(y, null)
            cond, uncond = (y,), (null_y,)
            if self.captioned:                          # the captions, and the empty caption CFG contrasts them with
                empty = [[""] * len(p) for p in prompts[sl]]
                cond, uncond = (y, *self._encode(prompts[sl])), (null_y, *self._encode(empty))
            history = NoiseSource([s + HISTORY_NOISE_SEED for s in seeds], self.device).randn(C, F, H, W) \
                if history_level or (history_guidance == "fractional" and history_scale != 1.0) else None
            given_net = self._network(ctx, m, history, history_level) if history_level else self._network(ctx, m)
            network, branch = self.guidance_split(given_net)
            guided = GuidedModel(network, cond, uncond, cfg_scale, self.process, interval=guidance_interval,
                                 batched=True, branch_callback=branch)
            if history_scale != 1.0:
                free = self._network(ctx, torch.ones_like(m))                  # nothing given: no mask, no label
                noised = None
                if history_guidance == "fractional":
                    noised = self._network(ctx, m, history, history_noise)
                guided = HistoryGuidedModel(guided, lambda x, t, free=free, u=uncond: free(x, t, *u),
                                            history_scale, None if noised is None else
                                            (lambda x, t, c=cond, noised=noised: noised(x, t, *c)),
                                            self.recipe.begin_branch)
            x = self.denoise(guided, NoiseSource(seeds, self.device), (C, F, H, W), num_sampling_steps,
                             sampler or self.default_sampler, eta, progress, step_callback)
            outs.append(torch.where(m.bool(), x.clamp(-1, 1), ctx).cpu())
        return self.gather_samples(torch.cat(outs), N)

    def _network(self, ctx: torch.Tensor, mask: torch.Tensor, history_noise: torch.Tensor | None = None,
                 level: float = 0.0):
        """``net(x, t, y[, text, text_mask])`` for the videos ``ctx`` [n, C, F, H, W] with ``mask`` [n, 1, F, H, W];
        CFG may double the batch. Models with per-frame timesteps get the given frames at the clean level. With ``history_noise``
        [n, C, F, H, W] the given frames enter as frames to generate, noised to noise level ``level`` (fractional
        history guidance)."""
        given = given_frames_of(mask)                                   # [n, F]
        clean = clean_timestep(self.process)
        if history_noise is not None:
            noisy, level_t = noise_to_level(self.process, ctx, history_noise, level)
            history = given[:, None, :, None, None]
            mask = torch.where(history, torch.ones_like(mask), mask)

        def net(x, t, y, *text):
            r = x.shape[0] // ctx.shape[0]
            if history_noise is not None:
                x = torch.where(history.repeat(r, 1, 1, 1, 1), noisy.repeat(r, 1, 1, 1, 1), x)
                t = frame_timesteps(t, given.repeat(r, 1), level_t)
            elif self.frame_timesteps:
                t = frame_timesteps(t, given.repeat(r, 1), clean)
            captions = dict(zip(("text", "text_mask"), text))                # captioned models: states, mask
            return self.model(x, t, y, context=ctx.repeat(r, 1, 1, 1, 1), mask=mask.repeat(r, 1, 1, 1, 1), **captions)
        return net

    def rollout_plan(self, history: int | None = None, stride: int | None = None) -> tuple[int, int]:
        """(history, stride) of a rollout, defaults filled in: ``history`` frames given per window (default half the
        window), ``stride`` new frames kept per window (default window - history)."""
        window = self.num_frames
        history = window // 2 if history is None else history
        if not 1 <= history < window:
            raise ValueError(f"history must be in [1, {window - 1}] frames (the model's window is {window}), got "
                             f"{history} (--history-frames)")
        stride = window - history if stride is None else stride
        if not 1 <= stride <= window - history:
            raise ValueError(f"stride must be in [1, {window - history}] (window {window} - history {history}), got "
                             f"{stride} (--window-stride)")
        return history, stride

    def extend(self, video: torch.Tensor, num_frames: int, labels: torch.Tensor | None = None,
               history: int | None = None, stride: int | None = None, seed: int = 0, progress: bool = False,
               frame_prompts: Sequence[Sequence[str]] | None = None, stabilize: float = 0.0,
               **kwargs) -> torch.Tensor:
        """Continue ``video`` [N, C, K, H, W] to ``num_frames`` frames by a sliding-window autoregressive rollout:
        each window of the model's length gives the last ``history`` frames of the video so far (default half the
        window), generates the rest and keeps the first ``stride`` of them (default all: window - history). ``labels``
        [N, num_frames] (per frame) or [N], ``frame_prompts`` (per video, num_frames captions) are cut per window;
        window w uses seed + w * N; ``progress`` shows a bar over windows; ``stabilize`` > 0 gives each window its
        (generated) history at that noise level (``history_level``). Other arguments as for ``__call__``."""
        window = self.num_frames
        history, stride = self.rollout_plan(history, stride)
        if video.shape[2] < history:
            raise ValueError(f"need at least {history} frames to continue from, got {video.shape[2]}")
        N, C, _, H, W = video.shape
        mask = torch.ones(1, 1, window, H, W)
        mask[:, :, :history] = 0
        windows = -(-max(num_frames - video.shape[2], 0) // stride)
        for w in tqdm(range(1, windows + 1), desc="windows", disable=not (progress and self.is_main), leave=False):
            start = video.shape[2] - history
            ctx = torch.zeros(N, C, window, H, W)
            ctx[:, :, :history] = video[:, :, start:]
            y = labels
            if labels is not None and labels.dim() == 2:
                y = labels[:, start:start + window]
                y = torch.cat([y, y[:, -1:].expand(N, window - y.shape[1])], dim=1)
            if frame_prompts is not None:
                kwargs["frame_prompts"] = [(list(p[start:start + window]) + [p[-1]] * window)[:window]
                                           for p in frame_prompts]
            out = self(ctx, mask, y, seed=seed + w * N, history_level=stabilize, **kwargs)
            keep = min(stride, num_frames - video.shape[2])
            video = torch.cat([video, out[:, :, history:history + keep]], dim=2)
        return video

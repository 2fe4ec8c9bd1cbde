"""Classifier-free guidance around a class-conditional network.

The guided output is uncond + scale * (cond - uncond) on the prediction channels (all C of them by default; the
original DiT guides only the first 3 of its 4 latent channels, available as ``guide_channels=3``). Learned-variance
channels are taken from the conditional branch. Outside the optional guidance interval (noise level in [0, 1],
1 = pure noise) only the conditional branch is evaluated.

History guidance (video masking, :class:`HistoryGuidedModel`) pushes the prediction towards the given frames, in
its vanilla form v_free + scale * (v_given - v_free), where v_free is the network with nothing given and the null
label, and v_given the (label-guided) prediction with the given frames.
"""
from __future__ import annotations

import numpy as np
import torch

from .flow import FlowMatching


def noise_level(t: float, process) -> float:
    """Network timestep (a host number) -> noise level in [0, 1] (1 = pure noise), for guidance intervals."""
    if isinstance(process, FlowMatching):
        return 1.0 - t / process.timestep_scale
    return t / (len(process.betas) - 1)


def check_guidance_scale(scale, name: str = "cfg_scale") -> None:
    """A guidance scale is a finite number >= 0 (1 = no guidance, 0 = the unconditional branch alone)."""
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not np.isfinite(scale) or scale < 0:
        raise ValueError(f"{name}={scale!r} is not a guidance scale: expected a finite number >= 0 (1 = no guidance; "
                         f"4 is usual for the bundled image models)")


def check_guidance_interval(interval) -> None:
    """A guidance interval is (low, high) noise levels with 0 <= low <= high <= 1."""
    if interval is None:
        return
    ok = len(interval) == 2 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in interval)
    if not ok or not 0 <= interval[0] <= interval[1] <= 1:
        raise ValueError(f"guidance_interval={tuple(interval)!r} is not valid: expected (low, high) noise levels with "
                         f"0 <= low <= high <= 1 (1 = pure noise), e.g. 0.1 0.9")


class GuidedModel:
    """``model_fn(x, t)`` for samplers. ``batched`` runs [cond; uncond] in one call of 2N samples (DiT's order);
    otherwise two separate calls, conditional first. ``branch_callback(name)`` is told which branch each network call
    computes: "cond", "uncond" or "cond+uncond" (batched).

    The conditioning is class ``labels`` [N] with the ``null_label`` class, or a tuple of per-sample tensors (text
    states and mask) with a tuple ``null_label`` of the unconditional ones (the empty or negative prompt). The batched
    conditioning is built once, so a network can keep what depends on it alone (text keys and values)."""

    def __init__(self, model, labels: torch.Tensor | tuple, null_label: int | tuple, cfg_scale: float = 1.0,
                 process=None, guide_channels: int | None = None, interval: tuple[float, float] | None = None,
                 batched: bool = True, branch_callback=None):
        check_guidance_scale(cfg_scale)
        check_guidance_interval(interval)
        self.model = model
        self.cond = labels if isinstance(labels, tuple) else (labels,)
        self.null = null_label if isinstance(null_label, tuple) else (torch.full_like(labels, null_label),)
        self.both = tuple(torch.cat([c, n]) for c, n in zip(self.cond, self.null))
        self.cfg_scale, self.process, self.guide_channels = cfg_scale, process, guide_channels
        self.interval, self.batched = interval, batched
        self.branch_callback = branch_callback or (lambda branch: None)
        self.t = None

    def set_timestep(self, t: float) -> None:
        """The host value of the next call's timestep (samplers report it), so the guidance interval is decided
        without reading the device tensor (rounded to float32, the precision of the tensor the network gets)."""
        self.t = float(np.float32(t))

    def _active(self, t: torch.Tensor) -> bool:
        if self.cfg_scale == 1.0:
            return False
        if self.interval is None:
            return True
        lo, hi = self.interval
        return lo <= noise_level(float(t.flatten()[0]) if self.t is None else self.t, self.process) <= hi

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self._active(t):
            self.branch_callback("cond")
            return self.model(x, t, *self.cond)
        if self.batched:
            self.branch_callback("cond+uncond")
            out = self.model(torch.cat([x, x]), torch.cat([t, t]), *self.both)
            cond, uncond = out.chunk(2)
        else:
            self.branch_callback("cond")
            cond = self.model(x, t, *self.cond)
            self.branch_callback("uncond")
            uncond = self.model(x, t, *self.null)
        g = self.guide_channels if self.guide_channels is not None else x.shape[1]
        guided = uncond[:, :g] + self.cfg_scale * (cond[:, :g] - uncond[:, :g])
        return torch.cat([guided, cond[:, g:]], dim=1)


HISTORY_GUIDANCE = ("vanilla", "fractional")


class HistoryGuidedModel:
    """History guidance (Song et al. 2025, History-Guided Video Diffusion), a classifier-free guidance over how much
    of the past the network is shown. ``given(x, t)`` is the (label-guided) prediction with the history (the given
    frames), ``free(x, t)`` the one with nothing given and the null label, ``noised(x, t)`` the one with the history
    frames noised to a fractional level (a model trained with per-frame noise levels reads them as such).

    - vanilla (HG-v): v_free + w (v_given - v_free), one extra call per step (what Stable Video Diffusion's guidance
      towards its conditioning frame does);
    - fractional (HG-f): v_given + (w - 1) (v_noised - v_free), two extra calls: guidance by the coarse content of
      the history (its low frequencies survive the noise) on top of conditioning on the clean history, which the
      paper finds keeps the motion that vanilla guidance freezes.

    Both are the plain conditional prediction at w = 1. ``branch_callback`` is told "free" and "noised" before those
    calls."""

    def __init__(self, given, free, scale: float, noised=None, branch_callback=None):
        check_guidance_scale(scale, "history_scale")
        self.given, self.free, self.noised, self.scale = given, free, noised, scale
        self.branch_callback = branch_callback or (lambda branch: None)

    def set_timestep(self, t: float) -> None:
        self.given.set_timestep(t)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = self.given(x, t)
        self.branch_callback("free")
        v_free = self.free(x, t)
        if self.noised is None:
            return v_free + self.scale * (v - v_free)
        self.branch_callback("noised")
        return v + (self.scale - 1) * (self.noised(x, t) - v_free)

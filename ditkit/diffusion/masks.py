"""Unified spatial-temporal masks (VDT): one mask per video, 1 = generate, 0 = given (clean context), shape [F, H, W];
batched masks are [N, 1, F, H, W] and broadcast over channels.

Tasks: ``uncond`` (nothing given), ``predict`` (first k frames given), ``backward`` (last k), ``interpolate`` (every
stride-th frame and the last one), ``animate`` and ``story`` (first frame; story adds per-frame labels), ``complete``
(a box of half the frame side is generated in every frame). Training draws a mixture of these plus ``random`` (each
frame generated with probability 0.8, VDT's "MLM").
"""
from __future__ import annotations

import torch

from ..core.configs import DEFAULT_MASK_WEIGHTS

TASKS = ("uncond", "predict", "backward", "interpolate", "animate", "story", "complete")
TRAINING_MASKS = ("uncond", "predict", "backward", "interpolate", "animate", "random", "complete")


def given_frames(task: str, num_frames: int, k: int | None = None, stride: int = 4) -> list[int]:
    """Indices of the fully given frames of a frame-level task (``k`` defaults to half the frames)."""
    F = num_frames
    k = F // 2 if k is None else k
    if task in ("predict", "backward") and not 1 <= k < F:
        raise ValueError(f"{task} needs 1 <= given frames < {F}, got {k}")
    if task == "predict":
        return list(range(k))
    if task == "backward":
        return list(range(F - k, F))
    if task == "interpolate":
        if stride < 2:
            raise ValueError(f"interpolation stride must be >= 2, got {stride}")
        return sorted(set(range(0, F, stride)) | {F - 1})
    if task in ("animate", "story"):
        return [0]
    if task in ("uncond", "complete"):
        return []
    raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")


def frames_mask(num_frames: int, height: int, width: int, given: list[int]) -> torch.Tensor:
    """[F, H, W]: 0 on the ``given`` frames, 1 elsewhere."""
    mask = torch.ones(num_frames, height, width)
    mask[list(given)] = 0
    return mask


def box_mask(num_frames: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[F, H, W] with an (H/2) x (W/2) box to generate in every frame: centred, or at a random place per frame."""
    bh, bw = height // 2, width // 2
    mask = torch.zeros(num_frames, height, width)
    for f in range(num_frames):
        if generator is None:
            top, left = (height - bh) // 2, (width - bw) // 2
        else:
            top = int(torch.randint(0, height - bh + 1, (), generator=generator))
            left = int(torch.randint(0, width - bw + 1, (), generator=generator))
        mask[f, top:top + bh, left:left + bw] = 1
    return mask


def task_mask(task: str, num_frames: int, height: int, width: int, k: int | None = None, stride: int = 4,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """The [F, H, W] mask of an inference task (``generator`` places the completion boxes at random)."""
    if task == "complete":
        return box_mask(num_frames, height, width, generator)
    return frames_mask(num_frames, height, width, given_frames(task, num_frames, k, stride))


def check_mask(mask: torch.Tensor) -> torch.Tensor:
    """Validate a mask of 0/1 values that leaves something to generate; returns it as float."""
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("a mask must contain only 0 (given) and 1 (generate)")
    if not mask.any():
        raise ValueError("the mask leaves nothing to generate: every position is given")
    return mask.float()


def _random_mask(kind: str, F: int, H: int, W: int, g: torch.Generator) -> torch.Tensor:
    rand = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=g))       # inclusive
    if kind in ("predict", "backward"):
        return frames_mask(F, H, W, given_frames(kind, F, rand(1, F - 1)))
    if kind == "interpolate":
        return frames_mask(F, H, W, given_frames(kind, F, stride=rand(2, max(2, F // 2))))
    if kind == "random":
        gen = torch.rand(F, generator=g) < 0.8
        gen[rand(0, F - 1)] = True
        return gen.float()[:, None, None].expand(F, H, W).clone()
    return task_mask(kind, F, H, W, generator=g)


def training_masks(n: int, num_frames: int, height: int, width: int, weights: dict[str, float] | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, 1, F, H, W]: one mask per video, its type drawn from ``weights`` (default: the training config's
    mixture, :data:`~ditkit.core.configs.DEFAULT_MASK_WEIGHTS`)."""
    weights = DEFAULT_MASK_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(TRAINING_MASKS)
    if unknown or not any(w > 0 for w in weights.values()):
        raise ValueError(f"mask weights need positive values for some of {', '.join(TRAINING_MASKS)}; got {weights}")
    kinds = list(weights)
    draws = torch.multinomial(torch.tensor([float(weights[k]) for k in kinds]), n, replacement=True, generator=generator)
    return torch.stack([_random_mask(kinds[i], num_frames, height, width, generator) for i in draws.tolist()]).unsqueeze(1)

"""Video-task evaluation (``ditkit eval --task predict|interpolate|complete|rollout|story``) on held-out Moving MNIST.

Clips are drawn like the model's training data (canvas, frames, digits, speed) but from the 1,000 held-out MNIST
digits only, without identity switches, from a fixed seed. The model sees no labels (null label), only the given
frames / pixels. Each task is scored with PSNR and SSIM (:mod:`ditkit.core.metrics`, full frames in [-1, 1])
per generated frame (mean over clips) and on average over those frames, next to a model-free baseline:

- predict (first half of the frames given): copy the last given frame;
- interpolate (every 4th frame and the last given): linear blending of the two neighbouring given frames;
- complete (a box of half the side at a random place in every frame): the box filled with the mean of the frame's
  given pixels;
- rollout (``num_frames`` frames, default 32, from the first half-window given): the model's first window predicts,
  then :meth:`~ditkit.pipelines.video.VideoPipeline.extend` continues window by window (half a window of history);
  baseline: copy the last given frame.

Predict and rollout also report ``identity_accuracy``: the fraction of generated frames (rollout: of the last
``IDENTITY_LAST_FRAMES``) in which ditkit's MNIST classifier reads the clip's true digit (the reading of ``story``
below), with ``identity_accuracy_per_frame``.

``t2v`` (captioned models): a video from each held-out clip's caption alone (nothing given); ``digit_accuracy``: the
fraction of frames whose digit reads as the caption's, ``direction_accuracy``: the fraction of videos whose digit's
brightness centroid moves, from frame 0 to the last frame before the true clip's first bounce (at least 2 frames
later; clips bouncing earlier are not scored), in the caption's compass direction (:func:`~ditkit.data.video.
direction`); real clips measured the same way give the reference (``real_*``).

``story`` scores label following instead (captioned models: the per-frame captions, ``caption_accuracy``): clips whose digit changes class at a random frame, the first frame given
plus the true per-frame labels (classifier-free guidance ``cfg_scale``); ditkit's MNIST classifier reads the digit of
every generated frame (a window of the digit size around the frame's brightness centroid, resized to 28x28 and padded
to 32x32). Baseline: copying the first frame; reference: the same reading of the real frames.

PSNR of a frame reproduced exactly is +inf; per-clip values are capped at ``PSNR_CAP`` dB before averaging.
"""
from __future__ import annotations

import functools
import numbers
import time
from pathlib import Path

import torch

from ..core.config import from_dict
from ..core.configs import VideoTrainConfig
from ..core.metrics import PSNR_CAP, psnr, ssim
from ..core.visual import pyplot, save_figure, save_grid
from ..data.video import MovingMNIST, direction
from ..diffusion.masks import frames_mask, task_mask
from .classifier import load_classifier

EVAL_TASKS = ("predict", "interpolate", "complete", "rollout", "story", "t2v")
BASELINES = {"predict": "copy last given frame", "interpolate": "linear blend of the neighbouring given frames",
             "complete": "masked box filled with the frame's mean given value", "rollout": "copy last given frame",
             "story": "copy first frame", "t2v": "none (real clips measured the same way)"}
EVAL_SEED = 10_000            # clip seed of the held-out evaluation set
ROLLOUT_FRAMES = 32           # default length of a rollout evaluation
IDENTITY_LAST_FRAMES = 8      # rollout: identity accuracy over the last frames


def baseline_fill(video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Model-free fill of ``video`` [N, C, F, H, W] where ``mask`` [N, 1, F, H, W] is 1. Fully generated frames: linear
    blend of the nearest given frames before and after (a copy when only one side exists); partly given frames: the
    generated pixels get the mean of the frame's given pixels."""
    out = video.clone()
    for n in range(video.shape[0]):
        m = mask[n, 0]
        full = [f for f in range(m.shape[0]) if m[f].all()]
        given = [f for f in range(m.shape[0]) if not m[f].any()]
        for f in range(m.shape[0]):
            if f in full:
                before, after = [g for g in given if g < f], [g for g in given if g > f]
                if not before and not after:
                    raise ValueError("the frame-level baseline needs at least one given frame")
                a, b = (before or after)[-1 if before else 0], (after or before)[0 if after else -1]
                w = 0.0 if a == b else (f - a) / (b - a)
                out[n, :, f] = (1 - w) * video[n, :, a] + w * video[n, :, b]
            elif m[f].any():
                known = ~m[f].bool()
                fill = video[n, :, f][:, known].mean(dim=1)
                out[n, :, f] = torch.where(m[f].bool(), fill[:, None, None], video[n, :, f])
    return out


def _per_frame(pred: torch.Tensor, truth: torch.Tensor, frames: list[int]) -> tuple[list[float], list[float]]:
    p = [psnr(pred[:, :, f], truth[:, :, f], cap=PSNR_CAP).mean().item() for f in frames]
    s = [ssim(pred[:, :, f], truth[:, :, f]).mean().item() for f in frames]
    return p, s


def _heldout_source(train_config, switch_prob: float, num_frames: int | None = None) -> MovingMNIST:
    d = train_config.data
    if d.name != "moving-mnist":
        raise ValueError(f"video evaluation uses held-out Moving MNIST; this model was trained on {d.name!r} data")
    return _moving_mnist(d.image_size, num_frames or d.num_frames, d.num_digits, d.digit_size, tuple(d.speed),
                         float(switch_prob))


@functools.lru_cache(maxsize=4)
def _moving_mnist(canvas, num_frames, num_digits, digit_size, speed, switch_prob) -> MovingMNIST:
    """The held-out source, built once per shape (loading the digits takes seconds; the source is about 1 MB)."""
    return MovingMNIST("heldout", canvas, num_frames, num_digits, digit_size, speed, switch_prob, EVAL_SEED)


def heldout_clips(train_config, num_videos: int, switch_prob: float = 0.0,
                  num_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out Moving MNIST clips 0..num_videos-1 shaped like the model's training data (``num_frames`` frames if
    given): [num_videos, 1, F, H, W], per-frame labels [N, F]. Memory: the two output tensors only (4 * F * H * W
    bytes per clip); for one clip of a large index use :func:`heldout_clip`."""
    if num_videos < 0:
        raise ValueError(f"the number of held-out clips must be >= 0, got {num_videos}")
    return _heldout_source(train_config, switch_prob, num_frames).get(range(num_videos))


def heldout_clip(train_config, index: int, switch_prob: float = 0.0) -> torch.Tensor:
    """Held-out clip ``index`` alone: [1, F, H, W], bitwise ``heldout_clips(train_config, index + 1)[0][index]`` (clip
    i is a pure function of the evaluation seed and i, so every index >= 0 is valid). Labels: heldout_clip_labels."""
    return _heldout_source(train_config, switch_prob).get([_clip_index(index)])[0][0]


def heldout_clip_labels(train_config, index: int, switch_prob: float = 0.0) -> torch.Tensor:
    """Per-frame labels [F] int64 of held-out clip ``index``: ``heldout_clips(train_config, index + 1)[1][index]``."""
    return _heldout_source(train_config, switch_prob).get([_clip_index(index)])[1][0]


def _clip_index(index) -> int:
    if isinstance(index, numbers.Integral) and not isinstance(index, bool) and index >= 0:
        return int(index)
    raise ValueError(f"held-out clip index must be an integer >= 0 (every index from 0 up is a valid clip), got "
                     f"{index!r}")


@torch.no_grad()
def read_digits(frames: torch.Tensor, digit_size: int) -> torch.Tensor:
    """Classes [M] read by ditkit's MNIST classifier from frames [M, 1, H, W] holding one digit each."""
    w = (frames[:, 0] + 1) / 2
    mass = w.sum(dim=(1, 2)).clamp(min=1e-6)
    H, W = w.shape[1:]
    cy = (w.sum(dim=2) * torch.arange(H)).sum(dim=1) / mass
    cx = (w.sum(dim=1) * torch.arange(W)).sum(dim=1) / mass
    crops = []
    for m in range(len(frames)):
        top = int((cy[m] - digit_size / 2).round().clamp(0, H - digit_size))
        left = int((cx[m] - digit_size / 2).round().clamp(0, W - digit_size))
        crops.append(frames[m, :, top:top + digit_size, left:left + digit_size])
    digits = torch.nn.functional.interpolate(torch.stack(crops), size=(28, 28), mode="bilinear", align_corners=False)
    return load_classifier()(torch.nn.functional.pad(digits, (2, 2, 2, 2), value=-1.0).clamp(-1, 1)).argmax(1)


def _story(pipe, train_config, num_videos, sampling, progress):
    source = _heldout_source(train_config, 1.0)
    truth, labels = source.get(range(num_videos))
    N, _, F, H, W = truth.shape
    mask = task_mask("story", F, H, W).expand(N, 1, F, H, W)
    follow = {"frame_prompts": [source.frame_captions(i) for i in range(N)]} if pipe.captioned else {"labels": labels}
    pred = pipe(truth, mask, progress=progress, **follow, **sampling)
    frames = list(range(1, F))
    hits = lambda video: identity_per_frame(video, labels, frames, train_config.data.digit_size)
    first = truth[:, :, :1].expand(-1, -1, F, -1, -1)
    acc, base, real = hits(pred), hits(first), hits(truth)
    mean = lambda v: sum(v) / len(v)
    key = "caption_accuracy" if pipe.captioned else "label_accuracy"
    told = "caption" if pipe.captioned else "label"
    result = {"task": "story", "num_videos": N, "frames": frames, "given_frames": [0],
              key: mean(acc), f"baseline_{key}": mean(base), f"real_{key}": mean(real),
              f"{key}_per_frame": acc, f"baseline_{key}_per_frame": base, f"real_{key}_per_frame": real,
              "baseline": BASELINES["story"],
              "metrics": f"fraction of generated frames whose digit ditkit's MNIST classifier reads as the frame's "
                         f"{told}"}
    return result, {"truth": truth, "model": pred, "baseline": first, "mask": mask}


def centroids(video: torch.Tensor) -> torch.Tensor:
    """Brightness centroids (row, column) of videos [N, 1, F, H, W] in [-1, 1] -> [N, F, 2]."""
    w = (video[:, 0] + 1) / 2
    mass = w.sum(dim=(2, 3)).clamp(min=1e-6)
    rows = (w.sum(dim=3) * torch.arange(w.shape[2])).sum(dim=2) / mass
    cols = (w.sum(dim=2) * torch.arange(w.shape[3])).sum(dim=2) / mass
    return torch.stack([rows, cols], dim=-1)


def _t2v(pipe, train_config, num_videos, sampling, progress):
    if not pipe.captioned:
        raise ValueError("task 't2v' generates from captions: this video model has none (train one with "
                         "data.captions)")
    source = _heldout_source(train_config, 0.0)
    truth, labels = source.get(range(num_videos))
    N, _, F, H, W = truth.shape
    pred = pipe(None, None, num_videos=N, prompt=[source.caption(i) for i in range(N)], progress=progress,
                **sampling)
    frames = list(range(F))
    digits = lambda video: identity_per_frame(video, labels, frames, train_config.data.digit_size)
    tracks = [source.motion(i)[0][1] for i in range(N)]
    ends = [(t.bounces[0][0] if t.bounces else F) - 1 for t in tracks]
    scored = [n for n in range(N) if ends[n] >= 2]

    def directions(video) -> list[bool]:
        c = centroids(video)
        return [direction((c[n, ends[n]] - c[n, 0]) / ends[n]) == direction(tracks[n].velocities[0]) for n in scored]
    mean = lambda v: sum(v) / max(len(v), 1)
    acc, real = digits(pred), digits(truth)
    result = {"task": "t2v", "num_videos": N, "frames": frames, "given_frames": [],
              "digit_accuracy": mean(acc), "real_digit_accuracy": mean(real), "digit_accuracy_per_frame": acc,
              "real_digit_accuracy_per_frame": real, "direction_accuracy": mean(directions(pred)),
              "real_direction_accuracy": mean(directions(truth)), "direction_videos": len(scored),
              "baseline": BASELINES["t2v"], "captions": [source.caption(i) for i in range(min(N, 8))],
              "metrics": "digit: fraction of frames whose digit ditkit's MNIST classifier reads as the caption's; "
                         "direction: fraction of videos whose digit's brightness centroid moves in the caption's "
                         "compass direction before the first bounce"}
    return result, {"truth": truth, "model": pred, "baseline": truth, "mask": torch.ones(N, 1, F, H, W)}


def identity_per_frame(video: torch.Tensor, labels: torch.Tensor, frames: list[int], digit_size: int) -> list[float]:
    """For each of ``frames``, the fraction of videos [N, 1, F, H, W] whose digit reads as ``labels`` [N, F]."""
    N, _, _, H, W = video.shape
    read = read_digits(video[:, :, frames].transpose(1, 2).reshape(-1, 1, H, W), digit_size).view(N, -1)
    return (read == labels[:, frames]).double().mean(dim=0).tolist()


def evaluate_video(pipe, task: str, num_videos: int = 200, num_sampling_steps: int = 50, sampler: str | None = None,
                   seed: int = 0, batch_size: int | None = None, progress: bool = False,
                   cfg_scale: float = 4.0, guidance_interval=None, guidance: dict | None = None,
                   num_frames: int | None = None) -> tuple[dict, dict]:
    """Score a VideoPipeline on ``task``; returns (result dict, tensors: truth, model, baseline, mask).
    ``cfg_scale`` and ``guidance_interval`` apply to 'story' only (the other tasks use no labels); ``guidance`` holds
    the pipeline's history-guidance arguments (``history_scale``, ``history_guidance``, ``history_noise``);
    ``num_frames``: rollout length (default ``ROLLOUT_FRAMES``)."""
    if task not in EVAL_TASKS:
        raise ValueError(f"unknown video evaluation task {task!r}; valid: {', '.join(EVAL_TASKS)}")
    if num_videos < 1:
        raise ValueError(f"--num-videos must be at least 1, got {num_videos}")
    window = pipe.num_frames
    if num_frames is not None and task != "rollout":
        raise ValueError(f"--num-frames sets the length of a rollout evaluation; task {task!r} scores the model's "
                         f"{window}-frame window: drop --num-frames or use --task rollout")
    num_frames = ROLLOUT_FRAMES if num_frames is None and task == "rollout" else num_frames
    if task == "rollout" and num_frames <= window:
        raise ValueError(f"--num-frames {num_frames}: a rollout goes beyond the model's {window}-frame window; give "
                         f"more than {window} frames, e.g. {ROLLOUT_FRAMES}")
    train_config = from_dict(VideoTrainConfig, pipe.metadata["train_config"])
    guidance = dict(guidance or {})
    pipe.check_history_guidance(guidance.get("history_guidance", "vanilla"), guidance.get("history_scale", 1.0),
                                guidance.get("history_noise", 0.5))
    sampling = {"num_sampling_steps": num_sampling_steps, "sampler": sampler or pipe.default_sampler, "seed": seed,
                "batch_size": batch_size, **guidance}
    t0 = time.time()
    if task in ("story", "t2v"):
        sampling.update(cfg_scale=cfg_scale, guidance_interval=guidance_interval)
        result, tensors = (_story if task == "story" else _t2v)(pipe, train_config, num_videos, sampling, progress)
        result["sampling"] = {**sampling, "conditioning": "the held-out clips' captions" if pipe.captioned else
                              "true per-frame labels"}
        return {**result, "sampling_seconds": time.time() - t0}, tensors
    truth, labels = heldout_clips(train_config, num_videos, num_frames=num_frames)
    N, _, F, H, W = truth.shape
    if task == "complete":
        g = torch.Generator().manual_seed(EVAL_SEED)
        mask = torch.stack([task_mask(task, F, H, W, generator=g) for _ in range(N)]).unsqueeze(1)
    elif task == "rollout":
        mask = frames_mask(F, H, W, range(window // 2)).expand(N, 1, F, H, W)
    else:
        mask = task_mask(task, F, H, W).expand(N, 1, F, H, W)
    if task == "rollout":
        first = pipe(truth[:, :, :window], mask[:, :, :window], None, progress=progress, **sampling)
        pred = pipe.extend(first, F, None, history=window // 2, progress=progress, **sampling)
    else:
        pred = pipe(truth, mask, None, progress=progress, **sampling)
    seconds = time.time() - t0
    base = baseline_fill(truth, mask)
    frames = [f for f in range(F) if mask[:, :, f].any()]
    p, s = _per_frame(pred, truth, frames)
    bp, bs = _per_frame(base, truth, frames)
    mean = lambda v: sum(v) / len(v)
    result = {
        "task": task, "num_videos": N, "frames": frames, "given_frames": [f for f in range(F) if f not in frames],
        "psnr": mean(p), "ssim": mean(s), "baseline_psnr": mean(bp), "baseline_ssim": mean(bs),
        "psnr_per_frame": p, "ssim_per_frame": s, "baseline_psnr_per_frame": bp, "baseline_ssim_per_frame": bs,
        "baseline": BASELINES[task],
        "data": f"held-out Moving MNIST (1,000 held-out digits), seed {EVAL_SEED}, {F} frames of {H}x{W}",
        "metrics": f"PSNR (dB, capped at {PSNR_CAP:g}) and SSIM on full frames in [-1, 1], mean over clips per frame",
        "sampling": {**sampling, "labels": "none (null label)"},
        "sampling_seconds": seconds,
    }
    if task in ("predict", "rollout"):
        size = train_config.data.digit_size
        scored = frames[-IDENTITY_LAST_FRAMES:] if task == "rollout" else frames
        result["identity_accuracy_per_frame"] = identity_per_frame(pred, labels, frames, size)
        result["baseline_identity_accuracy_per_frame"] = identity_per_frame(base, labels, frames, size)
        result["identity_accuracy"] = mean(result["identity_accuracy_per_frame"][-len(scored):])
        result["baseline_identity_accuracy"] = mean(result["baseline_identity_accuracy_per_frame"][-len(scored):])
        result["identity_frames"] = scored
    return result, {"truth": truth, "model": pred, "baseline": base, "mask": mask}


def metric_keys(result: dict) -> list[str]:
    return [k for k in ("psnr", "ssim", "identity_accuracy", "label_accuracy", "caption_accuracy", "digit_accuracy")
            if k in result]


def plot_per_frame(result: dict, path: str | Path) -> Path | None:
    """Each metric per generated frame, model vs baseline; None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    keys = metric_keys(result)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(result["frames"], result[f"{key}_per_frame"], "o-", label="model")
        if f"baseline_{key}_per_frame" in result:
            ax.plot(result["frames"], result[f"baseline_{key}_per_frame"], "s--",
                    label=f"baseline ({result['baseline']})")
        if f"real_{key}_per_frame" in result:
            ax.plot(result["frames"], result[f"real_{key}_per_frame"], "^:", label="real frames")
        for g in result["given_frames"]:
            ax.axvline(g, color="green", alpha=0.25, lw=6)
        ax.set_xlabel("frame (green: given)")
        ax.set_ylabel({"psnr": "PSNR (dB)", "ssim": "SSIM", "identity_accuracy": "true digit read",
                       "label_accuracy": "label accuracy", "caption_accuracy": "caption's digit read",
                       "digit_accuracy": "caption's digit read"}[key])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{result['task']}: {result['num_videos']} held-out clips")
    fig.tight_layout()
    return save_figure(fig, path)


def save_examples(tensors: dict, path: str | Path, num: int = 4) -> Path:
    """PNG grid: for each of the first ``num`` clips, rows truth / model / baseline (frames left to right)."""
    rows = [tensors[k][i] for i in range(min(num, len(tensors["truth"]))) for k in ("truth", "model", "baseline")]
    frames = torch.cat([r.transpose(0, 1) for r in rows])                          # [rows*F, C, H, W]
    return save_grid(frames, path, nrow=rows[0].shape[1], upscale=3)

"""Bench tasks: the inputs and the generation call of N samples with fixed seeds, shared by ``ditkit bench`` and
``ditkit calibrate``. ``task(pipe)`` generates all N samples, ``task(pipe, n)`` the first n (same seeds),
``task.resample(n, seed)`` is the same task on other samples (calibration), ``task.quality(samples, reference)``
scores samples against the full-compute ones.

- :class:`ImageTask` (DiTPipeline): sample i has label i mod num_classes and seed ``seed + i``. Quality: PSNR / SSIM
  per image (mean), and for MNIST-shaped models class accuracy and the Fréchet distance on ditkit's classifier
  features (only with more samples than the features' 128 dimensions, so that their covariance has full rank).
- :class:`TextTask` (TextPipeline): sample i has prompt i of the held-out prompt set of ``ditkit eval`` (cycling)
  and seed ``seed + i``; resampled (calibration) it takes training-split captions instead, so calibration and the
  reported prompts never meet. Quality: PSNR / SSIM per image and the scene judge's prompt accuracy.
- :class:`VideoTask` (VideoPipeline): a VDT task (``predict`` by default; any of ``diffusion.masks.TASKS``) on
  held-out Moving MNIST clips: video i conditions on clip ``seed + i`` of the held-out set of ``ditkit eval``
  (the 1,000 held-out MNIST digits, clip seed ``EVAL_SEED``, digits at the training size, at most half the canvas; the
  bench's seeds 0.. and the calibration's 1000.. give disjoint clips) and uses noise seed ``seed + i``. Labels: none
  (the null label) unless ``--label``; ``story`` follows each clip's own per-frame labels. Quality: PSNR / SSIM over
  the generated frames only (PSNR on each frame's generated pixels, SSIM on the whole frame), mean over videos and
  frames, and the PSNR per generated frame.

On a larger canvas (``--canvas``, ``--num-frames``) the trained video model is rebuilt for it as ``ditkit
bench-attention --e2e`` does (same weights, sin-cos positions recomputed). The clips are then drawn natively on that
canvas: the same held-out digits at the training digit size and speed bouncing over the larger canvas, so the model
sees digits of the scale it was trained on and the task keeps its real context frames (upscaled 32-px clips would
show digits 4x larger than any training digit; unconditional generation would drop the context).
"""
from __future__ import annotations

import copy
import dataclasses
import functools

import torch

from ..acceleration.cache.calibration import calibrate
from ..core.config import from_dict
from ..core.configs import VideoDataSection, VideoTrainConfig
from ..core.metrics import PSNR_CAP, psnr, ssim
from ..data.video import MovingMNIST
from ..evaluation.classifier import FEATURE_DIM
from ..data.scenes import CaptionedScenes
from ..evaluation.classifier import load_scene_classifier
from ..evaluation.evaluate import classifier_metrics
from ..evaluation.scenes import SceneJudge
from ..evaluation.text import HELDOUT_PROMPTS, read_prompts
from ..evaluation.video import EVAL_SEED
from ..models.attention import TokenLayout
from ..pipelines.base import model_on_canvas
from ..pipelines.text import TextPipeline
from ..pipelines.video import VideoPipeline, video_condition


@functools.lru_cache(maxsize=2)
def _heldout_digits(num_digits: int, digit_size: int, speed: tuple[float, float]):
    return MovingMNIST("heldout", digit_size, 1, num_digits, digit_size, speed, 0.0, EVAL_SEED)


def heldout_clip_source(canvas: int, num_frames: int, switch_prob: float, num_digits: int, digit_size: int,
                        speed: tuple[float, float]):
    """The held-out Moving MNIST clips of ``ditkit eval`` (seed ``EVAL_SEED``) on a ``canvas``-pixel square canvas.
    The digits load once per process (seconds); each canvas, length and switch probability is a copy of that source
    with those attributes replaced (MovingMNIST draws its clips from them in ``get``)."""
    if not digit_size <= canvas:
        raise ValueError(f"a {canvas}-px canvas cannot hold the model's {digit_size}-px Moving MNIST digits: use a "
                         f"larger --canvas")
    clips = copy.copy(_heldout_digits(num_digits, digit_size, tuple(speed)))
    clips.canvas, clips.num_frames, clips.switch_prob = canvas, num_frames, switch_prob
    return clips


@dataclasses.dataclass
class ImageTask:
    """Class-conditional images: labels 0, 1, 2, ... cycling, seeds seed, seed + 1, ..."""
    num_samples: int
    seed: int
    sampling: dict                     # DiTPipeline keyword arguments but seed
    num_classes: int
    mnist: bool = False                # 1x32x32, 10 classes: score with ditkit's MNIST classifier
    kind = "image"

    @property
    def labels(self) -> list[int]:
        return [i % self.num_classes for i in range(self.num_samples)]

    def __call__(self, pipe, n: int | None = None) -> torch.Tensor:
        """[n, C, H, W] in [-1, 1]: the first n samples (default all)."""
        return pipe(self.labels[:n], seed=self.seed, **self.sampling)

    def resample(self, num_samples: int, seed: int) -> "ImageTask":
        return dataclasses.replace(self, num_samples=num_samples, seed=seed)

    def quality(self, samples: torch.Tensor, reference: torch.Tensor) -> dict:
        row = {"psnr": psnr(samples, reference, cap=PSNR_CAP).mean().item(),
               "ssim": ssim(samples, reference).mean().item(), "class_accuracy": None, "frechet_distance": None}
        if self.mnist:
            m = classifier_metrics(samples, self.labels)
            row["class_accuracy"] = m["class_accuracy"]
            if len(samples) > FEATURE_DIM:
                row["frechet_distance"] = m["frechet_distance"]
        return row

    def settings(self) -> dict:
        return {**self.sampling, "seed": self.seed}


@dataclasses.dataclass
class TextTask:
    """Text-to-image: prompt i of ``prompts`` and seed ``seed + i`` (see the module docstring)."""
    num_samples: int
    seed: int
    sampling: dict                     # TextPipeline keyword arguments but prompt, seed
    prompts: list                      # the task's prompts, one per sample
    judged: bool = True                # MNIST scenes: the scene judge scores prompt accuracy (else None)
    kind = "text"

    def __call__(self, pipe, n: int | None = None) -> torch.Tensor:
        """[n, C, H, W] in [-1, 1]: the first n samples (default all)."""
        return pipe(prompt=self.prompts[:n], seed=self.seed, **self.sampling)

    def resample(self, num_samples: int, seed: int) -> "TextTask":
        """The task on training-split captions ``seed``, ``seed + 1``, ... (calibration: disjoint from the
        held-out prompts)."""
        scenes = CaptionedScenes("train")
        return dataclasses.replace(self, num_samples=num_samples, seed=seed,
                                   prompts=[scenes.caption(seed + i) for i in range(num_samples)])

    def quality(self, samples: torch.Tensor, reference: torch.Tensor) -> dict:
        accuracy = _scene_judge().scores(samples.cpu(), self.prompts[:len(samples)])["prompt_accuracy"] \
            if self.judged else None
        return {"psnr": psnr(samples, reference, cap=PSNR_CAP).mean().item(),
                "ssim": ssim(samples, reference).mean().item(), "class_accuracy": None, "frechet_distance": None,
                "prompt_accuracy": accuracy}

    def settings(self) -> dict:
        return {**self.sampling, "seed": self.seed, "prompts": f"{self.prompts[0]!r} ... ({len(self.prompts)})"}


@functools.lru_cache(maxsize=1)
def _scene_judge() -> SceneJudge:
    return SceneJudge(load_scene_classifier())


def text_task(num_samples: int, seed: int, sampling: dict, judged: bool = True) -> TextTask:
    """The bench's text task: the held-out prompts from ``seed`` on, cycling (as plain captions for a model that
    does not draw MNIST scenes, ``judged`` False: speed and PSNR / SSIM vs full compute only)."""
    held = read_prompts(HELDOUT_PROMPTS)
    return TextTask(num_samples, seed, sampling, [held[(seed + i) % len(held)] for i in range(num_samples)], judged)


@dataclasses.dataclass
class VideoTask:
    """A VDT task on held-out Moving MNIST clips ``seed``, ``seed + 1``, ... (see the module docstring)."""
    num_samples: int
    seed: int
    sampling: dict                     # VideoPipeline keyword arguments but context, mask, labels, seed
    task: str
    frame_shape: tuple[int, int, int]  # C, H, W
    num_frames: int
    data: dict                         # MovingMNIST arguments: num_digits, digit_size, speed
    label: int | None = None
    given_frames: int | None = None
    stride: int = 4
    native: bool = True                # the model at its training canvas and frame count
    kind = "video"

    def __post_init__(self):
        _, H, W = self.frame_shape
        F = self.num_frames
        if H != W:
            raise ValueError(f"held-out Moving MNIST clips are square; this model makes {H}x{W} frames")
        clips = heldout_clip_source(H, F, 1.0 if self.task == "story" else 0.0, **self.data)
        videos, clip_labels = clips.get(range(self.seed, self.seed + self.num_samples))
        given = [video_condition(self.task, None if self.task == "uncond" else v, F, self.frame_shape,
                                 self.given_frames, self.stride) for v in videos]
        self.context = torch.stack([c for c, _ in given])                      # [N, C, F, H, W]
        self.mask = given[0][1]                                                # [F, H, W], 1 = generate
        if self.task == "story":
            self.labels = clip_labels                                          # [N, F]
        else:
            self.labels = None if self.label is None else torch.full((self.num_samples,), self.label)
        if self.sampling.get("cfg_scale", 1.0) != 1.0 and self.labels is None:
            raise ValueError("classifier-free guidance needs labels: pass --label, or --cfg-scale 1")
        if self.sampling.get("history_scale", 1.0) != 1.0 and bool(self.mask.all()):
            raise ValueError(f"--history-scale {self.sampling['history_scale']} guides towards given frames, but "
                             f"task {self.task!r} gives none: use --history-scale 1")

    @property
    def generated_frames(self) -> list[int]:
        return [f for f in range(self.num_frames) if self.mask[f].any()]

    def __call__(self, pipe, n: int | None = None) -> torch.Tensor:
        """[n, C, F, H, W] in [-1, 1]: the first n videos (default all)."""
        labels = None if self.labels is None else self.labels[:n]
        return pipe(self.context[:n], self.mask, labels, seed=self.seed, **self.sampling)

    def resample(self, num_samples: int, seed: int) -> "VideoTask":
        return dataclasses.replace(self, num_samples=num_samples, seed=seed)

    def quality(self, samples: torch.Tensor, reference: torch.Tensor) -> dict:
        """PSNR on the generated pixels of each generated frame (capped, mean over videos and frames; per frame in
        ``psnr_per_frame``), SSIM of the generated frames."""
        frames = self.generated_frames
        m = self.mask[frames].to(torch.float64)                                # [F_gen, H, W]
        err = (samples[:, :, frames].double() - reference[:, :, frames].double()).pow(2) * m
        mse = err.sum(dim=(1, 3, 4)) / (m.sum(dim=(1, 2)) * samples.shape[1])  # [N, F_gen]
        per = (10 * torch.log10(4.0 / mse)).clamp(max=PSNR_CAP)               # data range 2: [-1, 1]
        return {"psnr": per.mean().item(), "ssim": ssim(samples[:, :, frames], reference[:, :, frames]).mean().item(),
                "class_accuracy": None, "frechet_distance": None, "psnr_per_frame": per.mean(0).tolist()}

    def settings(self) -> dict:
        return {**self.sampling, "seed": self.seed, "task": self.task, "canvas": self.frame_shape[1],
                "num_frames": self.num_frames, "native": self.native, "generated_frames": self.generated_frames,
                "label": self.label, "given_frames": self.given_frames, "stride": self.stride,
                "clips": None if self.task == "uncond" else f"{self.seed}..{self.seed + self.num_samples - 1}"}


def video_pipeline_on_canvas(name: str, device="cpu", canvas: int | None = None,
                             num_frames: int | None = None) -> tuple[VideoPipeline, bool]:
    """The VideoPipeline of a video model file, its model rebuilt for a ``canvas``-pixel square canvas and
    ``num_frames`` frames (each default: the model's own); returns (pipeline, whether the model is at its native
    size)."""
    pipe = VideoPipeline.from_pretrained(name, device)
    cfg = pipe.model.config
    canvas, frames = canvas or cfg.image_hw[0], num_frames or cfg.num_frames
    if canvas % cfg.patch_size:
        fix = max(cfg.patch_size, round(canvas / cfg.patch_size) * cfg.patch_size)
        raise ValueError(f"--canvas {canvas} is not a multiple of the model's patch size {cfg.patch_size}: use e.g. "
                         f"--canvas {fix}")
    if frames < 2 or frames % cfg.tubelet:
        raise ValueError(f"--num-frames {frames}: need at least 2 frames and a multiple of the model's tubelet "
                         f"length {cfg.tubelet}")
    native = (canvas, canvas, frames) == (*cfg.image_hw, cfg.num_frames)
    if not native:
        side = canvas // cfg.patch_size
        pipe.model = model_on_canvas(name, TokenLayout(frames // cfg.tubelet, side, side))[0].to(device)
    return pipe, native


def video_task(pipe, num_samples: int, seed: int, sampling: dict, task: str = "predict", label: int | None = None,
               given_frames: int | None = None, stride: int = 4, native: bool = True) -> VideoTask:
    """A VideoTask for ``pipe``'s frames on clips drawn like its Moving MNIST training data (the data defaults when
    the pipeline has no training config; digits at most half the canvas, so that they move)."""
    train = pipe.metadata.get("train_config")
    data = from_dict(VideoTrainConfig, train).data if train else VideoDataSection()
    if data.name != "moving-mnist":
        raise ValueError(f"the video bench conditions on held-out Moving MNIST clips; this model was trained on "
                         f"{data.name!r} data")
    clips = {"num_digits": data.num_digits, "digit_size": min(data.digit_size, pipe.frame_shape[1] // 2),
             "speed": tuple(data.speed)}
    return VideoTask(num_samples, seed, sampling, task, pipe.frame_shape, pipe.num_frames, clips, label,
                     given_frames, stride, native)


def default_task(pipe, num_samples: int, seed: int, sampling: dict) -> ImageTask | TextTask | VideoTask:
    """The default task of a pipeline: class labels cycling for an image DiT, the held-out prompts for a text model,
    ``predict`` on held-out clips with no labels for a video DiT; ``sampling``: the pipeline's keyword arguments but seed."""
    if isinstance(pipe, VideoPipeline):
        return video_task(pipe, num_samples, seed, sampling)
    if isinstance(pipe, TextPipeline):
        return text_task(num_samples, seed, sampling, judged=pipe.metadata.get("format") != "diffusers")
    C, (H, W) = pipe.model.in_channels, pipe.model.config.image_hw
    return ImageTask(num_samples, seed, sampling, pipe.num_classes, (C, H, W, pipe.num_classes) == (1, 32, 32, 10))


def calibrate_on_task(pipe, method: str, num_prompts: int = 10, seed: int = 1000, task=None, **sampling) -> dict:
    """TeaCache / MagCache calibration (:func:`~ditkit.acceleration.cache.calibration.calibrate`) on ``task`` resampled
    to ``num_prompts`` samples from ``seed``; without a task, on the pipeline's default task (:func:`default_task`:
    class labels 0, 1, 2, ... for an image DiT, ``predict`` on held-out clips for a video DiT) with the pipeline
    keyword arguments ``sampling``. Returns the calibration dict, its sampling settings included."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    if task is not None and sampling:
        raise ValueError(f"give the sampling settings through the task, not also as {sorted(sampling)}")
    task = default_task(pipe, num_prompts, seed, sampling) if task is None else task.resample(num_prompts, seed)
    settings = {k: v for k, v in task.settings().items()
                if k != "seed" and isinstance(v, (int, float, str, type(None)))}
    return calibrate(pipe, method, task, num_prompts=num_prompts, seed=seed, sampling=settings)

"""Every config schema, each section a dataclass (see configs/*.yaml for examples): the image training config
(four sections, :class:`TrainConfig`) and the video training config (:class:`VideoTrainConfig`, which adds the mask
mixture). Saved models carry theirs in their metadata (``train_config``), so inference reads them too."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The training mixture of VDT masks (mask type -> weight; the types are ``diffusion.masks.TRAINING_MASKS``)
DEFAULT_MASK_WEIGHTS = {"uncond": 1.0, "predict": 2.0, "backward": 1.0, "interpolate": 2.0, "animate": 1.0,
                        "random": 1.0, "complete": 2.0}


@dataclass
class ModelSection:
    name: str = "DiT-T/4"            # DiT-{T,M,S,B,L,XL}/{2,4,8}
    input_size: int = 32
    in_channels: int = 1
    num_classes: int = 10
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    autoencoder: str | None = None   # local path of a diffusers AutoencoderKL for latent diffusion; None = pixels


@dataclass
class DiffusionSection:
    objective: str = "ddpm"          # ddpm (eps-prediction, DiT) | flow (velocity, SiT convention)
    schedule: str = "linear"         # ddpm only: linear | cosine
    num_timesteps: int = 1000
    timestep_scale: float = 1.0      # flow only: network sees t * timestep_scale


@dataclass
class DataSection:
    name: str = "mnist"              # mnist | digits | folder
    path: str | None = None
    image_size: int = 32
    channels: int = 1


@dataclass
class TrainSection:
    steps: int = 4000
    global_batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 500
    decay_start: int | None = None   # linear LR decay to 0 from this step to `steps`; None = constant after warm-up
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = False
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    results_dir: str = "runs/mnist-dit"
    device: str = "auto"             # auto | cpu | cuda | cuda:1 ...
    num_threads: int = 0             # CPU threads for torch; 0 = leave torch's default


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)


@dataclass
class VideoModelSection:
    name: str = "VideoDiT-T/4"       # VideoDiT-{T,M,S,B,L,XL}/{2,4,8}: DiT sizes
    layout: str = "vdt"              # vdt | latte | full3d
    input_size: int = 32
    num_frames: int = 8
    tubelet: int = 1
    in_channels: int = 1
    num_classes: int = 10
    learn_sigma: bool = False
    class_dropout_prob: float = 0.1
    mask_channel: bool = True
    init_from: str | None = None     # image DiT to inflate from: bundled name, .safetensors or results folder


@dataclass
class VideoDataSection:
    name: str = "moving-mnist"       # moving-mnist | folder
    path: str | None = None          # folder: root with video files (or one subfolder of them per class)
    image_size: int = 32
    num_frames: int = 8
    channels: int = 1
    num_digits: int = 1              # moving-mnist: digits per clip, their size (px), speed range (px / frame) and
    digit_size: int = 16             # the probability that the lead digit changes class mid-clip
    speed: list = field(default_factory=lambda: [1.0, 3.0])
    switch_prob: float = 0.25
    frame_stride: int = 1            # folder: keep every n-th frame


@dataclass
class VideoTrainConfig:
    model: VideoModelSection = field(default_factory=VideoModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: VideoDataSection = field(default_factory=VideoDataSection)
    masks: dict = field(default_factory=lambda: dict(DEFAULT_MASK_WEIGHTS))   # mask type -> weight in the mixture
    train: TrainSection = field(default_factory=lambda: TrainSection(results_dir="runs/moving-mnist-vdt"))


def is_video_config(path: str | None) -> bool:
    """Whether a config file describes a VideoDiT (its model.name starts with 'VideoDiT')."""
    if path is None or not Path(path).is_file():
        return False
    data = yaml.safe_load(Path(path).read_text()) or {}
    return str((data.get("model") or {}).get("name", "")).startswith("VideoDiT")

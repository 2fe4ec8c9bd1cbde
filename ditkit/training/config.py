"""The training config: four sections, each a dataclass; see configs/*.yaml for examples."""
from __future__ import annotations

from dataclasses import dataclass, field


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

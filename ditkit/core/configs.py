"""Every config schema, each section a dataclass (see configs/*.yaml for examples): the image training config
(four sections, :class:`TrainConfig`) and the video training config (:class:`VideoTrainConfig`, which adds the mask
mixture). Saved models carry theirs in their metadata (``train_config``), so inference reads them too."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .devices import resolve_device

# The training mixture of VDT masks (mask type -> weight; the types are ``diffusion.masks.TRAINING_MASKS``)
DEFAULT_MASK_WEIGHTS = {"uncond": 1.0, "predict": 2.0, "backward": 1.0, "interpolate": 2.0, "animate": 1.0,
                        "random": 1.0, "complete": 2.0}


def _check(ok: bool, key: str, value, rule: str, fix: str = "") -> None:
    """Raise 'KEY=VALUE must be RULE' (plus ``fix``) unless ``ok``."""
    if not ok:
        raise ValueError(f"{key}={value!r} must be {rule}{'; ' + fix if fix else ''}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(section, key: str, low: int | float, where: str, fix: str = "") -> None:
    value = getattr(section, key)
    _check(_number(value) and value >= low, f"{where}.{key}", value, f">= {low}", fix)


def _in_unit(section, key: str, where: str, high_open: bool = False) -> None:
    value = getattr(section, key)
    ok = _number(value) and 0 <= value and (value < 1 if high_open else value <= 1)
    _check(ok, f"{where}.{key}", value, f"in [0, 1{')' if high_open else ']'}")


def _one_of(section, key: str, choices, where: str) -> None:
    value = getattr(section, key)
    _check(value in choices, f"{where}.{key}", value, f"one of {', '.join(choices)}")


@dataclass
class ModelSection:
    name: str = "DiT-T/4"            # DiT-{T,M,S,B,L,XL}/{2,4,8}
    input_size: int = 32
    in_channels: int = 1
    num_classes: int = 10
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    autoencoder: str | None = None   # local path of a diffusers AutoencoderKL for latent diffusion; None = pixels
    diffusers_class: str | None = None   # train this diffusers class instead of a ditkit DiT (name is then unused)
    diffusers_config: dict | None = None  # its constructor arguments (channels, sample size, labels: from the data)

    def validate(self, where: str = "model") -> None:
        for key in ("input_size", "in_channels", "num_classes"):
            _at_least(self, key, 1, where)
        _in_unit(self, "class_dropout_prob", where, high_open=True)
        config = self.diffusers_config
        _check(config is None or isinstance(config, dict), f"{where}.diffusers_config", config,
               "a mapping of constructor arguments",
               "e.g. {num_layers: 6, num_attention_heads: 3, attention_head_dim: 64, patch_size: 4}")
        _check(config is None or self.diffusers_class is not None, f"{where}.diffusers_config",
               config, "given with model.diffusers_class", "set model.diffusers_class (e.g. DiTTransformer2DModel) "
               "or drop model.diffusers_config")


@dataclass
class DiffusionSection:
    objective: str = "ddpm"          # ddpm (eps-prediction, DiT) | flow (velocity, SiT convention)
    schedule: str = "linear"         # ddpm only: linear | cosine
    num_timesteps: int = 1000
    timestep_scale: float = 1.0      # flow only: network sees t * timestep_scale

    def validate(self, learn_sigma: bool, where: str = "diffusion") -> None:
        _one_of(self, "objective", ("ddpm", "flow"), where)
        _one_of(self, "schedule", ("linear", "cosine"), where)
        _at_least(self, "num_timesteps", 2, where)
        _check(_number(self.timestep_scale) and self.timestep_scale > 0, f"{where}.timestep_scale",
               self.timestep_scale, "> 0")
        _check(not (self.objective == "flow" and learn_sigma), "model.learn_sigma", learn_sigma, "false with "
               f"{where}.objective=flow", "flow matching has no learned variance: set model.learn_sigma=false")


@dataclass
class DataSection:
    name: str = "mnist"              # mnist | digits | folder
    path: str | None = None
    image_size: int = 32
    channels: int = 1

    def validate(self, where: str = "data") -> None:
        _one_of(self, "name", ("mnist", "digits", "folder"), where)
        _check(self.name != "folder" or bool(self.path), f"{where}.path", self.path, "set for data.name=folder",
               "give data.path=<folder with one subfolder of images per class>")
        _at_least(self, "image_size", 1, where)
        _check(self.channels in ((1, 3) if self.name == "folder" else (1,)), f"{where}.channels", self.channels,
               "1 or 3 for an image folder" if self.name == "folder" else f"1 for data.name={self.name}")


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
    keep_checkpoints: int = 3        # keep the latest K checkpoint folders; 0 = keep all
    parallel: str = "ddp"            # ddp (replicated weights) | fsdp (FSDP2 sharding, DCP sharded checkpoints)
    activation_checkpointing: bool = False   # recompute each block's activations in backward (less memory)
    ulysses_degree: int = 1          # processes splitting each sample's tokens (Ulysses); the rest split the batch

    def validate(self, where: str = "train") -> None:
        for key in ("steps", "global_batch_size", "log_every", "ckpt_every", "ulysses_degree"):
            _at_least(self, key, 1, where)
        for key in ("warmup_steps", "weight_decay", "grad_clip", "num_threads", "keep_checkpoints", "seed"):
            _at_least(self, key, 0, where)
        _check(self.warmup_steps <= self.steps, f"{where}.warmup_steps", self.warmup_steps,
               f"<= {where}.steps={self.steps}", f"lower it or raise {where}.steps")
        _check(_number(self.lr) and self.lr > 0, f"{where}.lr", self.lr, "> 0", "e.g. train.lr=1e-4")
        _in_unit(self, "ema_decay", where)
        if self.decay_start is not None:
            _check(_number(self.decay_start) and self.decay_start >= 0, f"{where}.decay_start", self.decay_start,
                   ">= 0 (at or past train.steps the LR never decays)", "or null for a constant LR")
        _check(bool(str(self.results_dir).strip()), f"{where}.results_dir", self.results_dir, "a folder path")
        _check(self.parallel in ("ddp", "fsdp"), f"{where}.parallel", self.parallel, "ddp or fsdp",
               "ddp replicates the weights on every process, fsdp shards them (FSDP2)")
        resolve_device(self.device, flag=f"{where}.device")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)

    def validate(self) -> None:
        """Every key's range and the keys that must agree; a ValueError names the key, its value and the fix."""
        self.model.validate()
        self.diffusion.validate(self.model.learn_sigma)
        self.data.validate()
        self.train.validate()
        m, d = self.model, self.data
        if not m.autoencoder and (m.in_channels, m.input_size) != (d.channels, d.image_size):
            raise ValueError(f"model.in_channels/input_size ({m.in_channels}, {m.input_size}) must match the data "
                             f"({d.channels}, {d.image_size}) in pixel space: set model.in_channels={d.channels} "
                             f"model.input_size={d.image_size}")


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
    frame_timesteps: bool = False    # one timestep per frame (given frames at the clean level; Diffusion Forcing)
    caption_dropout_prob: float = 0.1  # captioned training: captions replaced by the empty one (classifier-free)
    init_from: str | None = None     # image DiT to inflate, or VideoDiT of this shape to fine-tune (name, file, folder)
    diffusers_class: str | None = None   # train this diffusers video class instead (e.g. WanTransformer3DModel)
    diffusers_config: dict | None = None  # its constructor arguments (channels: from the data and mask_channel)

    def validate(self, where: str = "model") -> None:
        ModelSection.validate(self, where)
        _one_of(self, "layout", ("vdt", "latte", "full3d"), where)
        for key in ("num_frames", "tubelet"):
            _at_least(self, key, 1, where)
        _check(self.num_frames % self.tubelet == 0, f"{where}.num_frames", self.num_frames,
               f"a multiple of {where}.tubelet={self.tubelet}")


CAPTION_MODES = ("none", "clip", "frames", "mixed")


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
    captions: str = "none"           # moving-mnist: none | clip (one per clip) | frames (one per frame) | mixed (half each)
    frame_stride: int = 1            # folder: keep every n-th frame

    def validate(self, where: str = "data") -> None:
        _one_of(self, "name", ("moving-mnist", "folder"), where)
        _one_of(self, "captions", CAPTION_MODES, where)
        _check(self.captions == "none" or self.name == "moving-mnist", f"{where}.captions", self.captions,
               "none for video folders", "captions are generated for Moving MNIST clips only")
        _check(self.name != "folder" or bool(self.path), f"{where}.path", self.path, "set for data.name=folder",
               "give data.path=<folder of video files, or one subfolder of them per class>")
        for key in ("image_size", "num_frames", "num_digits", "frame_stride"):
            _at_least(self, key, 1, where)
        _check(self.channels in ((1, 3) if self.name == "folder" else (1,)), f"{where}.channels", self.channels,
               "1 or 3 for a video folder" if self.name == "folder" else "1 for moving-mnist")
        _check(_number(self.digit_size) and 1 <= self.digit_size <= self.image_size, f"{where}.digit_size",
               self.digit_size, f"in [1, {where}.image_size={self.image_size}]")
        speed = self.speed
        ok = isinstance(speed, (list, tuple)) and len(speed) == 2 and all(map(_number, speed)) and 0 <= speed[0] <= speed[1]
        _check(ok, f"{where}.speed", speed, "a range [low, high] of pixels per frame with 0 <= low <= high")
        _in_unit(self, "switch_prob", where)


@dataclass
class VideoTrainConfig:
    model: VideoModelSection = field(default_factory=VideoModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: VideoDataSection = field(default_factory=VideoDataSection)
    masks: dict = field(default_factory=lambda: dict(DEFAULT_MASK_WEIGHTS))   # mask type -> weight in the mixture
    independent_frame_noise: float = 0.0   # fraction of clips whose frames each draw their own noise level
    text_encoder: "TextEncoderSection" = field(default_factory=lambda: TextEncoderSection())   # data.captions
    train: TrainSection = field(default_factory=lambda: TrainSection(results_dir="runs/moving-mnist-vdt"))

    def validate(self) -> None:
        """Every key's range and the keys that must agree; a ValueError names the key, its value and the fix."""
        m, d = self.model, self.data
        m.validate()
        self.diffusion.validate(m.learn_sigma)
        _check(not (self.diffusion.objective == "ddpm" and m.learn_sigma), "model.learn_sigma", m.learn_sigma,
               "false", "masked video training covers the eps loss only: set model.learn_sigma=false")
        d.validate()
        self.train.validate()
        kinds = ", ".join(DEFAULT_MASK_WEIGHTS)
        _check(isinstance(self.masks, dict), "masks", self.masks, f"a mapping of mask type -> weight ({kinds})")
        for kind, weight in self.masks.items():
            _check(kind in DEFAULT_MASK_WEIGHTS, "masks", kind, f"a mask type: one of {kinds}")
            _check(_number(weight) and weight >= 0, f"masks.{kind}", weight, ">= 0")
        _check(sum(self.masks.values()) > 0, "masks", self.masks, "weights with a positive sum",
               "give at least one mask type a positive weight, e.g. masks.predict=1")
        _check(_number(self.independent_frame_noise) and 0 <= self.independent_frame_noise <= 1,
               "independent_frame_noise", self.independent_frame_noise, "a probability in [0, 1]")
        _check(self.independent_frame_noise == 0 or m.frame_timesteps, "independent_frame_noise",
               self.independent_frame_noise, "0 unless model.frame_timesteps is true",
               "per-frame noise levels need a network that takes one timestep per frame: set "
               "model.frame_timesteps=true")
        _check(not (m.frame_timesteps and m.diffusers_class), "model.frame_timesteps", m.frame_timesteps,
               "false for model.diffusers_class", "diffusers video transformers take one timestep per video")
        if d.captions != "none":
            self.text_encoder.validate()
            _check(self.text_encoder.kind == "small", "text_encoder.kind", self.text_encoder.kind, "small",
                   "captioned video models train their own small text encoder")
            _check(not m.diffusers_class, "data.captions", d.captions, "none for model.diffusers_class",
                   "captions condition ditkit's VideoDiT (cross-attention)")
        _in_unit(m, "caption_dropout_prob", "model")
        if (m.in_channels, m.input_size, m.num_frames) != (d.channels, d.image_size, d.num_frames):
            raise ValueError(f"model.in_channels/input_size/num_frames ({m.in_channels}, {m.input_size}, "
                             f"{m.num_frames}) must match the data ({d.channels}, {d.image_size}, {d.num_frames}): "
                             f"set model.in_channels={d.channels} model.input_size={d.image_size} "
                             f"model.num_frames={d.num_frames}")


@dataclass
class TextModelSection:
    name: str = "PixArt"             # a PixArt-alpha-style DiT (cross-attention to text, adaLN-single)
    input_size: int = 40
    patch_size: int = 4
    in_channels: int = 1
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    learn_sigma: bool = False
    caption_dropout_prob: float = 0.1    # captions replaced by the empty caption (classifier-free guidance)
    init_from: str | None = None     # image DiT of the same width to start from: bundled name, file or results folder

    def validate(self, where: str = "model") -> None:
        _check(self.name == "PixArt", f"{where}.name", self.name, "PixArt", "the text-to-image model is PixArt-style")
        for key in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads"):
            _at_least(self, key, 1, where)
        _check(self.input_size % self.patch_size == 0, f"{where}.input_size", self.input_size,
               f"a multiple of {where}.patch_size={self.patch_size}")
        _check(self.hidden_size % self.num_heads == 0, f"{where}.hidden_size", self.hidden_size,
               f"a multiple of {where}.num_heads={self.num_heads}")
        _in_unit(self, "caption_dropout_prob", where, high_open=True)


@dataclass
class TextEncoderSection:
    kind: str = "small"              # small: a word-level encoder trained with the model | transformers: a local folder
    path: str | None = None          # transformers: a local encoder folder (T5, UMT5, CLIP text, ...) with its tokenizer
    dim: int = 128                   # small: width, blocks, heads
    depth: int = 2
    num_heads: int = 4
    max_length: int = 24             # text tokens (prompts are padded or cut to this)

    def validate(self, where: str = "text_encoder") -> None:
        _one_of(self, "kind", ("small", "transformers"), where)
        _check(self.kind != "transformers" or bool(self.path), f"{where}.path", self.path,
               f"set for {where}.kind=transformers", "give a local transformers encoder folder (save_pretrained)")
        for key in ("dim", "depth", "num_heads", "max_length"):
            _at_least(self, key, 1, where)
        _check(self.dim % self.num_heads == 0, f"{where}.dim", self.dim, f"a multiple of {where}.num_heads")


@dataclass
class SceneDataSection:
    name: str = "mnist-scenes"       # captioned MNIST scenes (ditkit.data.scenes), 40 x 40
    pairs: float = 0.3               # fraction of two-digit scenes
    omit: float = 0.25               # probability that a caption leaves out each attribute of a one-digit scene

    def validate(self, where: str = "data") -> None:
        _one_of(self, "name", ("mnist-scenes",), where)
        _in_unit(self, "pairs", where)
        _in_unit(self, "omit", where)


@dataclass
class TextTrainConfig:
    model: TextModelSection = field(default_factory=TextModelSection)
    text_encoder: TextEncoderSection = field(default_factory=TextEncoderSection)
    diffusion: DiffusionSection = field(default_factory=lambda: DiffusionSection(objective="flow",
                                                                                 timestep_scale=1000.0))
    data: SceneDataSection = field(default_factory=SceneDataSection)
    train: TrainSection = field(default_factory=lambda: TrainSection(results_dir="runs/mnist-t2i"))

    def validate(self) -> None:
        """Every key's range and the keys that must agree; a ValueError names the key, its value and the fix."""
        self.model.validate()
        self.text_encoder.validate()
        self.diffusion.validate(self.model.learn_sigma)
        self.data.validate()
        self.train.validate()
        _check((self.model.in_channels, self.model.input_size) == (1, 40), "model.input_size", self.model.input_size,
               "40 with model.in_channels=1 for mnist-scenes (40 x 40 grey canvases)")


def config_kind(path: str | None) -> str:
    """'text', 'video' or 'image': the model a training config file describes (its model.name: PixArt,
    VideoDiT-..., or a DiT; a video data section with num_frames also makes it video)."""
    if path is None or not Path(path).is_file():
        return "image"
    data = yaml.safe_load(Path(path).read_text()) or {}
    model = data.get("model") or {}
    if str(model.get("name", "")).startswith("VideoDiT") or "num_frames" in model:
        return "video"                                   # (a captioned video config has a text_encoder too)
    if str(model.get("name", "")).startswith("PixArt") or "text_encoder" in data:
        return "text"
    return "image"

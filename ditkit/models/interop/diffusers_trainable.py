"""A diffusers transformer class trained by ditkit's trainer (``model.diffusers_class`` in a training config): the
class built from its constructor arguments, behind ditkit's class-conditional ``model(x, t, y, force_drop_ids)``.

Label dropout for classifier-free guidance is ditkit's (seeded per step, ``model.class_dropout_prob``), so diffusers'
own random label drop (training-mode ``LabelEmbedding``) is kept off: label embedders stay in eval mode. The
training run also writes the EMA transformer as a diffusers folder (``save_pretrained`` layout plus a DDIM scheduler
with the training betas), which ``ditkit generate --model <results>/diffusers`` and diffusers itself load.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

FORMAT = "ditkit-diffusers-transformer"
DIFFUSION_FILE = "ditkit_diffusion.json"             # the diffusion process a ditkit-trained folder samples with


@dataclass
class DiffusersClassConfig:
    """What a checkpoint needs to rebuild the model: the class name and its constructor arguments."""

    diffusers_class: str
    diffusers_config: dict
    num_classes: int
    class_dropout_prob: float
    depth: int = 0               # from the built model's config, for the training-memory estimate
    hidden_size: int = 0
    num_heads: int = 0

    def to_dict(self) -> dict:
        return {"diffusers_class": self.diffusers_class, "diffusers_config": dict(self.diffusers_config),
                "num_classes": self.num_classes, "class_dropout_prob": self.class_dropout_prob}


def _diffusers_class(name: str):
    try:
        import diffusers
    except ImportError:
        raise ImportError("model.diffusers_class needs diffusers: pip install diffusers") from None
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"model.diffusers_class={name!r} is not a diffusers model class (e.g. DiTTransformer2DModel)")
    return cls


def build_transformer(config) -> nn.Module:
    """``config.diffusers_class`` built from ``config.diffusers_config``; fills in the config's depth, width and heads
    (the training-memory estimate reads them)."""
    cls = _diffusers_class(config.diffusers_class)
    try:
        transformer = cls(**config.diffusers_config)
    except TypeError as e:
        raise ValueError(f"model.diffusers_config does not fit {config.diffusers_class}: {e}") from None
    c = transformer.config
    config.depth, config.num_heads = c.get("num_layers", 1), c.get("num_attention_heads", 1)
    config.hidden_size = config.num_heads * c.get("attention_head_dim", 64)
    return transformer


class DiffusersClassModel(nn.Module):
    """``transformer`` [a diffusers class taking (hidden_states, timestep, class_labels)] as ditkit's denoiser:
    x [N, C, H, W], t [N], y [N] -> [N, C or 2C, H, W]; rows with ``force_drop_ids`` get the null label."""

    format_name = FORMAT

    def __init__(self, config: DiffusersClassConfig):
        super().__init__()
        self.config = config
        self.transformer = build_transformer(config)
        c = self.transformer.config
        patch = c.get("patch_size", 1) or 1
        self.grid = (c.get("sample_size", 1) // patch,) * 2
        self.train(False)

    def train(self, mode: bool = True) -> "DiffusersClassModel":
        super().train(mode)
        for module in self.modules():                      # ditkit drops labels itself, with its seeded RNG
            if type(module).__name__ == "LabelEmbedding":
                module.eval()
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is not None:
            y = torch.where(force_drop_ids.bool(), self.config.num_classes, y)
        return self.transformer(x, timestep=t, class_labels=y, return_dict=False)[0]

    def save_diffusers(self, folder: str | Path, diffusion: dict) -> Path:
        """Write ``folder/transformer`` (save_pretrained), ``folder/ditkit_diffusion.json`` (the training config's
        diffusion section, which ditkit samples with) and, for DDPM, ``folder/scheduler`` (DDIM with the training
        betas, for diffusers' own pipelines)."""
        import diffusers
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp")            # written whole, then moved into place
        shutil.rmtree(tmp, ignore_errors=True)
        self.transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
        (tmp / DIFFUSION_FILE).write_text(json.dumps(diffusion, indent=1) + "\n")
        if diffusion["objective"] == "ddpm" and diffusion["schedule"] == "linear":
            T = diffusion["num_timesteps"]
            diffusers.DDIMScheduler(num_train_timesteps=T, beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T,
                                    beta_schedule="linear", prediction_type="epsilon",
                                    clip_sample=False).save_pretrained(tmp / "scheduler")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder


def build_diffusers_model(name: str, config: dict | None, in_channels: int, input_size: int, num_classes: int,
                          class_dropout_prob: float, learn_sigma: bool) -> DiffusersClassModel:
    """The class ``name`` with ``config``, its input channels, sample size, output channels and label count set
    from the data (a value given in ``config`` that disagrees is an error)."""
    derived = {"in_channels": in_channels, "sample_size": input_size,
               "out_channels": in_channels * (2 if learn_sigma else 1), "num_embeds_ada_norm": num_classes}
    config = dict(config or {})
    clash = {k: (config[k], v) for k, v in derived.items() if k in config and config[k] != v}
    if clash:
        given = ", ".join(f"{k}={a} (the data and model section give {b})" for k, (a, b) in clash.items())
        raise ValueError(f"model.diffusers_config sets {given}: drop them")
    return DiffusersClassModel(DiffusersClassConfig(name, {**config, **derived}, num_classes, class_dropout_prob))


VIDEO_FORMAT = "ditkit-diffusers-video-transformer"


@dataclass
class DiffusersVideoConfig:
    """A diffusers video transformer (taking hidden_states [N, C, F, H, W], timestep, encoder_hidden_states) trained
    with ditkit's mask modelling; ``text_dim`` is the width of its text states, here one learned embedding per
    label (per frame for per-frame labels)."""

    diffusers_class: str
    diffusers_config: dict
    num_frames: int
    input_size: int
    in_channels: int
    num_classes: int
    class_dropout_prob: float
    text_dim: int
    learn_sigma: bool = False
    mask_channel: bool = True
    layout: str = "full3d"       # every token attends to every frame's tokens (Wan, CogVideoX, LTX)
    depth: int = 0
    hidden_size: int = 0
    num_heads: int = 0
    tubelet: int = 1

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.input_size, self.input_size

    def to_dict(self) -> dict:
        keys = ("diffusers_class", "diffusers_config", "num_frames", "input_size", "in_channels", "num_classes",
                "class_dropout_prob", "text_dim", "learn_sigma", "mask_channel")
        return {k: getattr(self, k) for k in keys}


class DiffusersVideoModel(nn.Module):
    """A diffusers video transformer as ditkit's masked video denoiser (VDT's unified mask modelling, as
    :class:`~ditkit.models.video_dit.VideoDiT`): given positions (mask 0) take the clean context, a mask channel is
    appended, labels [N] or per frame [N, F] become text states [N, 1 or F, text_dim] from a learned table whose
    last row is the null label. x [N, C, F, H, W], t [N] -> [N, C, F, H, W]."""

    format_name = VIDEO_FORMAT

    def __init__(self, config: DiffusersVideoConfig):
        super().__init__()
        self.config = config
        self.transformer = build_transformer(config)
        self.label_embedding = nn.Embedding(config.num_classes + 1, config.text_dim)
        nn.init.normal_(self.label_embedding.weight, std=0.02)
        self.in_channels = config.in_channels
        c = self.transformer.config
        patch = c.get("patch_size") or (1, 1, 1)
        config.tubelet = patch[0]
        self.grid = (config.input_size // patch[1], config.input_size // patch[2])

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                force_drop_ids: torch.Tensor | None = None, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        N, _, F, H, W = x.shape
        if mask is not None:
            if context is None:
                raise ValueError("a mask needs the clean context video it refers to")
            mask = mask.to(x.dtype).expand(N, 1, F, H, W)
            x = mask * x + (1 - mask) * context
        if self.config.mask_channel:
            x = torch.cat([x, mask if mask is not None else x.new_ones(N, 1, F, H, W)], dim=1)
        null = self.config.num_classes
        y = torch.full((N,), null, device=x.device, dtype=torch.long) if y is None else y.reshape(N, -1)
        y = y.reshape(N, -1)
        if force_drop_ids is not None:
            y = torch.where(force_drop_ids.reshape(N, 1).bool(), null, y)
        return self.transformer(x, timestep=t, encoder_hidden_states=self.label_embedding(y),
                                return_dict=False)[0]


def build_diffusers_video_model(name: str, config: dict | None, in_channels: int, input_size: int, num_frames: int,
                                num_classes: int, class_dropout_prob: float, mask_channel: bool
                                ) -> DiffusersVideoModel:
    """The video class ``name`` with ``config``; its input channels (with the mask channel) and output channels are
    set from the data, its text width (``text_dim``) taken from the config (default 64)."""
    derived = {"in_channels": in_channels + int(mask_channel), "out_channels": in_channels}
    config = dict(config or {})
    clash = {k: (config[k], v) for k, v in derived.items() if k in config and config[k] != v}
    if clash:
        given = ", ".join(f"{k}={a} (the data and model section give {b})" for k, (a, b) in clash.items())
        raise ValueError(f"model.diffusers_config sets {given}: drop them")
    config = {"text_dim": 64, **config, **derived}
    return DiffusersVideoModel(DiffusersVideoConfig(name, config, num_frames, input_size, in_channels, num_classes,
                                                    class_dropout_prob, config["text_dim"],
                                                    mask_channel=mask_channel))

"""Local diffusers folders sampled by ditkit's pipelines through the adapter, so ``ditkit generate / bench / tune
--model FOLDER --recipe ...`` run ditkit's recipes on the diffusers model itself:

- a ``DiTTransformer2DModel`` (class-conditional: the image pipeline; ``ditkit eval`` too);
- a ``PixArtTransformer2DModel`` pipeline folder (PixArt-alpha / Sigma layout: ``transformer/``, ``text_encoder/``
  and ``tokenizer/`` (T5), ``scheduler/``, ``vae/``): the text-to-image pipeline with the folder's T5 encoder
  (prompts padded to ``max_sequence_length`` 120 tokens, PixArt-alpha's; 300 for Sigma, give it in Python).

Folders: a pipeline folder (``transformer/``, ``scheduler/``, optionally ``vae/`` and ``model_index.json``) or a
transformer folder (``config.json`` of a DiTTransformer2DModel). The diffusion process is DDPM with the
scheduler's betas (linear 1e-4..0.02 over 1000 steps without a scheduler folder, DiT's and PixArt's), learned
sigma when the model outputs twice its input channels; a folder ditkit trained names its own process
(``ditkit_diffusion.json``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..adapters import StackAdapter, spec_for
from ..core import checkpoint as ckpt
from ..core.config import from_dict
from ..core.configs import DiffusionSection
from ..diffusion.gaussian import GaussianDiffusion
from ..models.interop.autoencoder import Autoencoder
from ..models.interop.diffusers_format import dit_config_of
from ..models.interop.diffusers_trainable import (DIFFUSION_FILE, DiffusersVideoConfig, DiffusersVideoModel)
from ..models.pixart import PixArtConfig
from ..models.text import TransformersTextEncoder
from .build import build_process

DIT_CLASS = "DiTTransformer2DModel"
PIXART_CLASS = "PixArtTransformer2DModel"
PIXART_TEXT_TOKENS = 120          # PixArt-alpha's max_sequence_length


class AdaptedDiT(StackAdapter):
    """A diffusers DiT as ditkit's class-conditional denoiser: the block-stack contract (every recipe applies),
    ``model(x, t, y)`` and the :class:`~ditkit.models.dit.DiTConfig` describing it."""

    def __init__(self, dmodel):
        super().__init__(dmodel, spec_for(dmodel))
        self.config = dit_config_of(dmodel)
        self.in_channels = self.config.in_channels
        self.grid = tuple(s // self.config.patch_size for s in self.config.image_hw)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, H, W], t [N], y [N] (``num_classes`` = the null label) -> [N, C or 2C, H, W]."""
        return self.model(x, timestep=t, class_labels=y, return_dict=False)[0]


class AdaptedVideo(StackAdapter):
    """A diffusers video transformer trained by ditkit (:class:`DiffusersVideoModel`) as ditkit's masked video
    denoiser behind the block-stack contract: ``model(x, t, y, context=, mask=)``, its config, every recipe."""

    def __init__(self, video: DiffusersVideoModel):
        super().__init__(video.transformer, spec_for(video.transformer))
        self.video = video
        self.config, self.in_channels, self.grid = video.config, video.in_channels, video.grid

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, force_drop_ids=None,
                context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.video(x, t, y, force_drop_ids, context, mask)


class AdaptedPixArt(StackAdapter):
    """A diffusers PixArt as ditkit's text-conditioned denoiser: the block-stack contract, ``model(x, t, text, mask)``
    and the :class:`~ditkit.models.pixart.PixArtConfig` describing it (square latents, no resolution conditions)."""

    def __init__(self, dmodel):
        c = dmodel.config
        if c.use_additional_conditions:               # checked before the adapter touches the model
            raise ValueError(f"this {PIXART_CLASS} takes resolution and aspect-ratio conditions (PixArt-alpha "
                             f"1024px); ditkit's text pipeline samples models without them (256 / 512 px)")
        super().__init__(dmodel, spec_for(dmodel))
        D = c.num_attention_heads * c.attention_head_dim
        self.config = PixArtConfig(input_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels,
                                   hidden_size=D, depth=c.num_layers, num_heads=c.num_attention_heads,
                                   caption_channels=c.caption_channels,
                                   learn_sigma=c.out_channels == 2 * c.in_channels)
        self.in_channels = c.in_channels
        self.grid = (c.sample_size // c.patch_size,) * 2

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W], t [N], text states [N, L, C_text], mask [N, L] -> [N, C or 2C, H, W]."""
        return self.model(x, encoder_hidden_states=text, encoder_attention_mask=mask.to(x.dtype), timestep=t,
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]


def load_diffusers_video(path: Path, meta: dict, device="cpu") -> AdaptedVideo:
    """The adapted model of a ditkit file holding a trained :class:`DiffusersVideoModel`."""
    video = DiffusersVideoModel(DiffusersVideoConfig(**meta["dit_config"]))
    ckpt.load_state_dict_strict(video, ckpt.load_weights(path), str(path))
    return AdaptedVideo(video.to(device).eval())


def diffusers_folder_kind(path: str | Path) -> str | None:
    """"pipeline" or "transformer" for a local diffusers folder, None for anything else."""
    p = Path(path)
    if (p / "model_index.json").is_file() or (p / "transformer" / "config.json").is_file():
        return "pipeline"
    if (p / "config.json").is_file() and "_diffusers_version" in _read(p / "config.json"):
        return "transformer"
    return None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable JSON file ({e})") from None


def transformer_class(path: str | Path) -> str | None:
    """The ``_class_name`` of a diffusers folder's transformer (None: not a diffusers folder, or no class)."""
    folder = Path(path)
    kind = diffusers_folder_kind(folder)
    if kind is None:
        return None
    config = (folder / "transformer" if kind == "pipeline" else folder) / "config.json"
    return _read(config).get("_class_name") if config.is_file() else None


def is_diffusers_text_folder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers pipeline folder of a text-to-image transformer ditkit samples (PixArt)."""
    return transformer_class(path) == PIXART_CLASS


def load_diffusers_dit(path: str | Path, device="cpu", autoencoder: str | None = None):
    """(AdaptedDiT, GaussianDiffusion, Autoencoder or None, metadata) of a local diffusers DiT folder."""
    import diffusers
    folder = Path(path)
    kind = diffusers_folder_kind(folder)
    transformer = folder / "transformer" if kind == "pipeline" else folder
    name = transformer_class(folder)
    if name not in (DIT_CLASS, "Transformer2DModel"):
        raise ValueError(f"{folder}: its transformer is a {name or 'missing class'}; ditkit's class-conditional "
                         f"samplers take a {DIT_CLASS} folder, its text-to-image ones a {PIXART_CLASS} pipeline "
                         f"folder; for other diffusers models use ditkit.accelerate(pipeline, recipe) on their own "
                         f"pipeline in Python")
    dmodel = diffusers.DiTTransformer2DModel.from_pretrained(transformer, local_files_only=True, low_cpu_mem_usage=False)
    model = AdaptedDiT(dmodel.to(device).eval())
    process = _process(folder, kind, model.config.learn_sigma)
    vae = autoencoder or (folder / "vae" if kind == "pipeline" and (folder / "vae").is_dir() else None)
    ae = Autoencoder(str(vae), device) if vae else None
    return model, process, ae, {"format": "diffusers", "path": str(folder)}


def load_diffusers_pixart(path: str | Path, device="cpu", max_length: int = PIXART_TEXT_TOKENS):
    """(AdaptedPixArt, GaussianDiffusion, its T5 encoder, Autoencoder or None, metadata) of a diffusers PixArt
    pipeline folder."""
    import diffusers
    folder = Path(path)
    missing = [d for d in ("transformer", "text_encoder", "tokenizer") if not (folder / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder}: a PixArt pipeline folder needs {', '.join(missing)}/ (saved with "
                                f"PixArtAlphaPipeline.save_pretrained)")
    dmodel = diffusers.PixArtTransformer2DModel.from_pretrained(folder / "transformer", local_files_only=True,
                                                                low_cpu_mem_usage=False)
    model = AdaptedPixArt(dmodel.to(device).eval())
    encoder = TransformersTextEncoder(folder / "text_encoder", device, max_length, tokenizer=folder / "tokenizer")
    ae = Autoencoder(str(folder / "vae"), device) if (folder / "vae").is_dir() else None
    return model, _process(folder, "pipeline", model.config.learn_sigma), encoder, ae, \
        {"format": "diffusers", "path": str(folder)}


def _process(folder: Path, kind: str, learn_sigma: bool):
    """DDPM with the scheduler folder's linear betas (or the process a ditkit-trained folder names)."""
    betas = {"beta_schedule": "linear", "num_train_timesteps": 1000}
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if kind == "pipeline" and scheduler.is_file():
        betas.update({k: v for k, v in _read(scheduler).items() if k in betas})
    if (folder / DIFFUSION_FILE).is_file():                 # trained by ditkit: its own process
        section = from_dict(DiffusionSection, _read(folder / DIFFUSION_FILE), "diffusion.")
        return build_process(section, learn_sigma)
    if betas["beta_schedule"] != "linear":
        raise ValueError(f"{scheduler}: beta_schedule {betas['beta_schedule']!r}; ditkit's DDPM process for "
                         f"diffusers folders uses linear betas (DiT's, PixArt's)")
    return GaussianDiffusion.from_config("linear", betas["num_train_timesteps"], learn_sigma)

"""A diffusers ``DiTTransformer2DModel`` (a local ``save_pretrained`` folder, or a module) sampled by ditkit's image
pipeline through the adapter, so ``ditkit generate / bench / eval --model FOLDER --recipe ...`` run ditkit's
recipes on the diffusers model itself.

Folders: a pipeline folder (``transformer/``, ``scheduler/``, optionally ``vae/`` and ``model_index.json``) or a
transformer folder (``config.json`` of a DiTTransformer2DModel). The diffusion process is DiT's DDPM with the
scheduler's betas (linear 1e-4..0.02 over 1000 steps without a scheduler folder), learned sigma when the model
outputs twice its input channels; a folder ditkit trained names its own process (``ditkit_diffusion.json``).
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
from .build import build_process

DIT_CLASS = "DiTTransformer2DModel"


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


def load_diffusers_dit(path: str | Path, device="cpu", autoencoder: str | None = None):
    """(AdaptedDiT, GaussianDiffusion, Autoencoder or None, metadata) of a local diffusers DiT folder."""
    import diffusers
    folder = Path(path)
    kind = diffusers_folder_kind(folder)
    transformer = folder / "transformer" if kind == "pipeline" else folder
    config = _read(transformer / "config.json") if (transformer / "config.json").is_file() else {}
    name = config.get("_class_name")
    if name not in (DIT_CLASS, "Transformer2DModel"):
        raise ValueError(f"{folder}: its transformer is a {name or 'missing class'}; ditkit's samplers take a "
                         f"{DIT_CLASS} folder (class-conditional); for other diffusers models use "
                         f"ditkit.accelerate(pipeline, recipe) on their own pipeline in Python")
    dmodel = diffusers.DiTTransformer2DModel.from_pretrained(transformer, local_files_only=True, low_cpu_mem_usage=False)
    dmodel = dmodel.to(device).eval()
    betas = {"beta_schedule": "linear", "num_train_timesteps": 1000}
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if kind == "pipeline" and scheduler.is_file():
        betas.update({k: v for k, v in _read(scheduler).items() if k in betas})
    if betas["beta_schedule"] != "linear" and not (folder / DIFFUSION_FILE).is_file():
        raise ValueError(f"{scheduler}: beta_schedule {betas['beta_schedule']!r}; ditkit's DiT process uses DiT's "
                         f"linear betas")
    model = AdaptedDiT(dmodel)
    if (folder / DIFFUSION_FILE).is_file():                 # trained by ditkit: its own process
        section = from_dict(DiffusionSection, _read(folder / DIFFUSION_FILE), "diffusion.")
        process = build_process(section, model.config.learn_sigma)
    else:
        process = GaussianDiffusion.from_config("linear", betas["num_train_timesteps"], model.config.learn_sigma)
    vae = autoencoder or (folder / "vae" if kind == "pipeline" and (folder / "vae").is_dir() else None)
    ae = Autoencoder(str(vae), device) if vae else None
    return model, process, ae, {"format": "diffusers", "path": str(folder)}

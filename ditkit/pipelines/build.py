"""Build models and diffusion processes from config sections (training) or saved metadata (inference)."""
from __future__ import annotations

from ..core.configs import DiffusionSection, ModelSection
from ..diffusion.flow import FlowMatching
from ..diffusion.gaussian import GaussianDiffusion
from ..models.dit import DiT, dit_config
from ..models.interop.diffusers_trainable import build_diffusers_model


def build_model(section: ModelSection, in_channels: int | None = None, input_size: int | None = None) -> DiT:
    """``in_channels`` / ``input_size`` override the section (latent diffusion: the autoencoder's latent shape);
    ``section.diffusers_class`` builds that diffusers class instead (:mod:`ditkit.models.interop.diffusers_trainable`)."""
    if section.diffusers_class:
        return build_diffusers_model(section.diffusers_class, section.diffusers_config,
                                     in_channels or section.in_channels, input_size or section.input_size,
                                     section.num_classes, section.class_dropout_prob, section.learn_sigma)
    cfg = dit_config(section.name, input_size=input_size or section.input_size,
                     in_channels=in_channels or section.in_channels, num_classes=section.num_classes,
                     learn_sigma=section.learn_sigma, class_dropout_prob=section.class_dropout_prob)
    return DiT(cfg)


def build_process(section: DiffusionSection, learn_sigma: bool):
    if section.objective == "ddpm":
        return GaussianDiffusion.from_config(section.schedule, section.num_timesteps, learn_sigma)
    if section.objective == "flow":
        if learn_sigma:
            raise ValueError("flow matching has no learned variance: set model.learn_sigma=false")
        return FlowMatching(timestep_scale=section.timestep_scale)
    raise ValueError(f"unknown diffusion.objective {section.objective!r}; valid: ddpm, flow")

"""Class-conditional generation: a DiT + its diffusion process (+ optional autoencoder) behind one callable.

    pipe = ditkit.load("mnist-dit")
    images = pipe(class_labels=[0, 1, 2], num_sampling_steps=50, sampler="ddim", cfg_scale=4.0, seed=0)
    # images: [3, C, H, W] float in [-1, 1]; sample i uses seed + i whatever the batch size
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import checkpoint as ckpt
from .acceleration.registry import Recipe
from .build import build_process
from .config import from_dict
from .diffusion.flow import FlowMatching
from .diffusion.gaussian import GaussianDiffusion
from .diffusion.guidance import GuidedModel
from .diffusion.samplers import FLOW_SAMPLERS, NoiseSource, sample
from .models.dit import DiT, DiTConfig
from .models.video_dit import VideoDiT
from .training.config import TrainConfig

ASSETS = Path(__file__).parent / "assets"


def bundled_models() -> list[str]:
    return sorted(p.stem for p in ASSETS.glob("*.safetensors") if (ASSETS / f"{p.stem}.json").is_file()
                  and not p.stem.endswith("classifier"))


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A bundled model name (e.g. 'mnist-dit'), a .safetensors file, or a training results folder."""
    p = Path(name_or_path)
    if p.is_dir() and (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    if p.is_file():
        return p
    if (ASSETS / f"{name_or_path}.safetensors").is_file():
        return ASSETS / f"{name_or_path}.safetensors"
    raise FileNotFoundError(f"no model {name_or_path!r}: not a file, a results folder with model.safetensors, nor a "
                            f"bundled model (bundled: {', '.join(bundled_models()) or 'none'})")


def load_dit(name_or_path: str | Path, device="cpu", model_name: str = "DiT-XL/2") -> tuple[DiT, dict]:
    """Load a ditkit safetensors model, or an official DiT .pt checkpoint of architecture ``model_name`` (resolution
    read from its pos_embed); returns (model in eval mode, metadata)."""
    path = resolve_model_path(name_or_path)
    if path.suffix in (".pt", ".pth"):
        from .models.official import load_official_checkpoint
        model = load_official_checkpoint(path, model_name)
        return model.to(device), {"format": "official-dit", "model_name": model_name}
    return load_ditkit_model(path, DiT, DiTConfig, device, "official DiT checkpoints load from their .pt file")


def load_ditkit_model(path: Path, model_cls, config_cls, device="cpu", hint: str = "") -> tuple:
    """A ditkit safetensors file of ``model_cls`` (float or quantized) -> (model in eval mode, metadata);
    a file of another kind is an error naming its format, followed by ``hint``."""
    meta = ckpt.read_metadata(path)
    if meta.get("format") != model_cls.format_name:
        raise ValueError(f"{path} is not a ditkit {model_cls.__name__} file (metadata format {meta.get('format')!r}); "
                         f"{hint}")
    build = lambda: model_cls(config_cls(**meta["dit_config"]))
    if meta.get("quantization"):                # int8/int4 layers, never materialising the float weights
        from .quantization.export import build_quantized
        model = build_quantized(build, meta["quantization"])
    else:
        model = build()
    ckpt.load_state_dict_strict(model, ckpt.load_weights(path), str(path), optional=("pos_embed",))
    return model.to(device).eval(), meta


class Pipeline:
    """What the image and video pipelines share: a model implementing the block-stack contract, its diffusion
    process, the acceleration recipe applied to it, and one denoising core (:meth:`denoise`)."""

    def __init__(self, model, process, autoencoder=None, metadata: dict | None = None):
        self.model, self.process, self.autoencoder = model, process, autoencoder
        self.metadata = metadata or {}
        self.recipe = Recipe()

    def set_recipe(self, recipe=None) -> "Pipeline":
        """Apply an acceleration recipe (string, dict, list or Recipe) to every later call; None removes it."""
        self.recipe.detach(self.model)
        self.recipe = recipe if isinstance(recipe, Recipe) else Recipe(recipe)
        self.recipe.prepare(self)               # calibration on the float model's trajectories (quantization)
        self.recipe.attach(self.model)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @property
    def default_sampler(self) -> str:
        return FLOW_SAMPLERS[0] if isinstance(self.process, FlowMatching) else "ddim"

    def denoise(self, model_fn, noise: NoiseSource, sample_shape: tuple[int, ...], num_sampling_steps: int,
                sampler: str, eta: float = 0.0, progress: bool = False, step_callback=None,
                clip_denoised: bool = False) -> torch.Tensor:
        """Sample [len(noise seeds), *sample_shape] from ``model_fn(x, t)`` (already guided), with the recipe told
        the generation, every step and every call's timestep."""
        self.recipe.reset(num_sampling_steps)
        return sample(model_fn, noise.randn(*sample_shape), self.process, sampler, num_sampling_steps, noise, eta=eta,
                      progress=progress, step_callback=self._step_callback(step_callback), clip_denoised=clip_denoised,
                      timestep_callback=self.recipe.set_timestep if self.recipe else None)

    def _step_callback(self, user_callback):
        if not self.recipe and user_callback is None:
            return None

        def callback(step: int, num_steps: int):
            self.recipe.begin_step(step, num_steps)
            if user_callback is not None:
                user_callback(step, num_steps)
        return callback


class DiTPipeline(Pipeline):
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device="cpu", autoencoder: str | None = None,
                        model_name: str = "DiT-XL/2") -> "DiTPipeline":
        """An official DiT .pt checkpoint (architecture ``model_name``) samples SD-VAE latents with DiT's DDPM process
        (linear betas, 1000 steps, learned sigma) and needs ``autoencoder``: a local diffusers AutoencoderKL folder."""
        model, meta = load_dit(name_or_path, device, model_name)
        if meta["format"] == "official-dit":
            if not autoencoder:
                raise ValueError("official DiT checkpoints generate SD-VAE latents: pass autoencoder=<local folder of "
                                 "a diffusers AutoencoderKL, e.g. stabilityai/sd-vae-ft-ema> (CLI: --vae)")
            ae_path = autoencoder
            process = GaussianDiffusion.from_config("linear", 1000, model.config.learn_sigma)
        else:
            cfg = from_dict(TrainConfig, meta["train_config"])
            ae_path = autoencoder or cfg.model.autoencoder
            process = build_process(cfg.diffusion, model.config.learn_sigma)
        ae = None
        if ae_path:
            from .autoencoder import Autoencoder
            ae = Autoencoder(ae_path, device)
        return cls(model, process, ae, meta)

    def calibration_kwargs(self, num_samples: int, num_steps: int, seed: int) -> dict:
        """Sampling arguments of a generic calibration run: random classes (from ``seed``), guidance 4 when the model
        has a null class, the default sampler."""
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, self.num_classes, (num_samples,), generator=gen).tolist()
        cfg = 4.0 if self.model.config.class_dropout_prob > 0 else 1.0
        return dict(class_labels=labels, num_sampling_steps=num_steps, sampler=self.default_sampler, cfg_scale=cfg,
                    seed=seed)

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int], num_sampling_steps: int = 50, sampler: str = "ddim",
                 cfg_scale: float = 4.0, seed: int = 0, eta: float = 0.0, guidance_interval=None,
                 guide_channels: int | None = None, cfg_batched: bool = True, batch_size: int | None = None,
                 progress: bool = False, step_callback=None, clip_denoised: bool | None = None) -> torch.Tensor:
        """Generate one image per label; returns [N, C, H, W] in [-1, 1] (decoded if there is an autoencoder).
        ``clip_denoised`` (default: on in pixel space, off with an autoencoder) clamps data predictions to [-1, 1]."""
        labels = torch.as_tensor(list(class_labels), dtype=torch.long)
        if labels.numel() == 0:
            raise ValueError("class_labels is empty: give at least one class label")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(f"class label(s) {bad.tolist()} out of range: this model has classes 0..{self.num_classes - 1}")
        if cfg_scale != 1.0 and self.model.config.class_dropout_prob <= 0:
            raise ValueError("this model was trained without label dropout, so it has no null class for "
                             "classifier-free guidance: use cfg_scale=1")
        bs = batch_size or len(labels)
        C, (H, W) = self.model.in_channels, self.model.config.image_hw
        outs = []
        for start in range(0, len(labels), bs):
            y = labels[start:start + bs].to(self.device)
            noise = NoiseSource(range(seed + start, seed + start + len(y)), self.device)
            guided = GuidedModel(self.model, y, self.num_classes, cfg_scale, self.process, guide_channels,
                                 guidance_interval, cfg_batched, self.recipe.begin_branch)
            x = self.denoise(guided, noise, (C, H, W), num_sampling_steps, sampler, eta, progress, step_callback,
                             self.autoencoder is None if clip_denoised is None else clip_denoised)
            outs.append(self.autoencoder.decode(x) if self.autoencoder is not None else x)
        return torch.cat(outs).clamp(-1, 1)

def load(name_or_path: str | Path = "mnist-dit", device="cpu", autoencoder: str | None = None) -> DiTPipeline:
    """A bundled name or model file -> its pipeline: a VideoPipeline for a ditkit video DiT, else a DiTPipeline."""
    path = resolve_model_path(name_or_path)
    if path.suffix == ".safetensors" and ckpt.read_metadata(path).get("format") == VideoDiT.format_name:
        if autoencoder is not None:
            raise ValueError("video pipelines take no autoencoder (ditkit's video DiTs run in pixel space)")
        from .video_pipeline import VideoPipeline
        return VideoPipeline.from_pretrained(path, device)
    return DiTPipeline.from_pretrained(name_or_path, device, autoencoder)

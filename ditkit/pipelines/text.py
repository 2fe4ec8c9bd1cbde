"""Text-to-image generation: a PixArt model, its text encoder and its diffusion process behind one callable.

    pipe = TextPipeline.from_pretrained("mnist-t2i")        # or ditkit.load("mnist-t2i")
    images = pipe(prompt=["a bold 7 at the top left", "3 above 8"], negative_prompt="a thin 7", cfg_scale=4.5)
    # images: [2, C, H, W] in [-1, 1]; sample i uses seed + i whatever the batch size

Classifier-free guidance contrasts each prompt with its negative prompt (default: the empty caption, what caption
dropout trained the model on), optionally only inside a guidance interval. Prompts and negatives are encoded once
per call, and the batched [cond; uncond] text once per batch, so the model computes the cross-attention keys and
values once per generation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..core import checkpoint as ckpt
from ..core.config import from_dict
from ..core.configs import TextTrainConfig
from ..diffusion.guidance import GuidedModel
from ..diffusion.samplers import NoiseSource
from ..models.pixart import PixArt, PixArtConfig
from ..models.text import SmallTextEncoder, TransformersTextEncoder, WordTokenizer
from .base import Pipeline, resolve_model_path
from .diffusers_dit import is_diffusers_text_folder, load_diffusers_pixart
from .build import build_process


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts, one per line of a text file (blank lines and lines starting with # skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path}: no such file; give a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text().splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt: give one prompt per line")
    return prompts


def is_text_model(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` (bundled name, file, results folder) is a ditkit text-to-image (PixArt) file, or a
    diffusers PixArt pipeline folder."""
    if is_diffusers_text_folder(name_or_path):
        return True
    try:
        path = resolve_model_path(name_or_path)
    except FileNotFoundError:
        return False
    return path.suffix == ".safetensors" and ckpt.read_metadata(path).get("format") == PixArt.format_name


def load_text_model(name_or_path: str | Path, device="cpu", text_encoder: str | Path | None = None) -> tuple:
    """A ditkit text-to-image file -> (PixArt in eval mode, its text encoder, metadata). The small encoder trained
    with the model is rebuilt from the file (weights and tokenizer); a model trained on a transformers encoder loads
    it from the folder recorded at training, or from ``text_encoder`` (a local folder) when given."""
    path = resolve_model_path(name_or_path)
    meta = ckpt.read_metadata(path)
    if meta.get("format") != PixArt.format_name:
        raise ValueError(f"{path} is not a ditkit text-to-image model (metadata format {meta.get('format')!r}): "
                         f"give a model trained with a PixArt config, e.g. --model mnist-t2i")
    weights = ckpt.load_weights(path)
    model = PixArt(PixArtConfig(**meta["dit_config"]))
    ckpt.load_state_dict_strict(model, {k[len("transformer."):]: v for k, v in weights.items()
                                        if k.startswith("transformer.")}, str(path))
    spec = meta["text_encoder"]
    if spec["kind"] == "small" and text_encoder is None:
        encoder = SmallTextEncoder(WordTokenizer.from_dict(spec["tokenizer"]), spec["dim"], spec["depth"],
                                   spec["num_heads"], spec["max_length"])
        ckpt.load_state_dict_strict(encoder, {k[len("text_encoder."):]: v for k, v in weights.items()
                                              if k.startswith("text_encoder.")}, str(path))
        encoder = encoder.to(device).eval().requires_grad_(False)
    else:
        folder = text_encoder or spec["path"]
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{path} reads text states from the transformers encoder {folder}, which is not "
                                    f"here: give its local folder with --text-encoder PATH")
        encoder = TransformersTextEncoder(folder, device, spec["max_length"])
    return model.to(device).eval(), encoder, meta


class TextPipeline(Pipeline):
    def __init__(self, model, process, encoder, metadata: dict | None = None, autoencoder=None):
        super().__init__(model, process, autoencoder, metadata)
        if encoder.dim != model.config.caption_channels:
            raise ValueError(f"the text encoder makes {encoder.dim}-wide states but the model reads "
                             f"{model.config.caption_channels}: give the encoder the model was trained with")
        self.encoder = encoder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device="cpu",
                        text_encoder: str | Path | None = None) -> "TextPipeline":
        """A ditkit text-to-image model file (bundled name, file or results folder) with its text encoder
        (:func:`load_text_model`), or a diffusers PixArt pipeline folder (its transformer through ditkit's
        adapter, its T5 encoder and VAE; :func:`~ditkit.pipelines.diffusers_dit.load_diffusers_pixart`)."""
        if is_diffusers_text_folder(name_or_path):
            if text_encoder is not None:
                raise ValueError(f"{name_or_path} is a diffusers pipeline folder: it reads its own text_encoder/; "
                                 f"drop --text-encoder")
            model, process, encoder, ae, meta = load_diffusers_pixart(name_or_path, device)
            return cls(model, process, encoder, meta, ae)
        model, encoder, meta = load_text_model(name_or_path, device, text_encoder)
        cfg = from_dict(TextTrainConfig, meta["train_config"])
        return cls(model, build_process(cfg.diffusion, model.config.learn_sigma), encoder, meta)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> text states [N, L, C_text] and mask [N, L] on the model's device."""
        with torch.no_grad():
            states, mask = self.encoder.encode(list(prompts))
        return states.to(self.device), mask.to(self.device)

    def calibration_kwargs(self, num_samples: int, num_steps: int, seed: int) -> dict:
        """A generic calibration run: the empty prompt, guidance 4.5, the default sampler."""
        return dict(prompt=[""] * num_samples, num_sampling_steps=num_steps, sampler=self.default_sampler,
                    cfg_scale=4.5, seed=seed)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 num_sampling_steps: int = 50, sampler: str | None = None, cfg_scale: float = 4.5, seed: int = 0,
                 eta: float = 0.0, guidance_interval=None, cfg_batched: bool = True, batch_size: int | None = None,
                 progress: bool = False, step_callback=None) -> torch.Tensor:
        """One image per prompt; returns [N, C, H, W] in [-1, 1]."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a list of strings, got {prompt!r}")
        negatives = [negative_prompt or ""] * len(prompts) if negative_prompt is None or \
            isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts: give one, or one each")
        text, mask = self.encode(prompts)
        null_text, null_mask = self.encode(negatives)
        bs = batch_size or len(prompts)
        C, (H, W) = self.model.in_channels, self.model.config.image_hw
        rows = self.sample_rows(len(prompts))
        network, branch = self.guidance_split(self.model)
        outs = []
        for start in range(rows.start, rows.stop, bs):
            part = slice(start, min(start + bs, rows.stop))
            noise = NoiseSource(range(seed + part.start, seed + part.stop), self.device)
            guided = GuidedModel(network, (text[part], mask[part]), (null_text[part], null_mask[part]), cfg_scale,
                                 self.process, None, guidance_interval, cfg_batched or network is not self.model,
                                 branch)
            x = self.denoise(guided, noise, (C, H, W), num_sampling_steps, sampler or self.default_sampler, eta,
                             progress, step_callback, self.autoencoder is None)
            outs.append(x if self.autoencoder is None else self.autoencoder.decode(x))
        return self.gather_samples(torch.cat(outs), len(prompts)).clamp(-1, 1)

"""Training a text-to-image :class:`~ditkit.models.pixart.PixArt` on captioned MNIST scenes (``ditkit train`` runs this
for configs whose ``model.name`` is PixArt; see configs/mnist-t2i.yaml).

Every step draws fresh scenes (scene ``step * B + i`` of the training split: the 4,000 training digits at random
sizes, strokes and positions, so no two steps see the same image) and replaces each caption by the empty caption
with probability ``model.caption_dropout_prob`` (what classifier-free guidance contrasts with). The text encoder is
either the small word-level encoder trained jointly with the transformer (``text_encoder.kind: small``; its
tokenizer is stored in the model file) or a frozen local transformers encoder whose states are computed once per
distinct caption (``kind: transformers``). Everything else (EMA, warm-up, clipping, checkpoints, exact resume, DDP)
is the image trainer's, see :mod:`ditkit.training.trainer`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.configs import TextTrainConfig
from ..core.devices import resolve_device
from ..data.scenes import VOCABULARY, CaptionedScenes
from ..models.pixart import PixArt, PixArtConfig, TextToImage, init_from_dit
from ..models.text import CachedTextEncoder, SmallTextEncoder, TransformersTextEncoder, WordTokenizer
from ..pipelines.build import build_process
from ..pipelines.image import load_dit
from .parallel import TrainingGroup
from .trainer import prepare_training, run_training


def build_text_model(cfg: TextTrainConfig, device) -> tuple[TextToImage, object]:
    """(the module to train, the frozen external encoder or None)."""
    section, m = cfg.text_encoder, cfg.model
    external = None
    if section.kind == "small":
        encoder = SmallTextEncoder(WordTokenizer(VOCABULARY), section.dim, section.depth, section.num_heads,
                                   section.max_length)
        dim = encoder.dim
    else:
        external = CachedTextEncoder(TransformersTextEncoder(section.path, device, section.max_length))
        encoder, dim = None, external.dim
    transformer = PixArt(PixArtConfig(input_size=m.input_size, patch_size=m.patch_size, in_channels=m.in_channels,
                                      hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads,
                                      mlp_ratio=m.mlp_ratio, caption_channels=dim, learn_sigma=m.learn_sigma,
                                      caption_dropout_prob=m.caption_dropout_prob))
    if m.init_from:
        init_from_dit(transformer, load_dit(m.init_from)[0])
    model = TextToImage(transformer, encoder)
    model.file_metadata = {"text_encoder": text_encoder_metadata(cfg, encoder)}
    return model, external


def text_encoder_metadata(cfg: TextTrainConfig, encoder) -> dict:
    """How a model file's text encoder is rebuilt: the small encoder's shape and tokenizer, or the external folder."""
    s = cfg.text_encoder
    if encoder is not None:
        return {"kind": "small", "dim": s.dim, "depth": s.depth, "num_heads": s.num_heads,
                "max_length": s.max_length, "tokenizer": encoder.tokenizer.to_dict()}
    return {"kind": "transformers", "path": str(s.path), "max_length": s.max_length}


def train_text(cfg: TextTrainConfig, resume: str | None = None, progress: bool | None = None,
               max_steps: int | None = None, overwrite: bool = False) -> Path:
    """Train; returns the path of the exported EMA model (``<results_dir>/model.safetensors``). ``resume``,
    ``max_steps`` and ``overwrite`` as in :func:`~ditkit.training.trainer.train`."""
    t_cfg, m_cfg = cfg.train, cfg.model
    resume_path = prepare_training(cfg, resume, overwrite, None)
    device = resolve_device(t_cfg.device, flag="train.device")
    group = TrainingGroup(device, t_cfg.parallel, t_cfg.ulysses_degree)
    local_batch, B = group.local_batch(t_cfg.global_batch_size), t_cfg.global_batch_size
    data = CaptionedScenes("train", cfg.data.pairs, cfg.data.omit, seed=t_cfg.seed)
    torch.manual_seed(t_cfg.seed)
    model, external = build_text_model(cfg, device)
    model = model.to(device)
    process = build_process(cfg.diffusion, m_cfg.learn_sigma)
    lo = group.data_rank * local_batch
    part = lambda x: x[lo:lo + local_batch].to(device)
    shape = (B, m_cfg.in_channels, m_cfg.input_size, m_cfg.input_size)

    def losses(train_model, step: int, g: torch.Generator) -> dict:
        noise = part(torch.randn(shape, generator=g))
        t = part(process.sample_t(B, g)) if cfg.diffusion.objective == "flow" else \
            part(torch.randint(0, process.num_timesteps, (B,), generator=g))
        drop = (torch.rand(B, generator=g) < m_cfg.caption_dropout_prob)[lo:lo + local_batch].tolist()
        x, captions = data.get(range(step * B + lo, step * B + lo + local_batch))
        captions = ["" if d else c for c, d in zip(captions, drop)]
        if external is None:
            text, mask = model.text_encoder.tokenizer.encode(captions, model.text_encoder.max_length)
        else:
            text, mask = external.encode(captions)
        return process.training_losses(train_model, x.to(device), t, noise,
                                       {"text": text.to(device), "mask": mask.to(device)})

    return run_training(cfg, model, losses, device, group, resume_path, progress, max_steps, overwrite)

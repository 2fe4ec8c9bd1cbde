"""Sample-quality evaluation of class-conditional MNIST models (what ``ditkit eval`` runs).

Two metrics from ditkit's MNIST classifier (``ditkit/assets/mnist-classifier.safetensors``):

- ``class_accuracy``: how often the classifier recognises the intended class of a sample.
- ``frechet_distance``: the Fréchet distance on ditkit's MNIST-classifier features (128-d penultimate layer) between
  the samples and all 4,000 real training digits. It is *not* FID (no Inception network) and is not comparable with
  published FIDs. It is biased upwards for small sample counts, so it comes with ``frechet_distance_real_baseline``:
  the same distance for the same number of real held-out digits (capped at the 1,000 there are).
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Sequence

import torch

from ..core.metrics import frechet_distance_from_stats, gaussian_stats
from ..core.visual import pyplot, save_figure
from ..data.images import mnist_split
from .classifier import load_classifier

METRIC_NAME = "Fréchet distance on ditkit's MNIST-classifier features"
MNIST_SHAPE = (1, 32, 32)
NUM_CLASSES = 10


@functools.lru_cache(maxsize=1)
def _classifier():
    return load_classifier()


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != MNIST_SHAPE:
        raise ValueError(f"MNIST classifier metrics need images [N, 1, 32, 32] in [-1, 1], got {tuple(images.shape)}; "
                         f"they only apply to models of MNIST-shaped digits (1 channel, 32x32)")
    if len(images) == 0 or not torch.isfinite(images).all():
        raise ValueError(f"images must be a non-empty batch of finite values, got {len(images)} images"
                         + (" with NaN/inf values (did sampling diverge?)" if len(images) else ""))
    lo, hi = images.min().item(), images.max().item()
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; rescale them "
                         f"(e.g. x / 127.5 - 1 for uint8 pixels)")


@torch.no_grad()
def classifier_outputs(images: torch.Tensor, batch_size: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 1, 32, 32] in [-1, 1] -> (features [N, 128] float64, predicted classes [N] int64)."""
    _check_images(images)
    net = _classifier()
    feats = torch.cat([net.features(images[i:i + batch_size].float().cpu()) for i in range(0, len(images), batch_size)])
    return feats.double(), net.out(feats).argmax(1)


@functools.lru_cache(maxsize=1)
def heldout_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,000 held-out real digits (images [1000, 1, 32, 32], labels [1000]) in class-interleaved order
    (0, 1, ..., 9, 0, 1, ...), so that the first N have the class mix of N samples labelled i % 10."""
    held = mnist_split("heldout")
    rank = torch.empty_like(held.labels)
    for c in range(NUM_CLASSES):
        idx = (held.labels == c).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    order = torch.argsort(rank * NUM_CLASSES + held.labels)
    return held.images[order], held.labels[order]


def _check_reference(reference: str) -> None:
    if reference != "train":
        raise ValueError(f"unknown reference {reference!r}; the reference set is the MNIST 'train' split (the "
                         f"'heldout' split is kept apart for the real-data baseline)")


@functools.lru_cache(maxsize=None)
def reference_stats(reference: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [128], covariance [128, 128]) float64 of the classifier features of every real digit in the
    reference split; cached per process."""
    _check_reference(reference)
    return gaussian_stats(classifier_outputs(mnist_split(reference).images)[0])


@functools.lru_cache(maxsize=None)
def frechet_distance_real_baseline(num_samples: int, reference: str = "train") -> float:
    """Fréchet distance on ditkit's MNIST-classifier features between the first min(num_samples, 1000) real
    held-out digits (class-balanced, see ``heldout_digits``) and the reference split: what a generator of real
    digits would score at this sample count."""
    _check_reference(reference)
    held = heldout_digits()[0][:num_samples]
    if len(held) < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 samples, got {num_samples}")
    return frechet_distance_from_stats(gaussian_stats(classifier_outputs(held)[0]), reference_stats(reference))


def classifier_metrics(images: torch.Tensor, labels: Sequence[int] | torch.Tensor, reference: str = "train") -> dict:
    """Images [N, 1, 32, 32] in [-1, 1] with intended labels [N] -> class_accuracy, per_class_accuracy (class ->
    accuracy, for classes present), frechet_distance (samples vs the reference split), frechet_distance_real_baseline
    (held-out real digits vs the reference split, baseline_num_samples = min(N, 1000) of them) and num_samples."""
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(images) < 2:
        raise ValueError(f"the Fréchet distance needs at least 2 samples, got {len(images)}")
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.numel():
        raise ValueError(f"label(s) {bad.unique().tolist()} out of range: MNIST classes are 0..9")
    feats, preds = classifier_outputs(images)
    correct = (preds == labels).double()
    return {
        "class_accuracy": correct.mean().item(),
        "per_class_accuracy": {str(c): correct[labels == c].mean().item() for c in labels.unique().tolist()},
        "frechet_distance": frechet_distance_from_stats(gaussian_stats(feats), reference_stats(reference)),
        "frechet_distance_real_baseline": frechet_distance_real_baseline(len(images), reference),
        "baseline_num_samples": min(len(images), len(heldout_digits()[0])),
        "num_samples": len(images),
        "metric": METRIC_NAME,
        "reference": f"MNIST {reference} split",
    }


# Guidance for the metrics: scale 1.5 applied only at noise levels <= 0.6 (the guidance interval of Kynkäänniemi
# et al. 2024: guiding the noisiest steps costs diversity). Chosen for the bundled mnist-dit by a 300-sample sweep
# (its card); the original DiT's FID setting (1.5, everywhere) is the same kind of choice. Visual samples use 4.0.
EVAL_CFG_SCALE = 1.5
EVAL_GUIDANCE_INTERVAL = (0.0, 0.6)


def evaluate_pipeline(pipe, num_samples: int = 1000, num_sampling_steps: int = 50, sampler: str = "ddim",
                      cfg_scale: float = EVAL_CFG_SCALE, guidance_interval=EVAL_GUIDANCE_INTERVAL, seed: int = 0,
                      batch_size: int | None = None, progress: bool = False, **sampling_kwargs) -> dict:
    """Generate ``num_samples`` class-balanced MNIST samples (label i % 10) with a DiTPipeline and score them with
    ``classifier_metrics``; adds the sampling settings, sampling_seconds and seconds (sampling + metrics)."""
    if pipe.num_classes != NUM_CLASSES:
        raise ValueError(f"MNIST classifier metrics need a 10-class model, this one has {pipe.num_classes} classes")
    if pipe.autoencoder is None and (pipe.model.in_channels, *pipe.model.config.image_hw) != MNIST_SHAPE:
        raise ValueError(f"MNIST classifier metrics need a model of [1, 32, 32] digits, this one generates "
                         f"[{pipe.model.in_channels}, {', '.join(map(str, pipe.model.config.image_hw))}]")
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 for the Fréchet distance (1000 recommended), got {num_samples}")
    labels = [i % NUM_CLASSES for i in range(num_samples)]
    settings = dict(num_sampling_steps=num_sampling_steps, sampler=sampler, cfg_scale=cfg_scale,
                    guidance_interval=guidance_interval, seed=seed, **sampling_kwargs)
    t0 = time.time()
    images = pipe(labels, batch_size=batch_size, progress=progress, **settings)
    sampling_seconds = time.time() - t0
    result = classifier_metrics(images, labels)
    return {**result, "sampling": settings, "sampling_seconds": sampling_seconds, "seconds": time.time() - t0}


def cfg_sweep(pipe, scales: Sequence[float], num_samples: int = 1000, **settings) -> dict:
    """``evaluate_pipeline`` at each guidance scale (same seeds, so the samples differ only by the scale); returns
    {"sweep": one result per scale, "best_cfg_scale": the scale with the lowest Fréchet distance}."""
    if not scales:
        raise ValueError("cfg_sweep needs at least one guidance scale, e.g. 1.0,1.25,1.5,2.0")
    rows = [evaluate_pipeline(pipe, num_samples, **{**settings, "cfg_scale": float(s)}) for s in scales]
    best = min(rows, key=lambda r: r["frechet_distance"])
    return {"sweep": rows, "best_cfg_scale": best["sampling"]["cfg_scale"]}


def plot_cfg_sweep(result: dict, path: str | Path) -> Path | None:
    """Fréchet distance (with the real-vs-real baseline) and class accuracy against the guidance scale; None when
    matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    rows = result["sweep"]
    scales = [r["sampling"]["cfg_scale"] for r in rows]
    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_fd.plot(scales, [r["frechet_distance"] for r in rows], "o-", label="samples")
    ax_fd.axhline(rows[0]["frechet_distance_real_baseline"], color="gray", ls="--", label="real held-out digits")
    ax_fd.set_ylabel("Fréchet distance (classifier features)")
    ax_acc.plot(scales, [r["class_accuracy"] for r in rows], "s-", color="tab:green")
    ax_acc.set_ylabel("class accuracy")
    for ax in (ax_fd, ax_acc):
        ax.set_xlabel("guidance scale")
        ax.grid(alpha=0.3)
    ax_fd.legend(fontsize=7)
    fig.suptitle(f"{result.get('model', '')}: {rows[0]['num_samples']} samples per scale")
    fig.tight_layout()
    return save_figure(fig, path)


def format_table(result: dict) -> str:
    rows = [("class accuracy (MNIST classifier)", f"{result['class_accuracy']:.4f}"),
            (f"{METRIC_NAME}, samples vs {result['reference']}", f"{result['frechet_distance']:.2f}"),
            (f"  same for {result['baseline_num_samples']} real held-out digits (baseline)",
             f"{result['frechet_distance_real_baseline']:.2f}")]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value:>8}" for name, value in rows]
    lines.append("per-class accuracy: " + "  ".join(f"{c}: {a:.2f}" for c, a in result["per_class_accuracy"].items()))
    return "\n".join(lines)

"""``ditkit eval --prompts``: prompt adherence and a Fréchet distance for text-to-image models on captioned MNIST scenes.

For each prompt (one caption of the scene grammar, :func:`~ditkit.data.scenes.parse_caption`), sample i uses seed
``seed + i``; the :class:`~ditkit.evaluation.scenes.SceneJudge` scores what the caption asks (digit, position, size,
thickness, order of pairs; each accuracy over the prompts that ask it, ``prompt_accuracy`` over everything a caption
asks). Real held-out images of the same prompts (:meth:`CaptionedScenes.render`, the 1,000 held-out digits, the
attributes a caption leaves open drawn at random) are scored the same way, so every figure has its real baseline.

Fréchet distance: on the 128-d penultimate features of ditkit's scene classifier, each whole 40 x 40 scene resized to
32 x 32 (area), samples vs :data:`REFERENCE_SCENES` real training-split scenes; ``frechet_distance_real_baseline`` is
the real held-out images of the same prompts vs the same reference (it is biased upwards at small counts, so compare
the two, not the value with anything published). Not FID; not reported with 128 prompts or fewer (the covariance
would not have full rank).

The default prompt set (:data:`HELDOUT_PROMPTS`, ``scripts/make_scene_prompts.py``): captions of held-out scenes none
of which occurs exactly among the captions the bundled model was trained on.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.metrics import frechet_distance_from_stats, gaussian_stats
from ..data.scenes import CaptionedScenes, parse_caption
from ..pipelines.text import read_prompts_file
from .classifier import ASSETS, FEATURE_DIM, load_scene_classifier
from .scenes import SceneJudge

HELDOUT_PROMPTS = ASSETS / "mnist-scene-prompts.txt"
REFERENCE_SCENES = 2000
BASELINE_SEED = 7             # CaptionedScenes seed of the real held-out renderings of the prompts
METRIC_NAME = "Fréchet distance on ditkit's scene-classifier features"
TEXT_EVAL_CFG_SCALE = 4.5     # ditkit eval's default guidance for text models


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file (:func:`~ditkit.pipelines.text.read_prompts_file`), each checked against the scene
    grammar; an error names the file, the prompt and what the grammar takes."""
    prompts = read_prompts_file(path)
    for text in prompts:
        try:
            parse_caption(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return prompts


def scene_features(images: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """Scenes [N, 1, 40, 40] in [-1, 1] -> scene-classifier features [N, 128] float64."""
    net = _scene_classifier()
    small = F.interpolate(images.float().cpu(), size=(32, 32), mode="area")
    with torch.no_grad():
        return torch.cat([net.features(small[i:i + batch_size]) for i in range(0, len(small), batch_size)]).double()


@functools.lru_cache(maxsize=1)
def _scene_classifier():
    return load_scene_classifier()


@functools.lru_cache(maxsize=1)
def reference_scene_stats() -> tuple[torch.Tensor, torch.Tensor]:
    """Feature mean and covariance of the first :data:`REFERENCE_SCENES` real training-split scenes."""
    images, _ = CaptionedScenes("train").get(range(REFERENCE_SCENES))
    return gaussian_stats(scene_features(images))


def real_renderings(prompts: Sequence[str]) -> torch.Tensor:
    """Real images [N, 1, 40, 40] of the prompts drawn with held-out digits (the baseline)."""
    scenes = CaptionedScenes("heldout", seed=BASELINE_SEED)
    return torch.stack([scenes.render(p, i) for i, p in enumerate(prompts)])[:, None]


def score_images(judge: SceneJudge, images: torch.Tensor, prompts: Sequence[str]) -> dict:
    """The judge's accuracies plus the Fréchet distance (None at <= 128 images)."""
    out = judge.scores(images, prompts)
    out["frechet_distance"] = (frechet_distance_from_stats(gaussian_stats(scene_features(images)),
                                                           reference_scene_stats())
                               if len(images) > FEATURE_DIM else None)
    return out


def evaluate_prompts(pipe, prompts: Sequence[str], seed: int = 0, progress: bool = False,
                     **sampling) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Sample one image per prompt with ``pipe`` (a TextPipeline; ``sampling``: its keyword arguments) and score
    samples and real renderings; returns (result, samples, real images)."""
    judge = SceneJudge(load_scene_classifier())
    t0 = time.time()
    images = pipe(prompt=list(prompts), seed=seed, progress=progress, **sampling)
    seconds = time.time() - t0
    real = real_renderings(prompts)
    ours, baseline = score_images(judge, images.cpu(), prompts), score_images(judge, real, prompts)
    result = {**ours, "frechet_distance_real_baseline": baseline.pop("frechet_distance"),
              **{f"real_{k}": v for k, v in baseline.items() if k != "num_prompts"},
              "metric": METRIC_NAME, "reference": f"{REFERENCE_SCENES} real training-split scenes",
              "sampling": {**sampling, "seed": seed}, "sampling_seconds": seconds}
    return result, images, real

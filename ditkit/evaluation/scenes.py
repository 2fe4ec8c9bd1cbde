"""Prompt adherence on captioned MNIST scenes: what a caption asks (:func:`~ditkit.data.scenes.parse_caption`) checked
on an image with ditkit's own tools.

- regions: a one-digit caption's digit is all the ink; a pair's are the two halves its relation names (left / right
  or top / bottom), so a pair drawn in the wrong order fails on identity ("order");
- digit: ditkit's MNIST classifier on the region, cropped to the ink's box and framed as MNIST frames its digits (the
  longer side scaled to 20 px, bicubic, strokes re-sharpened; centred by mass in 28 x 28, padded to 32 x 32);
- position: the nearest of the five position centres to the ink's centre of mass;
- size: the ink's extent (longer side of its box) against the midpoint of the two sizes' extents;
- thickness: stroke width, 2 x ink area / ink perimeter (4-neighbour boundary), against a threshold that grows with
  the extent, fitted on real training-split scenes (:meth:`SceneJudge.fit`).

Real held-out scenes score the baseline every generated score is compared with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.scenes import CANVAS, POSITIONS, CaptionedScenes, Scene, parse_caption

INK = 0.5                                   # intensity in [0, 1] counted as ink
# intensities mapped to 0 and 1 after upscaling a digit for the classifier: chosen on training-split digits shrunk to
# 14, 16 and 22 px (accuracy 0.990 / 0.993 / 0.995, vs 0.986 / 0.979 / 0.987 without), not on the held-out ones
STRETCH = (0.1, 0.7)


@dataclass
class Measured:
    digit: int
    position: str
    extent: int
    width: float


def _ink_box(ink: torch.Tensor):
    ys, xs = torch.nonzero(ink, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def stroke_width(ink: torch.Tensor) -> float:
    """2 x area / perimeter of a binary ink map [H, W] (the stroke width of thin strokes)."""
    pad = F.pad(ink[None, None].float(), (1, 1, 1, 1))[0, 0]
    inner = torch.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]).amin(0)
    boundary = (ink.float() * (1 - inner)).sum()
    return float(2 * ink.sum() / boundary.clamp_min(1))


def mnist_frame(intensity: torch.Tensor) -> torch.Tensor:
    """A digit region [h, w] in [0, 1] -> [1, 32, 32] in [-1, 1], framed as MNIST frames its digits."""
    y0, y1, x0, x1 = _ink_box(intensity > INK / 2)
    crop = intensity[y0:y1, x0:x1]
    scale = 20 / max(crop.shape)
    size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    glyph = F.interpolate(crop[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]
    glyph = ((glyph - STRETCH[0]) / (STRETCH[1] - STRETCH[0])).clamp(0, 1)      # re-sharpen upscaled strokes
    rows, cols = torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32)
    mass = glyph.sum().clamp_min(1e-6)
    cy, cx = float((glyph.sum(1) * rows).sum() / mass), float((glyph.sum(0) * cols).sum() / mass)
    out = torch.zeros(32, 32)
    top, left = min(max(round(16 - cy), 0), 32 - size[0]), min(max(round(16 - cx), 0), 32 - size[1])
    out[top:top + size[0], left:left + size[1]] = glyph
    return out[None] * 2 - 1


class SceneJudge:
    """Scores images [N, 1, 40, 40] in [-1, 1] against their captions (module docstring)."""

    def __init__(self, classifier, thresholds: tuple[float, float, float] | None = None):
        self.classifier = classifier.eval()
        self.size_split, *self.width_line = thresholds or self.fit()

    @staticmethod
    def fit(num_scenes: int = 1500) -> tuple[float, float, float]:
        """Thresholds from real training-split scenes: the extent between small and large digits (midpoint of their
        median extents), and (a, b) of the thickness threshold a + b x extent, through the midpoints of thin and bold
        median stroke widths of small and of large digits."""
        scenes, groups = CaptionedScenes("train"), {}
        for i in range(num_scenes):
            image, _, drawn = scenes.scene(i)
            if drawn.relation is None:
                ink = (image + 1) / 2 > INK
                y0, y1, x0, x1 = _ink_box(ink)
                d = drawn.digits[0]
                groups.setdefault((d.size, d.thickness), []).append((max(y1 - y0, x1 - x0), stroke_width(ink)))
        points = []
        for size in ("small", "large"):
            thin, bold = np.array(groups[size, "thin"]), np.array(groups[size, "bold"])
            points.append((np.median(np.concatenate([thin[:, 0], bold[:, 0]])),
                           (np.median(thin[:, 1]) + np.median(bold[:, 1])) / 2))
        (e0, w0), (e1, w1) = points
        slope = (w1 - w0) / (e1 - e0)
        return float((e0 + e1) / 2), float(w0 - slope * e0), float(slope)

    def measure(self, image: torch.Tensor, scene: Scene) -> list[Measured | None]:
        """The digits of ``scene``'s layout measured on ``image`` [1, H, W] (None where a region has no ink)."""
        intensity = ((image[0] + 1) / 2).clamp(0, 1)
        if scene.relation is None:
            regions = [(intensity, 0, 0)]
        else:
            half = CANVAS // 2
            regions = [(intensity[:, :half], 0, 0), (intensity[:, half:], 0, half)] if scene.relation == "left-right" \
                else [(intensity[:half], 0, 0), (intensity[half:], half, 0)]
        out = []
        for region, dy, dx in regions:
            ink = region > INK
            if not ink.any():
                out.append(None)
                continue
            y0, y1, x0, x1 = _ink_box(ink)
            rows, cols = torch.arange(region.shape[0], dtype=torch.float32), torch.arange(region.shape[1],
                                                                                          dtype=torch.float32)
            mass = region.sum()
            cy = float((region.sum(1) * rows).sum() / mass) + dy
            cx = float((region.sum(0) * cols).sum() / mass) + dx
            position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cy) ** 2 + (POSITIONS[p][1] - cx) ** 2)
            with torch.no_grad():
                digit = int(self.classifier(mnist_frame(region)[None]).argmax())
            out.append(Measured(digit, position, max(y1 - y0, x1 - x0), stroke_width(ink)))
        return out

    def judge(self, image: torch.Tensor, caption: str) -> dict:
        """Per-attribute verdicts for one image (True / False, or None where the caption does not ask)."""
        scene = parse_caption(caption)
        measured = self.measure(image, scene)
        asked = scene.digits
        verdict = {"digit": [m is not None and m.digit == d.digit for m, d in zip(measured, asked)]}
        if scene.relation is not None:
            verdict["order"] = all(verdict["digit"])
        else:
            m, d = measured[0], asked[0]
            if d.position is not None:
                verdict["position"] = m is not None and m.position == d.position
            if d.size is not None:
                verdict["size"] = m is not None and (m.extent < self.size_split) == (d.size == "small")
            if d.thickness is not None:
                a, b = self.width_line
                verdict["thickness"] = m is not None and (m.width < a + b * m.extent) == (d.thickness == "thin")
        verdict["prompt"] = all(all(v) if isinstance(v, list) else v for v in verdict.values())
        return verdict

    def scores(self, images: torch.Tensor, captions) -> dict:
        """Accuracies over images [N, 1, H, W] and their captions: digit (every asked digit), position, size,
        thickness (single digits that name them), order (pairs), prompt (everything a caption asks)."""
        tallies: dict[str, list[bool]] = {}
        for image, caption in zip(images, captions):
            for key, v in self.judge(image, caption).items():
                tallies.setdefault(key, []).extend(v if isinstance(v, list) else [v])
        out = {f"{k}_accuracy": float(np.mean(tallies[k])) if tallies.get(k) else None
               for k in ("digit", "position", "order", "size", "thickness", "prompt")}
        return {**out, "num_prompts": len(captions)}

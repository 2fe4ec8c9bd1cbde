"""Turning [-1, 1] tensors into pictures (uint8 conversion, PNG grids), and the plotting setup shared by reports."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .outputs import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8 (scale, clamp, round)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int = 10, padding: int = 2) -> np.ndarray:
    """[N, C, H, W] -> one [rows*(H+p)+p, nrow*(W+p)+p, C] uint8 image, row-major, padded with black."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = np.zeros((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10, upscale: int = 1,
              captions: Sequence[str] | None = None) -> Path:
    """A PNG (or JPEG / WebP) grid of images [N, C, H, W] in [-1, 1], upscaled by ``upscale`` (nearest); with
    ``captions`` (one per image) each cell has its caption printed under it, wrapped to the cell's width."""
    if captions is None:
        grid = make_grid(images, nrow)
        img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
        if upscale > 1:
            img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
        return atomic_write(path, img.save)
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images: give one caption per image")
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    cell_w, pad = w * upscale, 4
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    line_h = draw.textbbox((0, 0), "Ay", font=font)[3] + 2
    wrapped = [_wrap(text, font, draw, cell_w) for text in captions]
    text_h = max(len(lines) for lines in wrapped) * line_h
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    cell_h = h * upscale + text_h + pad
    canvas = Image.new("RGB" if c == 3 else "L", (ncol * (cell_w + pad) + pad, rows * cell_h + pad), "white")
    ink = ImageDraw.Draw(canvas)
    for i in range(n):
        r, col = divmod(i, ncol)
        x, y = pad + col * (cell_w + pad), pad + r * cell_h
        tile = Image.fromarray(arr[i, ..., 0] if c == 1 else arr[i]).resize((cell_w, h * upscale), Image.NEAREST)
        canvas.paste(tile, (x, y))
        for k, line in enumerate(wrapped[i]):
            ink.text((x, y + h * upscale + 1 + k * line_h), line, fill="black", font=font)
    return atomic_write(path, canvas.save)


def _wrap(text: str, font, draw, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word gets its own line)."""
    lines = [""]
    for word in text.split():
        trial = f"{lines[-1]} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not lines[-1]:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure atomically (parent folders created) and close it."""
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path

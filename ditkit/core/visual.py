"""Turning [-1, 1] tensors into pictures (uint8 conversion, PNG grids), and the plotting setup shared by reports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

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


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 10, upscale: int = 1) -> Path:
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    return atomic_write(path, img.save)


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

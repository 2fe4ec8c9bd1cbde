"""Moving MNIST, the video-folder dataset, GIF/MP4/PNG I/O via PyAV and Pillow, and the generate-video / eval CLI."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_video_masks import save_tiny_model

from ditkit.cli import main
from ditkit.core.video_io import load_video, read_video, save_video, write_mp4
from ditkit.data.scenes import WORDS
from ditkit.data.video import CAPTION_WORDS, DIRECTIONS, MovingMNIST, VideoFolder, direction
from ditkit.models.text import WordTokenizer

pytest.importorskip("av")


@pytest.fixture(scope="module")
def moving():
    return MovingMNIST("train", canvas=32, num_frames=6, num_digits=2, digit_size=14, switch_prob=0.5, seed=3)


def test_moving_mnist_is_deterministic(moving):
    a, la = moving.get(range(5))
    b, lb = moving.get([0, 1, 2, 3, 4])
    assert a.shape == (5, 1, 6, 32, 32) and la.shape == (5, 6)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(moving.get([3])[0][0], a[3])                        # a clip does not depend on its batch
    other = MovingMNIST("train", 32, 6, 2, 14, switch_prob=0.5, seed=4).get(range(5))[0]
    assert not torch.equal(a, other)
    assert a.min() == -1 and a.max() > 0.5 and (a.flatten(2).max(dim=2).values > 0).all()   # a digit in every frame
    full, labels = moving.get(range(100))
    assert 30 < (labels != labels[:, :1]).any(dim=1).sum() < 70                # lead digit switched in about half
    plain, plain_labels = moving.get(range(100), labelled=torch.zeros(100, dtype=torch.bool))
    assert (plain_labels == plain_labels[:, :1]).all()                          # unlabelled clips never switch
    kept = (labels == labels[:, :1]).all(dim=1)
    assert torch.equal(plain[kept], full[kept]) and not torch.equal(plain[~kept], full[~kept])
    switch = (labels != labels[:, :1]).int().argmax(dim=1)                    # frames before the switch agree
    assert all(torch.equal(plain[i, :, :switch[i]], full[i, :, :switch[i]]) for i in (~kept).nonzero().view(-1))
    with pytest.raises(ValueError, match="3 flags for 5 clips"):
        moving.get(range(5), labelled=[True, False, True])


def test_moving_mnist_digits_move_and_splits_differ():
    data = MovingMNIST("heldout", 32, 8, 1, 16, speed=(2.0, 2.0), seed=0)
    video = data.get([0])[0][0, 0]
    centre = lambda f: (torch.nonzero(video[f] > 0).float().mean(dim=0))
    assert (centre(1) - centre(0)).norm() > 1
    train = MovingMNIST("train", 32, 8, 1, 16, speed=(2.0, 2.0), seed=0)
    assert not set(map(bytes, train.digits[:50])) & set(map(bytes, data.digits))        # disjoint digit pools
    with pytest.raises(ValueError, match="digit_size"):
        MovingMNIST(canvas=16, digit_size=20)


def test_moving_mnist_captions_say_what_the_clip_shows(moving):
    """Captions name each digit (and what the lead digit turns into), its first direction of motion as the drawn
    frames show it, and the edges it bounces off; per-frame captions name the frame's digit; every word is in the
    caption vocabulary; captions are deterministic and leave the clips bitwise unchanged."""
    words = set(CAPTION_WORDS) | {str(d) for d in range(10)} | set(WORDS)
    for index in range(40):
        caption, frames = moving.caption(index), moving.frame_captions(index)
        assert caption == moving.caption(index) and len(frames) == 6
        assert set(WordTokenizer.words(caption + " " + " ".join(frames))) <= words, caption
        labels, track = moving.motion(index)[0]                    # the lead digit: named first
        assert read_numbers(caption)[0] == labels[0]
        assert (f"into {labels[-1]}" in caption or f"into {WORDS[labels[-1]]}" in caption) == (labels[-1] != labels[0])
        assert DIRECTIONS[direction(track.velocities[0])] in caption
        assert all(edge in caption for _, edge in track.bounces)
        assert [read_numbers(f)[0] for f in frames] == list(labels)
        first = track.bounces[0][0] if track.bounces else 6             # frames before the first bounce move straight
        if first >= 2:
            step = track.corners[first - 1] - track.corners[0]
            dy, dx = direction(track.velocities[0])
            assert (dy == 0 or np.sign(step[0]) == dy) and (dx == 0 or np.sign(step[1]) == dx)
    assert torch.equal(moving.get([7])[0], MovingMNIST("train", 32, 6, 2, 14, switch_prob=0.5, seed=3).get([7])[0])
    assert direction((0.1, 0.1)) == (0, 0) and direction((-2, 0.3)) == (-1, 0) and direction((1, -1)) == (1, -1)


def read_numbers(text: str) -> list[int]:
    return [int(w) if w.isdigit() else WORDS.index(w) for w in WordTokenizer.words(text) if w.isdigit() or w in WORDS]


def test_gif_mp4_png_round_trip(tmp_path):
    video = torch.rand(1, 6, 16, 24) * 2 - 1
    gif, mp4, png = save_video(video, tmp_path / "clip.gif", upscale=2)
    for path, tol in ((gif, 0.05), (mp4, 0.1)):
        back = load_video(path, 1)
        assert back.shape == (1, 6, 32, 48)
        assert (back[:, :, ::2, ::2] - video).abs().mean() < tol, path
    assert Image.open(png).height > 32
    np.save(tmp_path / "clip.npy", ((video[0] + 1) * 127.5).round().byte().numpy())
    torch.testing.assert_close(load_video(tmp_path / "clip.npy", 1), video, atol=1 / 127.5, rtol=0)
    with pytest.raises(ValueError, match="even"):
        write_mp4(np.zeros((2, 15, 16, 1), np.uint8), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        np.save(tmp_path / "bad.npy", np.full((2, 4, 4), 3.0, np.float32))
        load_video(tmp_path / "bad.npy", 1)
    (tmp_path / "x.txt").touch()
    with pytest.raises(ValueError, match="unsupported"):
        load_video(tmp_path / "x.txt", 1)
    with pytest.raises(ValueError, match="cannot decode"):
        (tmp_path / "broken.mp4").write_bytes(b"not a video")
        read_video(tmp_path / "broken.mp4")


def test_video_folder(tmp_path):
    for cls, value in (("a", -0.5), ("b", 0.5)):
        save_video(torch.full((3, 9, 20, 20), value), tmp_path / cls / "v.gif", upscale=1)
    data = VideoFolder(tmp_path, image_size=8, num_frames=4, channels=1)
    assert data.length == 4 and data.class_names == ["a", "b"]            # 2 clips of 4 frames per 9-frame file
    videos, labels = data.get([0, 3])
    assert videos.shape == (2, 1, 4, 8, 8) and labels.tolist() == [[0] * 4, [1] * 4]
    with pytest.raises(ValueError, match="no clip"):
        VideoFolder(tmp_path, 8, num_frames=20)


def test_generate_video_cli(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "m.safetensors")
    clip = tmp_path / "clip.gif"
    save_video(torch.rand(1, 4, 16, 16) * 2 - 1, clip, upscale=1)
    main(["generate-video", "--model", str(model), "--task", "interpolate", "--stride", "2", "--context", str(clip),
          "--num-sampling-steps", "2", "--out", str(tmp_path / "out/v.gif"), "--no-progress"])
    assert all((tmp_path / f"out/v.{s}").is_file() for s in ("gif", "mp4", "png"))
    assert "given frames [0, 2, 3]" in capsys.readouterr().out
    main(["generate-video", "--model", str(model), "--task", "interpolate", "--stride", "2", "--context", str(clip),
          "--num-sampling-steps", "4", "--out", str(tmp_path / "r/v.gif"), "--no-progress", "--recipe",
          "taylorseer:interval=2+topk:min_tokens=0"])
    assert "recipe taylorseer:interval=2+topk:min_tokens=0)" in capsys.readouterr().out
    bad = [(["--task", "predict", "--context", str(clip), "--recipe", "fora:intervall=2"], "unknown parameter"),
           (["--task", "predict", "--context", str(tmp_path / "big.gif")], "resize"),
           (["--task", "predict", "--context", str(clip), "--given-frames", "4"], "given frames"),
           (["--task", "story", "--context", str(clip)], "--frame-labels"),
           (["--task", "complete", "--context", str(clip), "--mask", str(tmp_path / "zeros.npy")], "nothing to generate"),
           (["--task", "predict"], "needs context")]
    save_video(torch.zeros(1, 4, 16, 16), tmp_path / "big.gif", upscale=2)
    np.save(tmp_path / "zeros.npy", np.zeros((16, 16)))
    for extra, message in bad:
        with pytest.raises(SystemExit) as exit_info:
            main(["generate-video", "--model", str(model), "--num-sampling-steps", "1", "--out", str(tmp_path / "x.gif"),
                  *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, extra


def test_generate_video_rollout_cli(tmp_path, capsys):
    """--num-frames beyond the window rolls out with --history-frames / --window-stride; the GIF holds every frame."""
    model = save_tiny_model(tmp_path / "m.safetensors")
    clip = tmp_path / "clip.gif"
    save_video(torch.rand(1, 2, 16, 16) * 2 - 1, clip, upscale=1)
    main(["generate-video", "--model", str(model), "--task", "predict", "--context", str(clip), "--num-frames", "7",
          "--history-frames", "3", "--window-stride", "1", "--num-sampling-steps", "1", "--out",
          str(tmp_path / "long.gif"), "--upscale", "1", "--no-progress"])
    assert "7 frames, given frames [0, 1]" in capsys.readouterr().out
    assert load_video(tmp_path / "long.gif", 1).shape == (1, 7, 16, 16)


@pytest.mark.parametrize("task", ["predict", "story", "rollout"])
def test_eval_task_cli(tmp_path, task):
    model = save_tiny_model(tmp_path / "m.safetensors")
    out = tmp_path / "eval.json"
    main(["eval", "--model", str(model), "--task", task, "--num-videos", "3", "--num-sampling-steps", "2",
          "--json", str(out), "--no-progress"] + (["--num-frames", "9"] if task == "rollout" else []))
    result = json.loads(out.read_text())
    if task in ("predict", "rollout"):
        assert result["frames"] == list(range(2, 4 if task == "predict" else 9)) and result["given_frames"] == [0, 1]
        keys = ("psnr", "ssim", "baseline_psnr", "baseline_ssim", "identity_accuracy", "baseline_identity_accuracy")
    else:
        assert result["frames"] == [1, 2, 3] and result["real_label_accuracy"] > 0.5    # the digit reader works
        keys = ("label_accuracy", "baseline_label_accuracy")
    for key in keys:
        assert np.isfinite(result[key]) and len(result[f"{key}_per_frame"]) == len(result["frames"])
    assert (tmp_path / "eval-examples.png").is_file() and (tmp_path / "eval-per-frame.png").is_file()

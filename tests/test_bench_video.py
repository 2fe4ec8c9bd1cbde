"""``ditkit bench`` and ``ditkit calibrate`` on a tiny video DiT: the task, its quality, rows, JSON runs, report."""
import json

import pytest
import torch

from ditkit.bench.report import VIDEO_MARKERS
from ditkit.bench.tasks import VideoTask
from ditkit.cli import main
from ditkit.core import checkpoint as ckpt
from ditkit.training.trainer import model_metadata

SPARSE = "topk:min_tokens=0,tile=2x2x2"


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """Full-3D VideoDiT-T/8, 4 frames of 32x32 (4 x 4 x 4 = 64 tokens), random outputs."""
    from ditkit.core.configs import VideoTrainConfig
    from ditkit.models.video_dit import VideoDiT, video_dit_config
    cfg = VideoTrainConfig()
    cfg.data.num_frames = 4
    torch.manual_seed(0)
    model = VideoDiT(video_dit_config("VideoDiT-T/8", input_size=32, in_channels=1, num_classes=10, depth=2,
                                      layout="full3d", num_frames=4))
    for name, param in model.named_parameters():                 # un-zero the outputs: attention changes the video
        if "adaLN" in name or "final_layer.linear" in name:
            torch.nn.init.normal_(param, std=0.05)
    path = tmp_path_factory.mktemp("video") / "video.safetensors"
    ckpt.save_weights(path, model.state_dict(), model_metadata(cfg, model, 0))
    return path


def task(name="predict", **kw):
    return VideoTask(2, 0, {"num_sampling_steps": 2}, name, (1, 32, 32), 4,
                     {"num_digits": 1, "digit_size": 16, "speed": (1.0, 3.0)}, **kw)


def test_video_quality_counts_generated_pixels_only():
    t = task()
    assert t.generated_frames == [2, 3] and t.context.shape == (2, 1, 4, 32, 32)
    ref = torch.rand(2, 1, 4, 32, 32) * 2 - 1
    other = ref.clone()
    other[:, :, :2] += 0.5                                        # given frames: not scored
    assert t.quality(other, ref)["psnr"] == 100
    other[0, :, 2] += 0.1                                         # video 0, frame 2: MSE 0.01 -> 26.02 dB
    q = t.quality(other, ref)
    assert q["psnr_per_frame"] == pytest.approx([(26.0206 + 100) / 2, 100], abs=1e-3)
    assert q["psnr"] == pytest.approx((26.0206 + 300) / 4, abs=1e-3) and q["frechet_distance"] is None
    box = task("complete")                                        # centred 16x16 box generated in every frame
    outside = ref.clone()
    outside[..., :8, :] += 0.5
    assert box.generated_frames == [0, 1, 2, 3] and box.quality(outside, ref)["psnr"] == 100
    clips = task().resample(2, 1000).context
    assert not torch.equal(clips, t.context) and torch.equal(task().context, t.context)   # seeded, disjoint


def test_video_bench_at_two_sizes_in_one_json_and_report(video_file, tmp_path, capsys):
    js, md = tmp_path / "bench-video.json", tmp_path / "BENCHMARKS.md"
    common = ["bench", "--model", str(video_file), "--num-sampling-steps", "3", "--num-samples", "2", "--repeats", "1",
              "--json", str(js)]
    main(common + ["--recipes", f"fora:interval=1,{SPARSE}", "--plot", str(tmp_path / "a.png")])
    main(common + ["--recipes", f"{SPARSE},fora:interval=2+{SPARSE}", "--canvas", "64", "--append",
                   "--markdown", str(md)])
    out = capsys.readouterr().out
    data = json.loads(js.read_text())
    assert [s["tokens"] for s in data["settings"]] == [64, 256] and data["settings"][1]["canvas"] == 64
    rows = {(r["tokens"], r["recipe"]): r for r in data["rows"]}
    assert list(rows) == [(64, "none"), (64, "fora:interval=1"), (64, SPARSE),
                          (256, "none"), (256, SPARSE), (256, f"fora:interval=2+{SPARSE}")]
    never = rows[64, "fora:interval=1"]
    assert never["identical"] and never["psnr"] == 100 and never["psnr_per_frame"] == [100, 100]
    assert rows[64, "none"]["seconds"] > 0 and rows[256, "none"]["identical"]
    assert 0 < rows[256, SPARSE]["psnr"] < 100 and rows[256, SPARSE]["class_accuracy"] is None
    assert rows[256, f"fora:interval=2+{SPARSE}"]["compute_ratio"] > 1.2
    text = md.read_text()
    assert text.count(VIDEO_MARKERS[0]) == 1 and "### 64 tokens" in text and "### 256 tokens" in text
    assert "**not measured** — at the native size" in out and "**not measured** — at 8,192 tokens" in out   # 3 steps, 256
    assert "`fora:interval=1` wall time" in text and "videos bitwise identical: True" in text
    main(common + ["--recipes", "none", "--canvas", "64", "--append"])                  # replaces the 256-token run
    data = json.loads(js.read_text())
    assert [s["tokens"] for s in data["settings"]] == [64, 256] and len(data["rows"]) == 3 + 1


@pytest.mark.parametrize("method, printed", [("teacache", "R^2"), ("magcache", "step ratios")])
def test_calibrate_a_video_model(method, printed, video_file, tmp_path, capsys):
    out = tmp_path / "cal.json"
    main(["calibrate", "--model", str(video_file), "--method", method, "--num-prompts", "3",
          "--num-sampling-steps", "4", "--out", str(out)])
    cal = json.loads(out.read_text())
    assert cal["sampling"]["task"] == "predict" and cal["seed"] == 1000 and printed in capsys.readouterr().out
    if method == "teacache":
        assert cal["fit"]["pairs"] == 3 * 3                                       # videos x (steps - 1), no CFG
    else:
        assert set(cal["curves"]) == {"cond"} and cal["fit"]["ratios"] == 3 * 3


@pytest.mark.parametrize("argv, message", [
    (["--model", "{image}", "--task", "predict"], "--task predict applies to video models"),
    (["--model", "{video}", "--canvas", "60"], "--canvas 60 is not a multiple of the model's patch size 8: use e.g. "
                                                "--canvas 64"),
    (["--model", "{video}", "--peers", "diffusers"], "no diffusers conversion of ditkit's VideoDiT"),
    (["--model", "{video}", "--cfg-scale", "4"], "classifier-free guidance needs labels"),
    (["--model", "{video}", "--task", "uncond", "--history-scale", "2"], "gives none: use --history-scale 1"),
])
def test_bad_bench_flags_are_named(argv, message, video_file, tmp_path, capsys):
    from acceleration_util import tiny_dit

    from ditkit.core.configs import TrainConfig
    image = tmp_path / "image.safetensors"
    model = tiny_dit()
    ckpt.save_weights(image, model.state_dict(), model_metadata(TrainConfig(), model, 0))
    argv = [a.format(image=image, video=video_file) for a in argv]
    with pytest.raises(SystemExit):
        main(["bench", *argv, "--recipes", "none", "--num-samples", "1", "--num-sampling-steps", "2"])
    assert message in capsys.readouterr().err

"""``ditkit bench-attention`` on tiny shapes: JSON rows, crossover, activations captured from a model file."""
import json

import torch

from ditkit.bench.attention import attention_backends, capture_activations, parse_layout
from ditkit.cli import main
from ditkit.core import checkpoint as ckpt
from ditkit.core.configs import TrainConfig
from ditkit.models.attention import TokenLayout
from ditkit.pipelines.build import build_model
from ditkit.training.trainer import model_metadata


def test_bench_attention_cli_writes_rows(tmp_path):
    out = tmp_path / "bench.json"
    main(["bench-attention", "--tokens", "256", "--heads", "2", "--head-dim", "16", "--layout", "4", "--repeats", "1",
          "--random", "--backends", "svg:block=32,rows=8,sta:tile=2x4x4,topk:tile=2x4x4,linear", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = {r["backend"]: r for r in result["rows"]}
    assert list(rows) == ["sdpa", "svg:block=32,rows=8", "sta:tile=2x4x4", "topk:tile=2x4x4", "linear"]
    for r in rows.values():
        assert {"backend", "tokens", "density", "ms", "speedup", "rel_error", "peak_memory_mb"} <= set(r)
    assert rows["sdpa"]["rel_error"] == 0 and rows["sta:tile=2x4x4"]["density"] == 0.25
    assert result["linear_crossover"]["table"] and "random" in rows["svg:block=32,rows=8"]["activations"]
    assert {"svg", "sta", "topk", "fastattn", "linear"} <= set(attention_backends())


def test_bench_attention_on_joint_text_image_calls(tmp_path):
    """--text-tokens: joint calls, text kept dense (density counts the text rows and columns), errors vs dense
    joint attention; a keep-everything backend is exact, linear attention is skipped (it cannot keep text dense)."""
    out = tmp_path / "bench.json"
    main(["bench-attention", "--tokens", "256", "--text-tokens", "12", "--heads", "2", "--head-dim", "16", "--layout",
          "4", "--repeats", "1", "--random", "--backends", "sta:tile=2x4x4,sta:tile=2x4x4,density=1,fastattn,linear",
          "--json", str(out)])
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["sdpa", "sta:tile=2x4x4", "sta:tile=2x4x4,density=1", "fastattn"]
    n = 12 + 256
    assert rows["sta:tile=2x4x4"]["density"] == round((12 * n + 256 * 12 + 0.25 * 256 ** 2) / n ** 2, 4)
    assert rows["sta:tile=2x4x4,density=1"]["rel_error"] < 1e-5 < rows["sta:tile=2x4x4"]["rel_error"]
    assert all(r["text_tokens"] == 12 for r in rows.values())


def test_layout_parsing():
    assert parse_layout("16", 4096) == TokenLayout(16, 16, 16)
    assert parse_layout("2x8x16", 256) == TokenLayout(2, 8, 16)
    assert parse_layout("16xHxW", 16384) == TokenLayout(16, 32, 32)


def test_activations_are_captured_from_a_trained_model_file(tmp_path):
    cfg = TrainConfig()
    model = build_model(cfg.model)
    path = tmp_path / "m.safetensors"
    ckpt.save_weights(path, model.state_dict(), model_metadata(cfg, model, 0))
    acts, label = capture_activations(TokenLayout(2, 8, 8), models=(str(path),), timesteps=(500, 480))
    assert len(acts) == 2 and acts[0][0].shape == (1, 3, 128, 64) and "frames stacked" in label


def _full3d_video_model_file(tmp_path):
    from ditkit.core.configs import VideoTrainConfig
    from ditkit.training.video import build_video_model
    cfg = VideoTrainConfig()
    cfg.model.layout, cfg.model.input_size, cfg.model.num_frames = "full3d", 16, 4
    model = build_video_model(cfg.model)
    for name, param in model.named_parameters():            # un-zero the outputs so attention changes the video
        if "adaLN" in name or "final_layer.linear" in name:
            torch.nn.init.normal_(param, std=0.05)
    path = tmp_path / "video.safetensors"
    ckpt.save_weights(path, model.state_dict(), model_metadata(cfg, model, 0))
    return path


def test_activations_of_a_full3d_video_model_are_whole_sequences(tmp_path):
    path = _full3d_video_model_file(tmp_path)
    acts, label = capture_activations(TokenLayout(4, 8, 8), models=(str(path),), timesteps=(500, 480))
    assert len(acts) == 2 and all(t.shape == (1, 3, 256, 64) for t in acts[0])
    assert "full 3D attention" in label and "Moving MNIST" in label
    assert not torch.equal(acts[0][0], acts[1][0])                   # two noise levels, two sets of activations


def test_end_to_end_samples_a_video_model_file_dense_and_with_recipes(tmp_path):
    from ditkit.bench.attention import end_to_end
    path = _full3d_video_model_file(tmp_path)
    full = "sta:tile=2x2x2,window=2x4x4,min_tokens=16,full_steps=0"     # every tile: dense attention again
    sparse = "sta:tile=2x2x2,window=1x2x2,min_tokens=16,full_steps=0"
    rows = end_to_end([full, sparse], canvas=16, frames=4, steps=2, seed=0, cfg_scale=1.0, model_name=str(path),
                      log=lambda *a: None)
    by = {r["recipe"]: r for r in rows}
    assert list(by) == ["none", full, sparse]
    assert by["none"]["psnr"] == 100.0 and by["none"]["speedup"] == 1.0
    assert by[full]["psnr"] > 60 and by[sparse]["psnr"] < by[full]["psnr"]
    assert all(r["attention_tokens"] == 4 * 4 * 4 and r["kind"] == "video" for r in rows)

"""Text-to-image training and use: the start from an image DiT (PixArt's re-parameterisation), exact resume with the
jointly trained encoder, the model file (tokenizer and encoder inside, or a transformers folder recorded), and the
CLI (train, generate --prompt with a captioned grid, eval --prompts with every JSON key), on tiny configs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ditkit
from ditkit.acceleration.recipes import Recipe
from ditkit.core.checkpoint import load_weights, read_metadata
from ditkit.core.config import load_config
from ditkit.core.configs import TextTrainConfig, config_kind
from ditkit.data.scenes import CaptionedScenes, parse_caption
from ditkit.evaluation.classifier import load_scene_classifier
from ditkit.evaluation.scenes import SceneJudge
from ditkit.evaluation.text import read_prompts
from ditkit.models.dit import DiT, DiTConfig
from ditkit.models.pixart import PixArt, PixArtConfig, init_from_dit
from ditkit.pipelines.text import TextPipeline
from ditkit.training.text import train_text
from ditkit.training.trainer import latest_checkpoint

from cli_util import run_cli

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.hidden_size=32", "model.depth=2", "model.num_heads=2", "model.init_from=null", "text_encoder.dim=16",
        "text_encoder.depth=1", "text_encoder.num_heads=2", "text_encoder.max_length=12",
        "train.global_batch_size=4", "train.warmup_steps=1", "train.log_every=1", "train.ckpt_every=2",
        "train.num_threads=1", "train.ema_decay=0.9", "train.decay_start=null"]


def tiny_cfg(results, *extra):
    return load_config(TextTrainConfig, REPO / "configs/mnist-t2i.yaml", TINY + [f"train.results_dir={results}", *extra])


def test_start_from_an_image_dit_equals_it_at_the_reference_timestep():
    torch.manual_seed(0)
    dit = DiT(DiTConfig(input_size=16, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                        num_classes=10, learn_sigma=False)).eval()
    for name, p in dit.named_parameters():                       # a trained-looking DiT: nothing zero
        if name != "pos_embed":                                  # (fixed sin-cos, as PixArt's)
            p.data.normal_(0, 0.05)
    pixart = init_from_dit(PixArt(PixArtConfig(input_size=16, hidden_size=32, depth=2, num_heads=2,
                                               caption_channels=8)), dit).eval()
    x = torch.randn(3, 1, 16, 16)
    text, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    null = torch.full((3,), 10)
    with torch.no_grad():
        at_ref = (pixart(x, torch.full((3,), 500.0), text, mask), dit(x, torch.full((3,), 500.0), null))
        elsewhere = (pixart(x, torch.full((3,), 100.0), text, mask), dit(x, torch.full((3,), 100.0), null))
    assert torch.allclose(*at_ref, atol=1e-5) and at_ref[0].abs().mean() > 1e-2
    assert not torch.allclose(*elsewhere, atol=1e-3)             # one shared modulation: exact at t_ref only
    wide = PixArt(PixArtConfig(input_size=16, hidden_size=64, depth=2, num_heads=2, caption_channels=8))
    with pytest.raises(ValueError, match="same width"):
        init_from_dit(wide, dit)


def test_resume_is_bitwise_exact_and_the_file_carries_its_encoder(tmp_path):
    assert config_kind(REPO / "configs/mnist-t2i.yaml") == "text"
    full = train_text(tiny_cfg(tmp_path / "full", "train.steps=4"), progress=False)
    part = tiny_cfg(tmp_path / "part", "train.steps=4")
    train_text(part, progress=False, max_steps=2)
    assert latest_checkpoint(tmp_path / "part").name == "0000002"
    resumed = train_text(part, resume="auto", progress=False)
    a, b = load_weights(full), load_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("text_encoder.") for k in a) and any(k.startswith("transformer.") for k in a)
    meta = read_metadata(full)
    assert meta["format"] == "ditkit-pixart" and meta["text_encoder"]["kind"] == "small"
    assert "bold" in meta["text_encoder"]["tokenizer"]["vocabulary"]
    pipe = ditkit.load(tmp_path / "full")
    assert isinstance(pipe, TextPipeline) and pipe.model.config.hidden_size == 32
    prompts = ["a bold 7 at the top left", "3 above 8"]
    one = pipe(prompt=prompts, num_sampling_steps=3, seed=5)
    assert one.shape == (2, 1, 40, 40)
    assert torch.allclose(one[1:], pipe(prompt=prompts[1:], num_sampling_steps=3, seed=6), atol=1e-5)


def test_a_transformers_encoder_is_frozen_cached_and_recorded(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "t5"
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5EncoderModel(config).save_pretrained(folder)
    transformers.ByT5Tokenizer().save_pretrained(folder)
    out = train_text(tiny_cfg(tmp_path / "run", "train.steps=2", "text_encoder.kind=transformers",
                              f"text_encoder.path={folder}", "text_encoder.max_length=48"), progress=False)
    weights = load_weights(out)
    assert not any(k.startswith("text_encoder.") for k in weights)
    assert read_metadata(out)["text_encoder"] == {"kind": "transformers", "path": str(folder), "max_length": 48}
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    with pytest.raises(FileNotFoundError, match="--text-encoder"):
        TextPipeline.from_pretrained(out)
    pipe = TextPipeline.from_pretrained(out, text_encoder=moved)
    assert pipe.encoder.dim == 16 and pipe(prompt="2 above 5", num_sampling_steps=2).shape == (1, 1, 40, 40)


def test_real_renderings_satisfy_their_prompts():
    judge = SceneJudge(load_scene_classifier())
    scenes = CaptionedScenes("heldout", seed=3)
    prompts = [scenes.caption(i) for i in range(60)]
    assert prompts == [scenes.scene(i)[1] for i in range(60)]             # captions without drawing: the same
    images = torch.stack([scenes.render(p, i) for i, p in enumerate(prompts)])[:, None]
    assert torch.equal(images[4, 0], scenes.render(prompts[4], 4))         # a pure function of (seed, index, caption)
    scores = judge.scores(images, prompts)
    assert scores["prompt_accuracy"] >= 0.85 and scores["digit_accuracy"] >= 0.9
    with pytest.raises(ValueError, match="scene grammar"):
        scenes.render("a cat", 0)


def test_cli_trains_generates_and_evaluates(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--config", REPO / "configs/mnist-t2i.yaml", "--no-progress"]
    for s in TINY + [f"train.results_dir={run}", "train.steps=2"]:
        args += ["--set", s]
    run_cli(*args)
    grid = tmp_path / "grid.png"
    out, _ = run_cli("generate", "--model", run, "--prompt", "a bold 7 at the top left", "5 above 2",
                     "--num-sampling-steps", "2", "--out", grid, "--npz", tmp_path / "s.npz", "--no-progress")
    assert "2 samples" in out
    width, height = Image.open(grid).size
    assert width == 2 * (40 * 4 + 4) + 4 and height > 40 * 4 + 8          # captions under the 4x cells
    assert list(np.load(tmp_path / "s.npz")["prompts"]) == ["a bold 7 at the top left", "5 above 2"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\n3 on the left and 4 on the right\n\na small 1 in the center\n")
    assert read_prompts(prompts) == ["3 on the left and 4 on the right", "a small 1 in the center"]
    run_cli("eval", "--model", run, "--prompts", prompts, "--num-sampling-steps", "2", "--json", tmp_path / "e.json",
            "--no-progress")
    result = json.loads((tmp_path / "e.json").read_text())
    for key in ("digit_accuracy", "position_accuracy", "order_accuracy", "size_accuracy", "thickness_accuracy",
                "prompt_accuracy", "frechet_distance", "frechet_distance_real_baseline", "num_prompts"):
        assert key in result, key
    assert result["num_prompts"] == 2 and result["frechet_distance"] is None        # 2 prompts: no covariance
    assert result["real_order_accuracy"] == 1.0 and Path(result["examples"]).is_file()
    bad = tmp_path / "bad.txt"
    bad.write_text("a small 1 in the center\na purple cat\n")
    err = run_cli("eval", "--model", run, "--prompts", bad, rc=2)[1]
    assert "bad.txt" in err and "a purple cat" in err and "scene grammar" in err
    err = run_cli("generate", "--model", run, "--class-labels", "3", rc=2)[1]
    assert "--prompt" in err
    run_cli("bench", "--model", run, "--recipes", "none,fora:interval=2", "--num-samples", "2", "--num-sampling-steps",
            "4", "--repeats", "1", "--calibration-prompts", "2", "--json", tmp_path / "b.json", "--no-progress")
    bench = json.loads((tmp_path / "b.json").read_text())
    assert bench["settings"]["kind"] == "text" and bench["settings"]["cfg_scale"] == 4.5
    none, fora = bench["rows"]
    assert none["psnr"] >= 100 and 0 <= fora["prompt_accuracy"] <= 1 and fora["blocks"] < none["blocks"]
    run_cli("tune", "--model", run, "--min-psnr", "20", "--methods", "fora,teacache", "--num-sampling-steps", "6",
            "--probe-samples", "2", "--calibration-samples", "3", "--validation-samples", "2", "--time-samples", "1",
            "--repeats", "1", "--out", tmp_path / "r.yaml", "--json", tmp_path / "t.json", "--no-progress")
    tuned = json.loads((tmp_path / "t.json").read_text())                   # held-out prompts validate the winner
    assert tuned["settings"]["cfg_scale"] == 4.5 and "(2)" in tuned["settings"]["prompts"]
    assert tuned["winner"] != "none" and tuned["validation"]["psnr"] >= 20
    assert str(Recipe(str(tmp_path / "r.yaml"))) == str(Recipe(tuned["winner"]))


def test_default_prompt_set_is_held_out_and_in_the_grammar():
    from ditkit.evaluation.text import HELDOUT_PROMPTS
    prompts = read_prompts(HELDOUT_PROMPTS)
    assert len(prompts) == len(set(prompts)) == 300
    assert all(parse_caption(p) for p in prompts)
    train = CaptionedScenes("train")
    sample = {train.caption(i) for i in range(0, 512_000, 128)}            # 16,000 steps of 32: every 128th caption
    assert not sample & set(prompts)

"""Captioned video: a VideoDiT cross-attending to one caption per clip or one per frame, its own text encoder trained
with it, fine-tuning an uncaptioned model into a captioned one, prompts in the pipeline (CFG against the empty
caption), and the text-to-video and caption-following evaluations."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from ditkit.core import checkpoint as ckpt
from ditkit.core.config import load_config, to_dict
from ditkit.core.configs import TextEncoderSection, VideoModelSection, VideoTrainConfig
from ditkit.evaluation.video import evaluate_video
from ditkit.models.video_dit import VideoDiT, video_dit_config
from ditkit.pipelines.video import VideoPipeline
from ditkit.training import video as video_training

from test_video_masks import TINY_TRAIN

TEXT = TextEncoderSection(dim=16, depth=1, num_heads=2, max_length=24)


def captioned(seed=0, layout="vdt", perturb_cross=True) -> VideoDiT:
    torch.manual_seed(seed)
    model = VideoDiT(video_dit_config("VideoDiT-T/8", depth=2, hidden_size=32, num_heads=2, input_size=16,
                                      num_frames=4, in_channels=1, learn_sigma=False, layout=layout,
                                      **video_training.caption_config(TEXT)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and (perturb_cross or not name.startswith("cross.")):
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("layout", ["vdt", "latte", "full3d"])
def test_captions_condition_the_frames_they_belong_to(layout):
    """A caption per clip equals the same caption given to every frame; a frame's own caption moves that frame most;
    with the cross-attention at its zero initialisation the captions change nothing."""
    model = captioned(layout=layout)
    x, t = torch.randn(2, 1, 4, 16, 16), torch.tensor([300.0, 800.0])
    text, mask = model.encode_prompts(["a 3 moving left", "the digit five going up"])
    with torch.no_grad():
        clip = model(x, t, None, text=text, text_mask=mask)
        frames = model(x, t, None, text=text[:, None].expand(2, 4, *text.shape[1:]),
                       text_mask=mask[:, None].expand(2, 4, -1))
        torch.testing.assert_close(frames, clip, atol=1e-5, rtol=0)
        other, other_mask = model.encode_prompts(["a 3 moving left"] * 3 + ["an eight moving down"])
        story = model(x[:1], t[:1], None, text=other[None], text_mask=other_mask[None])
        change = (story[0] - clip[0]).abs().amax(dim=(0, 2, 3))
        assert change[3] > 1e-3 and change[3] > 3 * change[:3].max()
        fresh = captioned(layout=layout, perturb_cross=False)
        a = fresh(x, t, None, text=text, text_mask=mask)
        b = fresh(x, t, None, text=torch.randn_like(text), text_mask=mask)
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs text states"):
        model(x, t, None)
    with pytest.raises(ValueError, match="no cross-attention"):
        VideoDiT(video_dit_config("VideoDiT-T/8", depth=1, hidden_size=32, num_heads=2, input_size=16,
                                  num_frames=4, in_channels=1))(x, t, None, text=text, text_mask=mask)


def test_fine_tune_an_uncaptioned_model_into_a_captioned_one(tmp_path):
    """init_from an uncaptioned VideoDiT: its weights, the new cross-attention at zero output, so the captioned model
    starts as exactly the old one whatever the caption."""
    section = VideoModelSection(name="VideoDiT-T/8", input_size=16, num_frames=4, layout="full3d")
    torch.manual_seed(0)
    start = video_training.build_video_model(section)
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = ckpt.save_weights(tmp_path / "m.safetensors", start.state_dict(),
                             {"format": VideoDiT.format_name, "dit_config": start.config.to_dict(),
                              "train_config": to_dict(load_config(VideoTrainConfig, None, TINY_TRAIN))})
    model = video_training.build_video_model(dataclasses.replace(section, init_from=str(path),
                                                                 frame_timesteps=True), TEXT).eval()
    x, t, y = torch.randn(2, 1, 4, 16, 16), torch.tensor([100.0, 900.0]), torch.tensor([1, 10])
    text, mask = model.encode_prompts(["a 1 moving up", ""])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, text=text, text_mask=mask), start.eval()(x, t, y), atol=1e-6,
                                   rtol=0)
    with pytest.raises(ValueError, match="does not fit"):              # captioned -> another text encoder
        saved = ckpt.save_weights(tmp_path / "c.safetensors", model.state_dict(),
                                  {"format": VideoDiT.format_name, "dit_config": model.config.to_dict(),
                                   "train_config": to_dict(load_config(VideoTrainConfig, None, TINY_TRAIN))})
        video_training.build_video_model(dataclasses.replace(section, init_from=str(saved)), None)


@pytest.mark.parametrize("captions", ["clip", "frames", "mixed"])
def test_captioned_training_trains_the_text_encoder(tmp_path, captions, monkeypatch):
    """The network sees token ids [N, F, L]: per-clip captions repeated over the frames, per-frame captions, or the
    empty caption (caption dropout); the encoder's weights move with the transformer's."""
    seen = []
    forward = VideoDiT.forward

    def spy(self, x, t, *args, text=None, text_mask=None, **kwargs):
        seen.append(text.clone())
        return forward(self, x, t, *args, text=text, text_mask=text_mask, **kwargs)
    monkeypatch.setattr(VideoDiT, "forward", spy)
    cfg = load_config(VideoTrainConfig, None, TINY_TRAIN + [
        f"train.results_dir={tmp_path}", "train.steps=3", f"data.captions={captions}", "data.digit_size=8",
        "text_encoder.dim=16", "text_encoder.num_heads=2", "model.caption_dropout_prob=0.3",
        "train.global_batch_size=4"])
    out = video_training.train_video(cfg, progress=False)
    model = VideoPipeline.from_pretrained(out).model
    assert model.config.caption_channels == 16 and model.config.text_encoder["max_length"] == 24
    init = video_training.build_video_model(cfg.model, cfg.text_encoder)
    moved = [not torch.equal(a, b) for a, b in zip(model.text_encoder.state_dict().values(),
                                                    init.text_encoder.state_dict().values())]
    assert all(moved)
    ids = torch.cat(seen)
    assert ids.shape[1:] == (4, 24) and ids.dtype == torch.long
    same = (ids == ids[:, :1]).all(dim=(1, 2))
    empty = (ids[:, :, 0] == 2).all(dim=1)                               # the end token alone: the empty caption
    assert empty.any() and not empty.all()
    if captions == "clip":
        assert same.all()
    elif captions == "frames":
        assert not (same & ~empty).all()


def test_pipeline_guides_towards_captions(tmp_path):
    """One Euler step with CFG on captions: uncond + s (cond - uncond), uncond the empty caption and null label;
    prompt errors name the fix."""
    model = captioned()
    cfg = load_config(VideoTrainConfig, None, TINY_TRAIN + ["diffusion.objective=flow",
                                                            "diffusion.timestep_scale=1000"])
    path = ckpt.save_weights(tmp_path / "m.safetensors", model.state_dict(),
                             {"format": VideoDiT.format_name, "dit_config": model.config.to_dict(),
                              "train_config": to_dict(cfg)})
    pipe = VideoPipeline.from_pretrained(path)
    prompts = ["a 3 moving left", "the 7 going down"]
    x0 = torch.stack([torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    text, mask = model.encode_prompts(prompts)
    empty, empty_mask = model.encode_prompts(["", ""])
    null, t = torch.full((2,), model.config.num_classes), torch.zeros(2)
    with torch.no_grad():
        cond = model(x0, t, null, text=text, text_mask=mask)
        uncond = model(x0, t, null, text=empty, text_mask=empty_mask)
    assert (cond - uncond).abs().max() > 1e-3
    for s in (1.0, 3.0):
        out = pipe(num_videos=2, prompt=prompts, num_sampling_steps=1, sampler="euler", cfg_scale=s)
        torch.testing.assert_close(out, (x0 + uncond + s * (cond - uncond)).clamp(-1, 1), atol=1e-5, rtol=0)
    per_frame = pipe(num_videos=2, frame_prompts=[[p] * 4 for p in prompts], num_sampling_steps=1, sampler="euler",
                     cfg_scale=3.0)
    torch.testing.assert_close(per_frame, out, atol=1e-5, rtol=0)
    for kwargs, match in ((dict(prompt=["a", "b", "c"], num_videos=2), "3 prompts for 2 videos"),
                          (dict(frame_prompts=[["a 3"] * 3], num_videos=1), "one caption per frame"),
                          (dict(prompt="a 3", frame_prompts=[["a 3"] * 4]), "not both")):
        with pytest.raises(ValueError, match=match):
            pipe(num_sampling_steps=1, **kwargs)


def test_text_to_video_and_story_evaluation(tmp_path):
    """t2v: digit and direction accuracy against real clips measured the same way; story on a captioned model
    follows the per-frame captions (caption_accuracy)."""
    model = captioned()
    cfg = load_config(VideoTrainConfig, None, TINY_TRAIN + ["diffusion.objective=flow", "data.digit_size=12",
                                                            "data.speed=[0.5,1.0]", "data.captions=frames"])
    path = ckpt.save_weights(tmp_path / "m.safetensors", model.state_dict(),
                             {"format": VideoDiT.format_name, "dit_config": model.config.to_dict(),
                              "train_config": to_dict(cfg)})
    pipe = VideoPipeline.from_pretrained(path)
    result, tensors = evaluate_video(pipe, "t2v", num_videos=6, num_sampling_steps=1, cfg_scale=2.0)
    assert result["direction_videos"] >= 2 and result["real_digit_accuracy"] > 0.5
    assert result["real_direction_accuracy"] >= 0.5 and 0 <= result["direction_accuracy"] <= 1
    assert 0 <= result["digit_accuracy"] <= 1 and tensors["model"].shape == (6, 1, 4, 16, 16)
    assert len(result["captions"]) == 6 and all("moving" in c or "going" in c or "moves" in c
                                                for c in result["captions"])
    story, _ = evaluate_video(pipe, "story", num_videos=3, num_sampling_steps=1, cfg_scale=2.0)
    assert "caption_accuracy" in story and "label_accuracy" not in story and story["real_caption_accuracy"] > 0.5
    plain = VideoPipeline(VideoDiT(video_dit_config("VideoDiT-T/8", depth=1, hidden_size=32, num_heads=2,
                                                    input_size=16, num_frames=4, in_channels=1)), pipe.process, None,
                          pipe.metadata)
    with pytest.raises(ValueError, match="has none"):
        evaluate_video(plain, "t2v", num_videos=1, num_sampling_steps=1)


def test_quantization_keeps_the_text_encoder_float():
    from ditkit.acceleration.quant.base import linear_slots
    names = [name for name, _, _ in linear_slots(captioned())]
    assert names and not any(n.startswith("text_encoder") for n in names)
    assert any(n.startswith("cross.") for n in names) and isinstance(captioned().text_encoder, nn.Module)


def test_story_config_fine_tunes_the_bundled_video_model():
    """configs/moving-mnist-vdt-story.yaml is valid and starts from the bundled model: its output, whatever the
    caption, is the bundled model's with the same (clean-level) timesteps."""
    from pathlib import Path

    from ditkit.pipelines.video import load_video_dit
    cfg = load_config(VideoTrainConfig, Path(__file__).parent.parent / "configs/moving-mnist-vdt-story.yaml")
    cfg.validate()
    model = video_training.build_video_model(cfg.model, cfg.text_encoder).eval()
    bundled = load_video_dit("moving-mnist-vdt")[0]
    x, t = torch.randn(1, 1, 8, 32, 32), torch.tensor([700.0])
    text, mask = model.encode_prompts(["the 3 moving up and to the left"])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, None, text=text, text_mask=mask), bundled(x, t, None), atol=1e-5,
                                   rtol=0)


def test_captioned_video_config_is_a_video_config():
    from pathlib import Path

    from ditkit.core.configs import config_kind
    assert config_kind(Path(__file__).parent.parent / "configs/moving-mnist-vdt-story.yaml") == "video"

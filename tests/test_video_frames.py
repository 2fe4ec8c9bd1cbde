"""Per-frame noise levels (Diffusion Forcing): the network's per-frame timesteps, training with given frames clean and
independent levels, sampling with per-frame timesteps, fractional history guidance, and the rollout evaluation."""
import dataclasses

import pytest
import torch

from ditkit.core import checkpoint as ckpt
from ditkit.core.config import load_config, to_dict
from ditkit.core.configs import VideoModelSection, VideoTrainConfig
from ditkit.diffusion.flow import FlowMatching
from ditkit.diffusion.frames import frame_timesteps, given_frames_of, noise_to_level
from ditkit.diffusion.gaussian import GaussianDiffusion
from ditkit.diffusion.guidance import HistoryGuidedModel
from ditkit.evaluation.video import evaluate_video
from ditkit.models.video_dit import VideoDiT, video_dit_config
from ditkit.pipelines.video import HISTORY_NOISE_SEED, VideoPipeline
from ditkit.training import video as video_training

from test_video_masks import TINY_TRAIN


def tiny_model(frame_timesteps=True, layout="vdt"):
    torch.manual_seed(0)
    model = VideoDiT(video_dit_config("VideoDiT-T/8", depth=1, hidden_size=32, num_heads=2, input_size=16,
                                      num_frames=4, in_channels=1, num_classes=10, learn_sigma=False, layout=layout,
                                      frame_timesteps=frame_timesteps))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def save_frame_model(path, objective="flow"):
    cfg = load_config(VideoTrainConfig, None, TINY_TRAIN + [f"diffusion.objective={objective}",
                                                            "diffusion.timestep_scale=1000", "model.frame_timesteps=true"])
    model = tiny_model()
    meta = {"format": VideoDiT.format_name, "dit_config": model.config.to_dict(), "train_config": to_dict(cfg)}
    return ckpt.save_weights(path, model.state_dict(), meta)


@pytest.mark.parametrize("layout", ["vdt", "full3d"])
def test_per_frame_timesteps(layout):
    """Equal per-frame timesteps are the per-video timestep; changing one frame's level changes the output."""
    model = tiny_model(layout=layout)
    x, y = torch.randn(2, 1, 4, 16, 16), torch.tensor([3, 10])
    t = torch.tensor([200.0, 700.0])
    with torch.no_grad():
        ref = model(x, t, y)
        same = model(x, t[:, None].expand(2, 4), y)
        per = model(x, torch.tensor([[0.0, 200.0, 200.0, 200.0], [700.0] * 4]), y)
    torch.testing.assert_close(same, ref, atol=1e-6, rtol=0)
    assert (per[0] - ref[0]).abs().max() > 1e-4                   # frame 0's level changed: video 0 changes
    torch.testing.assert_close(per[1], ref[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"per frame \[N, 4\]"):
        model(x, torch.zeros(2, 3), y)


@pytest.mark.parametrize("process", [FlowMatching(timestep_scale=1000), GaussianDiffusion.from_config(learn_sigma=False)])
def test_processes_take_per_frame_timesteps(process):
    """Each frame of x_t is noised at its own level: a per-frame t equals per-video t frame by frame."""
    data, noise = torch.randn(2, 1, 3, 4, 4), torch.randn(2, 1, 3, 4, 4)
    if isinstance(process, FlowMatching):
        t = torch.tensor([[0.1, 0.5, 0.9], [1.0, 0.0, 0.3]])
        xt = process.interpolate(data, noise, t)
        per = lambda f: process.interpolate(data[:, :, f], noise[:, :, f], t[:, f])
    else:
        t = torch.tensor([[0, 500, 999], [10, 300, 700]])
        xt = process.q_sample(data, t, noise)
        per = lambda f: process.q_sample(data[:, :, f], t[:, f], noise[:, :, f])
    for f in range(3):
        torch.testing.assert_close(xt[:, :, f], per(f), atol=1e-6, rtol=0)


def test_frame_helpers():
    mask = torch.ones(2, 1, 4, 2, 2)
    mask[0, :, :2] = 0
    mask[1, :, 0, 0, 0] = 0                                       # partly given frame: still generated
    given = given_frames_of(mask)
    assert given.tolist() == [[True, True, False, False], [False, False, False, False]]
    t = frame_timesteps(torch.tensor([0.25, 0.5]), given, 1.0)
    assert t.tolist() == [[1.0, 1.0, 0.25, 0.25], [0.5] * 4]
    data, noise = torch.ones(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
    noisy, t_net = noise_to_level(FlowMatching(timestep_scale=1000), data, noise, 0.25)
    assert t_net == 750.0 and torch.allclose(noisy, torch.full_like(data, 0.75))
    noisy, t_net = noise_to_level(GaussianDiffusion.from_config(learn_sigma=False), data, noise, 0.5)
    assert t_net == 500.0 and 0 < noisy.mean() < 1


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_training_draws_per_frame_levels_given_frames_clean(tmp_path, monkeypatch, objective):
    """With model.frame_timesteps the network sees [N, F] timesteps: given frames at the clean level, and with
    independent_frame_noise=1 distinct levels across the generated frames; without it, one level per video."""
    seen = []
    forward = VideoDiT.forward

    def spy(self, x, t, *args, mask=None, **kwargs):
        seen.append((t.detach().clone(), mask.detach().clone()))
        return forward(self, x, t, *args, mask=mask, **kwargs)
    monkeypatch.setattr(VideoDiT, "forward", spy)
    clean = 1000.0 if objective == "flow" else 0.0
    predict_only = ["masks.predict=1"] + [f"masks.{k}=0" for k in ("uncond", "backward", "interpolate", "animate",
                                                                    "random", "complete")]
    for noise, frame_t in ((1.0, "true"), (0.0, "false")):
        seen.clear()
        cfg = load_config(VideoTrainConfig, None, TINY_TRAIN + predict_only + [
            f"train.results_dir={tmp_path / frame_t}", "train.steps=3", f"diffusion.objective={objective}",
            "diffusion.timestep_scale=1000", f"model.frame_timesteps={frame_t}", f"independent_frame_noise={noise}"])
        video_training.train_video(cfg, progress=False)
        assert len(seen) == 3
        for t, mask in seen:
            if frame_t == "false":
                assert t.dim() == 1
                continue
            given = given_frames_of(mask)
            assert given.any(1).all() and torch.all(t[given] == clean)
            generated = [t[n][~given[n]] for n in range(len(t))]
            assert all(len(set(g.tolist())) == len(g) for g in generated)     # independent levels


def test_frame_noise_config_errors():
    with pytest.raises(ValueError, match="model.frame_timesteps=true"):
        load_config(VideoTrainConfig, None, TINY_TRAIN + ["independent_frame_noise=0.5"]).validate()
    with pytest.raises(ValueError, match=r"independent_frame_noise=1.5"):
        load_config(VideoTrainConfig, None, TINY_TRAIN + ["model.frame_timesteps=true",
                                                          "independent_frame_noise=1.5"]).validate()


def test_history_guided_model_arithmetic():
    given, free, noised = (lambda v: (lambda x, t: torch.full_like(x, v)))(3.0), \
        (lambda x, t: torch.full_like(x, 1.0)), (lambda x, t: torch.full_like(x, 2.0))
    calls = []
    x, t = torch.zeros(2), torch.zeros(2)

    class Given:
        def __call__(self, x, t):
            return given(x, t)

        def set_timestep(self, t):
            pass
    vanilla = HistoryGuidedModel(Given(), free, 2.5, branch_callback=calls.append)
    assert vanilla(x, t).eq(1 + 2.5 * (3 - 1)).all() and calls == ["free"]
    fractional = HistoryGuidedModel(Given(), free, 2.5, noised, branch_callback=calls.append)
    assert fractional(x, t).eq(3 + 1.5 * (2 - 1)).all() and calls == ["free", "free", "noised"]


def test_sampling_passes_per_frame_timesteps_and_fractional_guidance(tmp_path, monkeypatch):
    """A frame-timestep model samples with its given frames at the clean level; one Euler step of fractional
    history guidance is v_given + (w - 1)(v_noised - v_free), v_noised the network with the given frames noised
    to the history level (from the history noise seeds) and entered as frames to generate at that level."""
    pipe = VideoPipeline.from_pretrained(save_frame_model(tmp_path / "m.safetensors"))
    assert pipe.frame_timesteps
    truth = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    mask = torch.ones(2, 1, 4, 16, 16)
    mask[:, :, :2] = 0
    seen = []
    forward = VideoDiT.forward

    def spy(self, x, t, *args, **kwargs):
        seen.append(t.clone())
        return forward(self, x, t, *args, **kwargs)
    monkeypatch.setattr(VideoDiT, "forward", spy)
    pipe(truth, mask, num_sampling_steps=1, sampler="euler")
    assert seen[-1].tolist() == [[1000.0, 1000.0, 0.0, 0.0]] * 2
    monkeypatch.setattr(VideoDiT, "forward", forward)

    x0 = torch.stack([torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    eps_h = torch.stack([torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(i + HISTORY_NOISE_SEED))
                         for i in range(2)])
    null, level = torch.full((2,), 10), 0.4
    history = torch.zeros(1, 1, 4, 1, 1, dtype=torch.bool)
    history[:, :, :2] = True
    with torch.no_grad():
        v_given = pipe.model(x0, torch.tensor([[1000.0, 1000.0, 0.0, 0.0]] * 2), null, context=truth, mask=mask)
        v_free = pipe.model(x0, torch.zeros(2, 4), null, context=truth, mask=torch.ones_like(mask))
        noisy = torch.where(history, 0.6 * truth + 0.4 * eps_h, x0)
        v_noised = pipe.model(noisy, torch.tensor([[600.0, 600.0, 0.0, 0.0]] * 2), null, context=truth,
                              mask=torch.ones_like(mask))
    assert (v_noised - v_free).abs().max() > 1e-3
    for w in (1.0, 3.0):
        out = pipe(truth, mask, num_sampling_steps=1, sampler="euler", history_scale=w, history_guidance="fractional",
                   history_noise=level)
        ref = torch.where(mask.bool(), (x0 + v_given + (w - 1) * (v_noised - v_free)).clamp(-1, 1), truth)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="history_noise"):
        pipe(truth, mask, num_sampling_steps=1, history_scale=2.0, history_guidance="fractional", history_noise=1.0)
    with pytest.raises(ValueError, match="history_guidance"):
        pipe(truth, mask, num_sampling_steps=1, history_guidance="temporal")


def test_rollout_evaluation(tmp_path):
    """``--task rollout``: 4 given frames of a 10-frame held-out clip, 2-frame windows of history; per-frame PSNR
    against copy-last and the true digit's identity over the last frames."""
    pipe = VideoPipeline.from_pretrained(save_frame_model(tmp_path / "m.safetensors"))
    result, tensors = evaluate_video(pipe, "rollout", num_videos=2, num_sampling_steps=1, num_frames=10)
    assert result["frames"] == list(range(2, 10)) and result["given_frames"] == [0, 1]
    assert len(result["psnr_per_frame"]) == 8 and len(result["identity_accuracy_per_frame"]) == 8
    assert result["identity_frames"] == list(range(2, 10))                    # all 8 generated frames are the last 8
    assert 0 <= result["identity_accuracy"] <= 1 and tensors["model"].shape == (2, 1, 10, 16, 16)
    assert torch.equal(tensors["model"][:, :, :2], tensors["truth"][:, :, :2])
    assert torch.equal(tensors["baseline"][:, :, 9], tensors["truth"][:, :, 1])          # copy the last given frame
    predict, _ = evaluate_video(pipe, "predict", num_videos=2, num_sampling_steps=1)
    assert "identity_accuracy" in predict and predict["identity_frames"] == [2, 3]
    with pytest.raises(ValueError, match="beyond the model's 4-frame window"):
        evaluate_video(pipe, "rollout", num_videos=1, num_frames=4)
    with pytest.raises(ValueError, match="--num-frames sets the length of a rollout"):
        evaluate_video(pipe, "predict", num_videos=1, num_frames=12)


def test_fine_tune_from_a_video_model(tmp_path):
    """model.init_from a VideoDiT file starts from its weights exactly (here adding per-frame timesteps, which adds
    no parameters); another architecture is refused with what differs."""
    section = VideoModelSection(name="VideoDiT-T/8", input_size=16, num_frames=4)
    torch.manual_seed(3)
    start = video_training.build_video_model(section)
    cfg = load_config(VideoTrainConfig, None, TINY_TRAIN)
    path = ckpt.save_weights(tmp_path / "m.safetensors", start.state_dict(),
                             {"format": VideoDiT.format_name, "dit_config": start.config.to_dict(),
                              "train_config": to_dict(cfg)})
    tuned = dataclasses.replace(section, init_from=str(path), frame_timesteps=True, class_dropout_prob=0.5)
    model = video_training.build_video_model(tuned)
    assert model.config.frame_timesteps and model.config.class_dropout_prob == 0.5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))
    with pytest.raises(ValueError, match="it has layout=vdt"):
        video_training.build_video_model(dataclasses.replace(tuned, layout="full3d"))


def test_stabilised_history_is_seen_noised(tmp_path):
    """history_level: one Euler step is x + v with v the network shown the given frames noised to that level (from
    the history noise seeds, at that level's timestep); the output keeps them clean; extend(stabilize=) passes it."""
    pipe = VideoPipeline.from_pretrained(save_frame_model(tmp_path / "m.safetensors"))
    truth = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    mask = torch.ones(2, 1, 4, 16, 16)
    mask[:, :, :2] = 0
    x0 = torch.stack([torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    eps_h = torch.stack([torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(i + HISTORY_NOISE_SEED))
                         for i in range(2)])
    history = torch.zeros(1, 1, 4, 1, 1, dtype=torch.bool)
    history[:, :, :2] = True
    with torch.no_grad():
        v = pipe.model(torch.where(history, 0.9 * truth + 0.1 * eps_h, x0), torch.tensor([[900.0, 900.0, 0, 0]] * 2),
                       torch.full((2,), 10), context=truth, mask=torch.ones_like(mask))
    out = pipe(truth, mask, num_sampling_steps=1, sampler="euler", history_level=0.1)
    torch.testing.assert_close(out, torch.where(mask.bool(), (x0 + v).clamp(-1, 1), truth), atol=1e-5, rtol=0)
    assert not torch.equal(out, pipe(truth, mask, num_sampling_steps=1, sampler="euler"))
    rolled = pipe.extend(truth, 6, stabilize=0.1, num_sampling_steps=1)
    assert rolled.shape[2] == 6 and torch.equal(rolled[:, :, :4], truth)
    plain = VideoPipeline(tiny_model(frame_timesteps=False), pipe.process, None, pipe.metadata)
    with pytest.raises(ValueError, match="history_level"):
        plain(truth, mask, num_sampling_steps=1, history_level=0.1)

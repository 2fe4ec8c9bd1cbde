"""Unified mask modelling: masks per task, loss on generated positions only, given frames kept bitwise by sampling,
baselines, the video trainer."""
import pytest
import torch

from ditkit.core import checkpoint as ckpt
from ditkit.core.config import load_config, to_dict
from ditkit.core.configs import VideoTrainConfig
from ditkit.diffusion.flow import FlowMatching
from ditkit.diffusion.gaussian import GaussianDiffusion
from ditkit.diffusion.masks import TRAINING_MASKS, check_mask, given_frames, task_mask, training_masks
from ditkit.evaluation.video import baseline_fill
from ditkit.models.video_dit import VideoDiT, video_dit_config
from ditkit.pipelines.video import VideoPipeline, load_video_dit, video_condition
from ditkit.training.video import train_video

TINY_TRAIN = ["model.name=VideoDiT-T/8", "model.input_size=16", "model.num_frames=4", "data.image_size=16",
              "data.num_frames=4", "data.digit_size=12", "train.global_batch_size=2", "train.warmup_steps=1",
              "train.log_every=1", "train.ckpt_every=2", "train.num_threads=1"]


def save_tiny_model(path, objective="ddpm"):
    """A randomly initialised (perturbed) VideoDiT saved like a trained one: 16x16 frames, 4 frames."""
    cfg = load_config(VideoTrainConfig, None, TINY_TRAIN + [f"diffusion.objective={objective}"])
    model = VideoDiT(video_dit_config("VideoDiT-T/8", depth=1, hidden_size=32, num_heads=2, input_size=16,
                                      num_frames=4, in_channels=1, num_classes=10, learn_sigma=False))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    meta = {"format": VideoDiT.format_name, "dit_config": model.config.to_dict(), "train_config": to_dict(cfg)}
    return ckpt.save_weights(path, model.state_dict(), meta)


def test_task_masks():
    F, H, W = 8, 4, 4
    frames = lambda task, **kw: [f for f in range(F) if not task_mask(task, F, H, W, **kw)[f].any()]
    assert frames("predict") == [0, 1, 2, 3] and frames("predict", k=2) == [0, 1]
    assert frames("backward", k=3) == [5, 6, 7]
    assert frames("interpolate") == [0, 4, 7] and frames("interpolate", stride=2) == [0, 2, 4, 6, 7]
    assert frames("animate") == frames("story") == [0]
    assert frames("uncond") == [] and task_mask("uncond", F, H, W).all()
    box = task_mask("complete", F, 8, 8)
    assert box.sum() == F * 16 and box[:, 2:6, 2:6].all()                 # centred half-side box in every frame
    g = torch.Generator().manual_seed(0)
    moved = task_mask("complete", F, 8, 8, generator=g)
    assert (moved.sum(dim=(1, 2)) == 16).all() and not torch.equal(moved, box)
    with pytest.raises(ValueError, match="given frames"):
        given_frames("predict", F, k=8)
    with pytest.raises(ValueError, match="unknown task"):
        given_frames("outpaint", F)
    with pytest.raises(ValueError, match="nothing to generate"):
        check_mask(torch.zeros(F, H, W))


def test_training_mixture_draws_every_type():
    masks = training_masks(400, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (400, 1, 8, 8, 8) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert all(m.any() for m in masks)                                      # always something to generate
    per_frame = masks.mean(dim=(1, 3, 4))
    partial = ((per_frame > 0) & (per_frame < 1)).any(dim=1)
    assert partial.any() and (per_frame == 1).all(dim=1).any()             # spatial masks and unconditional ones
    only = training_masks(10, 8, 8, 8, {"predict": 1.0}, torch.Generator().manual_seed(1))
    assert (only[:, 0, 0] == 0).all() and (only[:, 0, -1] == 1).all()
    with pytest.raises(ValueError, match="mask weights"):
        training_masks(2, 8, 8, 8, {"zoom": 1.0})
    assert "random" in TRAINING_MASKS


@pytest.mark.parametrize("process", [FlowMatching(), GaussianDiffusion.from_config(learn_sigma=False)])
def test_loss_covers_generated_positions_only(process):
    x0 = torch.randn(2, 1, 4, 8, 8)
    mask = torch.ones_like(x0)
    mask[:, :, :2] = 0
    noise, t = torch.randn_like(x0), (torch.tensor([0.3, 0.7]) if isinstance(process, FlowMatching)
                                      else torch.tensor([100, 800]))
    base = torch.randn_like(x0)
    loss = lambda out: process.training_losses(lambda *a, **k: out, x0, t, noise, loss_mask=mask)["loss"]
    changed_given = torch.where(mask.bool(), base, base + 5)
    changed_generated = torch.where(mask.bool(), base + 5, base)
    torch.testing.assert_close(loss(base), loss(changed_given))
    assert (loss(changed_generated) > loss(base)).all()


@pytest.mark.parametrize("task", ["predict", "backward", "interpolate", "animate", "complete"])
def test_sampling_keeps_given_positions_bitwise(tmp_path, task):
    pipe = VideoPipeline.from_pretrained(save_tiny_model(tmp_path / "m.safetensors"))
    truth = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    context, mask = video_condition(task, truth[0], 4, pipe.frame_shape, stride=2)
    out = pipe(truth, mask, num_sampling_steps=3, seed=0)
    given = ~mask.bool().expand(2, 1, 4, 16, 16)
    assert torch.equal(out[given], truth[given])
    assert not torch.equal(out[~given], truth[~given])
    again = pipe(truth[1:], mask, num_sampling_steps=3, seed=1)          # per-sample seeds: batch independent
    torch.testing.assert_close(again[0], out[1], atol=1e-4, rtol=0)


def test_flow_model_samples_and_story_labels(tmp_path):
    pipe = VideoPipeline.from_pretrained(save_tiny_model(tmp_path / "m.safetensors", "flow"))
    assert pipe.default_sampler == "euler"
    ctx, mask = video_condition("story", torch.rand(1, 1, 16, 16), 4, pipe.frame_shape)
    out = pipe(ctx[None], mask, labels=[[3, 3, 7, 7]], num_sampling_steps=2, cfg_scale=2.0)
    assert out.shape == (1, 1, 4, 16, 16) and torch.equal(out[0, :, 0], ctx[:, 0])
    with pytest.raises(ValueError, match="labels"):
        pipe(ctx[None], mask, labels=[[3, 3, 7]], num_sampling_steps=1)
    with pytest.raises(ValueError, match="out of range"):
        pipe(ctx[None], mask, labels=[12], num_sampling_steps=1)


def test_history_guidance_is_free_plus_scaled_difference(tmp_path):
    """One Euler step with vanilla history guidance equals x + dt * (v_free + s * (v_given - v_free)), v_free the network
    with nothing given and the null label; s = 1 is plain sampling; nothing given is an error."""
    pipe = VideoPipeline.from_pretrained(save_tiny_model(tmp_path / "m.safetensors", "flow"))
    truth = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    _, mask = video_condition("predict", truth[0], 4, pipe.frame_shape, given=2)
    mask = mask[None].expand(2, 1, 4, 16, 16)
    x0 = torch.stack([torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    t = torch.zeros(2)
    null = torch.full((2,), 10)
    with torch.no_grad():
        v_given = pipe.model(x0, t, null, context=truth, mask=mask)
        v_free = pipe.model(x0, t, null, context=truth, mask=torch.ones_like(mask))
    assert (v_given - v_free).abs().max() > 1e-3                                   # the given frames matter
    for s in (1.0, 3.0):
        out = pipe(truth, mask, num_sampling_steps=1, sampler="euler", history_scale=s)
        ref = torch.where(mask.bool(), (x0 + v_free + s * (v_given - v_free)).clamp(-1, 1), truth)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="history_scale"):
        pipe(truth, torch.ones(1, 1, 4, 16, 16), num_sampling_steps=1, history_scale=2.0)
    with pytest.raises(ValueError, match="per-frame noise levels"):          # this model takes one timestep per video
        pipe(truth, mask, num_sampling_steps=1, history_scale=2.0, history_guidance="fractional")


def test_video_condition_errors():
    shape = (1, 16, 16)
    with pytest.raises(ValueError, match="resize"):
        video_condition("predict", torch.zeros(1, 2, 8, 8), 4, shape)
    with pytest.raises(ValueError, match="frames"):
        video_condition("interpolate", torch.zeros(1, 3, 16, 16), 5, shape)   # gives [0, 4]: needs 2 or 5
    with pytest.raises(ValueError, match="needs context"):
        video_condition("predict", None, 4, shape)
    with pytest.raises(ValueError, match="nothing to generate"):
        video_condition("complete", torch.zeros(1, 4, 16, 16), 4, shape, mask=torch.zeros(16, 16))
    with pytest.raises(ValueError, match="given frames"):
        video_condition("predict", torch.zeros(1, 4, 16, 16), 4, shape, given=4)
    ctx, mask = video_condition("interpolate", torch.ones(1, 3, 16, 16), 7, shape, stride=3)   # keyframes only
    assert [f for f in range(7) if not mask[f].any()] == [0, 3, 6] and ctx[:, [0, 3, 6]].eq(1).all()


def test_baselines():
    video = torch.stack([torch.full((1, 4, 4), float(f)) for f in range(5)], dim=1)[None]       # frame f == f
    mask = task_mask("interpolate", 5, 4, 4, stride=4)[None, None]                                 # given 0, 4
    torch.testing.assert_close(baseline_fill(video, mask), video)                                # exact blend
    pred = baseline_fill(video, task_mask("predict", 5, 4, 4, k=2)[None, None])
    assert pred[0, 0, 2:].eq(1).all()                                                            # copy last
    box = torch.zeros(1, 1, 5, 4, 4)
    box[..., :2, :2] = 1
    v = torch.randn(1, 1, 5, 4, 4)
    filled = baseline_fill(v, box)
    torch.testing.assert_close(filled[0, 0, 3, 0, 0], v[0, 0, 3][~box[0, 0, 3].bool()].mean())


def test_video_training_runs_and_exports(tmp_path):
    cfg = load_config(VideoTrainConfig, None, TINY_TRAIN + [f"train.results_dir={tmp_path}", "train.steps=2"])
    out = train_video(cfg, progress=False)
    model, meta = load_video_dit(out)
    assert meta["format"] == "ditkit-video-dit" and meta["step"] == 2
    assert model.config.num_frames == 4 and (tmp_path / "checkpoints/0000002/state.pt").is_file()
    bad = load_config(VideoTrainConfig, None, TINY_TRAIN + [f"train.results_dir={tmp_path}", "model.learn_sigma=true"])
    with pytest.raises(ValueError, match="learn_sigma"):
        train_video(bad, progress=False)


def test_extend_rolls_out_window_by_window(tmp_path):
    """Each window is given the last ``history`` frames of the video so far and keeps ``stride`` new ones: the
    windows are the calls a rollout makes, with their given frames bitwise the video's."""
    pipe = VideoPipeline.from_pretrained(save_tiny_model(tmp_path / "m.safetensors"))     # window of 4 frames
    start = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    out = pipe.extend(start, 9, labels=torch.arange(18).view(2, 9) % 10, num_sampling_steps=2)
    assert out.shape == (2, 1, 9, 16, 16) and torch.equal(out[:, :, :4], start)
    assert not torch.equal(out[:, :, 4], out[:, :, 3])
    calls = []
    call = VideoPipeline.__call__

    def spy(self, ctx, mask, *args, **kwargs):
        calls.append((ctx.clone(), mask.clone()))
        return call(self, ctx, mask, *args, **kwargs)
    VideoPipeline.__call__ = spy
    try:
        rolled = pipe.extend(start, 8, history=3, stride=1, num_sampling_steps=1)
    finally:
        VideoPipeline.__call__ = call
    assert rolled.shape[2] == 8 and len(calls) == 4                      # 4 windows of one new frame each
    for w, (ctx, mask) in enumerate(calls):
        assert torch.equal(ctx[:, :, :3], rolled[:, :, 1 + w:4 + w])      # the last 3 frames so far
        assert not mask[0, 0, :3].any() and mask[0, 0, 3:].all()
    for history, stride, match in ((4, None, "history must be"), (0, None, "history must be"),
                                   (2, 3, "stride must be")):
        with pytest.raises(ValueError, match=match):
            pipe.extend(start, 9, history=history, stride=stride)

"""The block-stack contract: every caching method on every model that implements it (image DiT, the three VideoDiT
layouts, a captioned VideoDiT with per-frame captions, a plain pre-norm model without adaLN), through the video
pipeline with CFG and history guidance; the hook points (conflicts refused in one place, detach restores exactly)."""
import pytest
import torch
import torch.nn as nn

from ditkit.acceleration.cache.calibration import save_calibration
from ditkit.acceleration.counting import BlockCounter
from ditkit.acceleration.recipes import Recipe
from ditkit.bench.tasks import calibrate_on_task
from ditkit.core.configs import TextEncoderSection
from ditkit.diffusion.flow import FlowMatching
from ditkit.models.attention import Attention, TokenLayout
from ditkit.models.dit import Mlp, TimestepEmbedder
from ditkit.models.stack import Branch, run_blocks
from ditkit.models.video_dit import LAYOUTS, VideoDiT, video_dit_config
from ditkit.pipelines.video import VideoPipeline
from ditkit.training.video import caption_config

STEPS = 6
NEVER_SKIP = ["fora:interval=1", "firstblockcache:threshold=0", "teacache:threshold=0", "taylorseer:interval=1",
              "toca:interval=1", "delta_dit:interval=1"]
SKIPPING = ["fora", "firstblockcache:threshold=10", "teacache:threshold=10", "taylorseer:interval=3,order=2,warmup=1",
            "toca:ratio=0.3", "delta_dit"]


CAPTIONED = "full3d+captions"          # the full-3D layout with per-frame captions (cross-attention in every block)


def tiny_video(layout: str, seed: int = 0) -> VideoDiT:
    torch.manual_seed(seed)
    captions = {}
    if layout == CAPTIONED:
        layout, captions = "full3d", caption_config(TextEncoderSection(dim=16, depth=1, num_heads=2, max_length=12))
    model = VideoDiT(video_dit_config("VideoDiT-T/8", input_size=16, in_channels=1, num_classes=4, depth=2,
                                      layout=layout, num_frames=4, learn_sigma=False, **captions)).eval()
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.05)
            nn.init.normal_(module.bias, std=0.02)
    return model


@pytest.fixture(scope="module", params=LAYOUTS + (CAPTIONED,))
def video_pipe(request):
    return VideoPipeline(tiny_video(request.param), FlowMatching(1000.0))


def predict(pipe, spec, n=2, seed=0, cfg_scale=2.0, history_scale=2.0):
    """Videos (first 2 frames given, label-guided and history-guided) and the exact block count."""
    torch.manual_seed(1234)
    context = torch.rand(n, 1, 4, 16, 16) * 2 - 1
    mask = torch.ones(1, 1, 4, 16, 16)
    mask[:, :, :2] = 0
    captions = {"frame_prompts": [["a 3 moving left"] * 2 + ["a 5 moving up"] * 2] * n} if pipe.captioned else {}
    pipe.set_recipe(None if spec == "none" else spec)
    try:
        with BlockCounter(pipe.model) as counter:
            out = pipe(context, mask, labels=list(range(n)), num_sampling_steps=STEPS, cfg_scale=cfg_scale,
                       history_scale=history_scale, seed=seed, **captions)
    finally:
        pipe.set_recipe(None)
    return out, counter.blocks


@pytest.mark.parametrize("spec", NEVER_SKIP)
def test_video_never_skipping_is_bitwise_full_compute(video_pipe, spec):
    ref, blocks = predict(video_pipe, "none")
    out, n = predict(video_pipe, spec)
    depth = len(video_pipe.model.stack_blocks)
    assert torch.equal(out, ref) and n == blocks == STEPS * (2 * 2 + 2) * depth      # cond+uncond, then free


@pytest.mark.parametrize("spec", SKIPPING)
def test_video_caching_skips(video_pipe, spec):
    batch, n_batch = predict(video_pipe, spec)
    full = STEPS * 6 * len(video_pipe.model.stack_blocks)
    assert n_batch < full and torch.isfinite(batch).all()


def test_video_batch_equals_one_by_one(video_pipe):
    """Two clips in one batch vs each alone (same seeds): same decisions (block counts add up), same videos."""
    torch.manual_seed(1234)
    context = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    mask = torch.ones(1, 1, 4, 16, 16)
    mask[:, :, :2] = 0
    for spec in ("teacache:threshold=0.2", "firstblockcache:threshold=0.1", "toca:ratio=0.3"):
        video_pipe.set_recipe(spec)
        kw = dict(num_sampling_steps=STEPS, cfg_scale=2.0, history_scale=2.0)
        with BlockCounter(video_pipe.model) as both:
            batch = video_pipe(context, mask, labels=[0, 1], seed=0, **kw)
        ones, count = [], 0.0
        for i in range(2):
            with BlockCounter(video_pipe.model) as one:
                ones.append(video_pipe(context[i:i + 1], mask, labels=[i], seed=i, **kw))
            count += one.blocks
        video_pipe.set_recipe(None)
        assert both.blocks == pytest.approx(count), spec
        torch.testing.assert_close(batch, torch.cat(ones), atol=1e-3, rtol=0)


def test_video_detach_restores_the_model_exactly(video_pipe):
    model = video_pipe.model
    before = dict(vars(model))
    ref, _ = predict(video_pipe, "none")
    for spec in ("toca+w8a8", "fora+topk:min_tokens=0", "teacache+sta:min_tokens=0,heads=0"):
        predict(video_pipe, spec)
        assert vars(model) == before
        assert all(a.backend is None and a.observer is None for a in model.modules() if isinstance(a, Attention))
        assert all(type(m) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)     # (text encoder)
                   for m in model.modules() if "Linear" in type(m).__name__)
    assert torch.equal(predict(video_pipe, "none")[0], ref)


def test_video_calibration_feeds_teacache_and_magcache(video_pipe, tmp_path):
    """``ditkit calibrate``'s fit on the video model's own predict task (held-out clips), used by the recipes."""
    kw = dict(num_sampling_steps=STEPS, cfg_scale=1.0)
    mag = save_calibration(calibrate_on_task(video_pipe, "magcache", 2, **kw), tmp_path / "mag.json")
    tea = save_calibration(calibrate_on_task(video_pipe, "teacache", 2, **kw), tmp_path / "tea.json")
    guidance = dict(cfg_scale=1.0, history_scale=1.0)
    ref, full = predict(video_pipe, "none", **guidance)
    out, n = predict(video_pipe, f"magcache:threshold=0,ratios={mag}", **guidance)
    assert torch.equal(out, ref) and n == full
    out, n = predict(video_pipe, f"magcache:threshold=10,max_skips=2,ratios={mag}", **guidance)
    assert n < full
    out, n = predict(video_pipe, f"teacache:threshold=10,coefficients={tea}", **guidance)
    assert n < full and torch.isfinite(out).all()


def test_hook_point_conflicts_are_refused_in_one_place(video_pipe):
    with pytest.raises(ValueError, match="teacache cannot be combined with fora: both need the hook point 'stack'"):
        video_pipe.set_recipe("fora+teacache")
    with pytest.raises(ValueError, match="sta cannot be combined with topk: both need the hook point "
                                         r"'attention\.0\.heads\.0'"):
        video_pipe.set_recipe("topk:min_tokens=0+sta:min_tokens=0")
    assert "_ditkit_hooks" not in vars(video_pipe.model)           # a refused recipe leaves nothing behind
    video_pipe.set_recipe("topk:min_tokens=0,heads=0+sta:min_tokens=0,heads=1")      # disjoint heads compose
    video_pipe.set_recipe(None)
    assert "_ditkit_hooks" not in vars(video_pipe.model)


class PlainBlock(nn.Module):
    """A pre-norm block without adaLN (x + attn(norm(x)), x + mlp(norm(x))): branches with gate None."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def branches(self, c, layout):
        return [Branch("attn", self.norm1, lambda h: self.attn(h, layout), None, self.attn),
                Branch("mlp", self.norm2, self.mlp)]


class PlainModel(nn.Module):
    """A minimal model implementing the contract: tokens of 2x2 patches plus a timestep embedding."""

    def __init__(self, dim=32, depth=3, side=8):
        super().__init__()
        self.side = side
        self.patch = nn.Linear(4, dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList(PlainBlock(dim, 2) for _ in range(depth))
        self.out = nn.Linear(dim, 4)

    stack_blocks = property(lambda self: self.blocks)

    def token_layout(self, num_tokens):
        return TokenLayout(1, self.side // 2, self.side // 2)

    def embed(self, x, t, y=None):
        patches = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(x.shape[0], -1, 4)
        c = self.t_embedder(t)
        return self.patch(patches) + c.unsqueeze(1), c

    def run_stack(self, tokens, c):
        return run_blocks(self.blocks, tokens, c, self.token_layout(tokens.shape[1]))

    def head(self, tokens, c):
        n, s = tokens.shape[0], self.side // 2
        return self.out(tokens).view(n, s, s, 2, 2).permute(0, 1, 3, 2, 4).reshape(n, 1, self.side, self.side)

    def forward(self, x, t, y=None):
        return self.head(self.run_stack(*self.embed(x, t)), None)


@pytest.mark.parametrize("spec", NEVER_SKIP + SKIPPING)
def test_a_plain_prenorm_model_takes_every_caching_method(spec):
    torch.manual_seed(0)
    model = PlainModel().eval()
    x0 = torch.randn(2, 1, 8, 8)

    def run(recipe):
        x = x0.clone()
        recipe.reset(STEPS)
        with torch.no_grad(), BlockCounter(model) as counter:
            for i in range(STEPS):
                t = 1000 - 150 * i
                recipe.begin_step(i, STEPS)
                recipe.set_timestep(t)
                recipe.begin_branch("cond")
                x = x - 0.1 * model(x, torch.full((2,), t))
        return x, counter.blocks

    ref, full = run(Recipe())
    with Recipe(spec).applied(model) as recipe:
        out, n = run(recipe)
    if spec in NEVER_SKIP:
        assert torch.equal(out, ref) and n == full == STEPS * 2 * 3
    else:
        assert n < full and torch.isfinite(out).all()


@pytest.mark.parametrize("spec", ["fora:interval=1", "toca:interval=1", "fora", "toca:ratio=0.3", "teacache:threshold=10"])
def test_the_linear_attention_student_takes_caching_methods(spec):
    """LiT (a DiT whose attention is ReLU linear attention with a depth-wise conv) implements the same contract."""
    from acceleration_util import tiny_dit

    from ditkit.diffusion.gaussian import GaussianDiffusion
    from ditkit.pipelines.image import DiTPipeline
    from ditkit.training.distill_linear import build_student
    pipe = DiTPipeline(build_student(tiny_dit()).eval(), GaussianDiffusion.from_config("linear", 1000, True))

    def gen(recipe):
        pipe.set_recipe(recipe)
        with BlockCounter(pipe.model) as counter:
            out = pipe([1, 2], num_sampling_steps=STEPS, cfg_scale=2.0)
        pipe.set_recipe(None)
        return out, counter.blocks

    (ref, full), (out, n) = gen(None), gen(spec)
    if "interval=1" in spec:
        assert torch.equal(out, ref) and n == full
    else:
        assert n < full and torch.isfinite(out).all()

"""VideoDiT: shapes per layout, zero output at init, inflation from an image DiT, mask injection, 3D RoPE."""
import pytest
import torch

from ditkit.models.attention import Attention
from ditkit.models.dit import DiT, dit_config
from ditkit.models.rope import Rotary, cogvideox_split
from ditkit.models.video_dit import LAYOUTS, VideoDiT, inflate_from_dit, video_dit_config

SMALL = dict(depth=2, hidden_size=32, num_heads=2, input_size=16, in_channels=1, num_classes=3)


def video_model(layout="vdt", **kw):
    return VideoDiT(video_dit_config("VideoDiT-T/8", **{**SMALL, "layout": layout, **kw}))


def perturb(model):
    """Random values in the zero-initialised parameters, so that outputs are not trivially 0."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tubelet", [1, 2])
def test_shapes_and_zero_output_at_init(layout, tubelet):
    model = video_model(layout, tubelet=tubelet, learn_sigma=True)
    x = torch.randn(2, 1, 4, 16, 16)
    for y in (None, torch.tensor([0, 2]), torch.tensor([[0, 1, 2, 0], [1, 1, 1, 1]])):
        out = model(x, torch.tensor([3, 900]), y)
        assert out.shape == (2, 2, 4, 16, 16)
        assert torch.equal(out, torch.zeros_like(out))          # adaLN-Zero + zeroed temporal outputs
    assert perturb(model)(x, torch.tensor([3, 900])).abs().mean() > 0


@pytest.mark.parametrize("layout", ["vdt", "latte"])
def test_inflated_model_reproduces_image_dit_frame_by_frame(layout):
    image = perturb(DiT(dit_config("DiT-T/8", **SMALL)))             # learned sigma: 2 output channels
    video = inflate_from_dit(video_model(layout, learn_sigma=False), image).eval()
    x, t, y = torch.randn(2, 1, 5, 16, 16), torch.tensor([10, 700]), torch.tensor([1, 2])
    out = video(x, t, y)
    ref = torch.stack([image(x[:, :, f], t, y)[:, :1] for f in range(5)], dim=2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_inflation_rejects_mismatched_sizes():
    image = DiT(dit_config("DiT-T/8", **{**SMALL, "hidden_size": 64}))
    with pytest.raises(ValueError, match="hidden_size"):
        inflate_from_dit(video_model(), image)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_given_positions_are_injected_clean(layout):
    """x_in = m * x_t + (1 - m) * x_0: the noisy input at given positions is irrelevant, the context there is not."""
    model = perturb(video_model(layout))
    x, ctx = torch.randn(2, 1, 4, 16, 16), torch.randn(2, 1, 4, 16, 16)
    mask = torch.ones(1, 1, 4, 16, 16)
    mask[:, :, :2] = 0
    t = torch.tensor([500, 500])
    other = torch.where(mask.bool(), x, torch.randn_like(x))
    torch.testing.assert_close(model(x, t, context=ctx, mask=mask), model(other, t, context=ctx, mask=mask))
    assert not torch.allclose(model(x, t, context=ctx, mask=mask), model(x, t, context=ctx + 1, mask=mask))


def test_bad_inputs():
    model = video_model()
    with pytest.raises(ValueError, match=r"expected video \[N, 1, F, 16, 16\]"):
        model(torch.randn(1, 1, 4, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="per frame"):
        model(torch.randn(1, 1, 4, 16, 16), torch.tensor([1]), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="tubelet"):
        video_model(tubelet=2)(torch.randn(1, 1, 3, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="layout"):
        video_model("spatial-only")


def test_all_attention_goes_through_the_entry_point():
    """A backend installed on every Attention module sees every attention call of every layout."""
    for layout in LAYOUTS:
        model = video_model(layout)
        calls = []

        def backend(q, k, v, layout_):
            calls.append(layout_)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        attns = [m for m in model.modules() if isinstance(m, Attention)]
        for a in attns:
            a.backend = backend
        model(torch.randn(1, 1, 4, 16, 16), torch.tensor([1]))
        assert len(calls) == len(attns) == (2 if layout == "full3d" else 4)
        assert {c.frames for c in calls} == ({4} if layout == "full3d" else {1, 4})


def test_rope_split_and_relative_position_invariance():
    assert cogvideox_split(64) == (16, 24, 24)
    assert sum(cogvideox_split(32)) == 32
    g = torch.Generator().manual_seed(0)
    d, grid = 32, (6, 5, 7)
    q0, k0 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    rope = Rotary(d, grid)
    n = grid[0] * grid[1] * grid[2]
    rq, rk = rope(q0.expand(1, 1, n, d)), rope(k0.expand(1, 1, n, d))
    index = lambda f, h, w: (f * grid[1] + h) * grid[2] + w
    dot = lambda a, b: float(rq[0, 0, index(*a)] @ rk[0, 0, index(*b)])
    # q . k depends only on the offset between the two positions, on every axis
    assert dot((1, 2, 3), (0, 1, 1)) == pytest.approx(dot((4, 3, 6), (3, 2, 4)), abs=1e-4)
    assert dot((0, 0, 0), (2, 4, 6)) == pytest.approx(dot((3, 0, 0), (5, 4, 6)), abs=1e-4)
    assert dot((0, 0, 0), (1, 0, 0)) != pytest.approx(dot((0, 0, 0), (0, 1, 0)), abs=1e-3)
    torch.testing.assert_close(rq.norm(dim=-1), q0.norm().expand(1, 1, n))      # rotations keep norms
    torch.testing.assert_close(rq[0, 0, 0], q0)                                  # position 0 is the identity
    with pytest.raises(ValueError, match="even"):
        Rotary(30, grid, (9, 11, 10))

"""The PixArt-alpha text-conditioned DiT: equal to diffusers' PixArtTransformer2DModel both ways, every recipe on its
block stack (never-skipping settings bitwise full compute, skipping ones skip, backends and quantization run), and
cross-attention keys and values computed once per generation and branch."""
import pytest
import torch

from ditkit.acceleration.counting import BlockCounter
from ditkit.acceleration.recipes import Recipe
from ditkit.models.pixart import PixArt, PixArtConfig, from_diffusers, to_diffusers

NEVER_SKIP = ["fora:interval=1", "firstblockcache:threshold=0", "teacache:threshold=0", "taylorseer:interval=1",
              "toca:interval=1", "delta_dit:interval=1"]
SKIPPING = ["fora", "firstblockcache:threshold=10", "teacache:threshold=10", "taylorseer:interval=3,order=2,warmup=1",
            "toca:ratio=0.3", "delta_dit"]
STEPS = 6


def tiny_pixart(learn_sigma: bool = False) -> PixArt:
    torch.manual_seed(0)
    model = PixArt(PixArtConfig(input_size=16, patch_size=4, hidden_size=48, depth=3, num_heads=3,
                                caption_channels=20, learn_sigma=learn_sigma)).eval()
    for p in model.parameters():
        if not p.any():                                           # zero-initialised outputs: give them weights
            torch.nn.init.normal_(p, std=0.05)
    return model


def text_inputs(n: int = 2):
    g = torch.Generator().manual_seed(1)
    text = torch.randn(n, 7, 20, generator=g)
    mask = torch.ones(n, 7, dtype=torch.bool)
    mask[1:, 4:] = False                                          # a shorter caption
    return text, mask


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_converts_to_and_from_diffusers_pixart_with_equal_outputs(learn_sigma):
    pytest.importorskip("diffusers")
    model = tiny_pixart(learn_sigma)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10.0, 700.0])
    text, mask = text_inputs()
    with torch.no_grad():
        ours = model(x, t, text, mask)
        theirs = to_diffusers(model)(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask.long(),
                                     return_dict=False)[0]
        back = from_diffusers(to_diffusers(model))(x, t, text, mask)
    assert ours.shape == (2, 2 if learn_sigma else 1, 16, 16)
    assert (ours - theirs).abs().max() <= 1e-5 and (ours - back).abs().max() <= 1e-5
    padded = text.clone()
    padded[1, 4:] = 100.0                                         # masked-out text tokens change nothing
    with torch.no_grad():
        assert torch.allclose(model(x, t, padded, mask), ours, atol=1e-6)


def sample(model: PixArt, spec: str, text, mask) -> tuple[torch.Tensor, float]:
    """A 6-step Euler flow sampler driven by hand, batched CFG (cond rows first): output and block count."""
    recipe = Recipe(spec)
    recipe.attach(model)
    recipe.reset(STEPS)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    null = torch.zeros_like(text)
    both_text, both_mask = torch.cat([text, null]), torch.cat([mask, mask])
    try:
        with BlockCounter(model) as counter, torch.no_grad():
            for i in range(STEPS):
                recipe.begin_step(i, STEPS)
                t = 1000.0 * i / STEPS
                recipe.set_timestep(t)
                recipe.begin_branch("cond+uncond")
                v = model(torch.cat([x, x]), torch.full((4,), t), both_text, both_mask)
                cond, uncond = v.chunk(2)
                x = x + (uncond + 3.0 * (cond - uncond)) / STEPS
    finally:
        recipe.detach(model)
    return x, counter.blocks


@pytest.fixture(scope="module")
def model():
    return tiny_pixart()


@pytest.mark.parametrize("spec", NEVER_SKIP)
def test_never_skipping_recipes_are_bitwise_full_compute(model, spec):
    text, mask = text_inputs()
    ref, blocks = sample(model, "none", text, mask)
    out, n = sample(model, spec, text, mask)
    assert torch.equal(out, ref) and n == blocks == STEPS * 4 * 3


@pytest.mark.parametrize("spec", SKIPPING)
def test_caching_recipes_skip(model, spec):
    out, n = sample(model, spec, *text_inputs())
    assert n < STEPS * 4 * 3 and torch.isfinite(out).all()


@pytest.mark.parametrize("spec", ["sta:min_tokens=0", "topk:min_tokens=0", "svg:min_tokens=0", "w8a8", "bf16",
                                  "fora+w8a8"])
def test_attention_backends_and_quantization_run_close_to_full_compute(model, spec):
    text, mask = text_inputs()
    ref, _ = sample(model, "none", text, mask)
    out, _ = sample(model, spec, text, mask)
    assert torch.isfinite(out).all() and (out - ref).abs().max() < 0.5 * ref.abs().max()


def test_cross_attention_keys_and_values_once_per_generation_and_branch(model):
    calls = []
    hooks = [b.cross.kv.register_forward_hook(lambda m, i, o: calls.append(1)) for b in model.blocks]
    try:
        text, mask = text_inputs()
        sample(model, "none", text, mask)                 # one batched text tensor for all 6 steps
        assert len(calls) == 3                            # once per block, not per step
        x, t = torch.randn(2, 1, 16, 16), torch.full((2,), 500.0)
        with torch.no_grad():
            model(x, t, text, mask)                       # another text tensor: computed
            model(x, t, text, mask)                       # the same one again: kept
            assert len(calls) == 6
            model(x, t, text.clone(), mask)               # equal values, another tensor: computed again
        assert len(calls) == 9
        model(x, t, text, mask).sum().backward()          # training: always computed, with gradients
        assert len(calls) == 12 and model.blocks[0].cross.kv.weight.grad is not None
    finally:
        for h in hooks:
            h.remove()

"""Text-to-image sampling with a PixArt model and its text encoder: seeds per sample, negative prompts, guidance,
recipes through the pipeline, and cross-attention keys and values once per generation."""
import pytest
import torch

from test_pixart import tiny_pixart

from ditkit.acceleration.counting import BlockCounter
from ditkit.data.scenes import VOCABULARY
from ditkit.diffusion.flow import FlowMatching
from ditkit.models.pixart import PixArt, PixArtConfig
from ditkit.models.text import SmallTextEncoder, WordTokenizer
from ditkit.pipelines.text import TextPipeline

PROMPTS = ["a bold 7 at the top left", "3 on the left and 8 on the right", "a small thin two"]
KW = dict(num_sampling_steps=6, sampler="euler", seed=0)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    encoder = SmallTextEncoder(WordTokenizer(VOCABULARY), dim=20, depth=1, num_heads=4, max_length=16).eval()
    return TextPipeline(tiny_pixart(), FlowMatching(1000.0), encoder)


def test_samples_follow_their_seed_whatever_the_batch(pipe):
    whole = pipe(PROMPTS, **KW)
    assert whole.shape == (3, 1, 16, 16) and whole.abs().max() <= 1
    one_by_one = pipe(PROMPTS, batch_size=1, **KW)
    assert (whole - one_by_one).abs().max() <= 1e-5
    assert (pipe(PROMPTS[1:2], **{**KW, "seed": 1}) - whole[1:2]).abs().max() <= 1e-5     # sample i: seed + i


def test_negative_prompt_and_guidance(pipe):
    plain = pipe(PROMPTS, **KW)
    negative = pipe(PROMPTS, negative_prompt="a thin 7", **KW)
    assert not torch.allclose(plain, negative, atol=1e-3)
    unguided = pipe(PROMPTS, cfg_scale=1.0, **KW)
    assert torch.equal(unguided, pipe(PROMPTS, negative_prompt="a thin 7", cfg_scale=1.0, **KW))
    with pytest.raises(ValueError, match="2 negative prompts for 3 prompts"):
        pipe(PROMPTS, negative_prompt=["a", "b"], **KW)


def test_recipes_through_the_pipeline(pipe):
    reference = pipe(PROMPTS, **KW)
    try:
        pipe.set_recipe("fora:interval=1")
        assert torch.equal(pipe(PROMPTS, **KW), reference)
        pipe.set_recipe("teacache:threshold=10")
        with BlockCounter(pipe.model) as counter:
            out = pipe(PROMPTS, **KW)
        assert counter.blocks < 6 * 6 * 3 and torch.isfinite(out).all()
    finally:
        pipe.set_recipe(None)


def test_keys_and_values_once_per_generation(pipe):
    calls = []
    hooks = [b.cross.kv.register_forward_hook(lambda m, i, o: calls.append(1)) for b in pipe.model.blocks]
    try:
        pipe(PROMPTS, **KW)
        assert len(calls) == 3                            # 6 steps x batched CFG: once per block
        pipe(PROMPTS, guidance_interval=(0.2, 0.8), **KW)
        assert len(calls) == 3 + 6                        # the conditional text alone outside the interval: once more
    finally:
        for h in hooks:
            h.remove()


def test_encoder_width_must_match_the_model():
    encoder = SmallTextEncoder(WordTokenizer(VOCABULARY), dim=16, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="makes 16-wide states but the model reads 20"):
        TextPipeline(PixArt(PixArtConfig(input_size=16, hidden_size=48, depth=1, caption_channels=20)),
                     FlowMatching(1000.0), encoder)

"""ditkit.accelerate inside a diffusers PixArt-Sigma pipeline's own loop (batched CFG, unconditional half first):
bitwise at a never-skipping setting, the step / branch schedule the recipe sees, reset at every call, exact removal."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import ditkit  # noqa: E402
from ditkit.bench.tiny_diffusers import pixart  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    model, _ = pixart()
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                  norm_num_groups=8, layers_per_block=1).eval()
    return diffusers.PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=model,
                                         scheduler=diffusers.DPMSolverMultistepScheduler())


def run(pipe, guidance_scale=4.5):
    gen = torch.Generator().manual_seed(0)
    text, mask = torch.randn(1, 7, 24, generator=gen), torch.ones(1, 7)
    return pipe(negative_prompt=None, prompt_embeds=text, prompt_attention_mask=mask,
                negative_prompt_embeds=torch.zeros(1, 7, 24), negative_prompt_attention_mask=mask,
                num_inference_steps=6, height=8, width=8, output_type="latent", use_resolution_binning=False,
                guidance_scale=guidance_scale, generator=gen).images


def test_a_recipe_follows_the_pipelines_own_loop(pipe):
    pipe.set_progress_bar_config(disable=True)
    cls, blocks, processor = type(pipe), pipe.transformer.transformer_blocks, pipe.transformer.transformer_blocks[0].attn1.processor
    reference = run(pipe)
    with ditkit.accelerate(pipe, "fora:interval=1"):
        assert torch.equal(run(pipe), reference)
    handle = ditkit.accelerate(pipe, "fora:interval=3")
    fora = handle.recipe.methods[0]
    fora.trace = []
    first = run(pipe)
    # FORA's reference schedule counts down from N - 1: steps 0, 2 and 5 of 6 compute
    assert fora.trace == [(s, "uncond+cond", s in (0, 2, 5)) for s in range(6)]
    assert not torch.equal(first, reference)
    fora.trace = []
    assert torch.equal(run(pipe), first) and len(fora.trace) == 6          # reset at every pipeline call
    fora.trace = []
    run(pipe, guidance_scale=1.0)
    assert {branch for _, branch, _ in fora.trace} == {"cond"}            # no CFG: one conditional call per step
    handle.remove()
    assert type(pipe) is cls and pipe.transformer.transformer_blocks is blocks
    assert type(blocks) is torch.nn.ModuleList and blocks[0].attn1.processor is processor
    assert torch.equal(run(pipe), reference)


def test_sparse_attention_and_quantization_run_inside_the_pipeline(pipe):
    pipe.set_progress_bar_config(disable=True)
    reference = run(pipe)
    with ditkit.accelerate(pipe, "sta:density=1,min_tokens=0,full_steps=0"):
        assert (run(pipe) - reference).abs().max() <= 1e-5 * reference.abs().max()
    with ditkit.accelerate(pipe, "topk:density=0.5,tile=1x2x2,min_tokens=0+w8a8") as handle:
        out = run(pipe)
        assert handle.model.quantization is not None
    assert not torch.equal(out, reference) and ((out - reference).norm() / reference.norm()) < 0.2
    assert torch.equal(run(pipe), reference)

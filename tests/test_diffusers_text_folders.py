"""A diffusers PixArt pipeline folder (transformer, T5 text encoder and tokenizer, scheduler, VAE; tiny and random,
saved on the fly) as ``--model``: ditkit's text pipeline runs the diffusers transformer through the adapter with the
folder's own encoder, so generate / bench / tune and every recipe work on it."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import ditkit  # noqa: E402
from cli_util import cli_error, run_cli  # noqa: E402
from ditkit.bench.tiny_diffusers import pixart  # noqa: E402
from ditkit.pipelines.text import TextPipeline  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model, _ = pixart()                                   # caption_channels 24, 4 latent channels, 8 x 8 latents
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=384, d_model=24, d_kv=8, d_ff=48, num_layers=1,
                                                           num_heads=3)).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=8, layers_per_block=1).eval()      # 8 x 8 latents -> 16 x 16 images
    pipe = diffusers.PixArtAlphaPipeline(tokenizer=transformers.ByT5Tokenizer(), text_encoder=t5, vae=vae,
                                         transformer=model, scheduler=diffusers.DPMSolverMultistepScheduler())
    out = tmp_path_factory.mktemp("pixart") / "pipeline"
    pipe.save_pretrained(out)
    return out, pipe


def test_the_folder_loads_as_a_text_pipeline_with_its_own_encoder(folder):
    path, reference = folder
    pipe = ditkit.load(path)
    assert isinstance(pipe, TextPipeline) and pipe.autoencoder is not None
    states, mask = pipe.encode(["a red cube on a table", ""])
    embeds, embeds_mask, _, _ = reference.encode_prompt(["a red cube on a table", ""], do_classifier_free_guidance=False,
                                                         clean_caption=False, max_sequence_length=120)
    assert torch.equal(mask, embeds_mask.bool()) and mask.shape == (2, 120)             # PixArt's own encoding
    torch.testing.assert_close(states, embeds.detach(), atol=1e-6, rtol=1e-6)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([900, 10])
    with torch.no_grad():
        theirs = reference.transformer(x, encoder_hidden_states=states, encoder_attention_mask=mask.float(),
                                       timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                                       return_dict=False)[0]
        assert torch.equal(pipe.model(x, t, states, mask), theirs)
    images = pipe(["a red cube", "a blue ball"], num_sampling_steps=4, seed=3)
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1
    torch.testing.assert_close(pipe(["a blue ball"], num_sampling_steps=4, seed=4), images[1:], atol=1e-5,
                               rtol=0)                                    # seed + i per sample, whatever the batch
    fora = pipe.set_recipe("fora:interval=2")(["a red cube", "a blue ball"], num_sampling_steps=4, seed=3)
    assert not torch.equal(fora, images)
    assert torch.equal(pipe.set_recipe("fora:interval=1")(["a red cube", "a blue ball"], num_sampling_steps=4, seed=3),
                       images)                                        # never skipping: bitwise full compute


def test_generate_bench_and_tune_take_the_folder(folder, tmp_path):
    path, _ = folder
    out, _ = run_cli("generate", "--model", path, "--prompt", "a red cube", "a blue ball", "--num-sampling-steps",
                     "4", "--recipe", "sta:min_tokens=0,density=0.5", "--out", tmp_path / "grid.png", "--npz",
                     tmp_path / "s.npz", "--no-progress")
    assert "2 samples" in out and np.load(tmp_path / "s.npz")["images"].shape == (2, 3, 16, 16)
    run_cli("bench", "--model", path, "--recipes", "none,fora:interval=2,w8a8", "--num-samples", "2",
            "--num-sampling-steps", "4", "--repeats", "1", "--json", tmp_path / "b.json", "--no-progress")
    bench = json.loads((tmp_path / "b.json").read_text())
    none, fora, w8a8 = bench["rows"]
    assert bench["settings"]["kind"] == "text" and none["psnr"] >= 100 and fora["blocks"] < none["blocks"]
    assert none["prompt_accuracy"] is None and 10 < w8a8["psnr"] < 100           # no scene judge off MNIST scenes
    run_cli("tune", "--model", path, "--min-psnr", "20", "--methods", "fora", "--num-sampling-steps", "6",
            "--probe-samples", "2", "--calibration-samples", "2", "--validation-samples", "2", "--time-samples", "1",
            "--repeats", "1", "--out", tmp_path / "r.yaml", "--json", tmp_path / "t.json", "--no-progress")
    assert json.loads((tmp_path / "t.json").read_text())["validation"]["psnr"] >= 20
    cli_error("generate", "--model", path, "--prompt", "x", "--text-encoder", tmp_path, "--out", tmp_path / "g.png",
              names=("--text-encoder", "text_encoder/"))
    cli_error("eval", "--model", path, names=("ditkit bench", "PixArt"))


def test_a_pixart_folder_without_its_encoder_or_with_resolution_conditions_is_refused(folder, tmp_path):
    import shutil
    path, _ = folder
    partial = tmp_path / "partial"
    shutil.copytree(path, partial, ignore=shutil.ignore_patterns("text_encoder"))
    with pytest.raises(FileNotFoundError, match="text_encoder/"):
        ditkit.load(partial)
    from ditkit.pipelines.diffusers_dit import AdaptedPixArt
    conditioned = diffusers.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                                     num_layers=1, sample_size=8, patch_size=2, caption_channels=24,
                                                     use_additional_conditions=True)
    with pytest.raises(ValueError, match="resolution and aspect-ratio"):
        AdaptedPixArt(conditioned)
    assert type(conditioned.transformer_blocks) is torch.nn.ModuleList                  # left untouched

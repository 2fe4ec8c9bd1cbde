"""The bundled models load and do their job (tiny sample counts, few steps: a smoke test of quality, not the bar)."""
import torch

from ditkit import load
from ditkit.core.config import from_dict
from ditkit.core.configs import VideoTrainConfig
from ditkit.core.metrics import psnr
from ditkit.diffusion.masks import task_mask
from ditkit.evaluation.evaluate import classifier_outputs
from ditkit.evaluation.video import baseline_fill, heldout_clips
from ditkit.pipelines.video import VideoPipeline


def test_mnist_dit_draws_the_digits_it_is_asked_for():
    torch.set_num_threads(1)
    pipe = load("mnist-dit")
    labels = list(range(10)) * 2
    images = pipe(labels, num_sampling_steps=20, sampler="euler", cfg_scale=4.0, seed=0)
    assert images.shape == (20, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    predicted = classifier_outputs(images)[1]
    assert (predicted == torch.tensor(labels)).float().mean() >= 0.9


def test_moving_mnist_vdt_completes_boxes_better_than_mean_fill():
    torch.set_num_threads(1)
    pipe = load("moving-mnist-vdt")
    assert isinstance(pipe, VideoPipeline)                          # ditkit.load dispatches on the file's format
    truth = heldout_clips(from_dict(VideoTrainConfig, pipe.metadata["train_config"]), 8)[0]
    N, _, F, H, W = truth.shape
    g = torch.Generator().manual_seed(0)
    mask = torch.stack([task_mask("complete", F, H, W, generator=g) for _ in range(N)]).unsqueeze(1)
    out = pipe(truth, mask, None, num_sampling_steps=20, seed=0)
    given = (mask == 0).expand_as(out)
    assert torch.equal(out[given], truth[given])                                   # given pixels kept bitwise
    frames = lambda v: v.transpose(1, 2).flatten(0, 1)                              # [N * F, C, H, W]
    model_psnr = psnr(frames(out), frames(truth)).mean()
    fill_psnr = psnr(frames(baseline_fill(truth, mask)), frames(truth)).mean()
    assert model_psnr > fill_psnr + 0.5, (model_psnr, fill_psnr)

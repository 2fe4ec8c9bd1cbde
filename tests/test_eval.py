import json

import pytest
import torch

from ditkit.core.metrics import frechet_distance_from_stats, gaussian_stats
from ditkit.data.images import mnist_split
from ditkit.evaluation.classifier import accuracy, load_classifier
from ditkit.evaluation.evaluate import (classifier_metrics, classifier_outputs, evaluate_pipeline,
                                        frechet_distance_real_baseline, heldout_digits, reference_stats)


@pytest.fixture(scope="module")
def mnist():
    return {split: mnist_split(split) for split in ("train", "heldout")}


def _fd_to_train(images):
    return frechet_distance_from_stats(gaussian_stats(classifier_outputs(images)[0]), reference_stats("train"))


def test_bundled_classifier_heldout_accuracy(mnist):
    held = mnist["heldout"]
    assert accuracy(load_classifier(), held.images, held.labels) >= 0.98


def test_frechet_separates_real_from_noise_and_mode_collapse(mnist):
    train = mnist["train"]
    baseline = frechet_distance_real_baseline(1000)
    noise = torch.rand(500, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ones = train.images[train.labels == 1]
    assert baseline < 0.1 * _fd_to_train(noise)
    assert baseline < 0.1 * _fd_to_train(ones)


def test_classifier_metrics_on_real_digits():
    images, labels = heldout_digits()
    assert labels[:20].tolist() == [i % 10 for i in range(20)]
    m = classifier_metrics(images[:200], labels[:200])
    assert m["class_accuracy"] >= 0.95 and set(m["per_class_accuracy"]) == {str(c) for c in range(10)}
    # the first N held-out digits *are* the baseline set, so the two distances coincide
    assert m["frechet_distance"] == pytest.approx(m["frechet_distance_real_baseline"], rel=1e-9)
    assert m["num_samples"] == m["baseline_num_samples"] == 200
    assert "FID" not in json.dumps(m)


def test_classifier_metrics_bad_input():
    with pytest.raises(ValueError, match=r"\[N, 1, 32, 32\].*\(4, 3, 32, 32\)"):
        classifier_metrics(torch.zeros(4, 3, 32, 32), [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"\(4, 1, 28, 28\)"):
        classifier_metrics(torch.zeros(4, 1, 28, 28), [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"in \[-1, 1\], got values in \[0, 255\]"):
        classifier_metrics(torch.full((4, 1, 32, 32), 255.0).index_fill(0, torch.tensor([0]), 0.0), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        classifier_metrics(torch.full((2, 1, 32, 32), float("nan")), [0, 1])
    with pytest.raises(ValueError, match=r"label\(s\) \[12\]"):
        classifier_metrics(torch.zeros(2, 1, 32, 32), [0, 12])


def _tiny_pipeline(in_channels=1):
    from ditkit.diffusion.gaussian import GaussianDiffusion
    from ditkit.models.dit import DiT, dit_config
    from ditkit.pipelines.image import DiTPipeline
    torch.manual_seed(0)
    model = DiT(dit_config("DiT-T/8", input_size=32, in_channels=in_channels, num_classes=10)).eval()
    return DiTPipeline(model, GaussianDiffusion.from_config())


def test_evaluate_pipeline_plumbing():
    r = evaluate_pipeline(_tiny_pipeline(), num_samples=20, num_sampling_steps=2, sampler="ddim", cfg_scale=2.0,
                          batch_size=8)
    assert r["num_samples"] == r["baseline_num_samples"] == 20
    assert r["frechet_distance_real_baseline"] == frechet_distance_real_baseline(20)
    assert 0 <= r["class_accuracy"] <= 1 and r["frechet_distance"] > r["frechet_distance_real_baseline"] > 0
    assert set(r["per_class_accuracy"]) == {str(c) for c in range(10)}
    assert r["sampling"] == dict(num_sampling_steps=2, sampler="ddim", cfg_scale=2.0, guidance_interval=(0.0, 0.6), seed=0)
    assert r["seconds"] >= r["sampling_seconds"] > 0


def test_cfg_sweep_matches_single_evaluations_and_picks_lowest_frechet(tmp_path):
    from ditkit.evaluation.evaluate import cfg_sweep, plot_cfg_sweep
    pipe = _tiny_pipeline()
    for name, param in pipe.model.named_parameters():              # un-zero adaLN: a model whose guidance matters
        if "adaLN" in name or "final_layer.linear" in name:
            torch.nn.init.normal_(param, std=0.05)
    settings = dict(num_sampling_steps=2, sampler="ddim", batch_size=10)
    result = cfg_sweep(pipe, [1.0, 3.0], num_samples=20, **settings)
    singles = [evaluate_pipeline(pipe, 20, cfg_scale=s, **settings) for s in (1.0, 3.0)]
    fds = [r["frechet_distance"] for r in result["sweep"]]
    assert fds == [r["frechet_distance"] for r in singles] and fds[0] != fds[1]
    assert result["best_cfg_scale"] == (1.0, 3.0)[fds.index(min(fds))]
    assert plot_cfg_sweep({"model": "tiny", **result}, tmp_path / "sweep.png").stat().st_size > 0
    with pytest.raises(ValueError, match="at least one guidance scale"):
        cfg_sweep(pipe, [], num_samples=20)


def test_evaluate_pipeline_rejects_non_mnist_model():
    with pytest.raises(ValueError, match=r"\[1, 32, 32\] digits.*\[3, 32, 32\]"):
        evaluate_pipeline(_tiny_pipeline(in_channels=3), num_samples=20)


def test_eval_command_writes_json(tmp_path, capsys):
    import argparse

    from ditkit.cli import COMMANDS
    from ditkit.cli.eval import register
    from ditkit.core import checkpoint as ckpt
    from ditkit.core.configs import TrainConfig
    from ditkit.training.trainer import model_metadata
    cfg = TrainConfig()
    cfg.model.name = "DiT-T/8"
    model = _tiny_pipeline().model
    ckpt.save_weights(tmp_path / "tiny.safetensors", model.state_dict(), model_metadata(cfg, model, 0))
    out = tmp_path / "eval.json"
    assert any(module.register is register for module in COMMANDS)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", str(tmp_path / "tiny.safetensors"), "--num-samples", "20",
                              "--num-sampling-steps", "2", "--json", str(out), "--no-progress"])
    args.fn(args)
    r = json.loads(out.read_text())
    assert r["num_samples"] == 20 and r["sampling"]["num_sampling_steps"] == 2 and r["model"].endswith("tiny.safetensors")
    printed = capsys.readouterr().out
    assert "Fréchet distance on ditkit's MNIST-classifier features" in printed and "FID" not in printed


@pytest.mark.parametrize("argv, match", [
    (["--cfg-sweep", "1.0,high"], r"comma-separated guidance scales.*'1.0,high'"),
    (["--cfg-sweep", "1.0,1.5", "--task", "predict"], "drop --task"),
    (["--plot", "out/p.png"], r"--plot out/p.png draws a --cfg-sweep"),
])
def test_eval_command_bad_sweep_arguments(argv, match):
    import argparse

    from ditkit.cli.eval import register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", "mnist-dit", "--no-progress", *argv])
    with pytest.raises(ValueError, match=match):
        args.fn(args)

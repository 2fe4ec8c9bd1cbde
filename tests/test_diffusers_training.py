"""ditkit's trainer on a diffusers transformer class: exact resume, the diffusers folder it writes, sampling it
through the adapter, config errors."""
import pytest
import torch

pytest.importorskip("diffusers")

from ditkit.core.checkpoint import load_weights  # noqa: E402
from ditkit.core.config import load_config  # noqa: E402
from ditkit.core.configs import TrainConfig  # noqa: E402
from ditkit.pipelines.diffusers_dit import AdaptedDiT  # noqa: E402
from ditkit.pipelines.image import DiTPipeline, load  # noqa: E402
from ditkit.training.trainer import train  # noqa: E402

TINY = ["model.diffusers_class=DiTTransformer2DModel",
        "model.diffusers_config={num_layers: 2, num_attention_heads: 2, attention_head_dim: 16, patch_size: 8}",
        "model.learn_sigma=false", "diffusion.objective=flow", "diffusion.timestep_scale=1000",
        "train.global_batch_size=8", "train.warmup_steps=2", "train.log_every=1", "train.ckpt_every=3",
        "train.num_threads=1", "train.ema_decay=0.9"]


def tiny_cfg(folder, *extra):
    return load_config(TrainConfig, None, TINY + [f"train.results_dir={folder}", *extra])


def test_a_diffusers_class_trains_and_resumes_bitwise(tmp_path):
    full = train(tiny_cfg(tmp_path / "full", "train.steps=6"), progress=False)
    part = tiny_cfg(tmp_path / "part", "train.steps=6")
    train(part, progress=False, max_steps=3)
    resumed = train(part, resume="auto", progress=False)
    a, b = load_weights(full), load_weights(resumed)
    assert a.keys() == b.keys() and all(k.startswith("transformer.transformer_blocks.") or k.startswith("transformer.")
                                        for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = load_weights(tmp_path / "full/checkpoints/0000003/model.safetensors")
    assert any(not torch.equal(first[k], a[k]) for k in a)          # it trained


def test_the_run_writes_a_diffusers_folder_that_samples_through_the_adapter(tmp_path):
    import diffusers
    train(tiny_cfg(tmp_path, "train.steps=3"), progress=False)
    folder = tmp_path / "diffusers"
    dmodel = diffusers.DiTTransformer2DModel.from_pretrained(folder / "transformer", low_cpu_mem_usage=False)
    ema = load_weights(tmp_path / "model.safetensors")
    assert all(torch.equal(v, ema[f"transformer.{k}"]) for k, v in dmodel.state_dict().items())
    pipe = load(folder)
    assert isinstance(pipe, DiTPipeline) and isinstance(pipe.model, AdaptedDiT)
    assert type(pipe.process).__name__ == "FlowMatching"                  # the training objective, not DDPM
    plain = pipe(class_labels=[1, 2], num_sampling_steps=4, seed=0)
    pipe.set_recipe("fora:interval=1")
    assert torch.equal(pipe(class_labels=[1, 2], num_sampling_steps=4, seed=0), plain)


@pytest.mark.parametrize("override, words", [
    ("model.diffusers_class=UNet2DConditionModelX", ("diffusers_class", "UNet2DConditionModelX")),
    ("model.diffusers_config={in_channels: 3}", ("in_channels=3", "drop")),
    ("model.diffusers_config={num_layerz: 2}", ("does not fit", "num_layerz")),
])
def test_bad_diffusers_model_config_is_refused(tmp_path, override, words):
    with pytest.raises(ValueError) as e:
        train(tiny_cfg(tmp_path, "train.steps=3", override), progress=False)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_ddp_two_processes_match_one_on_a_diffusers_class(tmp_path):
    """2 gloo ranks x 4 samples == 1 process x 8 samples (to 1e-5: the all-reduce sums gradients in another order,
    and Adam's normalisation magnifies that on near-zero gradients; 6e-6 after 3 steps at lr 1e-3), and the run
    writes its diffusers folder."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    args = [f"--set={s}" for s in TINY + ["train.steps=3", "train.device=cpu"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["-m", "ditkit.cli", "train", "--config", "configs/mnist-diffusers-dit.yaml", "--no-progress"]
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable] + cmd + args + [f"--set=train.results_dir={tmp_path}/single"], check=True,
                   cwd=repo, env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + cmd + args
                   + [f"--set=train.results_dir={tmp_path}/ddp"], check=True, cwd=repo, env=env, capture_output=True)
    a, b = load_weights(tmp_path / "single/model.safetensors"), load_weights(tmp_path / "ddp/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert (tmp_path / "ddp/diffusers/transformer/config.json").is_file()


VIDEO = ["model.diffusers_config={patch_size: [1, 8, 8], num_attention_heads: 2, attention_head_dim: 12, "
         "ffn_dim: 32, num_layers: 2, text_dim: 16, freq_dim: 256, rope_max_seq_len: 32}",
         "train.global_batch_size=2", "train.warmup_steps=1", "train.decay_start=null", "train.log_every=1",
         "train.ckpt_every=2", "train.num_threads=1"]


def video_cfg(folder, *extra):
    from ditkit.core.configs import VideoTrainConfig
    return load_config(VideoTrainConfig, "configs/moving-mnist-wan.yaml",
                       VIDEO + [f"train.results_dir={folder}", *extra])


def test_a_diffusers_video_class_trains_resumes_and_samples_through_the_adapter(tmp_path, monkeypatch):
    from pathlib import Path
    from ditkit.core.configs import config_kind
    from ditkit.pipelines.base import is_video_model
    from ditkit.pipelines.diffusers_dit import AdaptedVideo
    from ditkit.pipelines.video import VideoPipeline, video_condition
    from ditkit.training.video import train_video
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert config_kind("configs/moving-mnist-wan.yaml") == "video"
    full = train_video(video_cfg(tmp_path / "full", "train.steps=4"), progress=False)
    part = video_cfg(tmp_path / "part", "train.steps=4")
    train_video(part, progress=False, max_steps=2)
    resumed = train_video(part, resume="auto", progress=False)
    a, b = load_weights(full), load_weights(resumed)
    assert a.keys() == b.keys() and {k.split(".")[0] for k in a} == {"transformer", "label_embedding"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert is_video_model(tmp_path / "full")
    pipe = load(tmp_path / "full")
    assert isinstance(pipe, VideoPipeline) and isinstance(pipe.model, AdaptedVideo)
    frames = torch.rand(1, 4, 32, 32) * 2 - 1
    context, mask = video_condition("predict", frames, pipe.num_frames, pipe.frame_shape)
    kw = dict(labels=[3], num_sampling_steps=3, seed=0)
    plain = pipe(context[None], mask, **kw)
    assert torch.equal(plain[:, :, :4], context[None, :, :4])             # given frames are the context, bitwise
    pipe.set_recipe("fora:interval=1")
    assert torch.equal(pipe(context[None], mask, **kw), plain)
    pipe.set_recipe("fora:interval=2+sta:density=0.5,tile=1x2x2,min_tokens=0,full_steps=0")
    assert not torch.equal(pipe(context[None], mask, **kw), plain)

"""Training: exact resume, DDP equivalence, atomic checkpoints, config and data errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ditkit.core.checkpoint import load_weights
from ditkit.core.config import load_config
from ditkit.core.configs import TrainConfig
from ditkit.data.images import image_folder, mnist_split
from ditkit.training.trainer import latest_checkpoint, lr_factor, train

TINY = ["model.name=DiT-T/8", "train.global_batch_size=8", "train.warmup_steps=2", "train.log_every=1",
        "train.ckpt_every=3", "train.num_threads=1", "train.ema_decay=0.9"]


def tiny_cfg(tmp_path, *extra):
    return load_config(TrainConfig, None, TINY + [f"train.results_dir={tmp_path}", *extra])


def test_resume_is_bitwise_exact(tmp_path):
    full = train(tiny_cfg(tmp_path / "full", "train.steps=6"), progress=False)
    part = tiny_cfg(tmp_path / "part", "train.steps=6")
    train(part, progress=False, max_steps=3)
    assert latest_checkpoint(tmp_path / "part").name == "0000003"
    resumed = train(part, resume="auto", progress=False)
    a, b = load_weights(full), load_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_weights(tmp_path / "full/checkpoints/0000006" / name)
        b = load_weights(tmp_path / "part/checkpoints/0000006" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "full/checkpoints/0000006/state.pt", weights_only=True)
    sb = torch.load(tmp_path / "part/checkpoints/0000006/state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 6
    for k, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], sb["optimizer"]["state"][k]["exp_avg"])


def test_lr_schedule_warmup_constant_linear_decay(tmp_path):
    t = tiny_cfg(tmp_path, "train.steps=10", "train.warmup_steps=4", "train.decay_start=6").train
    assert [lr_factor(s, t) for s in range(11)] == [0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0]
    constant = tiny_cfg(tmp_path, "train.steps=10", "train.warmup_steps=4").train
    assert lr_factor(9, constant) == 1.0
    # resuming a decayed run across a checkpoint is still bitwise exact
    full = train(tiny_cfg(tmp_path / "full", "train.steps=6", "train.decay_start=2"), progress=False)
    part = tiny_cfg(tmp_path / "part", "train.steps=6", "train.decay_start=2")
    train(part, progress=False, max_steps=3)
    resumed = train(part, resume="auto", progress=False)
    a, b = load_weights(full), load_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lrs = [float(l.split('"lr": ')[1].split(",")[0]) for l in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == 0.0 and lrs[2] < lrs[1]
    # a resume with a changed train.lr / schedule uses the new ones from the resumed step (not the checkpoint's LR)
    longer = tiny_cfg(tmp_path / "part", "train.steps=8", "train.decay_start=6", "train.lr=5e-4", "train.log_every=1")
    train(longer, resume="auto", progress=False)
    logged = [json.loads(l) for l in (tmp_path / "part/metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in logged if r["step"] > 6] == [5e-4 * lr_factor(s, longer.train) for s in (7, 8)]


def test_training_is_deterministic_and_learns(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=6", "train.lr=3e-3")
    train(cfg, progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6
    import json
    losses = [json.loads(l)["mse"] for l in lines]
    assert all(0 < l < 10 for l in losses)
    w = load_weights(tmp_path / "model.safetensors")
    assert w["blocks.0.adaLN_modulation.1.weight"].abs().sum() > 0  # adaLN-Zero weights moved off zero


def test_flow_matching_objective_trains(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=2", "diffusion.objective=flow", "model.learn_sigma=false",
                   "diffusion.timestep_scale=1000")
    out = train(cfg, progress=False)
    from ditkit.pipelines.image import load
    pipe = load(out)
    img = pipe([3, 4], num_sampling_steps=2, sampler="euler", cfg_scale=2.0)
    assert img.shape == (2, 1, 32, 32) and torch.isfinite(img).all()
    # DDIM (eta 0) on a linear flow is algebraically the Euler step
    torch.testing.assert_close(pipe([3], num_sampling_steps=2, sampler="ddim"), pipe([3], num_sampling_steps=2, sampler="euler"))
    with pytest.raises(ValueError, match="does not apply to a flow-matching model"):
        pipe([3], num_sampling_steps=2, sampler="dpm++2m")
    with pytest.raises(ValueError, match="eta=0"):
        pipe([3], num_sampling_steps=2, sampler="ddim", eta=0.5)


def test_ddp_two_processes_match_one(tmp_path):
    """2 gloo ranks x 4 samples == 1 process x 8 samples (same global batch) to 1e-6."""
    args = [f"--set={s}" for s in TINY + ["train.steps=3", "train.device=cpu"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ditkit.cli", "train", "--config", "configs/mnist-dit.yaml", "--no-progress"]
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(cmd + args + [f"--set=train.results_dir={tmp_path}/single"], check=True, cwd=repo, env=env,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                    "ditkit.cli"] + cmd[3:] + args + [f"--set=train.results_dir={tmp_path}/ddp"],
                   check=True, cwd=repo, env=env, capture_output=True)
    a, b = load_weights(tmp_path / "single/model.safetensors"), load_weights(tmp_path / "ddp/model.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-6, diff


def test_checkpoint_state_is_weights_only_loadable(tmp_path):
    train(tiny_cfg(tmp_path, "train.steps=3"), progress=False)
    ck = tmp_path / "checkpoints/0000003"
    assert sorted(p.name for p in ck.iterdir()) == ["ema.safetensors", "model.safetensors", "state.pt"]
    state = torch.load(ck / "state.pt", weights_only=True)
    assert {"step", "optimizer", "scheduler", "rng", "config_yaml"} <= set(state)
    assert not list(tmp_path.glob("checkpoints/.*tmp*"))


def test_unknown_config_keys_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"train\.lrr.*valid keys in train"):
        load_config(TrainConfig, None, ["train.lrr=1"])
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(TrainConfig, None, ["optim.lr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: DiT-T/4\n  depthh: 3\n")
    with pytest.raises(ValueError, match="model.depthh"):
        load_config(TrainConfig, bad)
    with pytest.raises(ValueError, match="unknown DiT config 'DiT-Q/3'"):
        train(tiny_cfg(tmp_path, "model.name=DiT-Q/3"), progress=False)


def test_mnist_split_keeps_heldout_disjoint():
    train_split, held = mnist_split("train"), mnist_split("heldout")
    assert train_split.images.shape == (4000, 1, 32, 32) and held.images.shape == (1000, 1, 32, 32)
    assert torch.bincount(held.labels).tolist() == [100] * 10
    assert train_split.images.min() == -1 and train_split.images.max() == 1
    flat_t = {tuple(x.flatten().tolist()) for x in train_split.images[:, :, 2:30, 2:30]}
    assert not any(tuple(x.flatten().tolist()) in flat_t for x in held.images[:50, :, 2:30, 2:30])


def test_image_folder(tmp_path):
    for cls, value in (("cat", 0), ("dog", 255)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 12), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    data = image_folder(tmp_path, 8, channels=3)
    assert data.images.shape == (4, 3, 8, 8) and data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images[0].max() == -1 and data.images[-1].min() == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing", 8)
    with pytest.raises(ValueError, match="no class subfolders"):
        image_folder(tmp_path, 8)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        image_folder(tmp_path, 8)
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        image_folder(tmp_path, 8)


@pytest.mark.parametrize("override", ["train.steps=abc", "train.bf16=3", "train.steps=1.5", "train.lr=true"])
def test_config_type_errors(override):
    with pytest.raises(ValueError, match="must be of type"):
        load_config(TrainConfig, None, [override])


def test_config_numbers_written_as_strings_are_converted():
    cfg = load_config(TrainConfig, None, ["train.lr=3e-4", "train.steps=10", "model.autoencoder=null"])
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 10 and cfg.model.autoencoder is None


def test_bf16_autocast_and_sklearn_digits(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=2", "train.bf16=true", "data.name=digits", "data.image_size=16",
                   "model.input_size=16")
    out = train(cfg, progress=False)
    w = load_weights(out)
    assert w["pos_embed"].shape == (1, 4, 192) and all(torch.isfinite(v).all() for v in w.values())
    with pytest.raises(ValueError, match="must match the data"):
        train(tiny_cfg(tmp_path / "x", "data.name=digits", "data.image_size=16"), progress=False)


def test_saved_weights_are_ordinary_readable_files(tmp_path):
    from ditkit.core.checkpoint import save_weights
    path = save_weights(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
    assert path.stat().st_mode & 0o777 == 0o644 and not list(tmp_path.glob(".*.tmp"))

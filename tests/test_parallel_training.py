"""FSDP2 training and sharded (DCP) checkpoints on gloo: FSDP equals one process, a checkpoint written by 2
processes resumes on 1 and on 4 with the uninterrupted continuation, a killed save keeps the last good checkpoint,
single-file checkpoints load into FSDP, activation checkpointing changes nothing."""
import shutil

import pytest
import torch

from distributed import run
from test_training import tiny_cfg

from ditkit.core.checkpoint import load_weights
from ditkit.parallel.mesh import traffic
from ditkit.training import parallel as training_parallel
from ditkit.training.trainer import latest_checkpoint, train


def train_worker(rank: int, world_size: int, results: str, extra: list[str], resume: str | None) -> int:
    train(tiny_cfg(results, *extra), resume=resume, progress=False)
    return world_size


def max_diff(a, b) -> float:
    a, b = load_weights(a), load_weights(b)
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One process, DDP path (no sharding), 4 steps: the reference run."""
    return train(tiny_cfg(tmp_path_factory.mktemp("single"), "train.steps=4", "train.ckpt_every=2"), progress=False)


FSDP = ["train.steps=4", "train.ckpt_every=2", "train.parallel=fsdp", "train.keep_checkpoints=0"]


def test_fsdp_two_processes_equal_one_and_resume_on_one_and_four(tmp_path, uninterrupted):
    run(train_worker, 2, str(tmp_path / "fsdp"), FSDP, None)
    assert max_diff(tmp_path / "fsdp/model.safetensors", uninterrupted) < 1e-5
    step2 = tmp_path / "fsdp/checkpoints/0000002"
    shards = sorted(p.name for p in (step2 / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], shards
    for world in (1, 4):
        folder = tmp_path / f"resume{world}"
        shutil.copytree(tmp_path / "fsdp", folder)
        shutil.rmtree(folder / "checkpoints/0000004")
        (folder / "model.safetensors").unlink()
        resume = str(folder / "checkpoints/0000002")
        if world == 1:
            train_worker(0, 1, str(folder), FSDP, resume)
        else:
            run(train_worker, world, str(folder), FSDP, resume)
        assert max_diff(folder / "model.safetensors", uninterrupted) < 1e-5, world
        assert max_diff(folder / "checkpoints/0000004/ema.safetensors",
                        tmp_path / "fsdp/checkpoints/0000004/ema.safetensors") < 1e-5, world


def test_single_file_checkpoint_resumes_under_fsdp(tmp_path, uninterrupted):
    part = tiny_cfg(tmp_path, "train.steps=4", "train.ckpt_every=2")
    train(part, progress=False, max_steps=2)                                   # single-file checkpoint at step 2
    assert not (latest_checkpoint(tmp_path) / "sharded").exists()
    train(tiny_cfg(tmp_path, *FSDP), resume="auto", progress=False)
    assert max_diff(tmp_path / "model.safetensors", uninterrupted) < 1e-5


def test_killed_sharded_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, uninterrupted):
    save = training_parallel.dcp.save
    calls = []

    def dying_save(state, checkpoint_id):
        calls.append(checkpoint_id)
        if len(calls) == 2:                    # the step-4 save dies after its first shard file
            (checkpoint_id / "__0_0.distcp").parent.mkdir(parents=True, exist_ok=True)
            (checkpoint_id / "__0_0.distcp").write_bytes(b"partial")
            raise KeyboardInterrupt
        return save(state, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(training_parallel.dcp, "save", dying_save)
    with pytest.raises(KeyboardInterrupt, match="latest checkpoint is .*0000002"):
        train(tiny_cfg(tmp_path, *FSDP), progress=False)
    assert latest_checkpoint(tmp_path).name == "0000002"
    monkeypatch.setattr(training_parallel.dcp, "save", save)
    train(tiny_cfg(tmp_path, *FSDP), resume="auto", progress=False)
    assert max_diff(tmp_path / "model.safetensors", uninterrupted) < 1e-5


def test_activation_checkpointing_and_fsdp_bf16_train(tmp_path, uninterrupted):
    checkpointed = train(tiny_cfg(tmp_path / "ac", "train.steps=4", "train.ckpt_every=2",
                                  "train.activation_checkpointing=true"), progress=False)
    assert max_diff(checkpointed, uninterrupted) == 0.0
    mixed = train(tiny_cfg(tmp_path / "bf16", *FSDP, "train.bf16=true"), progress=False)
    assert 0 < max_diff(mixed, uninterrupted) < 0.05                # bf16 gathers: close, not equal
    assert torch.load(tmp_path / "bf16/checkpoints/0000004/state.pt", weights_only=True)["step"] == 4


VIDEO = ["model.name=VideoDiT-T/8", "model.input_size=16", "model.num_frames=4", "data.image_size=16",
         "data.num_frames=4", "data.digit_size=12", "train.global_batch_size=4", "train.warmup_steps=1",
         "train.log_every=1", "train.ckpt_every=2", "train.num_threads=1", "train.steps=3", "model.layout=full3d"]


def train_any(rank: int, world_size: int, kind: str, results: str, extra: list[str]) -> int:
    """Trains; returns the bytes this process sent through sequence parallelism."""
    traffic.reset()
    if kind == "image":
        train(tiny_cfg(results, *extra), progress=False)
    else:
        from ditkit.core.config import load_config
        from ditkit.core.configs import VideoTrainConfig
        from ditkit.training.video import train_video
        train_video(load_config(VideoTrainConfig, None, VIDEO + [f"train.results_dir={results}", *extra]),
                    progress=False)
    return traffic.sent


@pytest.mark.parametrize("kind,extra", [("image", ["train.parallel=fsdp"]), ("video", ["train.parallel=ddp"])])
def test_ulysses_training_equals_one_process(tmp_path, kind, extra):
    """Ulysses 2 (x FSDP on the image DiT, x DDP on a full-3D video DiT, 4 processes = 2 data x 2 sequence) trains
    the weights of one process on the whole batch."""
    steps = ["train.steps=3"]
    train_any(0, 1, kind, str(tmp_path / "one"), steps)
    world = 2 if kind == "image" else 4
    assert run(train_any, world, kind, str(tmp_path / "sp"), steps + extra + ["train.ulysses_degree=2"]) > 0
    assert max_diff(tmp_path / "sp/model.safetensors", tmp_path / "one/model.safetensors") < 1e-5

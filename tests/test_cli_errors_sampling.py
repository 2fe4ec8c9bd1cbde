"""`ditkit generate`, `generate-video`, `eval` and `bench` with bad or unusual input: one clear error naming the bad
value and the fix, exit status 2, no traceback, and nothing written; the inputs that have a right answer get it."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cli_util import REPO, cli_error, run_cli, run_subprocess, tmp_filler
from ditkit.models.interop.official import save_official
from ditkit.pipelines.base import resolve_model_path
from ditkit.pipelines.image import DiTPipeline

FAST = ("--num-sampling-steps", "2", "--no-progress")


@pytest.mark.parametrize("argv, names", [
    (("--num-samples", "0"), ("--num-samples", ">= 1", "0")),
    (("--cfg-scale", "nan"), ("--cfg-scale", "nan", "finite")),
    (("--cfg-scale", "-1"), ("--cfg-scale", ">= 0", "-1")),
    (("--eta", "-0.5"), ("--eta", "-0.5")),
    (("--batch-size", "0"), ("--batch-size", ">= 1")),
    (("--num-sampling-steps", "0"), ("--num-sampling-steps", ">= 1")),
    (("--seed", "-1"), ("--seed", ">= 0")),
    (("--threads", "-2"), ("--threads", ">= 0")),
    (("--guidance-interval", "0.8", "0.2"), ("--guidance-interval 0.8 0.2", "LOW <= HIGH")),
    (("--sampler", "euler_a"), ("--sampler", "euler_a", "ddim")),
    (("--recipe", "fora:interval=abc"), ("fora", "interval='abc'", "integer", "fora:interval=3")),
    (("--recipe", "teacache:threshold=-1"), ("teacache", "threshold=-1", ">= 0")),
    (("--recipe", "fora:intervl=3"), ("intervl", "interval")),
    (("--recipe", "foo"), ("'foo'", "fora", "teacache")),
    (("--recipe", "linear"), ("distill-linear", "linear:dropin=true")),
    (("--device", "cuda"), ("--device cuda", "cpu")) if not torch.cuda.is_available() else
    (("--device", "cuda:99"), ("cuda:99",)),
    (("--device", "gpu"), ("--device gpu", "cuda")),
    (("--device", "tpu"), ("tpu",)),
    (("--model", "moving-mnist-vdt"), ("video DiT", "generate-video")),
    (("--model", "no-such-model"), ("no-such-model", "mnist-dit")),
    (("--vae", "/no/vae/folder"), ("/no/vae/folder", "AutoencoderKL")),
    (("--model-name", "DiT-Q/2"), ("--model-name", "DiT-Q/2")),
    (("--class-labels", "12"), ("12", "0..9")),
])
def test_generate_bad_input(tmp_path, argv, names):
    out = tmp_path / "grid.png"
    cli_error("generate", *FAST, "--out", out, *argv, names=names)
    assert not out.exists()


@pytest.mark.parametrize("flag, value, names", [
    ("--out", "{tmp}", ("is a folder", "{tmp}/out.png")),
    ("--out", "{tmp}/grid", ("no file extension", ".png")),
    ("--out", "{tmp}/grid.txt", (".txt", ".png")),
    ("--out", "{tmp}/file.txt/grid.png", ("is a file, not a folder",)),
    ("--npz", "{tmp}/arrays", ("--npz", ".npz")),
])
def test_generate_bad_output_paths_before_sampling(tmp_path, flag, value, names):
    (tmp_path / "file.txt").write_text("a file")
    args = {"--out": str(tmp_path / "grid.png"), flag: value.format(tmp=tmp_path)}
    cli_error("generate", *FAST, *[x for kv in args.items() for x in kv],
              names=tuple(n.format(tmp=tmp_path) for n in names))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_generate_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cli_error("generate", *FAST, "--out", locked / "grid.png", names=("no permission", str(locked)))


def test_generate_writes_atomically_and_npz_where_asked(tmp_path):
    run_cli("generate", *FAST, "--num-samples", "3", "--out", tmp_path / "g.png", "--npz", tmp_path / "g.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "g.png"]        # no temporary files left
    arrays = np.load(tmp_path / "g.npz")
    assert arrays["images"].shape == (3, 1, 32, 32) and arrays["seeds"].tolist() == [0, 1, 2]


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "was-executed"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)
    torch.save({"ema": Payload()}, tmp_path / "evil.pt")
    cli_error("generate", *FAST, "--model", tmp_path / "evil.pt", "--out", tmp_path / "g.png",
              names=("was refused", "posix.mkdir", "arbitrary code"))
    assert not marker.exists()


def test_official_checkpoint_with_the_wrong_model_name(tmp_path):
    from ditkit.models.dit import DiT, dit_config
    torch.manual_seed(0)
    save_official(DiT(dit_config("DiT-T/2", input_size=8)), tmp_path / "dit.pt")
    (tmp_path / "config.json").write_text("{}")                   # an autoencoder folder; the model fails first
    cli_error("generate", *FAST, "--model", tmp_path / "dit.pt", "--vae", tmp_path, "--out", tmp_path / "g.png",
              names=("DiT-T/2", "--model-name DiT-T/2"))


def test_checkpoint_folder_loads_the_ema_weights(tmp_path):
    run = tmp_path / "run"
    run_cli("train", "--config", REPO / "configs/mnist-dit.yaml", "--no-progress", "--set", "model.name=DiT-T/8",
            "--set", "train.global_batch_size=4", "--set", "train.steps=2", "--set", "train.warmup_steps=1",
            "--set", "train.ema_decay=0.5", "--set", f"train.results_dir={run}")
    folder = run / "checkpoints/0000002"
    assert resolve_model_path(folder) == folder / "ema.safetensors"
    pipe = DiTPipeline.from_pretrained(folder)
    ema = load_file(folder / "ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in pipe.model.state_dict().items() if k in ema)
    assert not torch.equal(load_file(folder / "model.safetensors")["final_layer.linear.weight"],
                           ema["final_layer.linear.weight"])


VIDEO = ("generate-video", "--num-sampling-steps", "2", "--no-progress")


@pytest.mark.parametrize("argv, names", [
    (("--task", "predict", "--mask", "{tmp}/mask.npy", "--context", "heldout:0"), ("--mask", "--task complete")),
    (("--task", "complete", "--mask", "{tmp}/small.npy", "--context", "heldout:0"), ("[5, 5]", "[8, 32, 32]")),
    (("--task", "complete", "--mask", "{tmp}/none.npy", "--context", "heldout:0"), ("{tmp}/none.npy",)),
    (("--task", "predict", "--context", "{tmp}/none.gif"), ("{tmp}/none.gif", "heldout:I")),
    (("--task", "predict", "--context", "heldout:x"), ("heldout:x",)),
    (("--task", "predict", "--model", "mnist-dit"), ("mnist-dit", "ditkit generate")),
    (("--task", "predict", "--out", "{tmp}/v.txt"), (".txt", ".gif")),
    (("--task", "predict", "--fps", "0"), ("--fps", ">= 1")),
    (("--task", "predict", "--num-frames", "0"), ("--num-frames", ">= 1")),
    (("--task", "predict", "--label", "-1"), ("--label", ">= 0")),
    (("--task", "predict", "--context", "heldout:0", "--label", "99"), ("out of range", "0..9")),
    (("--task", "predict", "--context", "heldout:0", "--recipe", "fora:interval=0"), ("fora", "interval=0")),
    (("--task", "predict", "--context", "heldout:0", "--sampler", "ddpm"), ("'ddpm'", "euler")),
    (("--task", "predict", "--vae", "x"), ("unrecognized arguments: --vae",)),
    (("--task", "predict", "--dit-cfg"), ("unrecognized arguments: --dit-cfg",)),
    (("--task", "predict", "--context", "heldout:0", "--history-frames", "2"), ("--history-frames", "--num-frames > 8")),
    (("--task", "predict", "--context", "heldout:0", "--num-frames", "16", "--history-frames", "8"),
     ("history must be in [1, 7]", "--history-frames")),
    (("--task", "predict", "--context", "heldout:0", "--num-frames", "16", "--window-stride", "5"),
     ("stride must be in [1, 4]", "--window-stride")),
    (("--task", "predict", "--context", "heldout:0", "--history-scale", "2", "--history-guidance", "fractional"),
     ("per-frame noise levels", "vanilla")),
    (("--task", "predict", "--context", "heldout:0", "--history-guidance", "temporal"), ("--history-guidance",)),
    (("--task", "predict", "--context", "heldout:0", "--num-frames", "16", "--stabilize-history", "0.1"),
     ("--stabilize-history 0.1", "per-frame noise levels")),
    (("--task", "predict", "--context", "heldout:0", "--stabilize-history", "0.1"), ("--num-frames > 8",)),
])
def test_generate_video_bad_input(tmp_path, argv, names):
    np.save(tmp_path / "mask.npy", np.ones((32, 32)))
    np.save(tmp_path / "small.npy", np.ones((5, 5)))
    fill = tmp_filler(tmp_path)
    cli_error(*VIDEO, "--out", tmp_path / "v.gif", *fill(argv), names=fill(names))
    assert not (tmp_path / "v.gif").exists()


def test_generate_video_help_lists_only_its_flags():
    out = run_subprocess("generate-video", "--help").stdout
    assert "--task" in out and "--context" in out and "(default: 8)" in out           # --fps and its default
    for flag in ("--vae", "--model-name", "--dit-cfg"):
        assert flag not in out


@pytest.mark.parametrize("argv, names", [
    (("--model", "moving-mnist-vdt"), ("video DiT", "--task", "predict")),
    (("--model", "mnist-dit", "--task", "predict"), ("--task predict", "image DiT")),
    (("--model", "moving-mnist-vdt", "--task", "predict", "--vae", "x"), ("--vae", "video DiT")),
    (("--num-samples", "0"), ("--num-samples", ">= 1")),
    (("--num-samples", "1"), ("--num-samples 1", "at least 2")),
    (("--num-videos", "0"), ("--num-videos", ">= 1")),
    (("--json", "{tmp}/result"), ("--json", ".json")),
    (("--plot", "{tmp}/p.png"), ("--plot", "--cfg-sweep")),
    (("--cfg-sweep", "1,x"), ("--cfg-sweep", "1,x")),
])
def test_eval_bad_input(tmp_path, argv, names):
    fill = tmp_filler(tmp_path)
    cli_error("eval", *FAST, *fill(argv), names=fill(names))
    assert list(tmp_path.iterdir()) == []


def test_eval_video_writes_only_where_asked(tmp_path):
    result = run_subprocess("eval", "--model", "moving-mnist-vdt", "--task", "predict", "--num-videos", "2",
                            *FAST, "--threads", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []                          # no ./out/eval-video-*.png behind the user's back
    run_cli("eval", "--model", "moving-mnist-vdt", "--task", "predict", "--num-videos", "2", *FAST,
            "--examples", tmp_path / "ex.png")
    assert [p.name for p in tmp_path.iterdir()] == ["ex.png"]


@pytest.mark.parametrize("argv, names", [
    (("--repeats", "0"), ("--repeats", ">= 1")),
    (("--recipes", "fora:interval=abc"), ("--recipes", "fora:interval=abc", "integer")),
    (("--recipes", "fora,,teacache"), ("--recipes", "empty entry")),
    (("--add-recipes", "nope"), ("--add-recipes", "'nope'")),
    (("--json", "{tmp}/bench"), ("--json", ".json")),
    (("--plot", "{tmp}/plot.txt"), ("--plot", ".png")),
    (("--num-samples", "2", "--time-samples", "4"), ("--time-samples 4", "--num-samples 2")),
    (("--model", "moving-mnist-vdt", "--peers", "diffusers"), ("--peers", "VideoDiT")),
    (("--peers", "cache-dit,nope"), ("--peers", "nope", "valid")),
    (("--model", "moving-mnist-vdt", "--through-diffusers"), ("--through-diffusers", "VideoDiT")),
    (("--append",), ("--append", "--json")),
    (("--model", "mnist-dit", "--task", "predict"), ("--task", "image model")),
])
def test_bench_bad_input(tmp_path, argv, names):
    fill = tmp_filler(tmp_path)
    cli_error("bench", *FAST, *fill(argv), names=fill(names))
    assert list(tmp_path.iterdir()) == []


def test_bench_keeps_calibration_files_only_next_to_json(tmp_path):
    args = ("bench", "--recipes", "teacache", "--num-samples", "2", "--repeats", "1", "--calibration-prompts", "1",
            *FAST)
    result = run_subprocess(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []                          # no ./out/calibration-*.json
    run_cli(*args, "--json", tmp_path / "run.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-calibration-teacache.json", "run.json"]


def test_every_flag_has_help_with_its_default_and_there_is_a_version():
    import argparse
    from ditkit.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert isinstance(action, argparse._HelpAction) or action.help, (name, action.option_strings)
        text = parser.format_help()
        assert "%(default)" not in text, name
    assert "(default: 50)" in sub.choices["generate"].format_help()                 # --num-sampling-steps
    out, _ = run_cli("--version")
    assert out.startswith("ditkit ")

"""`ditkit train` with bad or unusual input: runs are never mixed (refuse, resume or overwrite), a resume never
rewrites the past (steps below the checkpoint, duplicate log rows, damaged checkpoints), checkpoints are pruned, every
config key is range-checked before work, a batch that cannot fit is refused with an estimate, Ctrl-C says where to
resume, and a log file gets plain progress lines."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_util import REPO, cli_error, run_cli, run_subprocess

TINY = ["model.name=DiT-T/8", "train.global_batch_size=8", "train.warmup_steps=1", "train.log_every=1",
        "train.ckpt_every=1", "train.num_threads=1", "train.ema_decay=0.9"]


def train_args(results, *sets, steps=3):
    args = ["train", "--config", REPO / "configs/mnist-dit.yaml", "--no-progress"]
    for s in TINY + [f"train.results_dir={results}", f"train.steps={steps}", *sets]:
        args += ["--set", s]
    return args


def checkpoint_steps(results):
    return sorted(int(p.name) for p in (results / "checkpoints").iterdir() if not p.name.startswith("."))


def test_existing_run_is_refused_then_resumed_or_overwritten(tmp_path):
    run = tmp_path / "run"
    run_cli(*train_args(run))
    before = (run / "model.safetensors").read_bytes()
    err = cli_error(*train_args(run), names=(str(run), "--resume auto", "--overwrite", "train.results_dir="))
    assert "already holds a run" in err and (run / "model.safetensors").read_bytes() == before
    cli_error(*train_args(run), "--resume", "auto", "--overwrite", names=("--resume", "--overwrite"))
    run_cli(*train_args(run, "train.keep_checkpoints=0", steps=2), "--overwrite")        # a fresh, shorter run
    assert checkpoint_steps(run) == [1, 2]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_below_the_checkpoint_step_is_refused(tmp_path):
    run = tmp_path / "run"
    run_cli(*train_args(run))
    before = (run / "model.safetensors").read_bytes()
    cli_error(*train_args(run, steps=2), "--resume", "auto", names=("train.steps=2", "step 3", "train.steps=3"))
    assert (run / "model.safetensors").read_bytes() == before


def test_keep_last_checkpoints_and_no_duplicate_log_rows_after_resume(tmp_path):
    run = tmp_path / "run"
    run_cli(*train_args(run, "train.ckpt_every=2", steps=6), "--max-steps", "4")
    assert checkpoint_steps(run) == [2, 4]
    with open(run / "metrics.jsonl", "a") as log:                # rows a killed run logged after its last checkpoint
        log.write(json.dumps({"step": 5, "loss": 0.0}) + "\n" + '{"step": 6, "lo')
    run_cli(*train_args(run, "train.ckpt_every=2", "train.keep_checkpoints=2", steps=10), "--resume", "auto")
    assert checkpoint_steps(run) == [8, 10]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_damaged_checkpoint_names_the_file_and_the_previous_one(tmp_path):
    run = tmp_path / "run"
    run_cli(*train_args(run))
    state = run / "checkpoints/0000003/state.pt"
    state.write_bytes(state.read_bytes()[:200])
    cli_error(*train_args(run, steps=5), "--resume", "auto",
              names=(str(state), "corrupt or truncated", f"--resume {run / 'checkpoints/0000002'}"))
    weights = run / "checkpoints/0000002/ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    cli_error(*train_args(run, steps=5), "--resume", str(run / "checkpoints/0000002"),
              names=(str(weights), f"--resume {run / 'checkpoints/0000001'}"))


@pytest.mark.parametrize("setting, names", [
    ("train.ema_decay=1.5", ("train.ema_decay=1.5", "[0, 1]")),
    ("model.class_dropout_prob=2", ("model.class_dropout_prob=2", "[0, 1)")),
    ("train.steps=0", ("train.steps=0", ">= 1")),
    ("train.ckpt_every=0", ("train.ckpt_every=0", ">= 1")),
    ("train.global_batch_size=0", ("train.global_batch_size=0", ">= 1")),
    ("train.warmup_steps=50", ("train.warmup_steps=50", "train.steps=3")),
    ("train.lr=0", ("train.lr=0", "> 0")),
    ("train.keep_checkpoints=-1", ("train.keep_checkpoints=-1", ">= 0")),
    ("train.device=gpu", ("train.device gpu", "cuda")),
    ("diffusion.objective=ddim", ("diffusion.objective='ddim'", "ddpm, flow")),
    ("model.name=DiT-T/3", ("DiT-T/3", "DiT-T/4")),
    ("train.global_batch_size=100000000", ("train.global_batch_size", "GiB", "free")),
])
def test_bad_config_values_are_refused_before_any_work(tmp_path, setting, names):
    run = tmp_path / "run"
    cli_error(*train_args(run, setting), names=names)
    assert not run.exists()


def test_bad_flags(tmp_path):
    cli_error(*train_args(tmp_path / "r"), "--max-steps", "0", names=("--max-steps", ">= 1"))
    cli_error(*train_args(tmp_path / "r"), "--threads", "-1", names=("--threads", ">= 0"))
    cli_error(*train_args(tmp_path / "r"), "--resume", str(tmp_path / "nothing"), names=(str(tmp_path / "nothing"),))
    cli_error("train", "--config", tmp_path / "missing.yaml", names=("missing.yaml",))


def test_log_file_gets_plain_progress_lines(tmp_path):
    args = train_args(tmp_path / "run")
    args.remove("--no-progress")
    result = run_subprocess(*args)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("train: step")]
    assert [line.split(",")[0] for line in lines] == ["train: step 1/3", "train: step 2/3", "train: step 3/3"]
    assert "loss" in lines[-1] and "ETA" in lines[-1] and "\r" not in result.stdout


def _terminal_sigint():
    """In the child: SIGINT as a terminal's Ctrl-C finds it (default action, not blocked), whatever this test
    process inherited or set (an ignored or blocked SIGINT is inherited through exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_says_where_to_resume(tmp_path):
    run = tmp_path / "run"
    args = [str(a) for a in train_args(run, steps=100000)]
    proc = subprocess.Popen([sys.executable, "-m", "ditkit.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_terminal_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints/0000002").is_dir():
        time.sleep(0.2)
    status = Path(f"/proc/{proc.pid}/status")
    signals = [line for line in status.read_text().splitlines() if line.startswith("Sig")] if status.exists() else []
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the training process did not stop on SIGINT; its signal state: {signals}") from None
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume auto" in err and "the latest checkpoint is" in err
    resumed = run_cli(*train_args(run, steps=checkpoint_steps(run)[-1] + 1), "--resume", "auto")[0]
    assert "resumed from" in resumed

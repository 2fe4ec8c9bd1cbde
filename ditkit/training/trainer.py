"""``ditkit train``: AdamW, warm-up then constant LR (optionally linear decay to 0), gradient clipping, EMA, optional
bf16 autocast, JSONL log, atomic checkpoints with exact resume, and under ``torchrun`` data parallel (DDP) or FSDP2
sharding with sharded DCP checkpoints (``train.parallel``, :mod:`ditkit.training.parallel`; gloo on CPU, nccl on GPU).

Randomness is a pure function of (seed, step): each step draws its batch indices, noise, timesteps and label-drop
mask for the *global* batch from a generator seeded with (seed, step), and each rank takes its slice. So a run gives
the same weights whatever the world size (up to reduction order) and resume is bitwise exact.
"""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from ..acceleration.attention.base import longest_attention
from ..core import checkpoint as ckpt
from ..core.config import to_dict
from ..core.configs import TrainConfig
from ..core.devices import available_memory, resolve_device
from ..core.outputs import write_text
from ..core.progress import progress_bar
from ..data.images import load_image_data
from ..models.dit import dit_config
from ..models.interop.autoencoder import Autoencoder, check_autoencoder_folder
from ..pipelines.build import build_model, build_process
from ..parallel.sequence import SequenceParallel
from .parallel import (ActivationCheckpointing, TrainingGroup, full_state_dict, fully_shard_model, grad_norm_value,
                       is_sharded, load_sharded_checkpoint, load_single_file_into_sharded, save_sharded_checkpoint)

# What a finished or started run leaves in its results folder (``--overwrite`` removes these)
RUN_FILES = ("checkpoints", "metrics.jsonl", "model.safetensors", "config.yaml")


def _epoch_perm(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(seed: int, step: int, batch: int, n: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: consecutive slices of per-epoch permutations."""
    pos = torch.arange(step * batch, (step + 1) * batch)
    epochs = (pos // n).tolist()
    perms = {e: _epoch_perm(seed, e, n) for e in set(epochs)}
    return torch.stack([perms[e][p % n] for e, p in zip(epochs, pos.tolist())])


class EMA:
    """Exponential moving average of the weights with warm-up: the decay at step s is min(decay, (1 + s) / (10 + s)),
    so short runs are not dominated by the initial weights (plain 0.999 keeps e^-2 = 14% of them after 2,000 steps)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int | None = None):
        """``step`` (0-based optimizer step just taken) enables the warm-up; None uses the plain decay."""
        decay = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def lr_factor(step: int, t_cfg) -> float:
    """LR multiplier after ``step`` optimizer steps: linear warm-up, constant, then (with ``decay_start``) linear
    decay to 0 at ``steps``. A pure function of the step, so resume and a changed ``steps`` stay consistent."""
    factor = min(1.0, (step + 1) / max(t_cfg.warmup_steps, 1))
    if t_cfg.decay_start is not None and step >= t_cfg.decay_start:
        factor *= max(0.0, (t_cfg.steps - step) / max(t_cfg.steps - t_cfg.decay_start, 1))
    return factor


def make_lr_schedule(opt, t_cfg):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t_cfg))


def apply_configured_lr(opt, sched, t_cfg) -> None:
    """After a resume, the configured ``train.lr`` and schedule govern from the resumed step on (the checkpoint's
    scheduler state carries the base LR it was started with; an unchanged config gives the same LR bit for bit)."""
    sched.base_lrs = [t_cfg.lr] * len(opt.param_groups)
    for group in opt.param_groups:
        group["initial_lr"] = t_cfg.lr
        group["lr"] = t_cfg.lr * lr_factor(sched.last_epoch, t_cfg)


def checkpoint_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "checkpoints"


def checkpoints(results_dir: str | Path) -> list[Path]:
    """The checkpoint folders of a run, oldest first."""
    return sorted(p for p in checkpoint_dir(results_dir).glob("[0-9]" * 7) if (p / "state.pt").is_file())


def latest_checkpoint(results_dir: str | Path) -> Path | None:
    found = checkpoints(results_dir)
    return found[-1] if found else None


def prune_checkpoints(results_dir: str | Path, keep: int) -> None:
    """Remove all but the latest ``keep`` checkpoint folders (0 = keep all)."""
    if keep:
        for path in sorted(checkpoint_dir(results_dir).glob("[0-9]" * 7))[:-keep]:
            shutil.rmtree(path)


def check_results_dir(results_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to train over an earlier run unless resuming it or ``overwrite`` (:func:`clear_run` removes it once
    every other check has passed)."""
    results = Path(results_dir)
    if resume and overwrite:
        raise ValueError(f"--resume {resume} continues the run in {results} and --overwrite deletes it: give one")
    if resume:
        return
    if results.exists() and not results.is_dir():
        raise NotADirectoryError(f"train.results_dir {results} is a file; set train.results_dir to a folder")
    found = [name for name in RUN_FILES[:3] if (results / name).exists()
             and not ((results / name).is_dir() and not any((results / name).iterdir()))]
    if found and not overwrite:
        raise ValueError(f"train.results_dir {results} already holds a run ({', '.join(found)}); continue it with "
                         f"--resume auto, train into another folder with --set train.results_dir={results}-2, or "
                         f"start again with --overwrite (deletes its {', '.join(RUN_FILES)})")


def clear_run(results_dir: str | Path) -> None:
    """Delete an earlier run's files (``--overwrite``)."""
    for name in RUN_FILES:
        path = Path(results_dir) / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def training_memory(model, local_batch: int) -> tuple[int, int]:
    """Estimated bytes of one training step of ``model`` (a DiT or VideoDiT) on ``local_batch`` samples, as (weights,
    gradients, AdamW moments and EMA: 5 float32 copies of the parameters; activations of the whole batch). The
    activations follow Korthikanti et al. (2022), 34 s h + 5 a s^2 bytes per sample and block in 16 bits, doubled for
    float32, with s the tokens and the attention term over the longest attention call: an estimate (within about
    2x), to refuse batches that cannot fit before any work."""
    config = model.config
    frames = config.num_frames // config.tubelet if hasattr(config, "num_frames") else 1
    tokens = frames * model.grid[0] * model.grid[1]
    attention = longest_attention(model) or tokens
    per_sample = config.depth * 2 * (34 * tokens * config.hidden_size + 5 * config.num_heads * tokens * attention)
    return 5 * 4 * sum(p.numel() for p in model.parameters()), local_batch * per_sample


def check_memory(model, local_batch: int, device: torch.device, shards: int = 1) -> None:
    """Refuse ``train.global_batch_size`` when the step's estimated memory (:func:`training_memory`, the weights
    divided over ``shards`` processes under FSDP) exceeds what ``device`` has free, naming the estimate and the
    largest batch that fits."""
    free = available_memory(device)
    static, activations = training_memory(model, local_batch)
    static //= shards
    if free is None or static + activations <= free:
        return
    per_sample = activations / local_batch
    fits = int((free - static) // per_sample) if free > static else 0
    gib = 2 ** 30
    fix = (f"use train.global_batch_size <= {fits} per process" if fits else "this model does not fit this device")
    raise ValueError(f"train.global_batch_size needs about {(static + activations) / gib:.1f} GiB per process on "
                     f"{device} (estimate: {activations / gib:.1f} GiB of activations for {local_batch} samples, "
                     f"{static / gib:.1f} GiB of weights, gradients, optimizer and EMA) but {free / gib:.1f} GiB is "
                     f"free: {fix}, or train on a device with more memory")


def _unreadable(path: Path, file: Path, err) -> ValueError:
    earlier = [p for p in checkpoints(path.parent.parent) if p.name < path.name]
    fix = (f"resume from the previous checkpoint with --resume {earlier[-1]}" if earlier else
           "no earlier checkpoint is left: start again with --overwrite")
    return ValueError(f"checkpoint file {file} is corrupt or truncated ({err}); {fix}")


def check_checkpoint(path: Path) -> int:
    """The step of checkpoint folder ``path`` after checking that its three files are complete (cheap: headers and
    CRCs, nothing loaded); a damaged file is an error naming it and the previous checkpoint."""
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{path} is not a ditkit training checkpoint (no state.pt); pass a folder under "
                                f"<results_dir>/checkpoints/ or --resume auto")
    try:
        bad = zipfile.ZipFile(path / "state.pt").testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise _unreadable(path, path / "state.pt", e) from None
    if bad is not None:
        raise _unreadable(path, path / "state.pt", f"bad CRC in {bad}")
    if is_sharded(path) and not (path / "sharded" / ".metadata").is_file():
        raise _unreadable(path, path / "sharded" / ".metadata", "missing")
    meta = {}
    for name in ("model.safetensors", "ema.safetensors"):
        try:
            meta = ckpt.read_metadata(path / name)
        except ValueError as e:
            raise _unreadable(path, path / name, str(e).split("(", 1)[-1].rsplit(")", 1)[0]) from None
    return int(meta.get("step", int(path.name)))


def resume_checkpoint(results_dir: str | Path, resume: str | None, steps: int) -> Path | None:
    """The checkpoint ``resume`` ('auto' = the latest, or a folder) names, checked and within ``steps``; None to
    start from scratch."""
    if not resume:
        return None
    if resume == "auto":
        path = latest_checkpoint(results_dir)
        if path is None:
            if os.environ.get("RANK", "0") == "0":
                print(f"--resume auto: no checkpoint under {checkpoint_dir(results_dir)}, starting from scratch")
            return None
    else:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder; give one under "
                                    f"{checkpoint_dir(results_dir)}/ or --resume auto")
    step = check_checkpoint(path)
    if steps < step:
        raise ValueError(f"train.steps={steps} is below the step of the checkpoint to resume ({path}, step {step}): "
                         f"set --set train.steps={step} or more to continue it, or start a new run with another "
                         f"train.results_dir")
    return path


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the log rows after ``step`` (they are trained again after a resume), atomically."""
    if not path.is_file():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                rows.append(line + "\n")
        except (ValueError, KeyError, TypeError):    # a line cut short by a killed run
            continue
    write_text(path, "".join(rows))


def model_metadata(cfg: TrainConfig, model, step: int, extra: dict | None = None) -> dict:
    """What a model file says about itself: format, architecture, training config, step, and what the model adds
    (``model.file_metadata``: a text model's tokenizer and encoder)."""
    return {"format": model.format_name, "dit_config": model.config.to_dict(),
            "train_config": to_dict(cfg), "step": step, **getattr(model, "file_metadata", {}),
            **(extra or {})}


def write_checkpoint_files(folder: Path, cfg, model, model_state: dict, ema_state: dict, sched, step: int,
                           optimizer_state: dict | None = None) -> None:
    """model.safetensors, ema.safetensors and state.pt (weights_only-loadable: step, LR schedule, RNG, config, and
    the optimizer unless it is in the sharded part) into ``folder``."""
    meta = model_metadata(cfg, model, step)
    ckpt.save_weights(folder / "model.safetensors", model_state, meta)
    ckpt.save_weights(folder / "ema.safetensors", ema_state, meta)
    state = {"step": step, "scheduler": sched.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
                     "python": list(random.getstate()[1])},
             "config_yaml": yaml.safe_dump(to_dict(cfg))}
    if optimizer_state is not None:
        state["optimizer"] = optimizer_state
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, folder / "state.pt")


def save_training_checkpoint(path: Path, cfg, model, ema, opt, sched, step: int):
    """A single-file checkpoint folder written atomically: model.safetensors, ema.safetensors, state.pt."""
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_checkpoint_files(tmp, cfg, model, model.state_dict(), ema.model.state_dict(), sched, step, opt.state_dict())
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_training_checkpoint(path: Path, model, ema, opt, sched, sharded_model: bool = False) -> int:
    """Load a checkpoint folder (checked first with :func:`check_checkpoint`), single-file or sharded, into the
    training state (plain or FSDP-sharded modules, ``sharded_model``); its step."""
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    if is_sharded(path):
        load_sharded_checkpoint(path, model, ema, opt)
    elif sharded_model:
        load_single_file_into_sharded(path, model, ema, opt, state["optimizer"])
    else:
        ckpt.load_state_dict_strict(model, ckpt.load_weights(path / "model.safetensors"),
                                    str(path / "model.safetensors"))
        ckpt.load_state_dict_strict(ema.model, ckpt.load_weights(path / "ema.safetensors"),
                                    str(path / "ema.safetensors"))
        opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["rng"]["numpy"], dtype=np.uint32), *np_state[2:]))
    py_state = random.getstate()
    random.setstate((py_state[0], tuple(state["rng"]["python"]), py_state[2]))
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


def prepare_training(cfg, resume: str | None, overwrite: bool, dit_name: str | None) -> Path | None:
    """Everything checked before any work: the config, the patch size of DiT ``dit_name`` (pixel space; None: the
    config checks its own) or the autoencoder folder, the results folder, the checkpoint to resume (returned). Applies ``train.num_threads``."""
    cfg.validate()
    if getattr(cfg.model, "autoencoder", None):
        check_autoencoder_folder(cfg.model.autoencoder)
    elif dit_name and not getattr(cfg.model, "diffusers_class", None):
        _patch_size(dit_name, cfg.model.input_size)
    check_results_dir(cfg.train.results_dir, resume, overwrite)
    path = resume_checkpoint(cfg.train.results_dir, resume, cfg.train.steps)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    return path


def _patch_size(name: str, input_size: int) -> int:
    """The patch size of DiT ``name`` ('DiT-T/4'), checked to divide ``input_size``."""
    patch = dit_config(name).patch_size
    if input_size % patch:
        family = name.rsplit("/", 1)[0]
        fits = [f"{family}/{p}" for p in (2, 4, 8) if input_size % p == 0]
        raise ValueError(f"model.input_size={input_size} is not divisible by the patch size {patch} of {name}: "
                         f"use {' or '.join(fits) or 'another patch size'}, or a model.input_size that is a "
                         f"multiple of {patch}")
    return patch


def train(cfg: TrainConfig, resume: str | None = None, progress: bool | None = None, max_steps: int | None = None,
          overwrite: bool = False) -> Path:
    """Train; returns the path of the exported EMA model (``<results_dir>/model.safetensors``).
    ``max_steps`` stops early (after checkpointing) without changing the schedule, for tests and time limits;
    ``overwrite`` deletes an earlier run in ``train.results_dir`` (without it, or ``resume``, that is an error)."""
    t_cfg = cfg.train
    resume_path = prepare_training(cfg, resume, overwrite, cfg.model.name)
    device = resolve_device(t_cfg.device, flag="train.device")
    group = TrainingGroup(device, t_cfg.parallel, t_cfg.ulysses_degree)
    if device.type == "cuda" and group.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    local_batch = group.local_batch(t_cfg.global_batch_size)

    data = load_image_data(cfg.data.name, cfg.data.image_size, cfg.data.path, cfg.data.channels)
    if data.num_classes > cfg.model.num_classes:
        raise ValueError(f"dataset has {data.num_classes} classes but model.num_classes={cfg.model.num_classes}: "
                         f"set model.num_classes={data.num_classes}")
    if data.images.shape[1] != cfg.data.channels:
        raise ValueError(f"dataset images have {data.images.shape[1]} channels but data.channels={cfg.data.channels}")
    autoencoder = None
    if cfg.model.autoencoder:
        autoencoder = Autoencoder(cfg.model.autoencoder, device)
        model_channels, model_size = autoencoder.latent_channels, cfg.data.image_size // autoencoder.downsample
    else:
        model_channels, model_size = cfg.data.channels, cfg.data.image_size

    torch.manual_seed(t_cfg.seed)
    model = build_model(cfg.model, model_channels, model_size).to(device)
    process = build_process(cfg.diffusion, cfg.model.learn_sigma)
    B, lo = t_cfg.global_batch_size, group.data_rank * local_batch

    def losses(train_model, step: int, g: torch.Generator) -> dict:
        idx = batch_indices(t_cfg.seed, step, B, len(data.images))[lo:lo + local_batch]
        x = data.images[idx].to(device)
        y = data.labels[idx].to(device)
        if autoencoder is not None:
            x = autoencoder.encode(x)
        noise = torch.randn((B, *x.shape[1:]), generator=g)[lo:lo + local_batch].to(device)
        if cfg.diffusion.objective == "ddpm":
            t = torch.randint(0, process.num_timesteps, (B,), generator=g)[lo:lo + local_batch].to(device)
        else:
            t = process.sample_t(B, g)[lo:lo + local_batch].to(device)
        drop = (torch.rand(B, generator=g) < cfg.model.class_dropout_prob)[lo:lo + local_batch].to(device)
        return process.training_losses(train_model, x, t, noise, {"y": y, "force_drop_ids": drop})

    return run_training(cfg, model, losses, device, group, resume_path, progress, max_steps, overwrite)


def run_training(cfg, model, losses, device: torch.device, group: TrainingGroup, resume: Path | None,
                 progress: bool | None, max_steps: int | None, overwrite: bool = False) -> Path:
    """The optimisation loop shared by the image and video trainers: AdamW + LR schedule, EMA, resume (from the
    checkpoint folder ``resume``, see :func:`prepare_training`), DDP, JSONL log, progress, checkpoints and the
    exported EMA model, in the processes of ``group``. ``losses(train_model, step, g)`` builds this rank's part of the global batch of ``step`` from
    the (seed, step) generator ``g`` and returns the loss terms (``loss`` per sample). ``overwrite`` deletes an
    earlier run in the results folder once the batch is known to fit (:func:`check_memory`)."""
    try:
        return _optimise(cfg, model, losses, device, group, resume, progress, max_steps, overwrite)
    finally:
        group.release()


def _optimise(cfg, model, losses, device, group: TrainingGroup, resume, progress, max_steps, overwrite) -> Path:
    t_cfg = cfg.train
    rank, world = group.rank, group.world
    results = Path(t_cfg.results_dir)
    fsdp = t_cfg.parallel == "fsdp"
    if fsdp and hasattr(model, "save_diffusers"):
        raise ValueError("train.parallel=fsdp shards ditkit models (DiT, VideoDiT); train a diffusers class with "
                         "train.parallel=ddp")
    check_memory(model, group.local_batch(t_cfg.global_batch_size), device, world if fsdp else 1)
    if overwrite and rank == 0:
        clear_run(results)
    ema = EMA(model, t_cfg.ema_decay)
    if t_cfg.activation_checkpointing:
        ActivationCheckpointing().attach(model)
    if group.sequence is not None:
        SequenceParallel(group.sequence).attach(model)
    if fsdp:
        fully_shard_model(model, device, t_cfg.bf16)
        fully_shard_model(ema.model, device, t_cfg.bf16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t_cfg.lr,
                            weight_decay=t_cfg.weight_decay, betas=(0.9, 0.999))
    sched = make_lr_schedule(opt, t_cfg)

    step = 0
    if resume is not None:
        step = load_training_checkpoint(resume, model, ema, opt, sched, sharded_model=fsdp)
        apply_configured_lr(opt, sched, t_cfg)
        if rank == 0:
            print(f"resumed from {resume} at step {step}")
    train_model = model
    if world > 1 and not fsdp:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if rank == 0:
        results.mkdir(parents=True, exist_ok=True)
        write_text(results / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        _truncate_metrics(results / "metrics.jsonl", step)
    log = open(results / "metrics.jsonl", "a") if rank == 0 else None
    end = t_cfg.steps if max_steps is None else min(t_cfg.steps, max_steps)
    bar = progress_bar(t_cfg.steps, "train", enabled=progress if rank == 0 else False, initial=step,
                       every=t_cfg.log_every)
    model.train()
    t0, t_last, s_last = time.time(), time.time(), step
    try:
        while step < end:
            g = torch.Generator().manual_seed(t_cfg.seed * 1_000_003 + step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t_cfg.bf16 and not fsdp):
                terms = losses(train_model, step, g)
                loss = terms["loss"].float().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip) if t_cfg.grad_clip > 0
                         else None)
            opt.step()
            sched.step()
            ema.update(model, step)
            step += 1
            if rank == 0 and (step % t_cfg.log_every == 0 or step == end):
                now = time.time()
                rec = {"step": step, "loss": loss.item(), "mse": terms["mse"].float().mean().item(),
                       "lr": sched.get_last_lr()[0], "steps_per_sec": (step - s_last) / max(now - t_last, 1e-9),
                       "elapsed_sec": now - t0}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm_value(grad_norm)
                if "vb" in terms:
                    rec["vb"] = terms["vb"].float().mean().item()
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                t_last, s_last = now, step
            bar.update(1)
            if step % t_cfg.ckpt_every == 0 or step == end:
                path = checkpoint_dir(results) / f"{step:07d}"
                if fsdp:
                    save_sharded_checkpoint(path, model, ema, opt, lambda folder, full, full_ema: write_checkpoint_files(
                        folder, cfg, model, full, full_ema, sched, step))
                elif rank == 0:
                    save_training_checkpoint(path, cfg, model, ema, opt, sched, step)
                if rank == 0:
                    prune_checkpoints(results, t_cfg.keep_checkpoints)
            if world > 1 and step % t_cfg.ckpt_every == 0:
                dist.barrier()
    except KeyboardInterrupt:
        latest = latest_checkpoint(results)
        where = (f"the latest checkpoint is {latest} (step {int(latest.name)}): continue with --resume auto "
                 f"(same config and train.results_dir)" if latest else
                 "no checkpoint was written yet: start again with --overwrite")
        raise KeyboardInterrupt(f"training stopped at step {step} of {t_cfg.steps}; {where}") from None
    finally:
        bar.close()
        if log is not None:
            log.close()
    out = results / "model.safetensors"
    ema_state = full_state_dict(ema.model) if fsdp else ema.model.state_dict()
    if rank == 0:
        ckpt.save_weights(out, ema_state,
                          model_metadata(cfg, model, step, {"weights": "ema", "train_seconds_this_run": time.time() - t0}))
        if hasattr(ema.model, "save_diffusers"):             # a diffusers class: also its own folder layout
            ema.model.save_diffusers(results / "diffusers", to_dict(cfg.diffusion))
    if world > 1:
        dist.barrier()
    return out

"""``ditkit train``: AdamW, warm-up then constant LR (optionally linear decay to 0), gradient clipping, EMA, optional
bf16 autocast, JSONL log, atomic checkpoints with exact resume, and data parallel under ``torchrun`` (DDP; gloo on
CPU, nccl on GPU).

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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from ..core import checkpoint as ckpt
from ..core.config import to_dict
from ..core.configs import TrainConfig
from ..data.images import load_image_data
from ..models.interop.autoencoder import Autoencoder
from ..pipelines.build import build_model, build_process


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def latest_checkpoint(results_dir: str | Path) -> Path | None:
    steps = sorted(p for p in checkpoint_dir(results_dir).glob("[0-9]" * 7) if (p / "state.pt").is_file())
    return steps[-1] if steps else None


def model_metadata(cfg: TrainConfig, model, step: int, extra: dict | None = None) -> dict:
    return {"format": model.format_name, "dit_config": model.config.to_dict(),
            "train_config": to_dict(cfg), "step": step,
            **(extra or {})}


def save_training_checkpoint(path: Path, cfg, model, ema, opt, sched, step: int):
    """A checkpoint folder written atomically: model.safetensors, ema.safetensors, state.pt (weights_only-loadable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    meta = model_metadata(cfg, model, step)
    ckpt.save_weights(tmp / "model.safetensors", model.state_dict(), meta)
    ckpt.save_weights(tmp / "ema.safetensors", ema.model.state_dict(), meta)
    state = {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
                     "python": list(random.getstate()[1])},
             "config_yaml": yaml.safe_dump(to_dict(cfg))}
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, tmp / "state.pt")
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_training_checkpoint(path: Path, model, ema, opt, sched) -> int:
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{path} is not a ditkit training checkpoint (no state.pt); pass a folder under "
                                f"<results_dir>/checkpoints/ or --resume auto")
    ckpt.load_state_dict_strict(model, ckpt.load_weights(path / "model.safetensors"), str(path / "model.safetensors"))
    ckpt.load_state_dict_strict(ema.model, ckpt.load_weights(path / "ema.safetensors"), str(path / "ema.safetensors"))
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
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


def _setup_distributed(device: torch.device):
    if "RANK" not in os.environ or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def train(cfg: TrainConfig, resume: str | None = None, progress: bool | None = None, max_steps: int | None = None) -> Path:
    """Train; returns the path of the exported EMA model (``<results_dir>/model.safetensors``).
    ``max_steps`` stops early (after checkpointing) without changing the schedule, for tests and time limits."""
    t_cfg = cfg.train
    if t_cfg.num_threads:
        torch.set_num_threads(t_cfg.num_threads)
    device = resolve_device(t_cfg.device)
    rank, world = _setup_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if t_cfg.global_batch_size % world:
        raise ValueError(f"train.global_batch_size={t_cfg.global_batch_size} is not divisible by the world size {world}")
    local_batch = t_cfg.global_batch_size // world

    data = load_image_data(cfg.data.name, cfg.data.image_size, cfg.data.path, cfg.data.channels)
    if data.num_classes > cfg.model.num_classes:
        raise ValueError(f"dataset has {data.num_classes} classes but model.num_classes={cfg.model.num_classes}")
    if data.images.shape[1] != cfg.data.channels:
        raise ValueError(f"dataset images have {data.images.shape[1]} channels but data.channels={cfg.data.channels}")
    autoencoder = None
    if cfg.model.autoencoder:
        autoencoder = Autoencoder(cfg.model.autoencoder, device)
        model_channels, model_size = autoencoder.latent_channels, cfg.data.image_size // autoencoder.downsample
    else:
        model_channels, model_size = cfg.data.channels, cfg.data.image_size
        if (cfg.model.in_channels, cfg.model.input_size) != (model_channels, model_size):
            raise ValueError(f"model.in_channels/input_size ({cfg.model.in_channels}, {cfg.model.input_size}) must "
                             f"match the data ({model_channels}, {model_size}) in pixel space")

    torch.manual_seed(t_cfg.seed)
    model = build_model(cfg.model, model_channels, model_size).to(device)
    process = build_process(cfg.diffusion, cfg.model.learn_sigma)
    B, lo = t_cfg.global_batch_size, rank * local_batch

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

    return run_training(cfg, model, losses, device, rank, world, resume, progress, max_steps)


def run_training(cfg, model, losses, device: torch.device, rank: int, world: int, resume: str | None,
                 progress: bool | None, max_steps: int | None) -> Path:
    """The optimisation loop shared by the image and video trainers: AdamW + LR schedule, EMA, resume, DDP, JSONL log,
    checkpoints and the exported EMA model. ``losses(train_model, step, g)`` builds this rank's part of the global
    batch of ``step`` from the (seed, step) generator ``g`` and returns the loss terms (``loss`` per sample)."""
    t_cfg = cfg.train
    results = Path(t_cfg.results_dir)
    ema = EMA(model, t_cfg.ema_decay)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t_cfg.lr,
                            weight_decay=t_cfg.weight_decay, betas=(0.9, 0.999))
    sched = make_lr_schedule(opt, t_cfg)

    step = 0
    if resume:
        path = latest_checkpoint(results) if resume == "auto" else Path(resume)
        if path is None:
            if rank == 0:
                print(f"--resume auto: no checkpoint under {checkpoint_dir(results)}, starting from scratch")
        else:
            step = load_training_checkpoint(path, model, ema, opt, sched)
            apply_configured_lr(opt, sched, t_cfg)
            if rank == 0:
                print(f"resumed from {path} at step {step}")
    train_model = model
    if world > 1:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if rank == 0:
        results.mkdir(parents=True, exist_ok=True)
        (results / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    log = open(results / "metrics.jsonl", "a") if rank == 0 else None
    end = t_cfg.steps if max_steps is None else min(t_cfg.steps, max_steps)
    show = (progress if progress is not None else os.isatty(1)) and rank == 0
    bar = tqdm(total=t_cfg.steps, initial=step, disable=not show, desc="train", dynamic_ncols=True)
    model.train()
    t0, t_last, s_last = time.time(), time.time(), step
    while step < end:
        g = torch.Generator().manual_seed(t_cfg.seed * 1_000_003 + step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t_cfg.bf16):
            terms = losses(train_model, step, g)
            loss = terms["loss"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip) if t_cfg.grad_clip > 0 else None
        opt.step()
        sched.step()
        ema.update(model, step)
        step += 1
        bar.update(1)
        if rank == 0 and (step % t_cfg.log_every == 0 or step == end):
            now = time.time()
            rec = {"step": step, "loss": loss.item(), "mse": terms["mse"].float().mean().item(),
                   "lr": sched.get_last_lr()[0], "steps_per_sec": (step - s_last) / max(now - t_last, 1e-9),
                   "elapsed_sec": now - t0}
            if grad_norm is not None:
                rec["grad_norm"] = float(grad_norm)
            if "vb" in terms:
                rec["vb"] = terms["vb"].float().mean().item()
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec['loss']:.4f}", it_s=f"{rec['steps_per_sec']:.2f}")
            t_last, s_last = now, step
        if rank == 0 and (step % t_cfg.ckpt_every == 0 or step == end):
            save_training_checkpoint(checkpoint_dir(results) / f"{step:07d}", cfg, model, ema, opt, sched, step)
        if world > 1 and step % t_cfg.ckpt_every == 0:
            dist.barrier()
    bar.close()
    out = results / "model.safetensors"
    if rank == 0:
        log.close()
        ckpt.save_weights(out, ema.model.state_dict(),
                          model_metadata(cfg, model, step, {"weights": "ema", "train_seconds_this_run": time.time() - t0}))
    if world > 1:
        dist.barrier()
    return out

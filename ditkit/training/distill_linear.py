"""``ditkit distill-linear``: convert a trained DiT into a linear-attention DiT with the LiT recipe.

1. Student = the teacher's architecture with every attention replaced by :class:`LinearAttention` (ReLU kernel,
   ``--heads`` heads, depth-wise ``--conv`` convolution on V).
2. Weight inheritance: every teacher weight is copied; with ``--no-inherit-attention`` the attention's qkv/proj are
   left at their fresh initialisation (LiT's ablation); the depth-wise conv starts at zero either way.
3. Hybrid distillation: the usual loss (DDPM: eps MSE + VB with learned sigma; flow matching: velocity MSE) plus the
   MSE of the student's prediction to the teacher's and, with learned sigma, of its variance interpolation values
   to the teacher's.

The result is an ordinary ditkit model file (``ditkit.load(PATH)``) with a JSON card next to it.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..core import checkpoint as ckpt
from ..core.config import from_dict
from ..core.configs import TrainConfig
from ..core.outputs import write_json
from ..core.progress import progress_bar
from ..data.images import load_image_data
from ..models.dit import DiT, DiTConfig
from ..pipelines.build import build_process
from ..pipelines.image import load_dit
from .trainer import EMA, batch_indices, model_metadata


def build_student(teacher: DiT, heads: int = 2, conv: int = 5, inherit_attention: bool = True) -> DiT:
    """A linear-attention DiT initialised from ``teacher`` (weights copied; see the module docstring)."""
    cfg = DiTConfig(**{**teacher.config.to_dict(), "attention": "linear", "linear_heads": heads, "linear_conv": conv})
    student = DiT(cfg)
    own = student.state_dict()
    inherited = {k: v for k, v in teacher.state_dict().items()
                 if k in own and (inherit_attention or ".attn." not in k)}
    missing = student.load_state_dict(inherited, strict=False).missing_keys
    unexpected = [k for k in missing if "dwconv" not in k and (inherit_attention or ".attn." not in k)]
    if unexpected:
        raise ValueError(f"teacher and student differ beyond linear attention: {unexpected}")
    return student


def hybrid_losses(process, student, teacher, x0, t, noise, model_kwargs: dict, w_eps: float = 1.0,
                  w_var: float = 1.0) -> dict:
    """LiT hybrid distillation: per-sample ``loss`` = the process's loss + w_eps * |eps_s - eps_t|^2 (the prediction:
    noise, or velocity for flow matching) + w_var * |v_s - v_t|^2 (v = the learned-variance channels, if any).
    x0, noise [N, C, H, W]; t [N] (DDPM indices or flow times)."""
    outs = {}

    def both(xt, tt, **kw):
        with torch.no_grad():
            outs["teacher"] = teacher(xt, tt, **kw)
        outs["student"] = student(xt, tt, **kw)
        return outs["student"]

    terms = process.training_losses(both, x0, t, noise, model_kwargs)
    s, te, C = outs["student"], outs["teacher"], x0.shape[1]
    terms["distill_eps"] = (s[:, :C] - te[:, :C]).pow(2).flatten(1).mean(1)
    terms["loss"] = terms["loss"] + w_eps * terms["distill_eps"]
    if s.shape[1] > C:
        terms["distill_var"] = (s[:, C:] - te[:, C:]).pow(2).flatten(1).mean(1)
        terms["loss"] = terms["loss"] + w_var * terms["distill_var"]
    return terms


def distill(teacher_name: str, out: str | Path, heads: int = 2, conv: int = 5, inherit_attention: bool = True,
            steps: int = 3000, minutes: float | None = None, batch_size: int = 64, lr: float = 5e-4,
            warmup: int = 100, ema_decay: float = 0.999, w_eps: float = 1.0, w_var: float = 1.0, seed: int = 0,
            log_every: int = 50, save_every: int = 100, progress: bool | None = None) -> Path:
    """Distil ``teacher_name`` (bundled name or file) into a linear DiT saved at ``out``; returns the path.
    Stops after ``steps`` or ``minutes`` of wall clock, whichever comes first; writes ``out`` (atomically) every
    ``save_every`` steps. ``progress``: a bar on terminals, a plain line every ``log_every`` steps otherwise (None),
    or nothing (False)."""
    if steps < 1 or batch_size < 1 or not lr > 0 or (minutes is not None and not minutes > 0):
        raise ValueError(f"distill needs steps >= 1, batch_size >= 1, lr > 0 and minutes > 0 (or None); got "
                         f"steps={steps}, batch_size={batch_size}, lr={lr}, minutes={minutes}")
    teacher, meta = load_dit(teacher_name)
    teacher.requires_grad_(False)
    cfg = from_dict(TrainConfig, meta["train_config"])
    if cfg.model.autoencoder:
        raise ValueError("distill-linear supports pixel-space teachers only (this one uses an autoencoder)")
    process = build_process(cfg.diffusion, teacher.config.learn_sigma)
    data = load_image_data(cfg.data.name, cfg.data.image_size, cfg.data.path, cfg.data.channels)
    torch.manual_seed(seed)
    student = build_student(teacher, heads, conv, inherit_attention).train()
    ema = EMA(student, ema_decay)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(warmup, 1)))
    out = Path(out)
    card = {"name": out.stem, "architecture": f"linear-attention DiT (LiT): ReLU linear attention, {heads} heads, "
            f"depth-wise {conv}x{conv} conv on V", "teacher": str(teacher_name), "teacher_step": meta.get("step"),
            "recipe": {"inherit_attention": inherit_attention, "hybrid_distillation": {"w_eps": w_eps, "w_var": w_var},
                       "batch_size": batch_size, "lr": lr, "warmup": warmup, "ema_decay": ema_decay, "seed": seed}}
    t0, step, avg = time.time(), 0, {}

    def save():
        card.update(steps=step, train_seconds=round(time.time() - t0, 1), final_losses=avg)
        ckpt.save_weights(out, ema.model.state_dict(), model_metadata(cfg, ema.model, step, {
            "weights": "ema", "card": card}))
        write_json(out.with_suffix(".json"), card, indent=2)

    bar = progress_bar(steps, "distill", enabled=progress, every=log_every)
    while step < steps and (minutes is None or time.time() - t0 < 60 * minutes):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = batch_indices(seed, step, batch_size, len(data.images))
        x0, y = data.images[idx], data.labels[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, process.num_timesteps, (batch_size,), generator=g) if cfg.diffusion.objective == "ddpm" \
            else process.sample_t(batch_size, g)
        drop = torch.rand(batch_size, generator=g) < cfg.model.class_dropout_prob
        terms = hybrid_losses(process, student, teacher, x0, t, noise, {"y": y, "force_drop_ids": drop}, w_eps, w_var)
        loss = terms["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.decay = min(ema_decay, (1 + step) / (10 + step))     # EMA warm-up: short runs forget the init
        ema.update(student)
        step += 1
        for k, v in terms.items():
            avg[k] = 0.9 * avg.get(k, v.mean().item()) + 0.1 * v.mean().item()
        bar.set_postfix(loss=f"{avg['loss']:.4f}", distill_eps=f"{avg['distill_eps']:.4f}")
        bar.update(1)
        if step % save_every == 0:
            save()
    bar.close()
    save()
    return out

"""Sampling loops for any step count.

Every sampler takes ``model_fn(x, t) -> output`` (already guided; t is the network's timestep: original integer
DDPM step, or flow time times the process's ``timestep_scale``), the initial noise ``x`` and a :class:`NoiseSource`
for stochastic steps. Gaussian samplers: ``ddpm`` (ancestral, respaced, learned or fixed variance), ``ddim`` (eta),
``dpm++2m`` (DPM-Solver++(2M), data prediction, midpoint). Flow samplers: ``euler``, ``heun`` and ``ddim``: on the
linear path x_s = (1 - s) x_data + s eps, DDIM (eta = 0) from the predictions x_data = x + s v, eps = x - (1 - s) v
gives x' = x + (s - s') v, which is algebraically the Euler step, so ``ddim`` runs Euler on flow models.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .flow import FlowMatching
from .gaussian import GaussianDiffusion, space_timesteps

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GAUSSIAN_SAMPLERS = ("ddpm", "ddim", "dpm++2m")
FLOW_SAMPLERS = ("euler", "heun", "ddim")
SAMPLERS = tuple(dict.fromkeys(GAUSSIAN_SAMPLERS + FLOW_SAMPLERS))


class NoiseSource:
    """Per-sample Gaussian noise: sample i draws from its own CPU generator seeded with ``seeds[i]``, so a sample's
    noise (initial and per step) does not depend on the batch it is generated in, nor on the device."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", dtype=torch.float32):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device, self.dtype = device, dtype

    def randn(self, *sample_shape: int) -> torch.Tensor:
        """[len(seeds), *sample_shape]."""
        return torch.stack([torch.randn(sample_shape, generator=g) for g in self.generators]).to(self.device, self.dtype)


def _progress(it, enabled: bool, desc: str):
    return tqdm(it, desc=desc, disable=not enabled, leave=False)


def default_timesteps(sampler: str, num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """Descending network timesteps. ddpm/ddim: DiT's respacing (fractional stride, from T-1 to 0);
    dpm++2m: diffusers' linspace spacing (T-1 ... ~T/S), followed by a final jump to clean data."""
    if sampler == "dpm++2m":
        ts = np.linspace(0, num_train_timesteps - 1, num_steps + 1).round()[::-1][:-1]
        return [int(t) for t in ts]
    return space_timesteps(num_train_timesteps, num_steps)[::-1]


def sample(model_fn: ModelFn, x: torch.Tensor, process, sampler: str, num_steps: int, noise: NoiseSource | None = None,
           eta: float = 0.0, timesteps: Sequence[int] | None = None, progress: bool = False,
           step_callback: Callable[[int, int], None] | None = None, clip_denoised: bool = False,
           timestep_callback: Callable[[float], None] | None = None) -> torch.Tensor:
    """Run ``sampler`` for ``num_steps`` steps from noise ``x``; returns the final sample (same shape as x).

    ``clip_denoised`` clamps each data prediction to [-1, 1] (ADM's choice for pixel-space models; latent models such
    as DiT's leave it off). It applies to the DDPM samplers; flow samplers ignore it.

    ``step_callback(i, num_steps)`` is called before the model evaluations of step i, and
    ``timestep_callback(t)`` before every call of ``model_fn`` with its network timestep as a host number (recipes
    decide from it without reading the device tensor).
    """
    def net(x: torch.Tensor, value: float, dtype=None) -> torch.Tensor:
        """model_fn at network timestep ``value`` for every row."""
        if timestep_callback is not None:
            timestep_callback(value)
        return model_fn(x, torch.full((x.shape[0],), value, device=x.device, dtype=dtype))

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)} (DDPM models: "
                         f"{', '.join(GAUSSIAN_SAMPLERS)}; flow-matching models: {', '.join(FLOW_SAMPLERS)})")
    if isinstance(process, FlowMatching):
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"sampler {sampler!r} does not apply to a flow-matching model; use one of {FLOW_SAMPLERS}")
        if sampler == "ddim" and eta != 0:
            raise ValueError("a flow-matching model samples DDIM deterministically only: use eta=0")
        return _flow_ode(net, x, process, num_steps, heun=sampler == "heun", progress=progress, cb=step_callback)
    if sampler not in GAUSSIAN_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} does not apply to a DDPM model; use one of {GAUSSIAN_SAMPLERS}")
    if timesteps is None:
        timesteps = default_timesteps(sampler, num_steps, process.num_timesteps)
    timesteps = [int(t) for t in timesteps]
    if any(a <= b for a, b in zip(timesteps, timesteps[1:])) or timesteps[-1] < 0 \
            or timesteps[0] >= process.num_timesteps:
        raise ValueError(f"{sampler} needs strictly decreasing timesteps in [0, {process.num_timesteps - 1}], got "
                         f"{len(timesteps)}: {timesteps[:3]} ... {timesteps[-3:]}; use fewer steps, or descending "
                         f"timesteps without repeats")
    if sampler == "dpm++2m":
        return _dpm_solver_pp_2m(net, x, process, timesteps, clip_denoised, progress, step_callback)
    respaced = process.respace(sorted(timesteps))
    if sampler == "ddpm":
        return _ddpm(net, x, respaced, noise, clip_denoised, progress, step_callback)
    return _ddim(net, x, respaced, noise, eta, clip_denoised, progress, step_callback)


def _ddpm(net, x, proc: GaussianDiffusion, noise, clip, progress, cb):
    n = proc.num_timesteps
    for i, k in enumerate(_progress(range(n - 1, -1, -1), progress, "ddpm")):
        if cb:
            cb(i, n)
        kk = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
        out = net(x, int(proc.timestep_map[k]), torch.long)
        mean, log_var, _, _ = proc.p_mean_variance(out, x, kk, clip_denoised=clip)
        x = mean if k == 0 else mean + torch.exp(0.5 * log_var) * noise.randn(*x.shape[1:])
    return x


def _ddim(net, x, proc: GaussianDiffusion, noise, eta, clip, progress, cb):
    n = proc.num_timesteps
    for i, k in enumerate(_progress(range(n - 1, -1, -1), progress, "ddim")):
        if cb:
            cb(i, n)
        out = net(x, int(proc.timestep_map[k]), torch.long)
        eps = out[:, :x.shape[1]]
        abar, abar_prev = float(proc.alphas_cumprod[k]), float(proc.alphas_cumprod_prev[k])
        x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        if clip:  # as ADM: clip the data prediction, then re-derive eps from it
            x0 = x0.clamp(-1, 1)
            eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0 and k > 0:
            x = x + sigma * noise.randn(*x.shape[1:])
    return x


def _dpm_solver_pp_2m(net, x, proc: GaussianDiffusion, timesteps, clip, progress, cb):
    """DPM-Solver++(2M) on the VP schedule; the last step jumps to sigma = 0 (returns the data prediction)."""
    abar = proc.alphas_cumprod
    alpha = lambda t: math.sqrt(abar[t])
    sigma = lambda t: math.sqrt(1 - abar[t])
    lam = lambda t: math.log(alpha(t)) - math.log(sigma(t))
    n = len(timesteps)
    prev_x0, prev_t = None, None
    for i in _progress(range(n), progress, "dpm++2m"):
        if cb:
            cb(i, n)
        t = timesteps[i]
        eps = net(x, t, torch.long)[:, :x.shape[1]]
        x0 = (x - sigma(t) * eps) / alpha(t)
        if clip:
            x0 = x0.clamp(-1, 1)
        if i == n - 1:
            return x0
        s = timesteps[i + 1]
        h = lam(s) - lam(t)
        if prev_x0 is None:
            d = x0
        else:
            r = (lam(t) - lam(prev_t)) / h
            d = x0 + 0.5 / r * (x0 - prev_x0)
        x = (sigma(s) / sigma(t)) * x - alpha(s) * math.expm1(-h) * d
        prev_x0, prev_t = x0, t
    return x


def _flow_ode(net, x, proc: FlowMatching, num_steps, heun, progress, cb):
    ts = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64).tolist()
    scale = proc.timestep_scale
    vel = lambda x, t: net(x, t * scale)[:, :x.shape[1]]
    for i in _progress(range(num_steps), progress, "heun" if heun else "euler"):
        if cb:
            cb(i, num_steps)
        t, t_next = ts[i], ts[i + 1]
        v = vel(x, t)
        x_next = x + (t_next - t) * v
        if heun:
            x_next = x + (t_next - t) * 0.5 * (v + vel(x_next, t_next))
        x = x_next
    return x

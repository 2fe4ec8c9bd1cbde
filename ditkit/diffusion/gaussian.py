"""Gaussian diffusion (DDPM / improved-DDPM as used by DiT): schedule, training loss, learned sigma, respacing.

Conventions: integer timesteps t in {0, ..., T-1}, t = T-1 is (almost) pure noise; x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps. The network predicts eps (channels [0, C)) and, with learned sigma, an interpolation value
v in [-1, 1] (channels [C, 2C)) between log beta_t and the clipped log posterior variance.
Schedule arrays are float64 NumPy (as in the reference) and are gathered into float32 tensors per step.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .flow import broadcast


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    scale = 1000 / num_timesteps
    return np.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta) for i in range(num_timesteps)])


def space_timesteps(num_timesteps: int, spacing: int | str) -> list[int]:
    """Kept timesteps, ascending. ``250`` -> DiT's fractional stride (0, 4, 8, ..., 999); ``"ddim50"`` -> exact
    integer stride (0, 20, ..., 980)."""
    if isinstance(spacing, str) and spacing.startswith("ddim"):
        n = int(spacing[4:])
        for stride in range(1, num_timesteps):  # the smallest integer stride giving exactly n steps
            if len(range(0, num_timesteps, stride)) == n:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"no integer stride gives exactly {n} DDIM steps from {num_timesteps} timesteps; "
                         f"use spacing {n} (fractional stride) instead")
    n = int(spacing)
    if not 1 <= n <= num_timesteps:
        raise ValueError(f"number of sampling steps must be in [1, {num_timesteps}], got {n}")
    if n == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (n - 1)
    return sorted({round(i * stride) for i in range(n)})


def _gather(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """arr[t] as float32 tensor on t's device, t [N] or per frame [N, F], shaped to broadcast over ndim dims."""
    return broadcast(torch.from_numpy(arr).to(t.device)[t].float(), ndim)


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of 8-bit data x in [-1, 1] under a discretised Gaussian (the t = 0 decoder term)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


class GaussianDiffusion:
    """A (possibly respaced) discrete diffusion process. ``timestep_map[k]`` is the original training timestep of
    respaced index k; the network is always called with original timesteps."""

    def __init__(self, betas: np.ndarray, learn_sigma: bool = True, timestep_map: list[int] | None = None):
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        self.learn_sigma = learn_sigma
        self.timestep_map = np.asarray(timestep_map if timestep_map is not None else range(len(betas)), dtype=np.int64)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:])) \
            if len(betas) > 1 else np.log(betas)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @classmethod
    def from_config(cls, schedule: str = "linear", num_timesteps: int = 1000, learn_sigma: bool = True):
        if schedule == "linear":
            betas = linear_betas(num_timesteps)
        elif schedule == "cosine":
            betas = cosine_betas(num_timesteps)
        else:
            raise ValueError(f"unknown noise schedule {schedule!r}; valid: linear, cosine")
        return cls(betas, learn_sigma)

    def respace(self, use_timesteps: list[int]) -> "GaussianDiffusion":
        """The process restricted to ``use_timesteps`` (ascending original indices): beta'_k = 1 - abar_k/abar_{k-1}."""
        if self.num_timesteps != len(self.timestep_map) or (self.timestep_map != np.arange(self.num_timesteps)).any():
            raise ValueError("respace the original process, not an already respaced one")
        abar = self.alphas_cumprod[np.asarray(use_timesteps)]
        betas = 1 - abar / np.append(1.0, abar[:-1])
        return GaussianDiffusion(betas, self.learn_sigma, list(use_timesteps))

    # ---- forward process -------------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _gather(self.sqrt_alphas_cumprod, t, x0.ndim) * x0 + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise

    def q_posterior(self, x0, xt, t):
        mean = _gather(self.posterior_mean_coef1, t, xt.ndim) * x0 + _gather(self.posterior_mean_coef2, t, xt.ndim) * xt
        return mean, _gather(self.posterior_log_variance_clipped, t, xt.ndim)

    def predict_x0(self, xt, t, eps):
        return _gather(self.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt - _gather(self.sqrt_recipm1_alphas_cumprod, t, xt.ndim) * eps

    # ---- reverse process -------------------------------------------------------------------------------------
    def p_mean_variance(self, model_output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False):
        """model_output [N, C or 2C, ...] at respaced index t -> (mean, log_variance, pred_x0, eps);
        ``clip_denoised`` clamps pred_x0 to [-1, 1] before forming the posterior mean."""
        C = xt.shape[1]
        eps = model_output[:, :C]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * C:
                raise ValueError(f"learned sigma needs {2 * C} output channels, got {model_output.shape[1]}")
            min_log = _gather(self.posterior_log_variance_clipped, t, xt.ndim)
            max_log = _gather(np.log(self.betas), t, xt.ndim)
            frac = (model_output[:, C:2 * C] + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        else:  # fixed "large" variance, as improved-DDPM's fixedlarge
            log_var = _gather(np.log(np.append(self.posterior_variance[1], self.betas[1:])), t, xt.ndim).expand_as(xt)
        pred_x0 = self.predict_x0(xt, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _ = self.q_posterior(pred_x0, xt, t)
        return mean, log_var, pred_x0, eps

    # ---- training --------------------------------------------------------------------------------------------
    def vb_terms_bpd(self, model_output, x0, xt, t):
        """Per-sample variational bound term in bits per dimension (KL for t > 0, decoder NLL at t = 0)."""
        true_mean, true_log_var = self.q_posterior(x0, xt, t)
        mean, log_var, _, _ = self.p_mean_variance(model_output, xt, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model, x0, t, noise, model_kwargs: dict | None = None, loss_mask=None) -> dict:
        """eps-MSE (+ VB with eps detached when sigma is learned). Returns per-sample tensors: loss, mse, vb.
        ``loss_mask`` (1 = counts) restricts the MSE to generated positions."""
        xt = self.q_sample(x0, t, noise)
        out = model(xt, torch.from_numpy(self.timestep_map).to(t.device)[t], **(model_kwargs or {}))
        C = x0.shape[1]
        err = (out[:, :C] - noise) ** 2
        mse = (err * loss_mask).flatten(1).sum(1) / loss_mask.flatten(1).sum(1).clamp(min=1) if loss_mask is not None \
            else err.flatten(1).mean(1)
        terms = {"mse": mse}
        if self.learn_sigma:
            frozen = torch.cat([out[:, :C].detach(), out[:, C:]], dim=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x0, xt, t)
            terms["loss"] = mse + terms["vb"]
        else:
            terms["loss"] = mse
        return terms

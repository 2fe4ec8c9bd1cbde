"""Flow matching with SiT's convention: t = 0 is noise, t = 1 is data.

Linear path x_t = t * x1 + (1 - t) * x0 (x0 noise, x1 data); the network predicts the velocity u_t = x1 - x0 and is
called with t * ``timestep_scale`` (1.0 = SiT, which feeds t in [0, 1] straight into DiT's timestep embedder).
Sampling integrates dx/dt = v(x, t) from t = 0 to t = 1.
"""
from __future__ import annotations

import torch


def broadcast(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-sample [N] -> [N, 1, 1, ...] or per-frame [N, F] -> [N, 1, F, 1, ...] to broadcast over ``ndim`` dims
    (channels at dim 1, frames at dim 2)."""
    if values.dim() == 1:
        return values.view(-1, *([1] * (ndim - 1)))
    return values.view(values.shape[0], 1, values.shape[1], *([1] * (ndim - 3)))


class FlowMatching:
    def __init__(self, timestep_scale: float = 1.0, train_eps: float = 0.0):
        self.timestep_scale = timestep_scale
        self.train_eps = train_eps
        self.learn_sigma = False

    def interpolate(self, data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """t [N], or [N, F] per frame of a video (:mod:`ditkit.diffusion.frames`)."""
        tt = broadcast(t, data.ndim)
        return tt * data + (1 - tt) * noise

    def sample_t(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device="cpu").to(device)
        return self.train_eps + (1 - 2 * self.train_eps) * u

    def training_losses(self, model, data, t, noise, model_kwargs: dict | None = None, loss_mask=None) -> dict:
        """Per-sample velocity MSE (mean over C, H, W, or over positions where ``loss_mask`` is 1)."""
        xt = self.interpolate(data, noise, t)
        out = model(xt, t * self.timestep_scale, **(model_kwargs or {}))
        err = (out[:, :data.shape[1]] - (data - noise)) ** 2
        mse = (err * loss_mask).flatten(1).sum(1) / loss_mask.flatten(1).sum(1).clamp(min=1) if loss_mask is not None \
            else err.flatten(1).mean(1)
        return {"loss": mse, "mse": mse}

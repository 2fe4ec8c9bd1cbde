"""Calibration on a few sampling trajectories of the float model: the network inputs of every call, per-channel
activation ranges of each linear layer (for SmoothQuant balancing) and per-layer sensitivity (for mixed precision).

Calibration uses its own seeds (``seed`` onwards, default 1000) so that it never sees the noise of evaluation runs,
which use seeds 0, 1, 2, ... by default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

MOMENTUM = 0.95          # ViDiT-Q: momentum-averaged activation max across timesteps
SENSITIVITY_CALLS = 8    # network calls (spread over the trajectory) used to rank layers


@dataclass
class Calls:
    """Network calls recorded along sampling trajectories, in call order (noise to data): (args, kwargs) of each
    ``model(...)`` call, e.g. ((x [B, C, H, W], t [B], y [B]), {}); B = 2 x samples with batched guidance."""
    inputs: list[tuple[tuple, dict]]

    def spread(self, n: int) -> list[tuple[tuple, dict]]:
        """``n`` calls evenly spread over the trajectory (all if there are fewer)."""
        if len(self.inputs) <= n:
            return self.inputs
        idx = torch.linspace(0, len(self.inputs) - 1, n).round().long().tolist()
        return [self.inputs[i] for i in idx]


@torch.no_grad()
def record_calls(pipe, num_samples: int = 4, num_steps: int = 20, seed: int = 1000) -> Calls:
    """Generate ``num_samples`` samples with the pipeline's float model and record every network call (called from a
    method's ``prepare``, during which the pipeline applies no recipe). Image DiTs: random classes, guidance 4 when
    the model has a null class, DDIM (Euler for flow models). Video pipelines: unconditional videos with their
    default sampler."""
    if num_samples < 1 or num_steps < 1:
        raise ValueError(f"calibration needs at least 1 sample and 1 step, got {num_samples} samples, {num_steps} steps")
    inputs = []

    def hook(module, args, kwargs):
        inputs.append((tuple(a.clone() for a in args), {k: v.clone() if torch.is_tensor(v) else v
                                                         for k, v in kwargs.items()}))

    kwargs = pipe.calibration_kwargs(num_samples, num_steps, seed)
    handle = pipe.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(**kwargs)
    finally:
        handle.remove()
    return Calls(inputs)


@torch.no_grad()
def activation_absmax(model: nn.Module, linears: list[nn.Linear], calls: Calls) -> dict[nn.Linear, torch.Tensor]:
    """Per input channel max |x| of each linear layer's input, [K] float32, momentum-averaged over the calls."""
    stats: dict[nn.Linear, torch.Tensor] = {}

    def hook(module, args):
        a = args[0].detach().reshape(-1, module.in_features).abs().amax(dim=0).float()
        prev = stats.get(module)
        stats[module] = a if prev is None else MOMENTUM * prev + (1 - MOMENTUM) * a

    handles = [lin.register_forward_pre_hook(hook) for lin in linears]
    try:
        for args, kwargs in calls.inputs:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return stats


def smooth_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant: s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha), [K]; the layer computes (X / s)(W * s)^T."""
    w_max = weight.detach().abs().amax(dim=0).float().clamp_min(1e-5)
    s = act_absmax.clamp_min(1e-5).pow(alpha) / w_max.pow(1 - alpha)
    return s.clamp_min(1e-5)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, slots: list[tuple[nn.Module, str]], make_layer, calls: Calls) -> list[float]:
    """For each (parent, attribute) slot holding a linear layer: the relative L2 error of the network's prediction
    channels when only that layer is replaced by ``make_layer(linear)``, over calls spread along the trajectory."""
    inputs = calls.spread(SENSITIVITY_CALLS)
    C = model.in_channels
    refs = [model(*args, **kwargs)[:, :C] for args, kwargs in inputs]
    ref_sq = sum(float(r.pow(2).sum()) for r in refs)
    errors = []
    for parent, attr in slots:
        original = getattr(parent, attr)
        setattr(parent, attr, make_layer(original))
        try:
            err_sq = sum(float((model(*args, **kwargs)[:, :C] - r).pow(2).sum()) for (args, kwargs), r in zip(inputs, refs))
        finally:
            setattr(parent, attr, original)
        errors.append((err_sq / max(ref_sq, 1e-30)) ** 0.5)
    return errors

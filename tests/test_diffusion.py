"""Gaussian diffusion (dit.md §4), samplers and classifier-free guidance, on tiny tensors and analytic models."""
import math

import numpy as np
import pytest
import torch

from ditkit.diffusion.flow import FlowMatching
from ditkit.diffusion.gaussian import GaussianDiffusion, linear_betas, space_timesteps
from ditkit.diffusion.guidance import GuidedModel
from ditkit.diffusion.samplers import NoiseSource, sample

torch.set_num_threads(1)
DATA_STD = 0.5


def original_space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The respacing loop of the reference (improved-diffusion) code for one section: a float cursor advanced by
    (T - 1) / (count - 1) and rounded."""
    stride = (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return taken


def gaussian_eps(process: GaussianDiffusion):
    """Exact eps prediction for data ~ N(0, DATA_STD^2): E[eps | x_t] = sqrt(1 - a) x / (a s^2 + 1 - a)."""
    abar = torch.from_numpy(process.alphas_cumprod)

    def fn(x, t):
        a = abar[t.long()].float().view(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * x / (a * DATA_STD ** 2 + 1 - a)
    return fn


# ---- schedule and respacing ------------------------------------------------------------------------------------
def test_linear_schedule():
    betas = linear_betas(1000)
    assert betas.dtype == np.float64 and len(betas) == 1000
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    p = GaussianDiffusion.from_config("linear", 1000)
    assert p.alphas_cumprod[0] == pytest.approx(0.9999, abs=1e-15)
    assert p.alphas_cumprod[999] == pytest.approx(4.04e-5, rel=2e-3)
    np.testing.assert_allclose(linear_betas(500)[[0, -1]], [2e-4, 0.04])  # scaled by 1000 / T


def test_respacing_250_and_ddim_strides():
    steps = space_timesteps(1000, 250)
    assert len(steps) == 250
    assert steps[:6] == [0, 4, 8, 12, 16, 20] and steps[-4:] == [987, 991, 995, 999]
    for n in (250, 100, 50, 27, 10, 7, 3, 2):
        assert space_timesteps(1000, n) == original_space_timesteps(1000, n)
    assert space_timesteps(1000, 1) == [999]  # ditkit: one step starts from pure noise
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim30") == list(range(0, 1000, 34))  # smallest stride with exactly 30 steps
    with pytest.raises(ValueError, match="no integer stride gives exactly 300 DDIM steps"):
        space_timesteps(1000, "ddim300")
    with pytest.raises(ValueError, match=r"must be in \[1, 1000\], got 0"):
        space_timesteps(1000, 0)


def test_respaced_betas():
    p = GaussianDiffusion.from_config("linear", 1000)
    use = space_timesteps(1000, 25)
    r = p.respace(use)
    abar = p.alphas_cumprod[use]
    np.testing.assert_allclose(r.betas, 1 - abar / np.append(1.0, abar[:-1]), rtol=1e-12)
    np.testing.assert_allclose(r.alphas_cumprod, abar, rtol=1e-12)  # same marginals at the kept steps
    assert r.timestep_map.tolist() == use
    with pytest.raises(ValueError, match="respace the original process"):
        r.respace([0, 1])


# ---- training loss -----------------------------------------------------------------------------------------------
def test_learned_sigma_vb_trains_only_the_variance_channels():
    p = GaussianDiffusion.from_config("linear", 1000, learn_sigma=True)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 4, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    out = (0.5 * torch.randn(4, 8, 4, 4, generator=g)).requires_grad_()
    seen = []

    def model(x, t):
        seen.append(t)
        return out
    t = torch.tensor([0, 1, 500, 999])
    terms = p.training_losses(model, x0, t, noise)
    assert all(torch.isfinite(terms[k]).all() for k in ("loss", "mse", "vb"))
    assert (terms["vb"] > 0).all()
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    torch.testing.assert_close(terms["mse"], ((out[:, :4] - noise) ** 2).mean((1, 2, 3)))
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert torch.equal(grad_vb[:, :4], torch.zeros_like(grad_vb[:, :4])) and grad_vb[:, 4:].abs().sum() > 0
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    assert torch.equal(grad_mse[:, 4:], torch.zeros_like(grad_mse[:, 4:])) and grad_mse[:, :4].abs().sum() > 0
    assert torch.equal(seen[0], t)  # unrespaced: network timesteps are the drawn ones


# ---- samplers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_gaussian_samplers_run_for_any_step_count(sampler):
    p = GaussianDiffusion.from_config("linear", 1000, learn_sigma=True)
    eps = gaussian_eps(p)
    model_fn = lambda x, t: torch.cat([eps(x, t), torch.tanh(x)], dim=1)  # v in [-1, 1] for the learned variance
    for steps in (1, 2, 7, 50):
        noise = NoiseSource([0, 1], dtype=torch.float32)
        out = sample(model_fn, noise.randn(4, 4, 4), p, sampler, steps, noise)
        assert out.shape == (2, 4, 4, 4) and torch.isfinite(out).all()


def test_deterministic_samplers_converge_to_the_data_scale():
    """With the exact eps of N(0, 0.25) data both ODE solvers are linear maps x_T -> c x_T with c -> 0.5; DDIM is
    first order, DPM-Solver++(2M) second order."""
    p = GaussianDiffusion.from_config("linear", 1000, learn_sigma=False)
    err = {(s, n): abs(sample(gaussian_eps(p), torch.ones(1, 1), p, s, n).item() - DATA_STD)
           for s in ("ddim", "dpm++2m") for n in (10, 20, 250)}
    assert err["ddim", 250] < 0.01 and err["dpm++2m", 250] < 0.001
    assert err["dpm++2m", 20] < err["ddim", 20] / 2 and err["dpm++2m", 10] < err["ddim", 10] / 1.2
    with pytest.raises(ValueError, match=r"dpm\+\+2m needs strictly decreasing timesteps in \[0, 999\]"):
        sample(gaussian_eps(p), torch.ones(1, 1), p, "dpm++2m", 1000)   # rounding would repeat timesteps


def test_ddpm_reaches_the_data_distribution():
    """Ancestral sampling with the exact eps of N(0, 0.25) data: 4096 values end with standard deviation 0.5."""
    p = GaussianDiffusion.from_config("linear", 1000, learn_sigma=False)
    noise = NoiseSource(range(8))
    out = sample(gaussian_eps(p), noise.randn(512), p, "ddpm", 250, noise)
    assert out.std().item() == pytest.approx(DATA_STD, rel=0.03)
    assert abs(out.mean().item()) < 0.03


def gaussian_flow(mu: float, s: float):
    """Exact marginal velocity E[x1 - x0 | x_t] for x1 ~ N(mu, s^2), x0 ~ N(0, 1), x_t = t x1 + (1 - t) x0. Its
    flow maps x0 to mu + s * x0."""
    def v(x, t):
        t = t.double().view(-1, *([1] * (x.ndim - 1)))
        var = t ** 2 * s ** 2 + (1 - t) ** 2
        return (mu + (t * s ** 2 - (1 - t)) / var * (x.double() - t * mu)).float()
    return v


def test_flow_samplers_converge_on_an_analytic_velocity_field():
    mu, s = 1.5, 0.3
    x0 = torch.linspace(-3, 3, 13).view(13, 1)
    exact = mu + s * x0
    proc = FlowMatching()
    err = {(m, n): (sample(gaussian_flow(mu, s), x0, proc, m, n) - exact).abs().max().item()
           for m in ("euler", "heun") for n in (1, 2, 7, 50, 100)}
    assert all(math.isfinite(e) for e in err.values())
    assert err["euler", 100] < 2e-2 and err["heun", 100] < 2e-4
    assert 1.8 < err["euler", 50] / err["euler", 100] < 2.2      # first order
    assert 3.5 < err["heun", 50] / err["heun", 100] < 4.5        # second order
    with pytest.raises(ValueError, match="does not apply to a flow-matching model"):
        sample(gaussian_flow(mu, s), x0, proc, "dpm++2m", 10)


# ---- classifier-free guidance --------------------------------------------------------------------------------------
class Recorder:
    """A class-conditional 'network' [N, 4, ...] -> [N, 8, ...] that records the batch size of each call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, y):
        self.batches.append(len(y))
        scale = (y.float() + 1).view(-1, 1, 1, 1)
        return torch.cat([x * scale + t.float().view(-1, 1, 1, 1) / 1000, -x * scale], dim=1)


def test_cfg_scale_one_is_the_conditional_output():
    net, x, t, y = Recorder(), torch.randn(2, 4, 3, 3), torch.tensor([500, 500]), torch.tensor([2, 5])
    out = GuidedModel(net, y, null_label=10, cfg_scale=1.0)(x, t)
    assert torch.equal(out, net(x, t, y)) and net.batches == [2, 2]  # one pass, no unconditional branch


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_formula_and_dit_three_channel_guidance(batched):
    net, x, t, y = Recorder(), torch.randn(2, 4, 3, 3), torch.tensor([500, 500]), torch.tensor([2, 5])
    cond, uncond = net(x, t, y), net(x, t, torch.tensor([10, 10]))
    full = GuidedModel(net, y, 10, cfg_scale=4.0, batched=batched)(x, t)
    torch.testing.assert_close(full[:, :4], uncond[:, :4] + 4 * (cond[:, :4] - uncond[:, :4]))
    assert torch.equal(full[:, 4:], cond[:, 4:])                      # learned variance from the conditional branch
    dit = GuidedModel(net, y, 10, cfg_scale=4.0, guide_channels=3, batched=batched)(x, t)
    torch.testing.assert_close(dit[:, :3], full[:, :3])
    assert torch.equal(dit[:, 3:], cond[:, 3:])                       # 4th latent channel left unguided
    assert not torch.allclose(dit[:, 3], full[:, 3])


def test_guidance_interval_skips_the_unconditional_pass_outside():
    p = GaussianDiffusion.from_config("linear", 1000)
    net, x, y = Recorder(), torch.randn(1, 4, 3, 3), torch.tensor([3])
    guided = GuidedModel(net, y, 10, cfg_scale=4.0, process=p, interval=(0.2, 0.6))
    for t, active in ((999, False), (599, True), (200, True), (100, False)):   # noise level t / 999
        net.batches.clear()
        out = guided(x, torch.tensor([t]))
        cond = net(x, torch.tensor([t]), y)
        assert net.batches[0] == (2 if active else 1)
        assert torch.equal(out, cond) != active

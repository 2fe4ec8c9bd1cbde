"""ditkit's DDIM and DPM-Solver++(2M) against diffusers 0.42.1's schedulers, step by step.

Equivalent configurations (both on DiT's linear betas 1e-4..0.02 over 1000 steps, eps prediction):

- DDIM: ``DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False,
  set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading" | "trailing")`` equals ditkit's
  ``sample(..., "ddim", n, eta=eta, timesteps=scheduler.timesteps)``. diffusers takes the previous timestep as
  t - 1000 // n, so only spacings with that uniform stride ("leading": 900, 800, ..., 0; "trailing": 999, 899, ..., 99)
  are comparable; ditkit's default DDIM timesteps (DiT's fractional stride 999 ... 0) have no diffusers equivalent.
  With eta > 0 both get the same injected noise (diffusers' ``variance_noise``); the last step adds none.
- DPM-Solver++(2M): ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
  solver_type="midpoint", timestep_spacing="linspace", final_sigmas_type="zero", lower_order_final=True,
  use_karras_sigmas=False)`` equals ditkit's ``sample(..., "dpm++2m", n)`` with its default timesteps. The first step is
  first order (no history), the last one jumps to sigma = 0, i.e. returns the data prediction (forced by
  ``final_sigmas_type="zero"``; ``lower_order_final`` only matters for solver order 3).

diffusers keeps its schedule in float32, ditkit in float64: states agree to ~2e-6 (asserted: 1e-5).
"""
import pytest
import torch

from ditkit.diffusion.gaussian import GaussianDiffusion
from ditkit.diffusion.samplers import default_timesteps, sample

diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)
# diffusers' DPM scheduler converts a tensor with np.array(..., copy=False) semantics (its issue, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

PROCESS = GaussianDiffusion.from_config("linear", 1000, learn_sigma=False)
SCHEDULE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon", steps_offset=0)


def model_fn(x, t):
    """A deterministic, nonlinear eps model: the exact eps of N(0, 0.25) data plus a t-dependent perturbation."""
    a = torch.from_numpy(PROCESS.alphas_cumprod[t.long().numpy()]).float().view(-1, 1, 1, 1)
    wobble = 0.01 * torch.cos(t.float() / 100).view(-1, 1, 1, 1)
    return (1 - a).sqrt() * x / (0.25 * a + 1 - a) + 0.05 * torch.tanh(x) + wobble


class Recorded:
    """model_fn that records the (state, timestep) of every call, i.e. ditkit's state before each step."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((x.clone(), int(t[0])))
        return model_fn(x, t)


class InjectedNoise:
    """A NoiseSource replacement returning a fixed list of tensors in order."""

    def __init__(self, tensors):
        self.tensors, self.used = list(tensors), 0

    def randn(self, *shape):
        self.used += 1
        return self.tensors[self.used - 1]


def run_diffusers(scheduler, x, step_kwargs=lambda i: {}):
    """Returns the states before each step, the timesteps and the final sample."""
    states = []
    for i, t in enumerate(scheduler.timesteps):
        states.append(x.clone())
        x = scheduler.step(model_fn(x, t.repeat(len(x))), t, x, **step_kwargs(i)).prev_sample
    return states, [int(t) for t in scheduler.timesteps], x


def assert_same_trajectory(rec: Recorded, states, timesteps, ours, theirs):
    assert [t for _, t in rec.calls] == timesteps
    for (x_ours, _), x_theirs in zip(rec.calls, states):
        torch.testing.assert_close(x_ours, x_theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps,spacing", [(10, "leading"), (25, "trailing")])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers(steps, spacing, eta):
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(2, 4, 6, 6, generator=g)
    noises = [torch.randn(2, 4, 6, 6, generator=g) for _ in range(steps)]
    scheduler = diffusers.DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    states, timesteps, theirs = run_diffusers(scheduler, x, lambda i: {"eta": eta, "variance_noise": noises[i]})
    rec, injected = Recorded(), InjectedNoise(noises)
    ours = sample(rec, x, PROCESS, "ddim", steps, injected, eta=eta, timesteps=timesteps)
    assert injected.used == (steps - 1 if eta > 0 else 0)
    assert_same_trajectory(rec, states, timesteps, ours, theirs)


@pytest.mark.parametrize("steps", [10, 25])
def test_dpm_solver_pp_2m_matches_diffusers(steps):
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(steps))
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **SCHEDULE, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", timestep_spacing="linspace",
        final_sigmas_type="zero", lower_order_final=True, use_karras_sigmas=False)
    scheduler.set_timesteps(steps)
    states, timesteps, theirs = run_diffusers(scheduler, x)
    assert default_timesteps("dpm++2m", steps) == timesteps        # ditkit's default spacing is diffusers' linspace
    rec = Recorded()
    ours = sample(rec, x, PROCESS, "dpm++2m", steps)
    assert_same_trajectory(rec, states, timesteps, ours, theirs)

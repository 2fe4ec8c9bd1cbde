"""diffusers' own caching hooks on the same weights, as bench rows with impl "diffusers".

The ditkit model is converted with ``to_diffusers`` (keeping ditkit's timestep frequency shift, so the converted
model computes the same function to ~1e-6) and sampled by ditkit's pipeline (same sampler, seeds, CFG batching)
through :class:`DiffusersDenoiser`. What diffusers 0.42.1 needed for each hook to run on
``DiTTransformer2DModel`` is listed in ``PEER_NOTES`` (it goes into BENCHMARKS.md).
Block evaluations are counted as in ditkit: every real attention (``attn1.to_q`` call) and feed-forward
(``ff.net.0`` call) adds rows x tokens / T half-blocks; hooked modules that return cached values do not call them.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import re
from typing import ClassVar

import torch

from ..acceleration.counting import BlockCounter
from ..acceleration.recipes import Recipe
from ..hooks.method import Method
from ..models.interop.diffusers_format import to_diffusers
from ..pipelines.diffusers_dit import AdaptedDiT
from ..pipelines.image import DiTPipeline
from .harness import Entry

PEER_NOTES = [
    "diffusers rows: the ditkit model converted with `to_diffusers` keeping ditkit's timestep frequency shift (0), so "
    "both compute the same function to ~1e-6 (stock diffusers uses shift 1, a ~9% output difference); sampled by "
    "ditkit's own sampler, seeds and batched CFG.",
    "diffusers speed-ups are relative to ditkit's `none`; the diffusers `none` row (converted model, no hooks) shows "
    "its own speed: `DiTTransformer2DModel` recomputes the timestep and label embeddings in every block.",
    "All diffusers hooks: DiT has no `CacheMixin` and its pipeline never opens a cache context, so a ditkit recipe "
    "step sets the context through the private `diffusers.hooks.hooks._set_cache_context` before every network call "
    "(name = CFG branch) and calls `reset_stateful_hooks` at every generation (nothing resets them otherwise).",
    "FirstBlockCache: runs once a context is set (DiT's `BasicTransformerBlock` is in diffusers' block registry).",
    "TaylorSeer: the default identifiers only match module names ending in `attn`, so on DiT (`attn1`) it hooks "
    "nothing and the default row is full compute; the tuned row passes `cache_identifiers` for "
    "`transformer_blocks.N.attn1` and `transformer_blocks.N.ff` and float32 factors.",
    "MagCache: `mag_ratios` are required; they come from diffusers' own calibration mode (`calibrate=True`), run once "
    "on the calibration samples at the benchmark's sampler and step count, its printed list parsed from stdout.",
    "PyramidAttentionBroadcast: needs `current_timestep_callback`; it returns the network timestep of the current call.",
]


ADAPTER_NOTES = [
    "ditkit rows (impl `ditkit`): every recipe through ditkit's diffusers adapter (`ditkit.accelerate`'s block-stack "
    "adapter) on the model converted with `to_diffusers` (ditkit's timestep frequency shift kept), sampled by ditkit's "
    "pipeline; `ditkit-native` rows are the same recipes on ditkit's own DiT; `psnr_vs_native` compares each adapter "
    "row's images with its native row's (same seeds).",
    "Speed-ups of every row are relative to the native `none` row; the diffusers `none` row (converted model, no "
    "hooks) shows the converted model's own speed (it recomputes the timestep and label embeddings in every block).",
]


def adapter_entries(pipe, resolved: list[tuple]) -> list[Entry]:
    """The recipes ``resolved`` ([(spec, display)]) through ditkit's adapter on ``pipe``'s model converted to a
    diffusers ``DiTTransformer2DModel``, as rows with impl "ditkit"."""
    model = AdaptedDiT(to_diffusers(pipe.model))
    twin = DiTPipeline(model, pipe.process, pipe.autoencoder, pipe.metadata)
    return [Entry(shown, "ditkit", twin, lambda: BlockCounter(model), Recipe(spec)) for spec, shown in resolved]


class DiffusersDenoiser(torch.nn.Module):
    """A diffusers ``DiTTransformer2DModel`` behind ditkit's ``model(x, t, y)`` interface."""

    def __init__(self, dmodel, like):
        super().__init__()
        self.dmodel, self.config, self.in_channels = dmodel, like.config, like.in_channels
        self.grid, self.current_t = like.grid, 999

    def forward(self, x, t, y=None):
        self.current_t = int(t.flatten()[0])
        return self.dmodel(x, timestep=t, class_labels=y, return_dict=False)[0]


@dataclasses.dataclass
class DiffusersContext(Method):
    """Drives diffusers' cache contexts from ditkit's generation / step / branch callbacks."""

    name: ClassVar[str] = "diffusers-context"

    def attach(self, model):
        self.dmodel, self.step, self.num_steps = model.dmodel, 0, 0

    def reset(self, num_steps):
        from diffusers.hooks import HookRegistry
        HookRegistry.check_if_exists_or_initialize(self.dmodel).reset_stateful_hooks(recurse=True)

    def begin_step(self, step, num_steps):
        self.step, self.num_steps = step, num_steps

    def begin_branch(self, branch):
        from diffusers.hooks.hooks import CacheContext, _set_cache_context
        _set_cache_context(self.dmodel, CacheContext(branch, step_index=self.step, num_inference_steps=self.num_steps))


class DiffusersCounter:
    """Block evaluations of a diffusers DiT (rows x tokens / T per attention or feed-forward call, halves)."""

    def __init__(self, denoiser: DiffusersDenoiser):
        self.denoiser, self.half_blocks = denoiser, 0.0

    @property
    def blocks(self) -> float:
        return self.half_blocks / 2

    def __enter__(self):
        tokens = self.denoiser.grid[0] * self.denoiser.grid[1]

        def count(module, args):
            self.half_blocks += args[0].shape[0] * args[0].shape[1] / tokens
        self.handles = [m.register_forward_pre_hook(count) for b in self.denoiser.dmodel.transformer_blocks
                        for m in (b.attn1.to_q, b.ff.net[0])]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _entry(pipe, label, apply):
    """A bench entry running a fresh converted model with ``apply(dmodel, denoiser)`` hooks."""
    dmodel = to_diffusers(pipe.model)
    denoiser = DiffusersDenoiser(dmodel, pipe.model)
    apply(dmodel, denoiser)
    dpipe = DiTPipeline(denoiser, pipe.process)
    recipe = Recipe()
    recipe.methods.append(DiffusersContext())
    dpipe.set_recipe(recipe)
    return Entry(label, "diffusers", dpipe, lambda: DiffusersCounter(denoiser))


def diffusers_magcache_ratios(pipe, task, num_prompts: int, seed: int) -> list[float]:
    """Run diffusers' MagCache calibration mode once on ``task`` resampled to ``num_prompts`` samples from ``seed``
    and parse the ratios it prints."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache
    entry = _entry(pipe, "calibration", lambda d, _: apply_mag_cache(
        d, MagCacheConfig(calibrate=True, num_inference_steps=task.sampling["num_sampling_steps"])))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        task.resample(num_prompts, seed)(entry.pipe)
    return ast.literal_eval(re.findall(r"\[[-+0-9.e, ]*\]", out.getvalue())[-1])


def diffusers_entries(pipe, task, num_prompts: int, calibration_seed: int) -> list:
    """FirstBlockCache, TaylorSeer, MagCache and PyramidAttentionBroadcast, each at its defaults and a tuned setting,
    for the image ``task``."""
    from diffusers.hooks import (FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                                 TaylorSeerCacheConfig, apply_first_block_cache, apply_mag_cache,
                                 apply_pyramid_attention_broadcast, apply_taylorseer_cache)
    steps = task.sampling["num_sampling_steps"]
    ratios = diffusers_magcache_ratios(pipe, task, num_prompts, calibration_seed)
    modules = dict(cache_identifiers=[r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"],
                   taylor_factors_dtype=torch.float32)
    pab = lambda n, lo, hi: (lambda d, den: apply_pyramid_attention_broadcast(d, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=n, spatial_attention_timestep_skip_range=(lo, hi),
        current_timestep_callback=lambda: den.current_t)))
    settings = {
        "none": lambda d, _: None,                       # the converted model without hooks: diffusers' own speed
        "FirstBlockCache": lambda d, _: apply_first_block_cache(d, FirstBlockCacheConfig()),
        "FirstBlockCache:threshold=0.2": lambda d, _: apply_first_block_cache(d, FirstBlockCacheConfig(threshold=0.2)),
        "TaylorSeer": lambda d, _: apply_taylorseer_cache(d, TaylorSeerCacheConfig()),
        "TaylorSeer:attn1+ff,interval=5,order=2": lambda d, _: apply_taylorseer_cache(
            d, TaylorSeerCacheConfig(cache_interval=5, max_order=2, **modules)),
        "MagCache": lambda d, _: apply_mag_cache(d, MagCacheConfig(num_inference_steps=steps, mag_ratios=ratios)),
        "MagCache:threshold=0.24,max_skip=6": lambda d, _: apply_mag_cache(d, MagCacheConfig(
            threshold=0.24, max_skip_steps=6, num_inference_steps=steps, mag_ratios=ratios)),
        "PyramidAttentionBroadcast": pab(2, 100, 800),
        "PyramidAttentionBroadcast:skip=3,t=0-1000": pab(3, 0, 1000),
    }
    return [_entry(pipe, label, apply) for label, apply in settings.items()]

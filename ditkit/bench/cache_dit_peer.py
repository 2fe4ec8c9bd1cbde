"""cache-dit's DBCache on the same weights, as bench rows with impl "cache-dit".

As for the diffusers rows (:mod:`.peers`): the ditkit model is converted with ``to_diffusers``, sampled by ditkit's
pipeline (same sampler, seeds, batched CFG) through :class:`~.peers.DiffusersDenoiser`, and block evaluations are
counted by :class:`~.peers.DiffusersCounter`. cache-dit hooks the bare ``DiTTransformer2DModel`` (no diffusers
pipeline) through a ``BlockAdapter``; :class:`CacheDitContext` starts a fresh cache context at every generation.
What cache-dit 1.5.3 needed to run at all is listed in ``CACHE_DIT_NOTES``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from typing import Any, ClassVar

from ..acceleration.recipes import Recipe
from ..hooks.method import Method
from ..models.interop.diffusers_format import to_diffusers
from ..pipelines.image import DiTPipeline
from .harness import Entry
from .peers import DiffusersCounter, DiffusersDenoiser

CACHE_DIT_NOTES = [
    "cache-dit rows: cache-dit 1.5.3 installed without its dependencies (`pip install --no-deps cache-dit==1.5.3`; "
    "it imports and runs on CPU with torch and diffusers alone, transformers is not needed); the same converted "
    "model, sampler, seeds and batched CFG as the diffusers rows.",
    "DBCache on a bare `DiTTransformer2DModel`: a `BlockAdapter` over `transformer_blocks` with "
    "`ForwardPattern.Pattern_3` (blocks take and return hidden states only) and cache-dit's `DiTPatchFunctor`, "
    "which replaces the model's forward (diffusers' forward reads `transformer_blocks[0].norm1` after the blocks, "
    "which the cached block list does not have), as cache-dit's own registered DiT adapter does.",
    "Without a pipeline the cache context is persistent and is never reset between generations (cache-dit resets "
    "it only per pipeline call, or once a step count passes `num_inference_steps`); a ditkit recipe step calls "
    "`cache_dit.refresh_context` at every generation. Steps are counted per network call; with ditkit's batched "
    "CFG ([cond; uncond] in one call) `enable_separate_cfg=False`: one residual difference and one decision for "
    "both halves.",
    "DBCache's default `Fn_compute_blocks=8` is more than DiT's blocks on small models, where cache-dit asserts at "
    "the first call; the default row keeps every other default and computes min(8, depth) first blocks (on a "
    "6-block model: every block, nothing cached).",
    "TaylorSeer: cache-dit's calibrator (`TaylorSeerCalibratorConfig`, order 1) extrapolates the cached residual "
    "of the middle blocks from the last compute steps.",
    "Removal: `cache_dit.disable_cache` leaves the patched forward, its `_norm1_emb` submodule (extra state-dict "
    "keys) and `_is_patched` on the model, and each call moves `transformer_blocks` to the end of the module "
    "order; ditkit deletes those and restores the order.",
]


@contextlib.contextmanager
def quiet_cache_dit():
    """cache-dit logs its INFO and WARNING lines to stdout (the bench's table); keep them off while hooking."""
    from cache_dit import logger
    handler = logger._default_handler
    level = handler.level
    handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        handler.setLevel(level)


def enable_dbcache(dmodel, cache_config, calibrator_config=None) -> list[str]:
    """Hook cache-dit's DBCache into ``dmodel`` (a diffusers ``DiTTransformer2DModel``) in place; returns the
    model's submodule order, which :func:`remove_dbcache` restores."""
    import cache_dit
    from cache_dit import BlockAdapter, ForwardPattern
    from cache_dit.caching.patch_functors import DiTPatchFunctor
    order = list(dmodel._modules)
    with quiet_cache_dit():
        adapter = BlockAdapter(transformer=dmodel, blocks=dmodel.transformer_blocks,
                               forward_pattern=ForwardPattern.Pattern_3, patch_functor=DiTPatchFunctor(),
                               check_forward_pattern=True)
        cache_dit.enable_cache(adapter, cache_config=cache_config, calibrator_config=calibrator_config)
    return order


def remove_dbcache(dmodel, order: list[str]) -> None:
    """Undo :func:`enable_dbcache` exactly: cache-dit's own removal, then what it leaves behind."""
    import cache_dit
    with quiet_cache_dit():
        cache_dit.disable_cache(dmodel)
    for name in ("forward", "_is_patched"):
        dmodel.__dict__.pop(name, None)
    if "_norm1_emb" in dmodel._modules:
        del dmodel._norm1_emb
    dmodel._modules = {name: dmodel._modules[name] for name in order}


@dataclasses.dataclass
class CacheDitContext(Method):
    """A fresh cache-dit context at every generation (``cache_config`` as enabled); batched CFG only."""

    name: ClassVar[str] = "cache-dit-context"
    cache_config: Any = None

    def attach(self, model):
        self.dmodel = model.dmodel

    def reset(self, num_steps):
        import cache_dit
        cache_dit.refresh_context(self.dmodel, cache_config=copy.deepcopy(self.cache_config))

    def begin_branch(self, branch):
        if branch == "uncond":
            raise ValueError("cache-dit rows count one step per network call: run CFG batched (cfg_batched=True)")


def dbcache_config(depth: int, **overrides):
    """``cache_dit.DBCacheConfig`` for batched CFG: cache-dit's defaults, ``overrides``, first blocks at most
    ``depth``."""
    from cache_dit import DBCacheConfig
    config = DBCacheConfig(enable_separate_cfg=False, **overrides)
    config.Fn_compute_blocks = min(config.Fn_compute_blocks, depth)
    return config


def cache_dit_entry(pipe, label: str, cache_config, calibrator_config=None) -> Entry:
    """A bench entry running a fresh converted model with DBCache (``cache_config``, optional calibrator)."""
    dmodel = to_diffusers(pipe.model)
    denoiser = DiffusersDenoiser(dmodel, pipe.model)
    enable_dbcache(dmodel, copy.deepcopy(cache_config), copy.deepcopy(calibrator_config))
    dpipe = DiTPipeline(denoiser, pipe.process)
    recipe = Recipe()
    recipe.methods.append(CacheDitContext(cache_config))
    dpipe.set_recipe(recipe)
    return Entry(label, "cache-dit", dpipe, lambda: DiffusersCounter(denoiser))


# Tuned settings, picked on mnist-dit (ddim, 50 steps, CFG 4) by a sweep on calibration seeds 1000-1007, disjoint
# from the benchmark's: the fewest block evaluations at >= 33 dB PSNR to full compute, plain, with one last block
# and with TaylorSeer. (label, DBCacheConfig overrides, TaylorSeer order or None).
TUNED = [
    ("DBCache:F1B0,threshold=0.2,warmup=4",
     dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.2, max_warmup_steps=4), None),
    ("DBCache:F1B1,threshold=0.2,warmup=4",
     dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.2, max_warmup_steps=4), None),
    ("DBCache+TaylorSeer:F1B0,threshold=0.3,warmup=4,order=1",
     dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.3, max_warmup_steps=4), 1),
]


def cache_dit_entries(pipe) -> list[Entry]:
    """DBCache at its defaults, the ``TUNED`` settings and DBCache + TaylorSeer, for an image DiT pipeline."""
    from cache_dit import TaylorSeerCalibratorConfig
    depth = len(pipe.model.stack_blocks)
    entries = [cache_dit_entry(pipe, "DBCache", dbcache_config(depth))]
    for label, overrides, order in TUNED:
        calibrator = None if order is None else TaylorSeerCalibratorConfig(taylorseer_order=order)
        entries.append(cache_dit_entry(pipe, label, dbcache_config(depth, **overrides), calibrator))
    return entries

"""cache-dit's DBCache as bench rows: a never-skipping setting is exact, a skipping one skips what it says, removal
restores the model."""
import pytest
import torch
from acceleration_util import tiny_pipe

pytest.importorskip("diffusers")
cache_dit = pytest.importorskip("cache_dit")

from ditkit.bench import cache_dit_peer as peer  # noqa: E402
from ditkit.bench.peers import DiffusersCounter, DiffusersDenoiser  # noqa: E402
from ditkit.models.interop.diffusers_format import to_diffusers  # noqa: E402
from ditkit.pipelines.image import DiTPipeline  # noqa: E402

torch.set_num_threads(1)
STEPS, LABELS, DEPTH = 8, [1, 7], 4
SAMPLING = dict(num_sampling_steps=STEPS, sampler="ddim", cfg_scale=4.0, seed=3)
ROWS = 2 * len(LABELS)                             # batched CFG: [cond; uncond]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe(flow=True)


def generate(entry_pipe, denoiser):
    with DiffusersCounter(denoiser) as counter:
        out = entry_pipe(LABELS, **SAMPLING)
    return out, counter.blocks


@pytest.fixture(scope="module")
def uncached(pipe):
    """Samples and block count of the converted model without hooks."""
    denoiser = DiffusersDenoiser(to_diffusers(pipe.model), pipe.model)
    return generate(DiTPipeline(denoiser, pipe.process), denoiser)


def run(pipe, calibrator=None, **overrides):
    entry = peer.cache_dit_entry(pipe, "row", peer.dbcache_config(DEPTH, **overrides), calibrator)
    return generate(entry.pipe, entry.pipe.model)


def test_never_skipping_setting_equals_no_cache(pipe, uncached):
    out, blocks = run(pipe, Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.0,
                      max_warmup_steps=0)
    assert blocks == uncached[1] == ROWS * STEPS * DEPTH
    torch.testing.assert_close(out, uncached[0], atol=1e-6, rtol=0)


def test_skipping_setting_computes_only_first_and_last_blocks_after_warmup(pipe, uncached):
    # a threshold >= 1 counts every step as similar: after 2 warm-up steps only Fn + Bn = 2 of 4 blocks run
    setting = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=1.0, max_warmup_steps=2)
    out, blocks = run(pipe, **setting)
    assert blocks == ROWS * (2 * DEPTH + (STEPS - 2) * 2)
    assert (out - uncached[0]).abs().max() > 1e-3
    entry = peer.cache_dit_entry(pipe, "row", peer.dbcache_config(DEPTH, **setting))
    first, again = (generate(entry.pipe, entry.pipe.model) for _ in range(2))    # a fresh context per generation
    assert first[1] == again[1] == blocks
    assert torch.equal(first[0], again[0]) and torch.equal(first[0], out)


def test_taylorseer_calibrator_changes_the_cached_steps_only(pipe):
    # its first derivative needs 4 compute steps (its step counter starts at the first update, at -1)
    setting = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1.0, max_warmup_steps=4)
    plain, plain_blocks = run(pipe, **setting)
    taylor, taylor_blocks = run(pipe, cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1), **setting)
    assert plain_blocks == taylor_blocks == ROWS * (4 * DEPTH + (STEPS - 4) * 1)
    assert (plain - taylor).abs().max() > 1e-4


def test_removal_restores_the_model_exactly(pipe):
    dmodel = to_diffusers(pipe.model)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([999, 500, 500, 3]), torch.tensor([1, 2, 10, 10])
    call = lambda: dmodel(x, timestep=t, class_labels=y, return_dict=False)[0]
    with torch.no_grad():
        before, attrs, keys = call(), set(vars(dmodel)), list(dmodel.state_dict())
        config = peer.dbcache_config(DEPTH, Fn_compute_blocks=1, residual_diff_threshold=1.0, max_warmup_steps=0)
        order = peer.enable_dbcache(dmodel, config)
        call(), call()
        peer.remove_dbcache(dmodel, order)
        after = call()
    assert torch.equal(after, before)
    assert set(vars(dmodel)) == attrs and list(dmodel.state_dict()) == keys
    assert "forward" not in vars(dmodel)


def test_default_row_keeps_every_block_on_a_model_shallower_than_its_first_blocks(pipe, uncached):
    default, *tuned = peer.cache_dit_entries(pipe)
    assert default.recipe == "DBCache" and default.impl == "cache-dit" and len(tuned) == 3
    out, blocks = generate(default.pipe, default.pipe.model)
    assert blocks == uncached[1]
    torch.testing.assert_close(out, uncached[0], atol=1e-6, rtol=0)

"""Feature-caching methods: exactness when nothing is skipped, known schedules, per-generation reset, CFG branch
separation, batch independence, every sampler, clear errors."""
import pytest
import torch
from acceleration_util import NEVER_SKIP, SKIPPING, recipe, tiny_pipe

from ditkit.acceleration.cache.calibration import save_calibration
from ditkit.acceleration.counting import BlockCounter
from ditkit.acceleration.recipes import Recipe
from ditkit.bench.tasks import calibrate_on_task

STEPS, LABELS = 10, [1, 7, 3]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe()


@pytest.fixture(scope="module")
def flow_pipe():
    return tiny_pipe(flow=True)


@pytest.fixture(scope="module")
def magfile(pipe, tmp_path_factory):
    cal = calibrate_on_task(pipe, "magcache", 3, num_sampling_steps=STEPS, sampler="ddim", cfg_scale=4.0)
    return save_calibration(cal, tmp_path_factory.mktemp("cal") / "mag.json")


def generate(pipe, spec, magfile, labels=LABELS, **kw):
    """Images, exact block count and the method's trace."""
    kw = {"num_sampling_steps": STEPS, "sampler": "ddim", "cfg_scale": 4.0, **kw}
    pipe.set_recipe(recipe(spec, magfile) if spec != "none" else None)
    if pipe.recipe:
        pipe.recipe.methods[0].trace = []                   # record the per-call decisions
    try:
        with BlockCounter(pipe.model) as counter:
            images = pipe(labels, **kw)
        trace = pipe.recipe.methods[0].trace if pipe.recipe else []
    finally:
        pipe.set_recipe(None)
    return images, counter.blocks, trace


@pytest.mark.parametrize("spec", NEVER_SKIP)
def test_never_skipping_equals_none_bitwise(pipe, flow_pipe, magfile, spec):
    ref, blocks, _ = generate(pipe, "none", magfile)
    out, n, _ = generate(pipe, spec, magfile)
    assert torch.equal(out, ref) and n == blocks == STEPS * 2 * len(LABELS) * 4
    ref, _, _ = generate(flow_pipe, "none", magfile, sampler="heun", cfg_scale=2.0, cfg_batched=False)
    out, _, _ = generate(flow_pipe, spec, magfile, sampler="heun", cfg_scale=2.0, cfg_batched=False)
    assert torch.equal(out, ref)


def computed_steps(trace):
    return [step for step, _, computed in trace if (all(computed) if isinstance(computed, list) else computed)]


def test_static_schedules(pipe, magfile):
    rows, depth = 2 * len(LABELS), 4
    # FORA counts down from N-1: refresh at step 0 and where N-1-i is a multiple of 3
    _, n, trace = generate(pipe, "fora:interval=3", magfile)
    assert computed_steps(trace) == [0, 3, 6, 9] and n == 4 * rows * depth
    _, n, trace = generate(pipe, "taylorseer:interval=4,warmup=2", magfile)
    assert computed_steps(trace) == [0, 1, 2, 6] and n == 4 * rows * depth
    _, n, trace = generate(pipe, "toca:interval=3", magfile)
    assert computed_steps(trace) == [0, 3, 6, 9] and 4 * rows * depth < n < 5 * rows * depth
    # Delta-DiT: rear half cached in steps 0-4, front half in 5-9; full at each stage's start, then every 3
    _, n, trace = generate(pipe, "delta_dit:interval=3", magfile)
    assert computed_steps(trace) == [0, 3, 5, 8] and n == (4 * depth + 6 * depth // 2) * rows


def test_adaptive_schedules_at_extreme_thresholds(pipe, magfile):
    rows, depth = 2 * len(LABELS), 4
    # TeaCache always computes the first and last steps
    _, n, trace = generate(pipe, "teacache:threshold=1e9", magfile)
    assert computed_steps(trace) == [0, STEPS - 1] and n == 2 * rows * depth
    # MagCache: retention 0.2 -> steps 0, 1; then at most max_skips consecutive skips
    _, n, trace = generate(pipe, "magcache:threshold=1e9,max_skips=2", magfile)
    assert computed_steps(trace) == [0, 1, 4, 7] and n == 4 * rows * depth
    # FirstBlockCache: block 0 always runs, the tail only at the first call
    _, n, trace = generate(pipe, "firstblockcache:threshold=1e9", magfile)
    assert computed_steps(trace) == [0] and n == rows * (depth + STEPS - 1)


@pytest.mark.parametrize("spec", SKIPPING)
def test_batch_equals_one_by_one(pipe, magfile, spec):
    batch, n_batch, trace = generate(pipe, spec, magfile)
    singles = [generate(pipe, spec, magfile, labels=[y], seed=i) for i, y in enumerate(LABELS)]
    assert n_batch < STEPS * 2 * len(LABELS) * 4
    assert sum(n for _, n, _ in singles) == pytest.approx(n_batch)
    # decisions match exactly (counts above); pixels up to float32 matmul differences between batch sizes, which
    # reach ~1e-4 without any recipe on this random model
    torch.testing.assert_close(batch, torch.cat([img for img, _, _ in singles]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("spec", ["teacache:threshold=0.05", "firstblockcache:threshold=0.05"])
def test_adaptive_decisions_are_per_sample(pipe, spec):
    """Two samples in one batch: the one whose input did not change skips, the one that changed computes."""
    model, recipe_ = pipe.model, Recipe(spec)
    x, t, y = torch.randn(2, 1, 32, 32), torch.full((2,), 500), torch.tensor([1, 2])
    moved = x.clone()
    moved[1] += torch.randn(1, 32, 32)
    recipe_.methods[0].trace = []
    with recipe_.applied(model):
        recipe_.reset(4)
        for step, inputs in enumerate((x, moved)):
            recipe_.begin_step(step, 4)
            recipe_.begin_branch("cond")
            model(inputs, t, y)
        assert [c for _, _, c in recipe_.methods[0].trace] == [[True, True], [False, True]]


@pytest.mark.parametrize("spec", SKIPPING)
def test_cfg_branches_batched_or_separate(pipe, magfile, spec):
    batched, n_b, trace_b = generate(pipe, spec, magfile)
    separate, n_s, trace_s = generate(pipe, spec, magfile, cfg_batched=False)
    torch.testing.assert_close(batched, separate, atol=1e-3, rtol=0)
    assert n_b == pytest.approx(n_s)
    assert {b for _, b, _ in trace_b} == {"cond+uncond"} and {b for _, b, _ in trace_s} == {"cond", "uncond"}


def test_separate_calls_keep_separate_state(pipe, magfile):
    pipe.set_recipe("fora")
    pipe(LABELS, num_sampling_steps=STEPS, cfg_scale=4.0, cfg_batched=False)
    keys = {k[0] for k in pipe.recipe.methods[0].states}
    pipe.set_recipe(None)
    assert keys == {"cond", "uncond"}


@pytest.mark.parametrize("spec", SKIPPING)
def test_reset_between_generations(magfile, spec):
    """Steps, resolution and batch change between calls of one recipe: same result as a fresh recipe."""
    pipe, small = tiny_pipe(), tiny_pipe(input_size=16)
    method = Recipe(recipe(spec, magfile))
    pipe.set_recipe(method)
    pipe(LABELS, num_sampling_steps=STEPS, cfg_scale=4.0)
    pipe.set_recipe(None)
    small.set_recipe(method)
    small(LABELS[:2], num_sampling_steps=7, cfg_scale=4.0)
    small.set_recipe(None)
    pipe.set_recipe(method)
    again = pipe(LABELS[:1], num_sampling_steps=6, cfg_scale=4.0)
    pipe.set_recipe(recipe(spec, magfile))
    fresh = pipe(LABELS[:1], num_sampling_steps=6, cfg_scale=4.0)
    pipe.set_recipe(None)
    assert torch.equal(again, fresh)


def test_state_is_keyed_on_shape_without_reset(pipe):
    """Calls with a different batch inside one generation use separate state (no size mismatch)."""
    recipe_ = Recipe("fora:interval=2")
    model = pipe.model
    with recipe_.applied(model):
        recipe_.reset(4)
        for step in range(4):
            recipe_.begin_step(step, 4)
            for n in (2, 3):
                recipe_.begin_branch("cond")
                model(torch.randn(n, 1, 32, 32), torch.full((n,), 999 - step * 250), torch.zeros(n, dtype=torch.long))
        assert len(recipe_.methods[0].states) == 2


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "euler", "heun"])
def test_every_sampler(pipe, flow_pipe, magfile, sampler):
    p = flow_pipe if sampler in ("euler", "heun") else pipe
    ref, full, _ = generate(p, "none", magfile, sampler=sampler, num_sampling_steps=7)
    for spec in SKIPPING:
        out, n, _ = generate(p, spec, magfile, sampler=sampler, num_sampling_steps=7)
        assert n < full and torch.isfinite(out).all(), spec


def test_errors_list_valid_choices(pipe):
    with pytest.raises(ValueError, match="unknown acceleration method 'foracache'; valid: .*fora.*teacache"):
        Recipe("foracache")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['intervall'\] for 'fora'; valid: interval"):
        Recipe("fora:intervall=2")
    with pytest.raises(ValueError, match="magcache needs calibrated magnitude ratios.*ditkit calibrate"):
        Recipe("magcache")
    with pytest.raises(ValueError, match=r"fora: interval=0 is not valid: expected an integer >= 1, e.g. fora:interval=3"):
        Recipe("fora:interval=0")
    with pytest.raises(ValueError, match="teacache cannot be combined with fora"):
        pipe.set_recipe("fora+teacache")
    pipe.set_recipe(None)
    with pytest.raises(ValueError, match="Linear does not implement ditkit.s block-stack contract"):
        Recipe("fora").attach(torch.nn.Linear(2, 2))


def test_model_call_outside_a_generation_says_why(pipe):
    with Recipe("taylorseer").applied(pipe.model) as r, pytest.raises(RuntimeError, match="sampler's step index"):
        r.reset(5)
        pipe.model(torch.randn(1, 1, 32, 32), torch.tensor([10]), torch.tensor([1]))


def test_detach_restores_the_model(pipe, magfile):
    ref, _, _ = generate(pipe, "none", magfile)
    generate(pipe, "teacache", magfile)
    before = {k: v for k, v in vars(pipe.model).items()}
    pipe.set_recipe("toca+w8a8+sta:min_tokens=0")
    pipe(LABELS, num_sampling_steps=3)
    pipe.set_recipe(None)
    assert vars(pipe.model) == before and all(a.backend is None and a.observer is None
                                               for a in pipe.model.modules() if hasattr(a, "observer"))
    assert all("branches" not in vars(b) for b in pipe.model.blocks)
    assert torch.equal(generate(pipe, "none", magfile)[0], ref)


def test_recipe_from_yaml_file(pipe, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("taylorseer:\n  interval: 3\n  order: 2\n")
    assert str(Recipe(str(path))) == "taylorseer:interval=3,order=2"


@pytest.mark.parametrize("steps", [1, 2])
def test_very_few_steps(pipe, magfile, steps):
    ref, full, _ = generate(pipe, "none", magfile, num_sampling_steps=steps)
    for spec in SKIPPING:
        out, n, _ = generate(pipe, spec, magfile, num_sampling_steps=steps)
        assert torch.isfinite(out).all() and n <= full, spec

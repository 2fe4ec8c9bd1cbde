"""ditkit recipes on diffusers transformers and pipelines (ditkit.adapters): the support matrix cell by cell, a real
diffusers DiTPipeline (batched CFG) and WanPipeline's loop (separate cond / uncond calls) driven by ``accelerate``, user
declarations, torch.compile unwrapping, the support-matrix CLI and diffusers DiT folders as ditkit models."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import diffusers  # noqa: E402

import ditkit  # noqa: E402
from acceleration_util import tiny_dit  # noqa: E402
from cli_util import cli_error, run_cli  # noqa: E402
from ditkit.acceleration.recipes import REGISTRY  # noqa: E402
from ditkit.adapters import BlockStack, accelerate, latent_grid  # noqa: E402
from ditkit.adapters.stack import _StackList  # noqa: E402
from ditkit.bench import support_matrix  # noqa: E402
from ditkit.bench.tiny_diffusers import TINY, dit, wan  # noqa: E402
from ditkit.models.interop.diffusers_format import save_diffusers  # noqa: E402

ATTENTION = ("svg", "sta", "topk", "fastattn", "linear")
# blocks ditkit does not split into attention / MLP branches (dual-stream or not written out): no ToCa
WHOLE_BLOCKS = ("SanaTransformer2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel",
                "CogVideoXTransformer3DModel", "HunyuanVideoTransformer3DModel")
NO_ATTENTION_BACKENDS = ("SanaTransformer2DModel",)
# joint text-image self-attention (HunyuanVideo's with padded text): sparse backends keep the text dense; linear
# attention cannot (no log-sum-exp)
JOINT = ("SD3Transformer2DModel", "FluxTransformer2DModel", "CogVideoXTransformer3DModel",
         "HunyuanVideoTransformer3DModel")


# --- 1. the support matrix --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(REGISTRY))
@pytest.mark.parametrize("model", list(TINY))
def test_support_matrix_cell(model, method, tmp_path):
    row = support_matrix.check(model, method, tmp_path)
    assert row["model"] == model and row["recipe"] == method
    assert row["status"] != "failed", row["detail"]
    if method == "toca" and model in WHOLE_BLOCKS:
        assert row["status"] == "cannot apply"
        assert "toca cannot apply" in row["detail"] and "whole-block" in row["detail"], row["detail"]
    elif method in ATTENTION and model in NO_ATTENTION_BACKENDS:
        assert row["status"] == "cannot apply"
        assert f"attention backends cannot apply to {model}" in row["detail"]
        assert "ReLU linear attention" in row["detail"], row["detail"]
    elif method == "linear" and model in JOINT:
        assert row["status"] == "cannot apply"
        assert "joint over text and image tokens" in row["detail"] and "log-sum-exp" in row["detail"], row["detail"]
    else:
        assert row["status"] == "ok", row["detail"]
        assert row["detail"]


# --- 2. a diffusers DiTPipeline -------------------------------------------------------------------------------------
STEPS = 7                                     # FORA interval 3 counts down from N-1: full steps 0, 3, 6


def _pipeline_dit(seed=0):
    """The tiny diffusers DiT with 1000 classes (DiTPipeline's null label is 1000): the TINY weights, its label
    table's rows 0..9 and null row kept (null -> row 1000)."""
    small, _ = dit(seed)
    cfg = {**small.config, "num_embeds_ada_norm": 1000}
    model = diffusers.DiTTransformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    state = small.state_dict()
    for key, table in model.state_dict().items():
        if key.endswith("class_embedder.embedding_table.weight"):
            small_table = state[key]
            table = torch.randn_like(table) * 0.02
            table[:10], table[1000] = small_table[:10], small_table[10]
            state[key] = table
    model.load_state_dict(state, strict=True)
    return model.eval()


def _dit_pipeline():
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
                                  norm_num_groups=4, layers_per_block=1).eval()
    pipe = diffusers.DiTPipeline(transformer=_pipeline_dit(), vae=vae, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def dit_pipe():
    return _dit_pipeline()


def _images(pipe, guidance_scale=4.0, steps=STEPS):
    return pipe(class_labels=[3, 7], guidance_scale=guidance_scale, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.fixture(scope="module")
def dit_reference(dit_pipe):
    return _images(dit_pipe)


def test_dit_pipeline_never_skipping_is_bitwise(dit_pipe, dit_reference):
    assert dit_reference.shape == (2, 8, 8, 3) and np.isfinite(dit_reference).all()
    with accelerate(dit_pipe, "fora:interval=1"):
        out = _images(dit_pipe)
    assert np.array_equal(out, dit_reference)


def test_dit_pipeline_fora_follows_the_pipeline_loop(dit_pipe, dit_reference):
    with accelerate(dit_pipe, "fora:interval=3") as handle:
        method = handle.recipe.methods[0]
        method.trace = []
        first = _images(dit_pipe)
        trace = list(method.trace)
        second = _images(dit_pipe)                    # reset at every call: same trajectory again
        assert method.trace == trace
    assert [s for s, _, _ in trace] == list(range(STEPS))
    assert {b for _, b, _ in trace} == {"cond+uncond"}
    assert [s for s, _, full in trace if full] == [0, 3, 6]
    assert np.array_equal(first, second)
    assert not np.array_equal(first, dit_reference)
    assert np.isfinite(first).all()


def test_dit_pipeline_remove_restores_everything(dit_pipe, dit_reference):
    cls, transformer = type(dit_pipe), dit_pipe.transformer
    blocks = transformer.transformer_blocks
    processors = [b.attn1.processor for b in blocks]
    handle = accelerate(dit_pipe, "fora:interval=3")
    assert type(dit_pipe) is not cls and isinstance(dit_pipe, cls)
    assert isinstance(transformer.transformer_blocks, _StackList)
    assert all(b.attn1.processor is not p for b, p in zip(blocks, processors))
    _images(dit_pipe)
    handle.remove()
    assert type(dit_pipe) is cls
    assert type(transformer.transformer_blocks) is torch.nn.ModuleList
    assert transformer.transformer_blocks is blocks
    assert all(b.attn1.processor is p for b, p in zip(transformer.transformer_blocks, processors))
    assert not transformer._forward_pre_hooks
    assert np.array_equal(_images(dit_pipe), dit_reference)


def test_dit_pipeline_without_guidance_is_the_cond_branch(dit_pipe):
    reference = _images(dit_pipe, guidance_scale=1.0, steps=3)
    with accelerate(dit_pipe, "fora:interval=1") as handle:
        handle.recipe.methods[0].trace = []
        out = _images(dit_pipe, guidance_scale=1.0, steps=3)
        trace = handle.recipe.methods[0].trace
    assert trace == [(0, "cond", True), (1, "cond", True), (2, "cond", True)]
    assert np.array_equal(out, reference)


# --- 3. separate CFG calls (WanPipeline's loop) ---------------------------------------------------------------------
# diffusers.WanPipeline cannot be built here: its module imports transformers (UMT5, AutoTokenizer), which is not
# installed, so diffusers exposes only a dummy that raises ImportError. SeparateCFGPipeline is WanPipeline's
# denoising loop (diffusers 0.42.1, Wan 2.1 path) on prompt embeddings: a cond call, then an uncond call, per step.
WAN_STEPS = 4
WAN_GUIDANCE = 5.0


class SeparateCFGPipeline:
    """WanPipeline's denoising loop: latents [1, C, F, H, W], scheduler.step once per step."""

    def __init__(self, transformer, scheduler):
        self.transformer, self.scheduler = transformer, scheduler

    @torch.no_grad()
    def __call__(self, prompt_embeds, negative_prompt_embeds, latents, num_inference_steps=WAN_STEPS,
                 guidance_scale=WAN_GUIDANCE):
        self.scheduler.set_timesteps(num_inference_steps)
        self.scheduler.set_begin_index(0)
        for t in self.scheduler.timesteps:
            timestep = t.expand(latents.shape[0])
            noise = self.transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=prompt_embeds,
                                     return_dict=False)[0]
            if guidance_scale > 1:
                noise_uncond = self.transformer(hidden_states=latents, timestep=timestep,
                                                encoder_hidden_states=negative_prompt_embeds, return_dict=False)[0]
                noise = noise_uncond + guidance_scale * (noise - noise_uncond)
            latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents


def _wan_inputs():
    gen = torch.Generator().manual_seed(1)
    return dict(prompt_embeds=torch.randn(1, 12, 16, generator=gen),
                negative_prompt_embeds=torch.randn(1, 12, 16, generator=gen),
                latents=torch.randn(1, 4, 2, 8, 8, generator=gen))


@pytest.fixture(scope="module")
def wan_pipe():
    transformer, _ = wan()
    return SeparateCFGPipeline(transformer, diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))


def _wan_latents(pipe, **kw):
    return pipe(**_wan_inputs(), **kw)


@pytest.fixture(scope="module")
def wan_reference(wan_pipe):
    return _wan_latents(wan_pipe)


def test_wan_pipeline_calls_cond_then_uncond(wan_pipe, wan_reference):
    assert wan_reference.shape == (1, 4, 2, 8, 8) and torch.isfinite(wan_reference).all()
    with accelerate(wan_pipe, "fora:interval=1") as handle:
        handle.recipe.methods[0].trace = []
        out = _wan_latents(wan_pipe)
        trace = handle.recipe.methods[0].trace
    assert trace == [(s, b, True) for s in range(WAN_STEPS) for b in ("cond", "uncond")]
    assert torch.equal(out, wan_reference)


def test_wan_pipeline_without_guidance_calls_cond_only(wan_pipe):
    with accelerate(wan_pipe, "fora:interval=1") as handle:
        handle.recipe.methods[0].trace = []
        _wan_latents(wan_pipe, guidance_scale=1.0)
        assert handle.recipe.methods[0].trace == [(s, "cond", True) for s in range(WAN_STEPS)]


def _wan_by_hand(pipe, recipe):
    """The same loop on the bare transformer, the recipe driven through the handle by hand."""
    inputs = _wan_inputs()
    model, latents = pipe.transformer, inputs["latents"]
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(WAN_STEPS)
    scheduler.set_begin_index(0)
    with accelerate(model, recipe) as handle, torch.no_grad():
        handle.recipe.methods[0].trace = []
        handle.reset(WAN_STEPS)
        for i, t in enumerate(scheduler.timesteps):
            handle.begin_step(i, WAN_STEPS)
            handle.set_timestep(float(t))
            args = dict(hidden_states=latents, timestep=t.expand(1), return_dict=False)
            handle.begin_branch("cond")
            noise_cond = model(encoder_hidden_states=inputs["prompt_embeds"], **args)[0]
            handle.begin_branch("uncond")
            noise_uncond = model(encoder_hidden_states=inputs["negative_prompt_embeds"], **args)[0]
            noise = noise_uncond + WAN_GUIDANCE * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents, handle.recipe.methods[0].trace


def test_wan_pipeline_keeps_a_cache_per_branch(wan_pipe, wan_reference):
    by_hand_none, _ = _wan_by_hand(wan_pipe, "fora:interval=1")
    assert torch.equal(by_hand_none, wan_reference)               # the hand loop is the pipeline's loop
    with accelerate(wan_pipe, "fora:interval=2") as handle:
        handle.recipe.methods[0].trace = []
        out = _wan_latents(wan_pipe)
        trace = handle.recipe.methods[0].trace
    # N=4, interval 2: full on step 0 and where N-1-s is even (1, 3); step 2 reuses step 1's caches
    assert trace == [(s, b, s != 2) for s in range(WAN_STEPS) for b in ("cond", "uncond")]
    by_hand, hand_trace = _wan_by_hand(wan_pipe, "fora:interval=2")
    assert hand_trace == trace
    assert torch.equal(out, by_hand)
    assert not torch.equal(out, wan_reference)


def test_bare_wan_uncond_reuses_its_own_cache():
    """fora:interval=2 over 3 steps: step 1 is cached; its uncond call must reuse step 0's uncond outputs. A model
    whose two branches see identical inputs except the text shows it: swapping which text is cond changes only
    which cache step 1 reads, so a cross-branch mix-up would make cond and uncond outputs of step 1 equal."""
    model, inputs = wan()
    x, text = inputs["hidden_states"][:1], inputs["encoder_hidden_states"]
    cond_text, uncond_text = text[:1], text[1:]
    t = torch.tensor([500.0])
    outs = {}
    with accelerate(model, "fora:interval=2") as handle, torch.no_grad():
        handle.recipe.methods[0].trace = []
        handle.reset(3)
        for step in range(2):
            handle.begin_step(step, 3)
            handle.set_timestep(500.0)
            for branch, emb in (("cond", cond_text), ("uncond", uncond_text)):
                handle.begin_branch(branch)
                outs[step, branch] = model(hidden_states=x, timestep=t, encoder_hidden_states=emb,
                                           return_dict=False)[0]
        trace = handle.recipe.methods[0].trace
    assert trace == [(0, "cond", True), (0, "uncond", True), (1, "cond", False), (1, "uncond", False)]
    # same input and timestep on both steps: a cached step replays its own branch's step-0 output exactly
    assert torch.allclose(outs[1, "cond"], outs[0, "cond"], atol=1e-6)
    assert torch.allclose(outs[1, "uncond"], outs[0, "uncond"], atol=1e-6)
    assert not torch.allclose(outs[0, "cond"], outs[0, "uncond"], atol=1e-3)


# --- 4. the declaration form ----------------------------------------------------------------------------------------
def _tiny_dit_sample(model, inputs, recipe, spec=None):
    with accelerate(model, recipe, spec=spec) as handle:
        handle.recipe.methods[0].trace = []
        out, blocks = support_matrix.sample(model, inputs, "DiTTransformer2DModel", handle)
        return out, blocks, handle.recipe.methods[0].trace


def test_user_declaration_equals_the_builtin_adapter():
    model, inputs = dit()
    spec = BlockStack(blocks=("transformer_blocks",), grid=latent_grid(), cfg="cond+uncond")
    for recipe in ("fora:interval=3", "teacache:threshold=10"):
        builtin = _tiny_dit_sample(model, inputs, recipe)
        declared = _tiny_dit_sample(model, inputs, recipe, spec)
        assert torch.equal(declared[0], builtin[0]) and declared[1:] == builtin[1:]
        assert builtin[1] < 2 * 2 * support_matrix.STEPS                  # it skipped something


def test_class_without_adapter_names_blockstack():
    class MyTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    with pytest.raises(ValueError, match="no adapter for MyTransformer") as err:
        accelerate(MyTransformer(), "fora")
    assert "BlockStack" in str(err.value)


def test_wrong_block_list_names_the_model_lists():
    model, _ = dit()
    with pytest.raises(ValueError, match="no block list blocks") as err:
        accelerate(model, "fora", spec=BlockStack(blocks=("blocks",), grid=latent_grid()))
    assert "its ModuleLists: transformer_blocks" in str(err.value)
    assert type(model.transformer_blocks) is torch.nn.ModuleList                 # nothing was changed


def test_bad_joint_declarations_are_clear_errors():
    with pytest.raises(ValueError, match="joint='text-middle'.*'text-first', 'text-last'"):
        BlockStack(blocks=("transformer_blocks",), grid=latent_grid(), text="encoder_hidden_states",
                   returns=("hidden", "text"), joint="text-middle")
    with pytest.raises(ValueError, match="joint= needs text="):
        BlockStack(blocks=("transformer_blocks",), grid=latent_grid(), joint="text-first")


# --- 5. torch.compile -------------------------------------------------------------------------------------------
def test_compiled_transformer_is_unwrapped():
    model, _ = dit()
    compiled = torch.compile(model)                    # lazy: nothing compiles unless it is called
    handle = accelerate(compiled, "fora")
    try:
        assert handle.adapter.model is model
        assert isinstance(model.transformer_blocks, _StackList)
    finally:
        handle.remove()
    assert type(model.transformer_blocks) is torch.nn.ModuleList


# --- 6. the support-matrix CLI --------------------------------------------------------------------------------------
def test_support_matrix_cli_writes_rows(tmp_path):
    path = tmp_path / "matrix.json"
    out, _ = run_cli("support-matrix", "--models", "DiTTransformer2DModel", "--recipes", "fora,w8a8",
                     "--json", path)
    rows = json.loads(path.read_text())
    assert [(r["model"], r["recipe"], r["status"]) for r in rows] == [
        ("DiTTransformer2DModel", "fora", "ok"), ("DiTTransformer2DModel", "w8a8", "ok")]
    assert all(set(r) == {"model", "recipe", "status", "detail"} for r in rows)
    assert "DiTTransformer2DModel" in out


def test_support_matrix_cli_rejects_unknown_models():
    cli_error("support-matrix", "--models", "NoSuchModel", "--recipes", "fora", names=("--models", "NoSuchModel"))


# --- 7. a diffusers DiT folder as a ditkit model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusers-dit")
    with pytest.warns(UserWarning, match="freq_shift"):
        save_diffusers(tiny_dit(), folder)
    return folder


def test_diffusers_folder_matches_the_native_pipeline(dit_folder):
    from ditkit.diffusion.gaussian import GaussianDiffusion
    from ditkit.models.interop.diffusers_format import from_diffusers
    from ditkit.pipelines.diffusers_dit import AdaptedDiT
    from ditkit.pipelines.image import DiTPipeline

    pipe = ditkit.load(str(dit_folder))
    assert isinstance(pipe, DiTPipeline) and isinstance(pipe.model, AdaptedDiT)
    assert pipe.model.config.freq_shift == 1
    native_model = from_diffusers(pipe.model.model)                  # same weights, freq shift 1
    native = DiTPipeline(native_model, GaussianDiffusion.from_config("linear", 1000, True))
    kw = dict(class_labels=[1, 4], num_sampling_steps=4, cfg_scale=4.0, seed=0)
    for recipe in (None, "fora:interval=2"):
        pipe.set_recipe(recipe)
        native.set_recipe(recipe)
        got, want = pipe(**kw), native(**kw)
        assert got.shape == want.shape == (2, 1, 32, 32)
        assert torch.equal(got, want), (recipe, (got - want).abs().max().item())          # bitwise
    pipe.set_recipe(None)
    native.set_recipe(None)
    assert not torch.equal(pipe(**kw), got)                          # fora:interval=2 changed the images


def test_generate_from_a_diffusers_folder(dit_folder, tmp_path):
    out = tmp_path / "x.png"
    run_cli("generate", "--model", dit_folder, "--num-sampling-steps", "2", "--class-labels", "1", "2",
            "--out", out)
    assert out.is_file() and out.stat().st_size > 0


class TwoExpertPipeline(SeparateCFGPipeline):
    """Wan 2.2's loop: ``transformer`` above a boundary timestep, ``transformer_2`` below it."""

    def __init__(self, transformer, transformer_2, scheduler, boundary=500.0):
        super().__init__(transformer, scheduler)
        self.transformer_2, self.boundary, self.high = transformer_2, boundary, transformer

    def __call__(self, prompt_embeds, negative_prompt_embeds, latents, num_inference_steps=WAN_STEPS,
                 guidance_scale=WAN_GUIDANCE):
        self.scheduler.set_timesteps(num_inference_steps)
        self.scheduler.set_begin_index(0)
        with torch.no_grad():
            for t in self.scheduler.timesteps:
                model = self.high if float(t) >= self.boundary else self.transformer_2
                timestep = t.expand(latents.shape[0])
                noise = model(hidden_states=latents, timestep=timestep, encoder_hidden_states=prompt_embeds,
                              return_dict=False)[0]
                latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents


def test_both_experts_of_a_two_transformer_pipeline_get_the_recipe():
    high, _ = wan(seed=0)
    low, _ = wan(seed=1)
    pipe = TwoExpertPipeline(high, low, diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    reference = pipe(**_wan_inputs())
    with accelerate(pipe, "fora:interval=1") as handle:
        assert len(handle.recipes) == 2 and [a.model for a in handle.adapters] == [high, low]
        assert torch.equal(pipe(**_wan_inputs()), reference)
    handle = accelerate(pipe, "fora:interval=2")
    for r in handle.recipes:
        r.methods[0].trace = []
    out = pipe(**_wan_inputs())
    high_steps = [s for s, _, _ in handle.recipes[0].methods[0].trace]
    low_steps = [s for s, _, _ in handle.recipes[1].methods[0].trace]
    assert high_steps and low_steps and max(high_steps) < min(low_steps)     # each expert sees its own steps
    assert sorted(high_steps + low_steps) == list(range(WAN_STEPS))
    assert not torch.equal(out, reference)
    handle.remove()
    handle.remove()                                                          # a second remove changes nothing
    assert torch.equal(pipe(**_wan_inputs()), reference)
    assert type(high.blocks) is torch.nn.ModuleList and type(low.blocks) is torch.nn.ModuleList

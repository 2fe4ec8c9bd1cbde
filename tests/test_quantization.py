"""Quantization: integer codes and packing, quantized layers vs float references, recipes that restore the model
bit-exactly, quantized checkpoints that reload identically, composition with caching and attention backends, errors."""
import json
import warnings

import pytest
import torch
from acceleration_util import tiny_pipe

from ditkit.acceleration.counting import BlockCounter
from ditkit.acceleration.quant.export import weight_bytes
from ditkit.acceleration.quant.layers import BF16Linear, W8A8Linear, WeightOnlyLinear
from ditkit.acceleration.quant.qtensor import (dequantize_groups, dequantize_symmetric, fake_quantize_activation,
                                               pack_int4, quantize_activation, quantize_weight_groups,
                                               quantize_weight_symmetric, unpack_int4)
from ditkit.acceleration.quantize import quantize_checkpoint
from ditkit.acceleration.recipes import Recipe
from ditkit.bench.harness import peak_tensor_memory
from ditkit.core import checkpoint as ckpt

KW = dict(class_labels=[1, 7, 3], num_sampling_steps=6, cfg_scale=4.0, seed=0)


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe()


@pytest.fixture(scope="module")
def reference(pipe):
    return pipe(**KW)


def test_int4_pack_unpack_round_trip():
    q = torch.randint(0, 16, (5, 2, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (5, 2, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    assert torch.equal(pack_int4(torch.tensor([[3, 12]], dtype=torch.uint8)), torch.tensor([[0xC3]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.parametrize("bits,group", [(8, 0), (8, 16), (4, 0), (6, 32)])
def test_symmetric_weight_codes_round_trip(bits, group):
    w = torch.randn(24, 64)
    q, scale = quantize_weight_symmetric(w, bits, group)
    assert q.dtype == torch.int8 and scale.shape == (24, 64 // group if group else 1)
    assert int(q.abs().max()) == 2 ** (bits - 1) - 1            # min-max range: the largest weight hits the top code
    err = (dequantize_symmetric(q, scale) - w).abs()
    step = scale.repeat_interleave(group or 64, dim=1)
    assert bool((err <= step / 2 + 1e-6).all())                  # round to nearest
    assert torch.equal(quantize_weight_symmetric(dequantize_symmetric(q, scale), bits, group)[0], q)


def test_group_int4_codes_round_trip():
    w = torch.randn(8, 96) + 0.5
    q, scale, low = quantize_weight_groups(w, 4, 32)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.dtype == low.dtype == torch.float16
    assert torch.equal(unpack_int4(pack_int4(q)), q)
    err = (dequantize_groups(q, scale, low) - w).abs()
    assert bool((err <= scale.float().repeat_interleave(32, dim=1) / 2 + 1e-3).all())


def test_activation_codes_are_per_token():
    x = torch.randn(6, 40) * torch.logspace(-2, 2, 6)[:, None]   # rows of very different magnitude
    q, s = quantize_activation(x, 8)
    assert s.shape == (6, 1) and bool((q.abs().amax(dim=1) == 127).all())
    assert bool(((q.float() * s - x).abs() <= s / 2 + 1e-7).all())
    assert torch.equal(fake_quantize_activation(x, 8, "token"), q.float() * s)
    y = fake_quantize_activation(x, 8, "tensor")                # one asymmetric range: small rows lose everything
    assert rel(y[-1], x[-1]) < 0.01 and rel(y[0], x[0]) > 0.5


def test_w8a8_linear_is_the_exact_integer_computation():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    layer = W8A8Linear.from_linear(lin)
    y = layer(x)
    assert y.shape == (3, 5, 48) and y.dtype == torch.float32
    # the same codes multiplied in float64: int32 accumulation is exact, so only the float epilogue differs
    xq, s = quantize_activation(x.reshape(-1, 64), 8)
    exact = (xq.double() @ layer.qweight.double().t()) * s.double() * layer.weight_scale.double().t() + lin.bias.double()
    assert torch.allclose(y.reshape(-1, 48).double(), exact, rtol=1e-6, atol=1e-6)
    fake = W8A8Linear.from_linear(lin, fake=True)
    assert torch.allclose(fake(x), y, rtol=1e-5, atol=1e-5) and "FAKE-QUANT" in fake.label
    ref = lin(x)
    assert 1e-4 < rel(y, ref) < 0.01                              # W8A8 on Gaussian data: ~0.5% relative error
    assert rel(layer.weight, lin.weight) < 0.01


def test_w8a8_per_tensor_runs_fbgemm_and_matches_its_simulation():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(20, 64)
    real, fake = (W8A8Linear.from_linear(lin, act="tensor", fake=f) for f in (False, True))
    assert "fbgemm" in real.label
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as flops:
        real(x)
        W8A8Linear.from_linear(lin)(x)
    assert flops.get_total_flops() == 2 * (2 * 20 * 64 * 48)          # integer kernels counted like matmuls
    assert rel(real(x), fake(x)) < 2e-3 and rel(real(x), lin(x)) < 0.02
    real.qweight.copy_(W8A8Linear.from_linear(torch.nn.Linear(64, 48)).qweight)   # repacked after a change
    assert rel(real(x), fake(x)) > 0.5


def test_smoothing_keeps_the_function_and_tames_an_outlier_channel():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(50, 64)
    x[:, 5] *= 100                                               # an outlier input channel, as in DiT activations
    plain = rel(W8A8Linear.from_linear(lin)(x), lin(x))
    s = x.abs().amax(0).pow(0.5) / lin.weight.abs().amax(0).pow(0.5)
    smoothed = W8A8Linear.from_linear(lin, s)
    assert rel(smoothed(x), lin(x)) < plain / 3
    assert rel(smoothed.weight, lin.weight) < 0.05               # the effective weight is still W


@pytest.mark.parametrize("bits,group,bound", [(8, 0, 0.01), (4, 32, 0.12)])
def test_weight_only_linear_vs_float(bits, group, bound):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    layer = WeightOnlyLinear.from_linear(lin, bits=bits, group_size=group)
    x = torch.randn(2, 7, 64)
    assert rel(layer(x), lin(x)) < bound
    assert rel(layer.weight, lin.weight) < bound
    bf = BF16Linear.from_linear(lin)
    assert bf(x).dtype == torch.float32 and rel(bf(x), lin(x)) < 0.01


@pytest.mark.parametrize("spec", ["w8a8", "w8a8:act=tensor", "w8a8:smooth=0.5,float_layers=2,calibration_steps=4",
                                  "w8a8:weight_bits=4,group_size=16,fake=true", "w8", "w4:group_size=32", "bf16"])
def test_recipes_quantize_and_detach_restores_bitwise(pipe, reference, spec):
    before = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    qkv = pipe.model.blocks[0].attn.qkv
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.set_recipe(spec)
    assert any("FAKE-QUANT" in str(w.message) for w in caught) == ("fake" in spec)
    try:
        q = pipe.model.quantization
        assert q["recipe"] == Recipe(spec).methods[0].spec() and q["layers"]
        kinds = {type(m) for m in pipe.model.modules()}
        assert kinds & {W8A8Linear, WeightOnlyLinear, BF16Linear}
        images = pipe(**KW)
        assert torch.isfinite(images).all() and not torch.equal(images, reference)
        if "float_layers=2" in spec:
            assert len(q["float_layers"]) == 2 and len(q["sensitivity"]) == len(q["layers"]) + 2
    finally:
        pipe.set_recipe(None)
    after = pipe.model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert pipe.model.blocks[0].attn.qkv is qkv and not hasattr(pipe.model, "quantization")
    assert torch.equal(pipe(**KW), reference)


def test_quantized_checkpoint_reloads_identically(pipe, tmp_path):
    from ditkit.core.configs import TrainConfig
    from ditkit.pipelines.image import load
    from ditkit.training.trainer import model_metadata
    cfg = TrainConfig()
    cfg.model.name = "DiT-T/8"
    src = tmp_path / "tiny.safetensors"
    ckpt.save_weights(src, pipe.model.state_dict(), model_metadata(cfg, pipe.model, 0))
    float_bytes = weight_bytes(pipe.model)
    for spec, ratio in (("w8a8:smooth=0.5,calibration_steps=4", 3.5), ("w8", 3.5), ("w4", 6.0)):
        out = tmp_path / f"{spec.split(':')[0]}.safetensors"
        card = quantize_checkpoint(load(src), spec, out, src, calibration_samples=2, check=False)
        assert card["weight_memory_ratio"] == round(float_bytes / card["weight_bytes"], 2) > ratio
        assert out.stat().st_size == card["file_bytes"] < src.stat().st_size / ratio * 1.05
        assert out.with_suffix(".json").is_file()
        live = load(src)
        live.set_recipe(spec.replace("calibration_steps=4", "calibration_steps=4,calibration_samples=2"))
        loaded, peak = peak_tensor_memory(lambda: load(out))      # the float32 weights are never allocated
        assert peak < 2.2 * card["weight_bytes"] < float_bytes
        assert loaded.model.quantization["recipe"] == live.model.quantization["recipe"]
        assert torch.equal(loaded(**KW), live(**KW))
        with pytest.raises(ValueError, match="already quantized"):
            loaded.set_recipe("w8a8")


def test_composes_with_a_cache(pipe):
    pipe.set_recipe("fora:interval=1+w8a8")            # a cache that never skips changes nothing
    never = pipe(**KW)
    pipe.set_recipe("w8a8")
    alone = pipe(**KW)
    assert torch.equal(never, alone)
    pipe.set_recipe("fora")
    cache_only = pipe(**KW)
    pipe.set_recipe("fora+w8a8")
    with BlockCounter(pipe.model) as counter:
        stacked = pipe(**KW)
    assert counter.blocks < 6 * 4 * len(pipe.model.blocks) and isinstance(pipe.model.blocks[0].mlp.fc1, W8A8Linear)
    assert rel(stacked, cache_only) < 0.2 and not torch.equal(stacked, cache_only)
    pipe.set_recipe(None)


def test_composes_with_an_attention_backend(pipe, reference):
    pipe.set_recipe("linear:dropin=true")
    backend_only = pipe(**KW)
    pipe.set_recipe("linear:dropin=true+w8a8")
    attn = pipe.model.blocks[0].attn
    assert attn.backend is not None and isinstance(attn.qkv, W8A8Linear)
    stacked = pipe(**KW)
    pipe.set_recipe(None)
    assert rel(stacked, backend_only) < 0.2 and not torch.equal(stacked, backend_only)
    assert pipe.model.blocks[0].attn.backend is None and torch.equal(pipe(**KW), reference)


@pytest.mark.parametrize("spec,match", [
    ("w8a8:weight_bits=16", "2..8-bit.*bf16"),
    ("w8a8:act_bits=1", "2..8-bit"),
    ("w8a8:act=channel", "per 'token' or per 'tensor'"),
    ("w8a8:act=tensor,act_bits=6", "8-bit activations only"),
    ("w8a8:group_size=64", "group-wise.*fake=true"),
    ("w8a8:smooth=2", r"in \[0, 1\]"),
    ("w8a8:float_layers=-1", "integer >= 0"),
    ("w8a8+w8", "already quantized"),
    ("w4:group_size=48", "layer .*group_size=48 does not divide"),
])
def test_settings_the_kernels_cannot_run_raise_clear_errors(pipe, spec, match):
    with pytest.raises(ValueError, match=match):
        pipe.set_recipe(spec)
    pipe.set_recipe(None)
    assert not hasattr(pipe.model, "quantization")
    with pytest.raises(ValueError, match="stored widths are 8"):
        WeightOnlyLinear(64, 8, bits=3)


def test_calibrating_recipe_needs_a_pipeline(pipe):
    with pytest.raises(ValueError, match="DiTPipeline.set_recipe"):
        Recipe("w8a8:smooth=0.5").attach(tiny_pipe().model)


def test_quantize_command(pipe, tmp_path, capsys):
    from ditkit.cli import main
    from ditkit.core.configs import TrainConfig
    from ditkit.training.trainer import model_metadata
    cfg = TrainConfig()
    cfg.model.name = "DiT-T/8"
    src = tmp_path / "tiny.safetensors"
    ckpt.save_weights(src, pipe.model.state_dict(), model_metadata(cfg, pipe.model, 0))
    with pytest.warns(UserWarning, match="FAKE-QUANT"):
        main(["quantize", "--model", str(src), "--recipe", "w8a8:fake=true", "--out", str(tmp_path / "q.safetensors")])
    out = capsys.readouterr().out
    assert "FAKE-QUANT" in out and "smaller" in out and "PSNR" in out
    with pytest.raises(SystemExit):
        main(["quantize", "--model", str(src), "--recipe", "fora", "--out", str(tmp_path / "x.safetensors")])
    assert "not a single quantization method" in capsys.readouterr().err


def test_video_model_calibrates_quantizes_and_reloads(tmp_path):
    pytest.importorskip("ditkit.pipelines.video")
    from test_video_masks import save_tiny_model

    from ditkit.cli import main
    from ditkit.pipelines.video import VideoPipeline
    src = save_tiny_model(tmp_path / "video.safetensors")
    out = tmp_path / "video-w8a8.safetensors"
    main(["quantize", "--model", str(src), "--recipe", "w8a8:smooth=0.5,float_layers=1,calibration_steps=3",
          "--calibration-samples", "1", "--out", str(out)])                   # through the CLI and its printout
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["fidelity"]["sampler"] == "ddim" and card["float_layers"] and card["fidelity"]["num_samples"] == 4 and card["weight_memory_ratio"] > 2
    live = VideoPipeline.from_pretrained(src)
    live.set_recipe("w8a8:smooth=0.5,float_layers=1,calibration_steps=3,calibration_samples=1")
    loaded = VideoPipeline.from_pretrained(out)
    kw = dict(num_videos=2, num_sampling_steps=3, seed=0)
    assert torch.equal(loaded(**kw), live(**kw))

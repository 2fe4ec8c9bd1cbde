"""LiT conversion: LinearAttention, weight inheritance, hybrid distillation, and a loadable student."""
import json

import pytest
import torch

import ditkit
from ditkit.core import checkpoint as ckpt
from ditkit.core.configs import TrainConfig
from ditkit.models.attention import LinearAttention, TokenLayout, linear_attention
from ditkit.pipelines.build import build_model, build_process
from ditkit.training.distill_linear import build_student, distill, hybrid_losses
from ditkit.training.trainer import model_metadata


def _teacher(objective="ddpm"):
    cfg = TrainConfig()
    cfg.model.name = "DiT-T/8"
    if objective == "flow":
        cfg.diffusion.objective, cfg.diffusion.timestep_scale, cfg.model.learn_sigma = "flow", 1000.0, False
    torch.manual_seed(0)
    model = build_model(cfg.model)
    for p in model.parameters():                                  # a "trained" teacher: nothing zero-initialised
        torch.nn.init.normal_(p, std=0.02) if p.requires_grad else None
    return cfg, model


def test_linear_attention_module_and_zero_conv():
    attn = LinearAttention(32, 2, conv=3)
    x = torch.randn(2, 12, 32)
    layout = TokenLayout(1, 3, 4)
    q, k, v = attn.qkv(x).reshape(2, 12, 3, 2, 16).permute(2, 0, 3, 1, 4)
    ref = attn.proj(linear_attention(q, k, v).transpose(1, 2).reshape(2, 12, 32))
    torch.testing.assert_close(attn(x, layout), ref)              # the conv starts at zero
    torch.nn.init.normal_(attn.dwconv.weight)
    assert not torch.allclose(attn(x, layout), ref)


def test_student_inherits_every_teacher_weight():
    _, teacher = _teacher()
    student = build_student(teacher, heads=2, conv=5)
    assert all(isinstance(b.attn, LinearAttention) and b.attn.num_heads == 2 for b in student.blocks)
    s = student.state_dict()
    for key, value in teacher.state_dict().items():
        assert torch.equal(s[key], value), key
    assert [k for k in s if k not in teacher.state_dict()] == [f"blocks.{i}.attn.dwconv.{p}" for i in range(6)
                                                               for p in ("weight", "bias")]
    fresh = build_student(teacher, inherit_attention=False).state_dict()
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], teacher.state_dict()["blocks.0.attn.qkv.weight"])
    assert torch.equal(fresh["blocks.0.mlp.fc1.weight"], teacher.state_dict()["blocks.0.mlp.fc1.weight"])


def test_hybrid_losses_match_teacher_terms():
    cfg, teacher = _teacher()
    process = build_process(cfg.diffusion, True)
    x0, noise = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    t, y = torch.tensor([5, 500, 900]), torch.tensor([1, 2, 3])
    kwargs = {"y": y, "force_drop_ids": torch.tensor([0, 1, 0])}
    terms = hybrid_losses(process, teacher, teacher, x0, t, noise, kwargs)
    assert terms["distill_eps"].max() < 1e-5 and terms["distill_var"].max() < 1e-5   # grad vs no-grad kernels
    student = build_student(teacher)
    terms = hybrid_losses(process, student, teacher, x0, t, noise, kwargs)
    assert (terms["distill_eps"] > 0).all() and terms["loss"].shape == (3,)
    terms["loss"].mean().backward()
    assert student.blocks[0].attn.dwconv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_distill_writes_a_loadable_model_with_a_card(tmp_path, objective):
    cfg, teacher = _teacher(objective)
    ckpt.save_weights(tmp_path / "teacher.safetensors", teacher.state_dict(), model_metadata(cfg, teacher, 10))
    out = distill(str(tmp_path / "teacher.safetensors"), tmp_path / "lit.safetensors", steps=2, batch_size=4,
                  log_every=1, progress=False)
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps"] == 2 and card["teacher_step"] == 10 and "distill_eps" in card["final_losses"]
    pipe = ditkit.load(out)
    assert isinstance(pipe.model.blocks[0].attn, LinearAttention) and pipe.model.config.attention == "linear"
    sampler = "ddim" if objective == "ddpm" else "euler"
    assert pipe([1, 2], num_sampling_steps=2, sampler=sampler).shape == (2, 1, 32, 32)

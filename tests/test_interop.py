"""ditkit DiT <-> diffusers DiTTransformer2DModel (dit.md §11), on tiny random-weight models."""
import pytest
import torch

from ditkit.models.dit import DiT, dit_config
from ditkit.models.interop.diffusers_format import (diffusers_to_dit_state_dict, dit_to_diffusers_state_dict,
                                                    from_diffusers, save_diffusers, to_diffusers)

diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)

X = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
T = torch.tensor([0, 437, 999])
Y = torch.tensor([1, 7, 10])   # 10 = the null class


def tiny(**overrides) -> DiT:
    """2 blocks, width 64 (4 heads x 16), 8x8x4 input, 10 classes, random weights (output is 0 at init)."""
    model = DiT(dit_config("DiT-S/2", **{"input_size": 8, "hidden_size": 64, "num_heads": 4, "depth": 2,
                                         "num_classes": 10, **overrides}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def rel_diff(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("overrides", [{}, {"patch_size": 4, "learn_sigma": False}, {"freq_shift": 1.0}])
def test_round_trip_is_exact(overrides):
    model = tiny(**overrides)
    back = from_diffusers(to_diffusers(model))
    assert back.config == model.config
    sd, back_sd = model.state_dict(), back.state_dict()
    assert sd.keys() == back_sd.keys() and all(torch.equal(sd[k], back_sd[k]) for k in sd)


def test_state_dict_mapping():
    model = tiny()
    D = 64
    dsd = dit_to_diffusers_state_dict(model.state_dict(), depth=2)
    assert len(dsd) == 2 + 2 * 19 + 4 and "pos_embed" not in dsd
    reference = diffusers.DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                                out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                                num_embeds_ada_norm=10).state_dict()
    assert {k: v.shape for k, v in dsd.items()} == {k: v.shape for k, v in reference.items()}
    qkv = model.blocks[1].attn.qkv.weight
    assert torch.equal(dsd["transformer_blocks.1.attn1.to_q.weight"], qkv[:D])
    assert torch.equal(dsd["transformer_blocks.1.attn1.to_k.weight"], qkv[D:2 * D])
    assert torch.equal(dsd["transformer_blocks.1.attn1.to_v.bias"], model.blocks[1].attn.qkv.bias[2 * D:])
    for i in range(2):  # the shared embedders are copied into every block
        assert torch.equal(dsd[f"transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_2.weight"],
                           model.t_embedder.mlp[2].weight)
        assert torch.equal(dsd[f"transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight"],
                           model.y_embedder.embedding_table.weight)
    assert torch.equal(dsd["proj_out_1.bias"], model.final_layer.adaLN_modulation[1].bias)
    assert torch.equal(dsd["proj_out_2.weight"], model.final_layer.linear.weight)
    assert torch.equal(dsd["pos_embed.proj.weight"], model.x_embedder.proj.weight)
    assert diffusers_to_dit_state_dict(dsd, depth=2).keys() == model.state_dict().keys() - {"pos_embed"}


@torch.no_grad()
def test_outputs_match_diffusers_when_the_frequency_shift_matches():
    model = tiny()                                     # original DiT embedding, freq_shift = 0
    ours = model(X, T, Y)
    same = to_diffusers(model)(X, T, Y, return_dict=False)[0]
    stock = to_diffusers(model, freq_shift=1)(X, T, Y, return_dict=False)[0]
    torch.testing.assert_close(same, ours, atol=1e-5, rtol=0)
    assert rel_diff(stock, ours) > 0.02                # diffusers' own shift changes the function measurably
    dmodel = to_diffusers(model, freq_shift=1)
    assert torch.equal(dmodel.pos_embed.pos_embed, model.pos_embed)   # regenerated table is identical


def native_diffusers_dit(norm_eps: float):
    """A diffusers-built DiT with random weights whose per-block embedders are tied (as after any conversion)."""
    torch.manual_seed(0)
    dmodel = diffusers.DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                             out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                             num_embeds_ada_norm=10, norm_eps=norm_eps).eval()
    with pytest.raises(ValueError, match="per-block timestep/class embedders differ from block 0's"):
        from_diffusers(dmodel)                         # fresh diffusers init: independent embedders per block
    with torch.no_grad():
        for p in dmodel.parameters():
            p.normal_(0, 0.1)
    for block in dmodel.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(dmodel.transformer_blocks[0].norm1.emb.state_dict())
    return dmodel


@torch.no_grad()
def test_native_diffusers_model_converts_with_its_own_shift():
    dmodel = native_diffusers_dit(norm_eps=1e-6)
    theirs = dmodel(X, T, Y, return_dict=False)[0]
    converted = from_diffusers(dmodel)
    assert converted.config.freq_shift == 1.0 and converted.config.num_classes == 10
    torch.testing.assert_close(converted(X, T, Y), theirs, atol=1e-5, rtol=0)
    assert rel_diff(from_diffusers(dmodel, freq_shift=0)(X, T, Y), theirs) > 0.02
    # diffusers' default norm_eps=1e-5 (MLP-branch LayerNorm) vs DiT's 1e-6: a ~1e-6 relative difference
    dmodel = native_diffusers_dit(norm_eps=1e-5)
    assert 0 < rel_diff(from_diffusers(dmodel)(X, T, Y), dmodel(X, T, Y, return_dict=False)[0]) < 1e-4


def test_save_diffusers_folder_loads_with_from_pretrained(tmp_path):
    model = tiny()
    with pytest.warns(UserWarning, match="freq_shift"):
        save_diffusers(model, tmp_path / "dit")
    assert (tmp_path / "dit/transformer/diffusion_pytorch_model.safetensors").is_file()
    loaded = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "dit", subfolder="transformer").eval()
    assert loaded.config.num_embeds_ada_norm == 10 and loaded.config.norm_eps == 1e-6
    with torch.no_grad():
        torch.testing.assert_close(loaded(X, T, Y, return_dict=False)[0],
                                   to_diffusers(model, freq_shift=1)(X, T, Y, return_dict=False)[0], atol=1e-6, rtol=0)
        restored = from_diffusers(loaded, freq_shift=0)   # the weights came from an original-embedding model
        assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), model.state_dict().values()))
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "dit", subfolder="scheduler")
    assert scheduler.config.beta_schedule == "linear" and not scheduler.config.clip_sample
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (1e-4, 0.02)


def test_models_without_a_diffusers_equivalent_are_refused():
    with pytest.raises(ValueError, match="only supports square inputs.*8x12"):
        to_diffusers(tiny(input_size=(8, 12)))
    with pytest.raises(ValueError, match="class_dropout_prob=0"):
        to_diffusers(tiny(class_dropout_prob=0.0))

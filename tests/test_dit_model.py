"""DiT model facts (dit.md §1-3) and the official-checkpoint loader. Big configs are built on the meta device."""
import argparse
import os
import math

import numpy as np
import pytest
import torch

from ditkit.core.checkpoint import CheckpointMismatchError
from ditkit.models.dit import DiT, LabelEmbedder, dit_config, timestep_sinusoid
from ditkit.models.interop.official import load_official_checkpoint, read_official_state_dict, save_official

torch.set_num_threads(1)

SIZES = {"S": (12, 384), "B": (12, 768), "L": (24, 1024), "XL": (28, 1152)}
# dit.md §2: parameters including the position table at 256 px (latent 32), in millions rounded to 0.01
TABLE_M = {"S": (32.96, 32.95, 33.15), "B": (130.51, 130.48, 130.88), "L": (458.10, 458.05, 458.59),
           "XL": (675.13, 675.07, 675.68)}


def tiny(**overrides):
    """A 2-block, 64-wide DiT (4 heads) on a 8x8 4-channel input unless overridden."""
    kw = dict(input_size=8, hidden_size=64, num_heads=4, depth=2, num_classes=10)
    return DiT(dit_config("DiT-S/2", **{**kw, **overrides}))


def randomize(model: DiT, seed: int = 0) -> DiT:
    """Random weights everywhere but pos_embed (so the output is no longer zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def official_tiny(**overrides) -> DiT:
    """DiT-T/2 (6 blocks, width 192) on an 8x8 latent, i.e. a 64 px image for the official loader."""
    return DiT(dit_config("DiT-T/2", input_size=8, **overrides))


def meta_dit(name: str, **overrides) -> DiT:
    with torch.device("meta"):
        return DiT(dit_config(name, **overrides))


# ---- initialisation and shapes -------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, {"patch_size": 4}, {"learn_sigma": False}, {"input_size": (8, 12)},
                                       {"in_channels": 3, "input_size": (4, 8), "patch_size": 4}])
def test_output_is_exactly_zero_at_init(overrides):
    model = tiny(**overrides).eval()
    C, (H, W) = model.in_channels, model.config.image_hw
    x = torch.randn(3, C, H, W)
    out = model(x, torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10]))
    assert out.shape == (3, model.config.out_channels, H, W)
    assert torch.equal(out, torch.zeros_like(out))


def test_xl2_256_parameters_and_official_keys():
    model = meta_dit("DiT-XL/2", input_size=32, in_channels=4)
    assert sum(p.numel() for p in model.parameters()) == 675_129_632
    assert model.pos_embed.numel() == 294_912 and not model.pos_embed.requires_grad
    sd = model.state_dict()
    assert len(sd) == 292
    expected = {  # dit.md §3
        "pos_embed": (1, 256, 1152),
        "x_embedder.proj.weight": (1152, 4, 2, 2), "x_embedder.proj.bias": (1152,),
        "t_embedder.mlp.0.weight": (1152, 256), "t_embedder.mlp.0.bias": (1152,),
        "t_embedder.mlp.2.weight": (1152, 1152), "t_embedder.mlp.2.bias": (1152,),
        "y_embedder.embedding_table.weight": (1001, 1152),
        "blocks.0.attn.qkv.weight": (3456, 1152), "blocks.27.attn.qkv.bias": (3456,),
        "blocks.13.attn.proj.weight": (1152, 1152), "blocks.13.attn.proj.bias": (1152,),
        "blocks.5.mlp.fc1.weight": (4608, 1152), "blocks.5.mlp.fc1.bias": (4608,),
        "blocks.5.mlp.fc2.weight": (1152, 4608), "blocks.5.mlp.fc2.bias": (1152,),
        "blocks.27.adaLN_modulation.1.weight": (6912, 1152), "blocks.27.adaLN_modulation.1.bias": (6912,),
        "final_layer.adaLN_modulation.1.weight": (2304, 1152), "final_layer.adaLN_modulation.1.bias": (2304,),
        "final_layer.linear.weight": (32, 1152), "final_layer.linear.bias": (32,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert "blocks.28.attn.qkv.weight" not in sd
    per_block = {k.split(".", 2)[2] for k in sd if k.startswith("blocks.0.")}
    assert len(per_block) == 10  # norms have no affine parameters


def test_xl2_512_only_grows_the_position_table():
    model = meta_dit("DiT-XL/2", input_size=64, in_channels=4)
    assert sum(p.numel() for p in model.parameters()) == 676_014_368
    assert tuple(model.pos_embed.shape) == (1, 1024, 1152)


@pytest.mark.parametrize("size", list(SIZES))
def test_all_twelve_configs_build_on_meta_with_the_formula_parameter_count(size):
    depth, D = SIZES[size]
    for j, p in enumerate((2, 4, 8)):
        model = meta_dit(f"DiT-{size}/{p}", input_size=32)
        T = (32 // p) ** 2
        formula = (depth * (18 * D * D + 15 * D) + 4 * p * p * D + D + 256 * D + D * D + 2 * D + 1001 * D
                   + 2 * D * D + 2 * D + 8 * p * p * D + 8 * p * p + T * D)
        n = sum(q.numel() for q in model.parameters())
        assert n == formula
        assert round(n / 1e6, 2) == TABLE_M[size][j]
        assert len(model.blocks) == depth and model.x_embedder.proj.kernel_size == (p, p)


# ---- embeddings ----------------------------------------------------------------------------------------------
def test_pos_embed_first_half_encodes_the_column():
    D, h, w = 32, 3, 5
    model = tiny(hidden_size=D, input_size=(2 * h, 2 * w))
    omega = 10000.0 ** (-np.arange(D // 4, dtype=np.float64) / (D / 4))

    def emb(pos):  # MAE 1D table of width D/2, sine half first
        return np.concatenate([np.sin(pos * omega), np.cos(pos * omega)])

    expected = np.stack([np.concatenate([emb(j), emb(i)]) for i in range(h) for j in range(w)])
    table = model.pos_embed[0].numpy()
    assert table.shape == (h * w, D)
    np.testing.assert_allclose(table, expected, atol=1e-6)
    assert not np.allclose(table[1, : D // 2], table[0, : D // 2])       # moving one column changes the first half
    np.testing.assert_allclose(table[w, : D // 2], table[0, : D // 2])  # moving one row does not


def test_timestep_embedding_is_cosine_first():
    t = torch.tensor([0.0, 1.0, 700.0, 999.0])
    freqs = torch.exp(-math.log(10000.0) * torch.arange(128) / 128)
    emb = timestep_sinusoid(t, 256)
    torch.testing.assert_close(emb[:, :128], torch.cos(t[:, None] * freqs), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb[:, 128:], torch.sin(t[:, None] * freqs), atol=1e-5, rtol=0)
    assert torch.equal(emb[0, :128], torch.ones(128)) and torch.equal(emb[0, 128:], torch.zeros(128))
    shifted = timestep_sinusoid(t, 256, freq_shift=1)  # diffusers: /127
    torch.testing.assert_close(shifted[:, :128], torch.cos(t[:, None] * freqs ** (128 / 127)), atol=1e-4, rtol=0)
    assert abs((emb[2] - shifted[2]).abs().max().item() - 1.68) < 0.01  # dit.md §11, t = 700
    odd = timestep_sinusoid(t, 7)
    assert odd.shape == (4, 7) and torch.equal(odd[:, 6], torch.zeros(4))


def test_label_dropout_and_null_class():
    emb = LabelEmbedder(10, 8, dropout_prob=0.1)
    assert emb.embedding_table.num_embeddings == 11
    assert LabelEmbedder(10, 8, dropout_prob=0.0).embedding_table.num_embeddings == 10
    table = emb.embedding_table.weight
    y = torch.arange(10)
    emb.eval()
    assert torch.equal(emb(y), table[:10])                                   # no random drop in eval mode
    forced = emb(y, force_drop_ids=(y % 2 == 0).long())
    assert torch.equal(forced[0::2], table[10].expand(5, -1)) and torch.equal(forced[1::2], table[1::2])
    emb.train()
    emb.dropout_prob = 1.0
    assert torch.equal(emb(y), table[10].expand(10, -1))                     # training mode drops
    emb.dropout_prob = 0.5
    torch.manual_seed(0)
    dropped = (emb(torch.zeros(4000, dtype=torch.long)) == table[10]).all(1).float().mean().item()
    assert abs(dropped - 0.5) < 0.03
    model = randomize(tiny()).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.equal(model(x, t), model(x, t, torch.tensor([10, 10])))     # y=None means the null class


def test_bad_shapes_and_names_give_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"expected input of shape \[N, 4, 8, 8\], got \[2, 4, 16, 16\]"):
        model(torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"expected input of shape \[N, 4, 8, 8\], got \[2, 3, 8, 8\]"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="input size 9x9 is not divisible by patch_size=2"):
        tiny(input_size=9)
    with pytest.raises(ValueError, match="hidden size 64 is not divisible by num_heads=5"):
        tiny(num_heads=5)
    with pytest.raises(ValueError, match=r"unknown DiT config 'DiT-XXL/2'; valid: DiT-S/2"):
        dit_config("DiT-XXL/2")
    with pytest.raises(ValueError, match=r"unknown DiT config keys \['depht'\]"):
        dit_config("DiT-S/2", depht=3)


# ---- official checkpoints --------------------------------------------------------------------------------------
def test_official_round_trip_with_and_without_pos_embed(tmp_path):
    model = randomize(official_tiny()).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([7, 1000])
    path = save_official(model, tmp_path / "dit.pt")
    loaded = load_official_checkpoint(path, "DiT-T/2")
    assert loaded.config.input_size == 8 and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert torch.equal(loaded(x, t, y), model(x, t, y))

    sd = torch.load(path, weights_only=True)
    assert set(sd) == set(model.state_dict())                                # official layout = ditkit layout
    del sd["pos_embed"]
    torch.save(sd, tmp_path / "nopos.pt")
    loaded = load_official_checkpoint(tmp_path / "nopos.pt", "DiT-T/2", image_size=64)
    assert torch.equal(loaded.pos_embed, model.pos_embed)                    # recomputed sin-cos table
    assert torch.equal(loaded(x, t, y), model(x, t, y))
    with pytest.raises(ValueError, match="has no pos_embed.*pass image_size"):
        load_official_checkpoint(tmp_path / "nopos.pt", "DiT-T/2")
    with pytest.raises(ValueError, match="image_size=128 does not match .* image size 64"):
        load_official_checkpoint(path, "DiT-T/2", image_size=128)


def test_official_training_checkpoint_prefers_ema(tmp_path):
    model = randomize(official_tiny(), seed=1)
    other = randomize(official_tiny(), seed=2)
    ckpt = {"model": other.state_dict(), "ema": model.state_dict(),
            "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]},
            "args": argparse.Namespace(model="DiT-XL/2", image_size=256, global_batch_size=256)}
    torch.save(ckpt, tmp_path / "0050000.pt")
    sd = read_official_state_dict(tmp_path / "0050000.pt")
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    del ckpt["ema"]
    torch.save(ckpt, tmp_path / "no-ema.pt")
    sd = read_official_state_dict(tmp_path / "no-ema.pt")
    assert all(torch.equal(sd[k], v) for k, v in other.state_dict().items())


def test_official_wrong_model_name_suggests_the_matching_architecture(tmp_path):
    save_official(randomize(official_tiny()), tmp_path / "t2.pt")
    with pytest.raises(CheckpointMismatchError, match=r"holds a DiT-T/2 .*not a DiT-XL/2: pass --model-name DiT-T/2"):
        load_official_checkpoint(tmp_path / "t2.pt", "DiT-XL/2")
    with pytest.raises(CheckpointMismatchError, match=r"not a DiT-T/4: pass --model-name DiT-T/2"):
        load_official_checkpoint(tmp_path / "t2.pt", "DiT-T/4")


def test_official_mismatch_lists_keys_and_shapes(tmp_path):
    sd = randomize(official_tiny(num_classes=10)).state_dict()
    sd.pop("blocks.1.attn.qkv.weight")
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_official_checkpoint(tmp_path / "bad.pt", "DiT-T/2")
    msg = str(err.value)
    assert "missing keys (1): blocks.1.attn.qkv.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "y_embedder.embedding_table.weight: checkpoint (11, 192) vs model (1001, 192)" in msg
    with pytest.raises(CheckpointMismatchError, match=r"final_layer.linear.weight: checkpoint \(32, 192\) vs model "
                                                      r"\(16, 192\)"):
        load_official_checkpoint(tmp_path / "bad.pt", "DiT-T/2", num_classes=10, learn_sigma=False)


class NotWeights:
    pass


class Executes:
    def __reduce__(self):
        return os.system, ("echo this must never run",)


def test_official_refuses_pickled_objects_and_reports_corrupt_files(tmp_path):
    torch.save({"ema": {"w": torch.zeros(1)}, "hook": NotWeights()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"was refused: it holds a pickled .*NotWeights object.*could run arbitrary"):
        load_official_checkpoint(tmp_path / "evil.pt")
    torch.save({"ema": Executes()}, tmp_path / "code.pt")                  # a reduce to os.system is refused too
    with pytest.raises(ValueError, match=r"was refused: it holds a pickled (posix|nt)\.system object"):
        load_official_checkpoint(tmp_path / "code.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint.*corrupt or truncated"):
        load_official_checkpoint(tmp_path / "corrupt.pt")
    good = tmp_path / "good.pt"
    save_official(official_tiny(), good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_official_checkpoint(tmp_path / "truncated.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a DiT state dict"):
        load_official_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "missing.pt")


def test_save_official_refuses_models_the_original_code_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="only supports square inputs"):
        save_official(tiny(input_size=(8, 12)), tmp_path / "a.pt")
    with pytest.raises(ValueError, match="freq_shift=1"):
        save_official(tiny(freq_shift=1.0), tmp_path / "b.pt")


def test_pipeline_runs_an_official_checkpoint_with_a_vae(tmp_path):
    from diffusers import AutoencoderKL

    from ditkit.pipelines.image import DiTPipeline

    save_official(randomize(official_tiny()), tmp_path / "dit.pt")
    with pytest.raises(ValueError, match="pass autoencoder=.*--vae"):
        DiTPipeline.from_pretrained(tmp_path / "dit.pt", model_name="DiT-T/2")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4,
                  layers_per_block=1).save_pretrained(tmp_path / "vae")
    pipe = DiTPipeline.from_pretrained(tmp_path / "dit.pt", autoencoder=str(tmp_path / "vae"), model_name="DiT-T/2")
    assert pipe.process.num_timesteps == 1000 and pipe.process.learn_sigma
    np.testing.assert_allclose(pipe.process.betas[[0, -1]], [1e-4, 0.02])
    images = pipe([3, 999], num_sampling_steps=2, sampler="ddpm", cfg_scale=1.5)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all() and images.abs().max() <= 1

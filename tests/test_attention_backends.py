"""Efficient attention backends: exactness at keep-all settings, layout transforms, per-layer/per-head selection."""
import pytest
import torch

import ditkit.acceleration.attention.sta as sta
from ditkit.acceleration.attention.base import parse_indices, parse_triples, text_dense
from ditkit.acceleration.attention.fastattn import WindowResidualAttention
from ditkit.acceleration.attention.sta import (auto_window, search_windows, sliding_tile_attention, sta_density,
                                               tile_plan, window_candidates)
from ditkit.acceleration.attention.svg import (band_geometry, band_plan, candidate_outputs, classify_heads,
                                               sparse_videogen)
from ditkit.acceleration.attention.topk import topk_attention, topk_geometry
from ditkit.acceleration.kernels.blocksparse import (BlockPattern, band_attention, band_index, block_sparse_attention,
                                                     window_index)
from ditkit.acceleration.kernels.layout import from_temporal, from_tiles, to_temporal, to_tiles
from ditkit.acceleration.recipes import Recipe
from ditkit.models.attention import HeadSplit, TokenLayout, linear_attention, sdpa
from ditkit.models.dit import DiT, dit_config

LAYOUT = TokenLayout(4, 8, 8)


def qkv(B=2, H=3, N=256, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g) for _ in range(3)]


def test_layout_transforms_are_exact_inverses():
    x = torch.randn(2, 3, LAYOUT.num_tokens, 5)
    for tile in [(2, 4, 4), (1, 8, 2), (4, 1, 8)]:
        t = to_tiles(x, LAYOUT, tile)
        assert torch.equal(from_tiles(t, LAYOUT, tile), x)
        assert not torch.equal(t, x)
    assert torch.equal(from_temporal(to_temporal(x, LAYOUT), LAYOUT), x)


def test_tile_and_temporal_orders():
    ids = torch.arange(LAYOUT.num_tokens).view(1, 1, -1, 1).float()        # token id = frame-major position
    first_tile = to_tiles(ids, LAYOUT, (2, 4, 4))[0, 0, :32, 0].long()
    f, h, w = torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(first_tile, (f * 64 + h * 8 + w).flatten())
    temporal = to_temporal(ids, LAYOUT)[0, 0, :8, 0].long()                 # position 0 then 1 in all 4 frames
    assert temporal.tolist() == [0, 64, 128, 192, 1, 65, 129, 193]


def test_block_sparse_all_blocks_equals_dense():
    q, k, v = qkv()
    idx = torch.randperm(8).expand(1, 1, 8, 8)                               # every key block, any order
    torch.testing.assert_close(block_sparse_attention(q, k, v, idx, 32), sdpa(q, k, v), atol=1e-5, rtol=0)
    diag = torch.arange(8).view(1, 1, 8, 1)                                  # block-diagonal fast path
    ref = sdpa(*(t.reshape(2, 24, 32, 16) for t in (q, k, v))).view(2, 3, 256, 16)
    torch.testing.assert_close(block_sparse_attention(q, k, v, diag, 32), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pattern", [
    band_index(8, 3),                                  # shared windows, runs of blocks: sliced views
    window_index((2, 2, 2), (2, 1, 2)),                # shared windows, scattered blocks and query groups
    torch.stack([torch.roll(torch.arange(8), -i)[:3] for i in range(8)]),   # every window distinct: chunked gather
])
def test_block_sparse_matches_masked_attention(pattern):
    q, k, v = qkv()
    idx = pattern[None, None]
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask.scatter_(1, idx[0, 0], True)
    mask = mask.repeat_interleave(32, 0).repeat_interleave(32, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = block_sparse_attention(q, k, v, idx, 32, max_temp_mb=0.01)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.equal(block_sparse_attention(q, k, v, BlockPattern(idx), 32, max_temp_mb=0.01), out)   # prebuilt


def test_windows_are_clamped_and_full_size():
    assert band_index(6, 3).tolist() == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [3, 4, 5]]
    idx = window_index((2, 3, 3), (1, 2, 2))
    assert idx.shape == (18, 4) and idx[0].tolist() == [0, 1, 3, 4] and idx[-1].tolist() == [13, 14, 16, 17]
    assert auto_window((4, 4, 4), 0.25) == (2, 2, 3)
    assert sta_density(LAYOUT, (2, 4, 4), [(1, 1, 2)]) == 0.25


@pytest.mark.parametrize("name", ["sta", "svg", "topk", "fastattn"])
def test_keep_all_setting_equals_dense(name):
    q, k, v = qkv()
    ref = sdpa(q, k, v)
    if name == "sta":
        out = sliding_tile_attention(q, k, v, LAYOUT, (2, 4, 4), [(2, 2, 2)])
    elif name == "svg":
        out = sparse_videogen(q, k, v, LAYOUT, density=1.0, block=32)
    elif name == "topk":
        out = topk_attention(q, k, v, LAYOUT, (2, 4, 4), density=1.0)
    else:
        m = WindowResidualAttention(tile="2x4x4", window="2x2x2")
        m.prime("k", q, k, v, LAYOUT)
        out = m.kernel(q, k, v, LAYOUT, "k")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_sparse_backends_match_their_masks():
    q, k, v = qkv()
    out = sliding_tile_attention(q, k, v, LAYOUT, (2, 4, 4), [(1, 1, 2)])
    tq = to_tiles(q, LAYOUT, (2, 4, 4))
    tk, tv = to_tiles(k, LAYOUT, (2, 4, 4)), to_tiles(v, LAYOUT, (2, 4, 4))
    idx = window_index((2, 2, 2), (1, 1, 2))
    mask = torch.zeros(8, 8, dtype=torch.bool).scatter_(1, idx, True).repeat_interleave(32, 0).repeat_interleave(32, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
    torch.testing.assert_close(out, from_tiles(ref, LAYOUT, (2, 4, 4)), atol=1e-5, rtol=0)


def test_sta_mask_search_picks_the_best_window_per_head():
    q, k, v = qkv(B=1)
    candidates = window_candidates((2, 2, 2), 2)
    assert sorted(candidates) == [(1, 1, 2), (1, 2, 1), (2, 1, 1)]
    chosen = search_windows(q, k, v, LAYOUT, (2, 4, 4), candidates, rows=256)      # all rows: exact errors
    ref = sdpa(q, k, v)
    for h in range(3):
        errs = [(sliding_tile_attention(q, k, v, LAYOUT, (2, 4, 4), [w]) - ref)[:, h].pow(2).mean() for w in candidates]
        assert chosen[h] == candidates[int(torch.stack(errs).argmin())]
    mixed = sliding_tile_attention(q, k, v, LAYOUT, (2, 4, 4), chosen)               # per-head windows, one call
    for h in range(3):
        torch.testing.assert_close(mixed[:, h], sliding_tile_attention(q, k, v, LAYOUT, (2, 4, 4), [chosen[h]])[:, h])


def test_svg_classifies_spatial_and_temporal_heads():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(1, 1, 1, 64, 16, generator=g) * 2                   # same position -> same key in every frame
    frame = torch.randn(1, 1, 4, 1, 16, generator=g) * 2                  # same frame -> shared component
    temporal_q = (pos + 0.1 * torch.randn(1, 1, 4, 64, 16, generator=g)).reshape(1, 1, 256, 16)
    spatial_q = (frame + 0.1 * torch.randn(1, 1, 4, 64, 16, generator=g)).reshape(1, 1, 256, 16)
    q = torch.cat([spatial_q, temporal_q], dim=1)
    v = torch.randn(1, 2, 256, 16, generator=g)
    idx = band_index(8, 2)
    assert classify_heads(q, q, v, LAYOUT, idx, 32).tolist() == [[False, True]]


def test_svg_profiling_candidates_equal_band_attention():
    """The profiling's masked outputs on sampled rows equal the sparse kernels' own outputs at those rows: the
    spatial band in frame-major order and the temporal band after the token-major transformation."""
    q, k, v = qkv(N=256)
    idx, block = band_index(8, 3), 32
    rows = torch.tensor([0, 5, 40, 100, 130, 255])
    exact, spatial, temporal = candidate_outputs(q, k, v, LAYOUT, idx, block, rows)
    torch.testing.assert_close(exact, sdpa(q, k, v)[:, :, rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(spatial, band_attention(q, k, v, block, 3)[:, :, rows], atol=1e-5, rtol=1e-5)
    in_time = from_temporal(band_attention(*(to_temporal(t, LAYOUT) for t in (q, k, v)), block, 3), LAYOUT)
    torch.testing.assert_close(temporal, in_time[:, :, rows], atol=1e-5, rtol=1e-5)
    assert (spatial - exact).abs().max() > 1e-3 and (temporal - spatial).abs().max() > 1e-3   # the masks matter


def test_svg_applies_each_heads_mask():
    """Mixed spatial and temporal heads, with q, k, v as non-contiguous views (as the model passes them): every
    (sample, head) of the output equals the band attention of the kind its profiling chose."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 256, 3, 4, 16, generator=g).permute(2, 0, 3, 1, 4).unbind(0)     # [B, h, N, d] views
    idx, block = band_index(8, 3), 32
    temporal = classify_heads(q, k, v, LAYOUT, idx, block, 64, torch.Generator().manual_seed(0))
    assert temporal.any() and not temporal.all() and not q.is_contiguous()
    out = sparse_videogen(q, k, v, LAYOUT, density=3 / 8, block=block, rows=64, generator=torch.Generator().manual_seed(0))
    spatial = band_attention(q, k, v, block, 3)
    in_time = from_temporal(band_attention(*(to_temporal(t, LAYOUT) for t in (q, k, v)), block, 3), LAYOUT)
    torch.testing.assert_close(out, torch.where(temporal[..., None, None], in_time, spatial), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["svg:block=32,rows=8", "svg:block=32,sparsity=0.5", "sta:tile=2x4x4",
                                  "topk:tile=2x4x4"])
def test_reported_density_counts_the_pairs_computed(spec, monkeypatch):
    """``layout_density`` = query-key pairs of every SDPA call the kernel makes / (B h N^2); for SVG that includes
    the profiling's exact rows and candidate bands."""
    pairs = []
    dense = torch.nn.functional.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        pairs.append(q.shape[:-1].numel() * k.shape[-2])
        return dense(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    method = Recipe(spec).methods[0]
    q, k, v = qkv()
    method.kernel(q, k, v, LAYOUT)
    B, H, N, _ = q.shape
    assert sum(pairs) == pytest.approx(method.layout_density(LAYOUT) * B * H * N * N, rel=1e-9)


def test_linear_attention_matches_formula():
    q, k, v = qkv(N=64)
    qr, kr = q.relu(), k.relu()
    ref = torch.einsum("bhnm,bhmd->bhnd", qr @ kr.transpose(-1, -2), v) / ((qr @ kr.transpose(-1, -2)).sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(linear_attention(q, k, v), ref, atol=1e-4, rtol=1e-4)


def test_head_split_and_index_parsing():
    q, k, v = qkv()
    out = HeadSplit([([1], linear_attention), ([0, 2], None)])(q, k, v)
    torch.testing.assert_close(out[:, [0, 2]], sdpa(q, k, v)[:, [0, 2]])
    torch.testing.assert_close(out[:, 1], linear_attention(q, k, v)[:, 1])
    with pytest.raises(ValueError):
        HeadSplit([([0, 1], None), ([1], linear_attention)])
    assert parse_indices("0-2;5", 8) == [0, 1, 2, 5] and parse_indices(3, 8) == [3] and parse_indices("all", 2) == [0, 1]
    assert parse_triples("8x8;2x4x4") == [(1, 8, 8), (2, 4, 4)]


def _tiny_dit(size=64):
    torch.manual_seed(0)
    model = DiT(dit_config("DiT-T/4", input_size=size, in_channels=1, num_classes=10, depth=3)).eval()
    for block in model.blocks:                                           # make attention matter (adaLN-Zero is 0)
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    return model


def test_recipe_per_layer_and_per_head_selection_and_detach():
    model = _tiny_dit()
    recipe = Recipe("sta:layers=1,heads=0;2,tile=1x4x4,window=1x1x1,min_tokens=0")
    recipe.attach(model)
    attn = [b.attn for b in model.blocks]
    assert attn[0].backend is None and attn[2].backend is None and isinstance(attn[1].backend, HeadSplit)
    recipe.reset(10)
    recipe.begin_step(5, 10)                                             # past STA's 24% full-attention steps
    q, k, v = qkv(B=1, N=256, D=64)
    out = attn[1].backend(q, k, v, TokenLayout(1, 16, 16))
    ref = sdpa(q, k, v)
    torch.testing.assert_close(out[:, 1], ref[:, 1])                    # head 1 untouched
    assert (out[:, [0, 2]] - ref[:, [0, 2]]).abs().max() > 1e-3
    recipe.begin_step(0, 10)
    torch.testing.assert_close(attn[1].backend(q, k, v, TokenLayout(1, 16, 16)), ref)   # warm-up step: dense
    recipe.detach(model)
    assert all(a.backend is None for a in attn)


def test_recipes_run_in_a_model_and_short_calls_stay_dense():
    model = _tiny_dit()
    x, t, y = torch.randn(1, 1, 64, 64), torch.tensor([500]), torch.tensor([3])
    with torch.no_grad():
        ref = model(x, t, y)
        for spec in ["svg:block=32,dense_layers=0", "sta:tile=1x4x4", "topk:tile=1x4x4", "fastattn:tile=1x4x4"]:
            with pytest.raises(ValueError, match="at most 256 tokens, fewer than min_tokens=1024"):
                Recipe(spec).attach(model)                               # a no-op on this model: refused, says why
            method = Recipe(f"{spec},min_tokens=200").methods[0]
            backend = method.make_backend(0, 2)
            q = torch.randn(1, 2, 128, 16)                                # a 128-token call < min_tokens: dense
            assert torch.equal(backend(q, q, q, TokenLayout(1, 8, 16)), sdpa(q, q, q))
        for spec in ["svg:block=32,dense_layers=0", "sta:tile=1x4x4", "sta:tile=1x4x4,window=search",
                     "topk:tile=1x4x4", "fastattn:tile=1x4x4", "linear:dropin=true"]:
            with Recipe(f"{spec},min_tokens=0").applied(model) as r:
                r.reset(10)
                for step in range(4):                                # ends on a sparse step
                    r.begin_step(step, 10)
                    out = model(x, t, y)
                assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_longest_attention_call_per_model_layout():
    from ditkit.acceleration.attention.base import longest_attention
    from ditkit.models.video_dit import VideoDiT, video_dit_config
    assert longest_attention(_tiny_dit()) == 256                                     # 64x64 px / patch 4
    video = lambda layout, side: VideoDiT(video_dit_config("VideoDiT-T/8", layout=layout, depth=1, hidden_size=32,
                                                           num_heads=2, input_size=side, num_frames=16))
    assert longest_attention(video("vdt", 32)) == 16                                 # 4x4 frames: temporal calls
    assert longest_attention(video("vdt", 64)) == 64                                 # 8x8 frames: spatial calls
    assert longest_attention(video("full3d", 32)) == 16 * 16
    assert longest_attention(torch.nn.Linear(2, 2)) is None


def _same_pattern(a: BlockPattern, b: BlockPattern) -> bool:
    same = lambda x, y: x == y if isinstance(x, slice) else isinstance(y, torch.Tensor) and torch.equal(x, y)
    return (torch.equal(a.idx, b.idx) and a.diagonal == b.diagonal and (a.windows is None) == (b.windows is None)
            and all(same(r, r2) and same(c, c2) for (r, c), (r2, c2) in zip(a.windows or [], b.windows or [])))


@pytest.mark.parametrize("windows", [None, ((1, 1, 2),), ((1, 1, 2), (2, 1, 1), (1, 2, 2))])
def test_sta_tile_plan_is_cached_and_equals_a_fresh_one(windows):
    cpu = torch.device("cpu")
    plan = tile_plan(LAYOUT, (2, 4, 4), windows, 0.25, cpu)
    assert tile_plan(LAYOUT, (2, 4, 4), windows, 0.25, cpu) is plan                       # built once
    fresh = tile_plan.__wrapped__(LAYOUT, (2, 4, 4), windows, 0.25, cpu)
    assert (plan.tile, plan.grid, plan.tokens) == (fresh.tile, fresh.grid, fresh.tokens) == ((2, 4, 4), (2, 2, 2), 32)
    assert len(plan.groups) == len(fresh.groups) == (2 if windows and len(windows) > 1 else 1)
    for (heads, pattern), (heads2, pattern2) in zip(plan.groups, fresh.groups):
        assert (heads is None and heads2 is None) or torch.equal(heads, heads2)
        assert _same_pattern(pattern, pattern2)
    if windows is None or len(windows) == 1:                                              # the windows of STA
        grid_window = windows[0] if windows else auto_window((2, 2, 2), 0.25)
        assert torch.equal(plan.groups[0][1].idx, window_index((2, 2, 2), grid_window)[None, None])


def test_plans_live_on_the_device_they_were_built_for():
    meta = torch.device("meta")
    plan = tile_plan.__wrapped__(LAYOUT, (2, 4, 4), ((1, 1, 2), (2, 1, 1), (1, 2, 2)), 0.25, meta)
    shared = BlockPattern(window_index((2, 2, 2), (2, 1, 2))[None, None], meta)    # scattered shared windows
    windows = [t for w in shared.windows for t in w if isinstance(t, torch.Tensor)]
    tensors = [plan.groups[1][0], *(p.idx for _, p in plan.groups), shared.idx, shared.flat(2, 3), *windows]
    assert windows and all(t.device == meta for t in tensors)


def test_sta_and_fastattn_rebuild_nothing_per_call(monkeypatch):
    """Recipe strings are parsed at construction and the tile plan built at the first call of a layout."""
    q, k, v = qkv(H=3)
    methods = [Recipe("sta:tile=2x4x4,window=1x1x2;2x1x1;1x2x2,min_tokens=0").methods[0],
               Recipe("fastattn:tile=2x4x4,window=1x1x2,min_tokens=0").methods[0]]
    first = [m.kernel(q, k, v, LAYOUT) if m.name == "sta" else m.prime("key", q, k, v, LAYOUT) for m in methods]

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt per call")
    for name in ["parse_triples", "window_index", "auto_tile", "tile_grid"]:
        monkeypatch.setattr(sta, name, refuse)
    assert torch.equal(methods[0].kernel(q, k, v, LAYOUT), first[0])
    methods[1].kernel(q, k, v, LAYOUT, "key")


def test_topk_and_svg_geometry_are_cached():
    assert topk_geometry(LAYOUT, (2, 4, 4), 0.25) is topk_geometry(LAYOUT, (2, 4, 4), 0.25)
    assert topk_geometry(LAYOUT, (2, 4, 4), 0.25) == ((2, 4, 4), 8, 32, 2)
    block, nb, width, idx = band_plan(256, 0.25, 32)
    assert band_plan(256, 0.25, 32)[3] is idx and (block, nb, width) == band_geometry(256, 0.25, 32)
    assert torch.equal(idx, band_index(nb, width)) and idx.device.type == "cpu"


@pytest.mark.parametrize("spec, match", [
    ("sta:tile=abc", r"tile='abc' is not valid: expected 'auto' or one tile FxHxW or HxW"),
    ("sta:tile=2x4x4;1x8x8", r"tile='2x4x4;1x8x8' is not valid: expected one tile"),
    ("sta:window=0x1x1", r"window='0x1x1' is not valid: expected 'auto', 'search' or windows FxHxW"),
    ("sta:window=1x2x3x4", r"window='1x2x3x4' is not valid"),
    ("sta:density=1.5", r"density=1.5 is not valid: expected a fraction in \(0, 1\]"),
    ("fastattn:window=search", r"window='search' is not valid: expected 'auto' or windows"),
    ("fastattn:tile=4", r"tile=4 is not valid"),
    ("fastattn:refresh=0", r"refresh=0 is not valid: expected an integer >= 1"),
    ("topk:tile=8x", r"tile='8x' is not valid"),
    ("topk:density=0", r"density=0 is not valid"),
    ("svg:sparsity=0", r"sparsity=0 is not valid"),
    ("svg:block=0", r"block=0 is not valid: expected an integer >= 1"),
])
def test_invalid_recipe_parameters_raise_at_construction(spec, match):
    with pytest.raises(ValueError, match=match):
        Recipe(spec)


def test_rope_tables_are_cached_per_device_and_dtype():
    from ditkit.models.rope import Rotary
    rope = Rotary(16, (2, 4, 4))
    x = torch.randn(1, 2, 32, 16)
    out = rope(x)
    assert rope.tables(x.device, torch.float32)[0] is rope.cos                    # the float32 CPU tables themselves
    cos64 = rope.tables(x.device, torch.float64)[0]
    assert rope.tables(x.device, torch.float64)[0] is cos64 and cos64.dtype == torch.float64
    torch.testing.assert_close(rope(x.double()), out.double(), atol=1e-6, rtol=0)
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    ref = torch.stack([a * rope.cos - b * rope.sin, a * rope.sin + b * rope.cos], dim=-1).flatten(-2)
    assert torch.equal(out, ref)


def _attended(kernel, q, k, layout):
    """[B, h, N, N] bool: the key positions ``kernel`` attends per query: its probabilities with one-hot values
    (q, k zero-padded to N dims, q rescaled so that the scores are unchanged)."""
    N, D = q.shape[2], q.shape[3]
    pad = lambda t: torch.nn.functional.pad(t, (0, N - D))
    eye = torch.eye(N).expand(*q.shape[:2], -1, -1).contiguous()
    return kernel(pad(q * (N / D) ** 0.5), pad(k), eye, layout) > 0


KERNELS = {"sta": lambda q, k, v, layout, lse=False: sliding_tile_attention(q, k, v, layout, (1, 4, 4), None, 0.3, lse),
           "topk": lambda q, k, v, layout, lse=False: topk_attention(q, k, v, layout, (1, 4, 4), 0.3, lse),
           "svg": lambda q, k, v, layout, lse=False: sparse_videogen(
               q, k, v, layout, 0.3, 16, 8, torch.Generator().manual_seed(0), lse)}


@pytest.fixture
def fixed_svg_heads(monkeypatch):
    """SVG's profiling picks heads from q, k and v: fixed here (sample 0: spatial, temporal, spatial; sample 1 the
    reverse), so one-hot values probe the same pattern."""
    import ditkit.acceleration.attention.svg as svg
    monkeypatch.setattr(svg, "classify_heads", lambda q, *a, **k: torch.tensor([[False, True, False],
                                                                               [True, False, True]]))


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernels_log_sum_exp_is_that_of_their_pattern(name, fixed_svg_heads):
    kernel, layout = KERNELS[name], TokenLayout(2, 8, 8)
    q, k, v = qkv(N=layout.num_tokens)
    out, lse = kernel(q, k, v, layout, lse=True)
    mask = _attended(kernel, q, k, layout)
    scores = (q @ k.transpose(-2, -1)) / 4 + torch.where(mask, 0.0, float("-inf"))
    assert mask.float().mean() < 0.7                                        # really sparse
    torch.testing.assert_close(lse, scores.logsumexp(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, scores.softmax(-1) @ v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(KERNELS))
def test_joint_text_image_attention_keeps_the_text_dense(name, fixed_svg_heads):
    """Joint attention (text then image tokens): text rows and text columns dense, the kernel's pattern on the image
    block; equal to masked dense attention. A keep-everything kernel gives dense attention."""
    kernel, image, L = KERNELS[name], TokenLayout(2, 8, 8), 5
    q, k, v = qkv(N=L + image.num_tokens)
    mask = torch.ones(2, 3, q.shape[2], q.shape[2], dtype=torch.bool)
    mask[:, :, L:, L:] = _attended(kernel, q[:, :, L:], k[:, :, L:], image)
    joint = text_dense(kernel, q, k, v, TokenLayout(*image.shape, text=L))
    expected = ((q @ k.transpose(-2, -1)) / 4 + torch.where(mask, 0.0, float("-inf"))).softmax(-1) @ v
    torch.testing.assert_close(joint, expected, atol=1e-5, rtol=1e-5)
    assert (joint - sdpa(q, k, v)).abs().max() > 1e-3                        # the image part really is sparse
    dense_kernel = lambda q, k, v, layout, lse=False: sliding_tile_attention(q, k, v, layout, (1, 4, 4), None, 1.0,
                                                                             lse)
    torch.testing.assert_close(text_dense(dense_kernel, q, k, v, TokenLayout(*image.shape, text=L)), sdpa(q, k, v),
                               atol=1e-5, rtol=1e-5)
    padding = torch.ones(2, 1, 1, L, dtype=torch.bool)
    padding[0, ..., 3:] = False                                              # sample 0: two padded text tokens
    mask[:, :, :, :L] &= padding
    padded = text_dense(kernel, q, k, v, TokenLayout(*image.shape, text=L, text_mask=padding))
    expected = ((q @ k.transpose(-2, -1)) / 4 + torch.where(mask, 0.0, float("-inf"))).softmax(-1) @ v
    torch.testing.assert_close(padded, expected, atol=1e-5, rtol=1e-5)

"""Multi-process inference on gloo: Ulysses, ring, USP, CFG and data parallelism give the one-process output (to
1e-5), alone and with caching recipes, sparse attention, quantization and their stacks; bad degrees are clear
errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from acceleration_util import tiny_dit
from distributed import run
from test_model_contract import CAPTIONED, tiny_video

from ditkit import cli
from ditkit.acceleration.cache.base import rel_l1
from ditkit.acceleration.cache.calibration import save_calibration
from ditkit.bench.tasks import calibrate_on_task
from ditkit.diffusion.flow import FlowMatching
from ditkit.models.attention import TokenLayout
from ditkit.parallel.mesh import ParallelConfig, traffic
from ditkit.pipelines.image import DiTPipeline
from ditkit.data.scenes import VOCABULARY
from ditkit.models.pixart import PixArt, PixArtConfig
from ditkit.models.text import SmallTextEncoder, WordTokenizer
from ditkit.pipelines.text import TextPipeline
from ditkit.pipelines.video import VideoPipeline

STEPS = 6


def generate(case: dict) -> torch.Tensor:
    """One generation of a tiny random model, as described by ``case`` (the same on every process)."""
    torch.manual_seed(0)
    if case["kind"] == "image":
        pipe = DiTPipeline(tiny_dit(case.get("size", 40), flow=True), FlowMatching(1000.0))
    elif case["kind"] == "text":
        pipe = tiny_text_pipeline()
    else:
        pipe = VideoPipeline(tiny_video(case["layout"]), FlowMatching(1000.0))
    if "parallel" in case:
        pipe.set_parallel(ParallelConfig(**case["parallel"]))
    if case.get("recipe"):
        pipe.set_recipe(case["recipe"])
    if case["kind"] == "image":
        return pipe(class_labels=case.get("labels", [1, 2, 3]), num_sampling_steps=STEPS, sampler="euler",
                    cfg_scale=3.0, seed=0, guidance_interval=case.get("interval"))
    if case["kind"] == "text":
        return pipe(prompt=["a bold 7 at the top left", "3 above 8", "a small 2"], num_sampling_steps=STEPS,
                    sampler="euler", cfg_scale=3.0, seed=0)
    frames = case.get("frames", 4)
    captions = {"frame_prompts": [["a 3 moving left"] * (frames - 1) + ["a 5 moving up"]] * 2} \
        if pipe.captioned else {}
    context = torch.rand(2, 1, frames, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = torch.ones(1, 1, frames, 16, 16)
    mask[:, :, :1] = 0
    return pipe(context, mask, labels=[1, 2], num_sampling_steps=STEPS, sampler="euler", cfg_scale=2.0,
                history_scale=case.get("history_scale", 1.0), seed=0, **captions)


def tiny_text_pipeline() -> TextPipeline:
    """A random PixArt on 16x16 (64 tokens of patch 2, 3 heads) with a small word-level encoder."""
    torch.manual_seed(0)
    encoder = SmallTextEncoder(WordTokenizer(VOCABULARY), dim=16, depth=1, num_heads=2, max_length=12).eval()
    model = PixArt(PixArtConfig(input_size=16, patch_size=2, hidden_size=48, depth=2, num_heads=3,
                                caption_channels=16)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.05)
    return TextPipeline(model, FlowMatching(1000.0), encoder)


def generate_all(rank: int, world_size: int, cases: list[dict]) -> list[tuple[torch.Tensor, int]]:
    """Each case's output and the bytes this process sent for it."""
    out = []
    for case in cases:
        traffic.reset()
        out.append((generate(case), traffic.sent))
    return out


def check(cases: list[dict], world_size: int, atol: float = 1e-5) -> None:
    outs = run(generate_all, world_size, cases)
    for case, (out, sent) in zip(cases, outs):
        assert sent > 0, case                                   # the processes really shared the work
        reference = generate({k: v for k, v in case.items() if k != "parallel"})
        assert out.shape == reference.shape, case
        err = float((out - reference).abs().max())
        assert err <= case.get("atol", atol), (case, err)


U2, R2, CFG = {"ulysses_degree": 2}, {"ring_degree": 2}, {"cfg_parallel": True}


def test_image_dit_two_processes(tmp_path):
    """25 tokens (13 + 12) and 3 heads (one moved by Ulysses, one gathered): every mode and caching recipes."""
    torch.manual_seed(0)
    pipe = DiTPipeline(tiny_dit(40, flow=True), FlowMatching(1000.0))
    ratios = save_calibration(calibrate_on_task(pipe, "magcache", 2, num_sampling_steps=STEPS, sampler="euler",
                                                cfg_scale=3.0), tmp_path / "magcache.json")
    cases = [{"kind": "image", "parallel": p} for p in (U2, R2, CFG)]
    cases += [{"kind": "image", "parallel": p, "recipe": f"magcache:threshold=0.5,max_skips=2,ratios={ratios}"}
              for p in (U2, CFG)]
    cases += [{"kind": "image", "parallel": U2, "recipe": r}
              for r in ("fora", "teacache:threshold=0.3", "firstblockcache:threshold=0.5", "taylorseer:interval=3,order=2",
                        "delta_dit")]
    cases += [{"kind": "image", "parallel": R2, "recipe": "firstblockcache:threshold=0.5"},
              {"kind": "image", "parallel": CFG, "recipe": "teacache:threshold=0.3"},
              {"kind": "image", "parallel": CFG, "recipe": "fora", "interval": (0.2, 0.8)},
              {"kind": "image", "parallel": U2, "recipe": "toca:ratio=0.3"},
              {"kind": "image", "parallel": R2, "recipe": "toca:ratio=0.3,interval=2"},
              {"kind": "image", "parallel": U2, "recipe": "sta:min_tokens=0"},
              {"kind": "image", "parallel": U2, "recipe": "topk:min_tokens=0,heads=0-1+svg:min_tokens=0,heads=2"},
              {"kind": "image", "parallel": U2, "recipe": "bf16"},
              {"kind": "image", "parallel": U2, "recipe": "taylorseer:interval=3,order=2+w8a8"},
              # ring's merge differs from one softmax by ~1e-6, which flips some int8 activation roundings
              {"kind": "image", "parallel": R2, "recipe": "w8a8", "atol": 0.05},
              {"kind": "image", "parallel": {}, "labels": [1, 2, 3, 4, 5]}]       # data parallel: 3 + 2 samples
    check(cases, 2)


def test_video_dit_two_processes():
    """Every layout, frame counts that split evenly and unevenly (3 frames: 2 + 1), with guidance by context."""
    cases = [{"kind": "video", "layout": layout, "frames": frames, "parallel": p}
             for layout in ("vdt", "latte", "full3d") for frames in (3, 4) for p in (U2, R2)]
    cases += [{"kind": "video", "layout": "full3d", "frames": 5, "parallel": U2, "recipe": "teacache:threshold=0.3"},
              {"kind": "video", "layout": "vdt", "frames": 4, "parallel": R2, "recipe": "fora"},
              {"kind": "video", "layout": "vdt", "frames": 3, "parallel": U2, "recipe": "toca:ratio=0.3"},
              {"kind": "video", "layout": "latte", "frames": 4, "parallel": R2, "recipe": "toca:ratio=0.3"},
              {"kind": "video", "layout": "full3d", "frames": 5, "parallel": U2, "recipe": "toca:ratio=0.3"},
              {"kind": "video", "layout": "vdt", "frames": 4, "parallel": CFG, "history_scale": 2.0,
               "recipe": "firstblockcache:threshold=0.5"}]
    check(cases, 2)


def test_text_models_two_processes():
    """PixArt (cross-attention to the prompt, text keys kept per generation) and the captioned VideoDiT with per-frame
    captions: Ulysses (3 heads: one moved), ring and CFG parallelism, with a caching recipe."""
    cases = [{"kind": "text", "parallel": p} for p in (U2, R2, CFG)]
    cases += [{"kind": "text", "parallel": U2, "recipe": "teacache:threshold=0.3"},
              {"kind": "video", "layout": CAPTIONED, "frames": 3, "parallel": U2},
              {"kind": "video", "layout": CAPTIONED, "frames": 4, "parallel": R2, "recipe": "toca:ratio=0.3"},
              {"kind": "video", "layout": CAPTIONED, "frames": 4, "parallel": CFG, "history_scale": 2.0}]
    check(cases, 2)


def test_four_processes_usp_and_combinations():
    cases = [{"kind": "image", "parallel": {"ulysses_degree": 2, "ring_degree": 2}},
             {"kind": "image", "parallel": {"ring_degree": 4}},
             {"kind": "image", "parallel": {"ulysses_degree": 2, "cfg_parallel": True}, "recipe": "fora"},
             {"kind": "image", "parallel": {"ring_degree": 2, "cfg_parallel": True},
              "recipe": "teacache:threshold=0.3"},
             {"kind": "image", "parallel": {"ulysses_degree": 2}, "labels": [1, 2, 3]},    # x 2 data parallel
             {"kind": "video", "layout": "full3d", "frames": 4, "parallel": {"ulysses_degree": 2, "ring_degree": 2},
              "recipe": "firstblockcache:threshold=0.5"},
             {"kind": "video", "layout": "vdt", "frames": 5, "parallel": {"ring_degree": 4}}]
    check(cases, 4)


def attention_parts(rank: int, world_size: int, ulysses: int, ring: int, sizes: list[int], heads: int) -> float:
    from ditkit.parallel.mesh import ParallelState
    from ditkit.parallel.sequence import SequenceShard
    state = ParallelState(ParallelConfig(ulysses_degree=ulysses, ring_degree=ring), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, sum(sizes), 8, generator=g) for _ in range(3))
    shard = SequenceShard(tuple(sizes), state.sequence_index, state)
    part = slice(shard.start, shard.stop)
    out = shard.attention(None, q[:, :, part], k[:, :, part], v[:, :, part], TokenLayout(1, 1, sum(sizes), shard=shard))
    whole = shard.gather(out.transpose(1, 2)).transpose(1, 2)
    tokens = q.transpose(1, 2).flatten(2)                                  # [2, n, heads * 8]: a change measure
    change = rel_l1(tokens[:, part], tokens[:, part].roll(1, 0), shard) - rel_l1(tokens, tokens.roll(1, 0))
    return max(float((whole - F.scaled_dot_product_attention(q, k, v)).abs().max()), float(change.abs().max()))


@pytest.mark.parametrize("ulysses,ring,sizes,heads", [(2, 1, [9, 7], 4), (1, 2, [9, 7], 3), (2, 2, [5, 4, 4, 3], 3)])
def test_sequence_attention_and_token_reductions_equal_one_process(ulysses, ring, sizes, heads):
    assert run(attention_parts, ulysses * ring, ulysses, ring, sizes, heads) < 1e-6


def refusals(rank: int, world_size: int) -> list[str]:
    messages = []
    for make in (lambda: ParallelConfig(ulysses_degree=3).data_degree(world_size),
                 lambda: DiTPipeline(tiny_dit(40, flow=True), FlowMatching(1000.0)).set_parallel(
                     ParallelConfig(ring_degree=2)).set_recipe("sta:min_tokens=0"),
                 lambda: ParallelConfig(ulysses_degree=4).check_heads(3)):
        try:
            make()
            messages.append("no error")
        except ValueError as e:
            messages.append(str(e))
    return messages


def test_bad_degrees_and_unsupported_combinations_are_clear_errors():
    degrees, ring_sparse, heads = run(refusals, 2)
    assert "= 3 does not divide the world size 2" in degrees and "--nproc_per_node 3" in degrees
    assert "sta need(s) every key" in ring_sparse and "--ulysses-degree" in ring_sparse
    assert "more than the model's 3 attention heads" in heads
    with pytest.raises(ValueError, match="launch with torchrun --nproc_per_node 2"):
        DiTPipeline(tiny_dit(40, flow=True), FlowMatching(1000.0)).set_parallel(ParallelConfig(ulysses_degree=2))


def torchrun(tmp_path, *args, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "ditkit.cli", *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)


def test_generate_under_torchrun_writes_the_one_process_arrays(tmp_path):
    """Ulysses 2 on the bundled model: rank 0 writes the same .npz as one process; a bad degree stops every
    process with a message naming it."""
    flags = ["generate", "--num-samples", "3", "--num-sampling-steps", "4", "--threads", "1"]
    done = torchrun(tmp_path, *flags, "--ulysses-degree", "2", "--out", "u.png", "--npz", "u.npz")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes: ulysses 2" in done.stdout and done.stdout.count("wrote") == 1
    cli.main([*flags, "--out", str(tmp_path / "s.png"), "--npz", str(tmp_path / "s.npz")])
    parallel, single = np.load(tmp_path / "u.npz"), np.load(tmp_path / "s.npz")
    assert np.abs(parallel["images"] - single["images"]).max() <= 1e-5
    assert (parallel["seeds"] == single["seeds"]).all()
    bad = torchrun(tmp_path, *flags, "--ring-degree", "3", "--out", "b.png")
    assert bad.returncode != 0
    assert "(process 0 of 2): error: --ulysses-degree 1 x --ring-degree 3 = 3 does not divide the world size 2" \
        in bad.stderr
    assert not (tmp_path / "b.png").exists()
